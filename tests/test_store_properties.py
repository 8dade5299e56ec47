"""Stateful property test of the embedded store against a plain in-memory model (DESIGN §3, §8).

Hypothesis drives random sequences of whole store operations (append, STORE, COPY, MOVE,
EXPUNGE, mailbox create/rename/delete, sweep) on two accounts, one of them under a quota, and
after every step compares everything the store reports (UIDs, MODSEQs, flags, sizes, STATUS,
quota counters, VANISHED, events) with what the model says must be true.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from postoffice.store import SqliteStore, open_store
from postoffice.store.events import Expunged, FlagsChanged, MessagesAdded, Subscription
from postoffice.store.model import (
    HIERARCHY_SEPARATOR,
    AlreadyExists,
    AppendTarget,
    Flag,
    InvalidName,
    NotFound,
    QuotaExceeded,
    StoreMode,
    UidSet,
)

T = TypeVar("T")

DOMAIN = "example.org"
FREE_ADDRESS = f"free@{DOMAIN}"
LIMITED_ADDRESS = f"limited@{DOMAIN}"
# Small enough that a handful of appends or one COPY of a few messages hits it.
QUOTA_BYTES = 6_000
QUOTA_MESSAGES = 6
MAX_UID = 2**32 - 1
KEYWORDS = ("$Forwarded", "$Junk", "$label1", "work", "NonJunk")
# Hierarchical on purpose, so renames carry children along and "a" -> "a/b" is refused.
NAME_POOL = (
    "Drafts",
    "Sent",
    "Trash",
    "Junk",
    "Archive",
    "a",
    "b",
    "a/b",
    "a/c",
    "b/a",
    "Archive/2024",
    "Sent/old",
)
HOT_MAILBOXES = ("INBOX", "Trash")
PREFIXES = (b"", b"Delivered-To: free@example.org\r\n", b"X-Spam: no\r\nX-Sieve: kept\r\n")
ZONES = (
    dt.UTC,
    dt.timezone(dt.timedelta(hours=5, minutes=30)),
    dt.timezone(dt.timedelta(hours=-8)),
)

_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789", min_size=1, max_size=8)
_LINE = st.lists(_WORD, max_size=10).map(" ".join)


@st.composite
def _generated_message(draw: st.DrawFn) -> bytes:
    sender = draw(st.sampled_from(["alice", "bob", "carol"]))
    subject = draw(_LINE)
    lines = draw(st.lists(_LINE, max_size=12))
    day = draw(st.integers(1, 28))
    ident = draw(st.integers(0, 10**9))
    head = (
        f"From: {sender.title()} <{sender}@example.net>\r\n"
        f"To: free@{DOMAIN}\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, {day} Nov 2026 10:00:00 +0100\r\n"
        f"Message-ID: <{ident}@example.net>\r\n"
    )
    if draw(st.booleans()):
        body = "\r\n".join(lines) + "\r\n"
        return (head + "\r\n" + body).encode()
    parts = "".join(f"--sep\r\nContent-Type: text/plain\r\n\r\n{line}\r\n" for line in lines)
    return (
        head
        + "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=sep\r\n\r\n"
        + parts
        + "--sep--\r\n"
    ).encode()


# A few fixed messages so the same content is appended again and shares its blob.
_FIXED = tuple(
    (
        f"From: list@example.net\r\nTo: free@{DOMAIN}\r\nSubject: digest {n}\r\n"
        f"Message-ID: <digest-{n}@example.net>\r\n\r\n" + "digest line\r\n" * (n * 40)
    ).encode()
    for n in range(3)
)
MESSAGES = st.one_of(st.sampled_from(_FIXED), _generated_message())
FLAGS = st.integers(0, 31).map(Flag)
KEYWORD_SETS = st.frozensets(st.sampled_from(KEYWORDS), max_size=3)
INTERNALDATES = st.builds(
    lambda when, zone: when.replace(tzinfo=zone),
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2030, 1, 1)).map(
        lambda when: when.replace(microsecond=0)
    ),
    st.sampled_from(ZONES),
)
BATCHES = st.lists(st.tuples(MESSAGES, INTERNALDATES), min_size=1, max_size=5)


@dataclass
class ModelEntry:
    content: bytes  # prefix + blob: what read_message must return
    flags: Flag
    keywords: frozenset[str]
    modseq: int
    internaldate: dt.datetime

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass
class ModelMailbox:
    id: int
    account_id: int
    name: str
    uidvalidity: int
    sub: Subscription
    highestmodseq: int
    max_uid: int = 0  # highest UID the store ever handed out here
    entries: dict[int, ModelEntry] = field(default_factory=dict)
    tombstones: dict[int, int] = field(default_factory=dict)  # uid -> modseq of its expunge


@dataclass
class ModelAccount:
    id: int
    address: str
    quota_bytes: int | None
    quota_messages: int | None
    uidvalidities: set[int] = field(default_factory=set)
    # Names, not mailboxes: a subscription outlives its mailbox (RFC 3501 §6.3.9).
    subscriptions: set[str] = field(default_factory=set)


MailboxEventKey = tuple[str, tuple[object, ...], int]  # kind, uids or changes, highestmodseq


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = tempfile.TemporaryDirectory(prefix="postoffice-props-")
        self.store: SqliteStore = self.run(open_store(Path(self.tmp.name)))
        self.accounts: dict[int, ModelAccount] = {}
        self.mailboxes: dict[int, ModelMailbox] = {}
        self.deleted_ids: set[int] = set()
        self.run(self._setup())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _setup(self) -> None:
        await self.store.add_domain(DOMAIN)
        for address, quota_bytes, quota_messages in (
            (FREE_ADDRESS, None, None),
            (LIMITED_ADDRESS, QUOTA_BYTES, QUOTA_MESSAGES),
        ):
            account = await self.store.add_account(
                address, "hash", None, quota_bytes=quota_bytes, quota_messages=quota_messages
            )
            self.accounts[account.id] = ModelAccount(
                account.id, address, quota_bytes, quota_messages
            )
            for mailbox in await self.store.list_mailboxes(account.id):
                self._track(
                    account.id, mailbox.id, mailbox.name, mailbox.uidvalidity, mailbox.highestmodseq
                )
            # Every default mailbox starts subscribed (DESIGN §3).
            self.accounts[account.id].subscriptions = set(self.names(account.id))

    def _track(
        self, account_id: int, mailbox_id: int, name: str, uidvalidity: int, highestmodseq: int
    ) -> None:
        account = self.accounts[account_id]
        assert uidvalidity not in account.uidvalidities, "UIDVALIDITY repeated in an account"
        account.uidvalidities.add(uidvalidity)
        assert mailbox_id not in self.mailboxes
        self.mailboxes[mailbox_id] = ModelMailbox(
            mailbox_id,
            account_id,
            name,
            uidvalidity,
            self.store.events.subscribe(account_id, mailbox_id),
            highestmodseq,
        )

    def teardown(self) -> None:
        try:
            for mailbox in self.mailboxes.values():
                mailbox.sub.close()
            self.run(self.store.close())
        finally:
            self.loop.close()
            self.tmp.cleanup()

    # -- helpers --------------------------------------------------------------------------
    def names(self, account_id: int) -> dict[str, ModelMailbox]:
        return {m.name: m for m in self.mailboxes.values() if m.account_id == account_id}

    def usage(self, account_id: int) -> tuple[int, int]:
        sizes = [
            entry.size
            for mailbox in self.mailboxes.values()
            if mailbox.account_id == account_id
            for entry in mailbox.entries.values()
        ]
        return sum(sizes), len(sizes)

    def over_quota(self, charges: dict[int, tuple[int, int]]) -> bool:
        """Would adding (octets, messages) per account break a quota?"""
        for account_id, (octets, count) in charges.items():
            account = self.accounts[account_id]
            used_bytes, used_messages = self.usage(account_id)
            if account.quota_bytes is not None and used_bytes + octets > account.quota_bytes:
                return True
            if (
                account.quota_messages is not None
                and used_messages + count > account.quota_messages
            ):
                return True
        return False

    def pick_mailbox(
        self, data: st.DataObject, *, label: str = "mailbox", with_messages: bool = False
    ) -> ModelMailbox:
        candidates = sorted(m.id for m in self.mailboxes.values() if m.entries or not with_messages)
        return self.mailboxes[self._draw_biased(data, candidates, label)]

    def _draw_biased(self, data: st.DataObject, candidates: list[int], label: str) -> int:
        # Half the picks from a few hot mailboxes, so that some fill up enough for STORE,
        # COPY, MOVE and EXPUNGE to act on several messages at once.
        hot = [i for i in candidates if self.mailboxes[i].name in HOT_MAILBOXES] or candidates
        return data.draw(st.one_of(st.sampled_from(hot), st.sampled_from(candidates)), label)

    def pick_uids(self, data: st.DataObject, mailbox: ModelMailbox) -> UidSet:
        """Some of the mailbox's UIDs, sometimes with UIDs that are not (or no longer) there."""
        present = sorted(mailbox.entries)
        chosen: list[int] = []
        if present:
            chosen = data.draw(st.lists(st.sampled_from(present), unique=True), label="uids")
        if data.draw(st.booleans(), label="with absent uids"):
            absent = [*mailbox.tombstones, mailbox.max_uid + 1, mailbox.max_uid + 7]
            chosen += data.draw(st.lists(st.sampled_from(absent), max_size=3), label="absent")
        if not chosen or data.draw(st.booleans(), label="as span"):
            lo, hi = (min(chosen), max(chosen)) if chosen else (1, MAX_UID)
            return UidSet.span(lo, hi)
        return UidSet.of(chosen)

    def mailbox_events(self) -> dict[int, list[MailboxEventKey]]:
        """What each mailbox's subscription received since the last call (mailbox events)."""
        seen: dict[int, list[MailboxEventKey]] = {}
        for mailbox in self.mailboxes.values():
            for event in mailbox.sub.pending():
                if isinstance(event, MessagesAdded | FlagsChanged | Expunged):
                    assert event.mailbox_id == mailbox.id, f"{event} on sub of {mailbox.id}"
                    seen.setdefault(mailbox.id, []).append(_event_key(event))
        return seen

    def expect_events(self, expected: dict[int, list[MailboxEventKey]]) -> None:
        assert self.mailbox_events() == {k: v for k, v in expected.items() if v}

    def assert_unchanged_by_failure(self) -> None:
        # The invariants compare the whole store with the unchanged model; a failed
        # operation must also not have announced anything.
        self.expect_events({})

    async def new_highestmodseq(self, mailbox: ModelMailbox) -> int:
        status = await self.store.status(mailbox.id)
        new = status.mailbox.highestmodseq
        assert new > mailbox.highestmodseq, "a change did not raise HIGHESTMODSEQ"
        mailbox.highestmodseq = new
        return new

    # -- rules ------------------------------------------------------------------------------
    @initialize(data=st.data(), batch=BATCHES)
    def deliver_first(self, data: st.DataObject, batch: list[tuple[bytes, dt.datetime]]) -> None:
        # Hypothesis enables a random subset of the rules per example (swarm testing); this
        # gives even an example without `append` some messages to work on.
        self.append(data, batch)

    @rule(data=st.data(), batch=BATCHES)
    def append(self, data: st.DataObject, batch: list[tuple[bytes, dt.datetime]]) -> None:
        # Several deliveries per step, so the other rules have enough messages to act on.
        for raw, internaldate in batch:
            self.append_one(data, raw, internaldate)

    def append_one(self, data: st.DataObject, raw: bytes, internaldate: dt.datetime) -> None:
        count = data.draw(st.integers(1, 3), label="recipients")
        targets = [
            AppendTarget(
                self.pick_mailbox(data).id,
                data.draw(FLAGS, label="flags"),
                data.draw(KEYWORD_SETS, label="keywords"),
                data.draw(st.sampled_from(PREFIXES), label="prefix"),
            )
            for _ in range(count)
        ]
        charges: dict[int, tuple[int, int]] = {}
        for target in targets:
            account_id = self.mailboxes[target.mailbox_id].account_id
            octets, messages = charges.get(account_id, (0, 0))
            charges[account_id] = (octets + len(target.prefix) + len(raw), messages + 1)
        if self.over_quota(charges):
            with pytest.raises(QuotaExceeded):
                self.run(self.store.append(raw, targets, internaldate))
            self.assert_unchanged_by_failure()
            return
        results = self.run(self.store.append(raw, targets, internaldate))
        assert [r.mailbox_id for r in results] == [t.mailbox_id for t in targets]
        added: dict[int, list[int]] = {}
        for target, result in zip(targets, results, strict=True):
            mailbox = self.mailboxes[target.mailbox_id]
            assert result.uidvalidity == mailbox.uidvalidity
            assert result.uid > mailbox.max_uid, "UID not above every UID handed out before"
            assert result.modseq > mailbox.highestmodseq
            mailbox.max_uid = result.uid
            mailbox.highestmodseq = result.modseq
            mailbox.entries[result.uid] = ModelEntry(
                target.prefix + raw, target.flags, target.keywords, result.modseq, internaldate
            )
            added.setdefault(mailbox.id, []).append(result.uid)
        self.expect_events(
            {
                mid: [("added", tuple(uids), self.mailboxes[mid].highestmodseq)]
                for mid, uids in added.items()
            }
        )
        for mailbox_id in added:
            status = self.run(self.store.status(mailbox_id))
            assert status.mailbox.highestmodseq == self.mailboxes[mailbox_id].highestmodseq

    @precondition(lambda self: any(m.entries for m in self.mailboxes.values()))
    @rule(
        data=st.data(),
        mode=st.sampled_from(StoreMode),
        flags=FLAGS,
        keywords=KEYWORD_SETS,
    )
    def store_flags(
        self, data: st.DataObject, mode: StoreMode, flags: Flag, keywords: frozenset[str]
    ) -> None:
        mailbox = self.pick_mailbox(data, with_messages=True)
        uids = self.pick_uids(data, mailbox)
        modseqs = sorted({e.modseq for e in mailbox.entries.values()})
        unchanged_since = data.draw(
            st.one_of(st.none(), st.sampled_from([0, *modseqs, mailbox.highestmodseq])),
            label="unchanged_since",
        )
        failed: list[int] = []
        updates: dict[int, tuple[Flag, frozenset[str]]] = {}
        for uid in sorted(u for u in mailbox.entries if u in uids):
            entry = mailbox.entries[uid]
            if unchanged_since is not None and entry.modseq > unchanged_since:
                failed.append(uid)
                continue
            if mode is StoreMode.REPLACE:
                new = flags, keywords
            elif mode is StoreMode.ADD:
                new = entry.flags | flags, entry.keywords | keywords
            else:
                new = entry.flags & ~flags, entry.keywords - keywords
            if new != (entry.flags, entry.keywords):
                updates[uid] = new
        result = self.run(
            self.store.store_flags(mailbox.id, uids, mode, flags, keywords, unchanged_since)
        )
        assert result.failed_unchanged_since == failed
        got = {u.uid: (u.flags, u.keywords) for u in result.updated}
        assert got == updates
        if not updates:
            self.expect_events({})
            return
        modseq = self.run(self.new_highestmodseq(mailbox))
        assert {u.modseq for u in result.updated} == {modseq}
        for uid, (new_flags, new_keywords) in updates.items():
            entry = mailbox.entries[uid]
            entry.flags, entry.keywords, entry.modseq = new_flags, new_keywords, modseq
        changes = tuple((u, modseq, f, k) for u, (f, k) in sorted(updates.items()))
        self.expect_events({mailbox.id: [("flags", changes, modseq)]})

    @precondition(lambda self: any(m.entries for m in self.mailboxes.values()))
    @rule(data=st.data(), remove_source=st.booleans())
    def copy_or_move(self, data: st.DataObject, remove_source: bool) -> None:
        source = self.pick_mailbox(data, label="source", with_messages=True)
        uids = self.pick_uids(data, source)
        others = sorted(m for m in self.mailboxes if not (remove_source and m == source.id))
        target = self.mailboxes[self._draw_biased(data, others, "target")]
        moving = [uid for uid in sorted(source.entries) if uid in uids]
        operation = self.store.move if remove_source else self.store.copy
        same_account = source.account_id == target.account_id
        octets = sum(source.entries[uid].size for uid in moving)
        if (
            moving
            and not (remove_source and same_account)
            and self.over_quota({target.account_id: (octets, len(moving))})
        ):
            with pytest.raises(QuotaExceeded):
                self.run(operation(source.id, uids, target.id))
            self.assert_unchanged_by_failure()
            return
        result = self.run(operation(source.id, uids, target.id))
        assert result.uidvalidity == target.uidvalidity
        assert [old for old, _ in result.pairs] == moving
        if not moving:
            self.expect_events({})
            return
        new_uids = [new for _, new in result.pairs]
        assert new_uids == sorted(set(new_uids)), "COPYUID destination UIDs not increasing"
        assert new_uids[0] > target.max_uid, "copied-to UID not above every earlier UID"
        target.max_uid = new_uids[-1]
        previous = target.highestmodseq
        target_modseq = self.run(self.new_highestmodseq(target))
        copied = {e.uid: e for e in self.run(self.store.fetch(target.id, UidSet.of(new_uids)))}
        for old, new in result.pairs:
            original = source.entries[old]
            assert previous < copied[new].modseq <= target_modseq
            target.entries[new] = ModelEntry(
                original.content,
                original.flags,
                original.keywords,
                copied[new].modseq,
                original.internaldate,
            )
        expected: dict[int, list[MailboxEventKey]] = {
            target.id: [("added", tuple(new_uids), target_modseq)]
        }
        if remove_source:
            modseq = self.run(self.new_highestmodseq(source))
            for uid in moving:
                del source.entries[uid]
                source.tombstones[uid] = modseq
            expected[source.id] = [("expunged", tuple(moving), modseq)]
        self.expect_events(expected)

    @rule(data=st.data(), subset=st.booleans())
    def expunge(self, data: st.DataObject, subset: bool) -> None:
        doomed = sorted(
            m.id
            for m in self.mailboxes.values()
            if any(Flag.DELETED in e.flags for e in m.entries.values())
        )
        # Mostly where there is something to expunge; sometimes anywhere (a no-op).
        if doomed and data.draw(st.integers(0, 3), label="pick doomed") > 0:
            mailbox = self.mailboxes[data.draw(st.sampled_from(doomed), label="mailbox")]
        else:
            mailbox = self.pick_mailbox(data)
        uids = self.pick_uids(data, mailbox) if subset else None
        expected = [
            uid
            for uid, entry in sorted(mailbox.entries.items())
            if Flag.DELETED in entry.flags and (uids is None or uid in uids)
        ]
        assert self.run(self.store.expunge(mailbox.id, uids)) == expected
        if not expected:
            self.expect_events({})
            return
        modseq = self.run(self.new_highestmodseq(mailbox))
        for uid in expected:
            del mailbox.entries[uid]
            mailbox.tombstones[uid] = modseq
        self.expect_events({mailbox.id: [("expunged", tuple(expected), modseq)]})

    @rule(data=st.data(), name=st.sampled_from(NAME_POOL))
    def create_mailbox(self, data: st.DataObject, name: str) -> None:
        account_id = data.draw(st.sampled_from(sorted(self.accounts)), label="account")
        if name in self.names(account_id):
            with pytest.raises(AlreadyExists):
                self.run(self.store.create_mailbox(account_id, name))
            self.assert_unchanged_by_failure()
            return
        created = self.run(self.store.create_mailbox(account_id, name))
        assert (created.account_id, created.name) == (account_id, name)
        self.deleted_ids.discard(created.id)
        self._track(account_id, created.id, name, created.uidvalidity, created.highestmodseq)
        self.expect_events({})

    @rule(data=st.data(), new=st.sampled_from(NAME_POOL))
    def rename_mailbox(self, data: st.DataObject, new: str) -> None:
        account_id = data.draw(st.sampled_from(sorted(self.accounts)), label="account")
        names = self.names(account_id)
        old = data.draw(st.sampled_from(sorted({*names, *NAME_POOL} - {"INBOX"})), label="old")
        if old not in names:
            with pytest.raises(NotFound):
                self.run(self.store.rename_mailbox(account_id, old, new))
            self.assert_unchanged_by_failure()
            return
        moved = {n: m for n, m in names.items() if n == old or n.startswith(old + "/")}
        renamed = {n: new + n[len(old) :] for n in moved}
        clash = set(renamed.values()) & (set(names) - set(moved))
        subscriptions = self.accounts[account_id].subscriptions
        if new in names or new.startswith(old + HIERARCHY_SEPARATOR) or clash:
            with pytest.raises((AlreadyExists, InvalidName)):
                self.run(self.store.rename_mailbox(account_id, old, new))
            self.assert_unchanged_by_failure()
            return
        result = self.run(self.store.rename_mailbox(account_id, old, new))
        assert (result.id, result.name) == (moved[old].id, new)
        assert result.uidvalidity == moved[old].uidvalidity
        for name, mailbox in moved.items():
            mailbox.name = renamed[name]
            if name in subscriptions:
                subscriptions.remove(name)
                subscriptions.add(renamed[name])
        self.expect_events({})

    @rule(data=st.data())
    def delete_mailbox(self, data: st.DataObject) -> None:
        account_id = data.draw(st.sampled_from(sorted(self.accounts)), label="account")
        names = self.names(account_id)
        name = data.draw(st.sampled_from(sorted({*names, *NAME_POOL, "INBOX"})), label="name")
        if name == "INBOX" or name not in names:
            with pytest.raises(InvalidName if name == "INBOX" else NotFound):
                self.run(self.store.delete_mailbox(account_id, name))
            self.assert_unchanged_by_failure()
            return
        self.run(self.store.delete_mailbox(account_id, name))
        mailbox = names[name]
        self.expect_events({})
        mailbox.sub.close()
        del self.mailboxes[mailbox.id]
        self.deleted_ids.add(mailbox.id)

    @precondition(lambda self: bool(self.deleted_ids))
    @rule(data=st.data(), raw=MESSAGES)
    def use_deleted_mailbox(self, data: st.DataObject, raw: bytes) -> None:
        """An operation naming a mailbox deleted meanwhile fails whole, whatever else it names."""
        gone = data.draw(st.sampled_from(sorted(self.deleted_ids)), label="deleted mailbox")
        live = self.pick_mailbox(data)
        kind = data.draw(st.sampled_from(["append", "copy", "move", "expunge"]), label="kind")
        everything = UidSet.span(1, MAX_UID)
        operation: Coroutine[Any, Any, object]
        if kind == "append":
            # The gone target first: a live one in the limited account could fail on quota
            # before the store reaches the gone one.
            operation = self.store.append(raw, [AppendTarget(gone), AppendTarget(live.id)])
        elif kind == "expunge":
            operation = self.store.expunge(gone)
        elif kind == "move":
            operation = self.store.move(live.id, everything, gone)
        else:
            operation = self.store.copy(live.id, everything, gone)
        with pytest.raises(NotFound):
            self.run(operation)
        self.assert_unchanged_by_failure()

    @rule(min_age=st.sampled_from([0.0, 3600.0]))
    def sweep(self, min_age: float) -> None:
        """The sweeper takes only what nothing refers to, whatever its age limit."""
        self.run(self.store.sweep(min_age))
        self.run(self.check_contents())

    @rule()
    def reopen(self) -> None:
        """Everything survives a clean close and open; the caches start cold."""
        for mailbox in self.mailboxes.values():
            mailbox.sub.close()
        self.run(self.store.close())
        self.store = self.run(open_store(Path(self.tmp.name)))
        for mailbox in self.mailboxes.values():
            mailbox.sub = self.store.events.subscribe(mailbox.account_id, mailbox.id)
        self.run(self.check_contents())

    async def check_contents(self) -> None:
        for mailbox in self.mailboxes.values():
            for uid, entry in mailbox.entries.items():
                content = await self.store.read_message(mailbox.id, uid)
                assert content == entry.content, f"content of {mailbox.name} {uid}"
            for uid in mailbox.tombstones:
                assert await self.store.read_message(mailbox.id, uid) is None

    # -- invariants -------------------------------------------------------------------------
    @invariant()
    def store_matches_model(self) -> None:
        self.run(self._check_all())

    async def _check_all(self) -> None:
        checks = [self._check_mailbox(m) for m in self.mailboxes.values()]
        checks += [self._check_account(a) for a in self.accounts.values()]
        await asyncio.gather(*checks)
        # Nothing may have been announced that the step did not account for.
        assert self.mailbox_events() == {}

    async def _check_account(self, account: ModelAccount) -> None:
        got = await self.store.get_account(account.address)
        assert got is not None
        assert (got.used_bytes, got.used_messages) == self.usage(account.id)
        assert await self.store.list_subscriptions(account.id) == sorted(account.subscriptions)
        listed = await self.store.list_mailboxes(account.id)
        assert sorted(m.name for m in listed) == sorted(self.names(account.id))
        assert {m.name: m.id for m in listed} == {
            n: m.id for n, m in self.names(account.id).items()
        }

    async def _check_mailbox(self, mailbox: ModelMailbox) -> None:
        model_uids = sorted(mailbox.entries)
        status = await self.store.status(mailbox.id)
        entries = mailbox.entries.values()
        assert status.mailbox.name == mailbox.name
        assert status.mailbox.uidvalidity == mailbox.uidvalidity
        assert status.mailbox.uidnext > mailbox.max_uid
        assert status.mailbox.highestmodseq == mailbox.highestmodseq
        assert status.messages == len(entries)
        assert status.unseen == sum(Flag.SEEN not in e.flags for e in entries)
        assert status.deleted == sum(Flag.DELETED in e.flags for e in entries)
        assert status.size == sum(e.size for e in entries)
        # Sequence number n is uids()[n - 1]: the list must be exactly the model's, in order.
        assert list(await self.store.uids(mailbox.id)) == model_uids
        fetched = await self.store.fetch(mailbox.id, UidSet.span(1, MAX_UID))
        assert [e.uid for e in fetched] == model_uids
        for got in fetched:
            want = mailbox.entries[got.uid]
            assert (got.flags, got.keywords, got.size, got.modseq) == (
                want.flags,
                want.keywords,
                want.size,
                want.modseq,
            )
            assert got.internaldate == want.internaldate
            assert got.internaldate.utcoffset() == want.internaldate.utcoffset()
            assert got.modseq <= status.mailbox.highestmodseq
        # Every other UID: one range per UID, as a session's sparse sequence sets give.
        sparse = model_uids[::2]
        if sparse:
            got_sparse = await self.store.fetch(mailbox.id, UidSet.of(sparse))
            assert [e.uid for e in got_sparse] == sparse
        thresholds = sorted({0, *mailbox.tombstones.values(), *(e.modseq for e in entries)})
        for modseq in {*thresholds[-3:], *thresholds[:2], mailbox.highestmodseq}:
            vanished = await self.store.vanished_since(mailbox.id, modseq)
            assert vanished == sorted(u for u, m in mailbox.tombstones.items() if m > modseq)
            changed = await self.store.changed_since(mailbox.id, modseq)
            assert [e.uid for e in changed] == [
                u for u in model_uids if mailbox.entries[u].modseq > modseq
            ]


def _event_key(event: MessagesAdded | FlagsChanged | Expunged) -> MailboxEventKey:
    if isinstance(event, MessagesAdded):
        return ("added", event.uids, event.highestmodseq)
    if isinstance(event, Expunged):
        return ("expunged", event.uids, event.highestmodseq)
    return ("flags", event.changes, event.highestmodseq)


StoreMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreStateful = pytest.mark.slow(StoreMachine.TestCase)


# -- store bugs the machine above steps around; each test fails until the bug is fixed ----


async def _store_with_account(data_dir: Path) -> tuple[SqliteStore, int]:
    store = await open_store(data_dir)
    await store.add_domain(DOMAIN)
    account = await store.add_account(FREE_ADDRESS, "hash", None)
    return store, account.id


async def test_deleted_mailbox_id_is_not_reused(tmp_path: Path) -> None:
    store, account_id = await _store_with_account(tmp_path)
    try:
        old = await store.create_mailbox(account_id, "Old")
        watcher = store.events.subscribe(account_id, old.id)
        # MODSEQ 2 (append), 3 (\Deleted), 4 (expunge): membership version 4, no UIDs.
        await store.append(_FIXED[0], [AppendTarget(old.id)])
        await store.store_flags(old.id, UidSet.span(1, 10), StoreMode.ADD, Flag.DELETED)
        await store.expunge(old.id)
        assert list(await store.uids(old.id)) == []
        await store.delete_mailbox(account_id, "Old")
        watcher.pending()
        new = await store.create_mailbox(account_id, "New")
        # MODSEQ 2 (append), 3 (\Seen), 4 (append): membership version 4 again, two UIDs.
        first = await store.append(_FIXED[0], [AppendTarget(new.id)])
        await store.store_flags(new.id, UidSet.span(1, 10), StoreMode.ADD, Flag.SEEN)
        second = await store.append(_FIXED[1], [AppendTarget(new.id)])
        assert list(await store.uids(new.id)) == [first[0].uid, second[0].uid]
        # Account-level events (MailboxCreated) reach every subscription of the account;
        # message events of another mailbox must not.
        leaked = [e for e in watcher.pending() if isinstance(e, MessagesAdded | FlagsChanged)]
        assert leaked == [], "a deleted mailbox's subscriber saw another's events"
    finally:
        await store.close()


async def test_rename_onto_a_still_subscribed_name(tmp_path: Path) -> None:
    store, account_id = await _store_with_account(tmp_path)
    try:
        await store.delete_mailbox(account_id, "Drafts")  # its subscription stays
        renamed = await store.rename_mailbox(account_id, "Sent", "Drafts")
        assert renamed.name == "Drafts"
        subscriptions = await store.list_subscriptions(account_id)
        assert "Drafts" in subscriptions
        assert "Sent" not in subscriptions
    finally:
        await store.close()


async def test_sweep_survives_a_temporary_file_renamed_while_listing(tmp_path: Path) -> None:
    store, _ = await _store_with_account(tmp_path)
    try:
        # The race made deterministic: the listing names a file that put() has just
        # renamed into place.
        class RenamedMeanwhile(type(Path())):  # type: ignore[misc]
            def iterdir(self) -> Iterator[Path]:
                yield from super().iterdir()
                yield self / "just-renamed.tmp"

        store.blobs._tmp = RenamedMeanwhile(store.blobs._tmp)
        await store.sweep(3600.0)
    finally:
        await store.close()
