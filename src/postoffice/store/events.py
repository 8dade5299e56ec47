"""Change notifications (DESIGN §2 event bus): typed events published after commit.

The in-process bus is the embedded default; a PostgreSQL LISTEN/NOTIFY or Redis bus will
implement the same `EventBus` protocol for several processes.  Publishing only appends to
each subscription's deque, so it never waits on a slow session.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from postoffice.store.model import Flag


@dataclass(frozen=True, slots=True)
class MessagesAdded:
    mailbox_id: int
    uids: tuple[int, ...]
    highestmodseq: int


@dataclass(frozen=True, slots=True)
class FlagsChanged:
    mailbox_id: int
    changes: tuple[tuple[int, int, Flag, frozenset[str]], ...]  # (uid, modseq, flags, keywords)
    highestmodseq: int


@dataclass(frozen=True, slots=True)
class Expunged:
    mailbox_id: int
    uids: tuple[int, ...]
    highestmodseq: int


@dataclass(frozen=True, slots=True)
class MailboxRenamed:
    account_id: int
    mailbox_id: int
    old_name: str
    new_name: str


@dataclass(frozen=True, slots=True)
class MailboxDeleted:
    account_id: int
    mailbox_id: int
    name: str


@dataclass(frozen=True, slots=True)
class MailboxCreated:
    account_id: int
    mailbox_id: int
    name: str


MailboxEvent = MessagesAdded | FlagsChanged | Expunged
AccountEvent = MailboxRenamed | MailboxDeleted | MailboxCreated
Event = MailboxEvent | AccountEvent


class Subscription:
    """Events for one mailbox (and its account's mailbox-level events), in commit order.

    A plain deque, not an asyncio.Queue: nobody awaits it (sessions look at `pending()` at
    command boundaries, or are called through `notify`), and a queue costs ~3 KB per idle
    IMAP connection.
    """

    def __init__(self, bus: InProcessBus, key: tuple[int, int]) -> None:
        self._bus = bus
        self.key = key
        self._events: deque[Event] = deque()
        # Called after each event is queued.  An idling IMAP session sets it to answer at
        # once from the publisher's call, so thousands of idle sessions need no task each.
        self.notify: Callable[[], None] | None = None

    def push(self, event: Event) -> None:
        self._events.append(event)
        if self.notify is not None:
            self.notify()

    def pending(self) -> list[Event]:
        """Everything published since the last call."""
        events = list(self._events)
        self._events.clear()
        return events

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus(Protocol):
    def subscribe(self, account_id: int, mailbox_id: int) -> Subscription: ...

    def publish(self, account_id: int, event: Event) -> None: ...


class InProcessBus:
    """Fan-out to subscriptions in this process; must be called on the event loop thread."""

    def __init__(self) -> None:
        self._by_mailbox: dict[int, set[Subscription]] = {}
        self._by_account: dict[int, set[Subscription]] = {}

    def subscribe(self, account_id: int, mailbox_id: int) -> Subscription:
        sub = Subscription(self, (account_id, mailbox_id))
        self._by_mailbox.setdefault(mailbox_id, set()).add(sub)
        self._by_account.setdefault(account_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        account_id, mailbox_id = sub.key
        for index, key in ((self._by_mailbox, mailbox_id), (self._by_account, account_id)):
            subs = index.get(key)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del index[key]

    def publish(self, account_id: int, event: Event) -> None:
        if isinstance(event, MessagesAdded | FlagsChanged | Expunged):
            targets = self._by_mailbox.get(event.mailbox_id, ())
        else:
            targets = self._by_account.get(account_id, ())
        for sub in list(targets):
            sub.push(event)
