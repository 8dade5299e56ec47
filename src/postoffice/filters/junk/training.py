"""Teaching an account's classifier: from the CLI, from IMAP moves, from webmail buttons.

Training is remembered per message (store/junk.py's `junk_trained`, keyed by the digest of
tokens.py): the same message trained twice counts once, and a message trained the other way
later (moved out of Junk, "not junk" in webmail) has its tokens moved from one class to the
other, so a user's correction undoes the mistake instead of adding to both sides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from postoffice.filters.junk.tokens import digest, tokenize
from postoffice.log import BoundLogger
from postoffice.store.api import Store, TrainedMessage
from postoffice.store.model import Mailbox, SpecialUse, UidSet

# Messages read and tokenized at a time, so that training a whole mailbox holds only this
# many in memory.
_BATCH: Final = 200


def _prepare(raws: Sequence[bytes]) -> list[TrainedMessage]:
    return [TrainedMessage(digest(raw), tokenize(raw)) for raw in raws]


async def train_raw(store: Store, account_id: int, raws: Sequence[bytes], spam: bool) -> int:
    """Train whole messages (bytes); how many changed the counts."""
    messages = await asyncio.to_thread(_prepare, raws)
    return await store.junk.train(account_id, messages, spam)


async def train_messages(
    store: Store, account_id: int, mailbox_id: int, uids: Sequence[int], spam: bool
) -> int:
    """Train the messages at `uids` of a mailbox of the account as spam or ham; how many
    changed the counts (expunged ones and ones already trained this way do not)."""
    changed = 0
    for start in range(0, len(uids), _BATCH):
        found = await store.read_messages(mailbox_id, UidSet.of(uids[start : start + _BATCH]))
        changed += await train_raw(store, account_id, list(found.values()), spam)
    return changed


def training_for_transfer(source: Mailbox, target: Mailbox, move: bool) -> bool | None:
    """What an IMAP COPY or MOVE teaches: into Junk is spam; moved out of Junk is ham,
    except into Trash (deleting spam says nothing about it); None: nothing."""
    into_junk = target.special_use is SpecialUse.JUNK
    out_of_junk = source.special_use is SpecialUse.JUNK
    if into_junk and not out_of_junk:
        return True
    if move and out_of_junk and not into_junk and target.special_use is not SpecialUse.TRASH:
        return False
    return None


class BackgroundTraining:
    """Training that sessions start and do not wait for (the IMAP reply goes out first);
    a failure is logged in the session's log, never reported to the client.  One per
    handler, not per connection: idle connections are many and should cost nothing."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._running: set[asyncio.Task[None]] = set()

    def start(
        self, log: BoundLogger, account_id: int, mailbox_id: int, uids: Sequence[int], spam: bool
    ) -> None:
        task = asyncio.create_task(self._train(log, account_id, mailbox_id, uids, spam))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _train(
        self, log: BoundLogger, account_id: int, mailbox_id: int, uids: Sequence[int], spam: bool
    ) -> None:
        try:
            await train_messages(self.store, account_id, mailbox_id, uids, spam)
        except Exception:
            log.exception("junk training failed", extra={"mailbox_id": mailbox_id})
