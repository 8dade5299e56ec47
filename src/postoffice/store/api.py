"""The store's contract: what every metadata backend (SQLite now, PostgreSQL later) offers.

Every method is one whole operation and one transaction (DESIGN §2).  Front-ends call only
this; nothing outside `store/` knows SQL, file paths or which backend runs.
"""

from __future__ import annotations

import builtins
import datetime as dt
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from postoffice.store.events import EventBus
from postoffice.store.model import (
    FETCH_BASIC,
    Account,
    Alias,
    Appended,
    AppendTarget,
    CopyResult,
    Credentials,
    Entry,
    Envelope,
    FetchWhat,
    Flag,
    Mailbox,
    MailboxStatus,
    PopAccountPolicy,
    PopBounds,
    PopLoginTooSoon,
    PopMaildrop,
    Recipient,
    SortFields,
    SpecialUse,
    StoreError,
    StoreMode,
    StoreResult,
    UidSet,
)
from postoffice.store.search import SearchKey


class QueueState(StrEnum):
    """Where one recipient of a queued message stands."""

    PENDING = "pending"  # waiting for its next attempt
    DELIVERED = "delivered"
    FAILED = "failed"  # permanently; a bounce is due or was sent
    HELD = "held"  # kept back by the admin


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    id: int
    recipient: Recipient  # address and its RFC 3461 NOTIFY / ORCPT
    state: QueueState
    next_attempt: dt.datetime
    attempts: int
    last_error: str | None
    log: tuple[str, ...]  # one line per attempt, oldest first
    warned: bool = False  # the sender was told of the delay (RFC 3464 Action: delayed)


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    envelope: Envelope  # its recipients are those of `recipients`, in the same order
    recipients: tuple[QueuedRecipient, ...]
    size: int
    created: dt.datetime
    origin_session: str  # the session that handed it over, to find it in the logs


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one delivery attempt did for one recipient, as the queue worker records it."""

    recipient_id: int
    state: QueueState  # DELIVERED, FAILED, or PENDING to try again at next_attempt
    detail: str  # the remote reply or our reason, one line
    next_attempt: dt.datetime | None = None  # PENDING only


class OutboundQueue(Protocol):
    """The durable outbound queue (DESIGN §5): messages waiting for remote delivery."""

    async def enqueue(
        self,
        raw: bytes,
        envelope: Envelope,
        recipients: Sequence[Recipient],
        origin_session: str,
        now: dt.datetime | None = None,
    ) -> int:
        """Queue `raw` for `recipients` (envelope.recipients is not used), due at `now`
        (None: the wall clock); the id returned is durable (committed and fsync'd) by the
        time this returns."""
        ...

    async def list(
        self,
        *,
        state: QueueState | None = QueueState.PENDING,
        due_before: dt.datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[QueuedMessage]:
        """Messages with at least one recipient in `state` (None: any) whose next attempt
        is due by `due_before` (None: any time), oldest first."""
        ...

    async def get(self, message_id: int) -> QueuedMessage | None: ...
    async def read(self, message_id: int) -> bytes | None: ...

    async def record(
        self, message_id: int, results: Sequence[AttemptResult], now: dt.datetime
    ) -> None:
        """One attempt's outcome for some recipients of a message, in one transaction: each
        gets its new state, one more attempt, a log line and `last_error`.  A message with
        no recipient left pending or held is removed from the queue in the same transaction."""
        ...

    async def mark_warned(self, recipient_ids: Sequence[int]) -> None:
        """Remember that a delay warning went out for these recipients."""
        ...

    async def hold(self, message_id: int) -> int:
        """Pending recipients become held; how many."""
        ...

    async def release(self, message_id: int, now: dt.datetime) -> int:
        """Held recipients become pending, due at `now`; how many."""
        ...

    async def retry_now(self, message_id: int | None, now: dt.datetime) -> int:
        """Pending recipients of the message (None: of every message) become due at `now`;
        how many."""
        ...

    async def remove(self, message_id: int) -> bool:
        """Drop a message from the queue, whatever its recipients' states; whether it was
        there.  No bounce is sent: this is the admin's decision."""
        ...


class ScriptActive(StoreError):
    """The active Sieve script cannot be deleted (RFC 5804 §2.10)."""


class SieveScripts(Protocol):
    """Users' Sieve scripts (RFC 5804): at most one active per account."""

    async def list(self, account_id: int) -> builtins.list[tuple[str, bool]]:
        """(name, active) of every script of the account, by name."""
        ...

    async def get(self, account_id: int, name: str) -> str | None: ...

    async def put(self, account_id: int, name: str, content: str) -> None:
        """Create or replace; a replaced script keeps its active flag.  InvalidName for a
        name RFC 5804 §1.6 forbids."""
        ...

    async def delete(self, account_id: int, name: str) -> None:
        """NotFound, or ScriptActive for the active script."""
        ...

    async def rename(self, account_id: int, old: str, new: str) -> None:
        """NotFound for `old`, AlreadyExists for `new`; the active flag moves along."""
        ...

    async def activate(self, account_id: int, name: str | None) -> None:
        """Make `name` the only active script (NotFound if missing); None deactivates all."""
        ...

    async def active(self, account_id: int) -> tuple[str, str] | None:
        """(name, content) of the active script."""
        ...


@dataclass(frozen=True, slots=True)
class WebSession:
    account_id: int
    address: str
    csrf: str  # the form token every state-changing webmail request must carry
    expires: dt.datetime


class WebSessions(Protocol):
    """Webmail logins, shared by every worker process (web/webmail/session.py)."""

    async def create(
        self, token_digest: str, account_id: int, csrf: str, expires: dt.datetime, now: dt.datetime
    ) -> None:
        """Record a new session (and forget the ones expired by `now`)."""
        ...

    async def get(self, token_digest: str, now: dt.datetime) -> WebSession | None:
        """The session, unless unknown or expired by `now`."""
        ...

    async def extend(self, token_digest: str, expires: dt.datetime) -> None: ...
    async def delete(self, token_digest: str) -> None: ...
    async def delete_account(self, account_id: int, keep: str | None = None) -> None:
        """End every session of the account except `keep` (a password change)."""
        ...


@dataclass(frozen=True, slots=True)
class JunkTotals:
    spam: int  # messages trained as spam
    ham: int
    threshold: float | None  # the account's own Junk threshold; None: the config's


@dataclass(frozen=True, slots=True)
class TrainedMessage:
    digest: bytes  # identifies the message across mailboxes (filters/junk/tokens.py)
    tokens: Sequence[str]  # distinct


class JunkTokens(Protocol):
    """The Bayesian classifier's counts per account (filters/junk/)."""

    async def counts(self, account_id: int, tokens: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(spam, ham) message counts of each token the account has seen; unseen ones are
        missing."""
        ...

    async def totals(self, account_id: int) -> JunkTotals: ...

    async def token_count(self, account_id: int) -> int: ...

    async def train(self, account_id: int, messages: Sequence[TrainedMessage], spam: bool) -> int:
        """Count the messages as spam (or ham), in one transaction; how many changed.  A
        message trained the same way before is skipped; one trained the other way moves
        class."""
        ...

    async def set_threshold(self, account_id: int, threshold: float | None) -> None: ...


@dataclass(frozen=True, slots=True)
class GreylistTriplet:
    network: str  # the client's /24 (IPv4) or /64 (IPv6)
    sender: str  # lower-cased; "" for the null sender
    recipient: str  # lower-cased

    @property
    def sender_domain(self) -> str:
        return self.sender.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class GreylistTimes:
    """The greylisting policy, in seconds (config [greylist])."""

    delay: int  # a retry sooner than this after first sight is greylisted again
    retry_window: int  # a triplet not retried within this is forgotten
    expiry: int  # a passed triplet is forgotten this long after its last use


@dataclass(frozen=True, slots=True)
class GreylistDecision:
    passed: bool
    wait: int = 0  # not passed: seconds until a retry would pass


class Greylist(Protocol):
    """Greylisting triplets (filters/greylist.py); the decision and its record are one
    transaction, so concurrent sessions and worker processes agree."""

    async def check(
        self, triplet: GreylistTriplet, now: dt.datetime, times: GreylistTimes
    ) -> GreylistDecision:
        """Pass a triplet that passed before, a retry in its window, or any triplet whose
        network already passed with a sender of the same domain; otherwise record the
        first sight and say how long to wait."""
        ...


class VacationMemory(Protocol):
    """Whom a Sieve vacation action answered (RFC 5230 §4.2: once per :days per sender)."""

    async def claim(
        self, account_id: int, handle: str, sender: str, now: dt.datetime, period: dt.timedelta
    ) -> bool:
        """True (and remember `now`) unless `sender` was answered under `handle` within
        `period` before `now`; checked and recorded in one transaction."""
        ...


class Store(Protocol):
    events: EventBus

    @property
    def outbound(self) -> OutboundQueue: ...

    @property
    def greylist(self) -> Greylist: ...

    @property
    def junk(self) -> JunkTokens: ...

    @property
    def sieve(self) -> SieveScripts: ...

    @property
    def vacation(self) -> VacationMemory: ...

    @property
    def web_sessions(self) -> WebSessions: ...

    async def close(self) -> None: ...

    # -- domains -------------------------------------------------------------------------
    async def add_domain(self, name: str) -> None: ...
    async def remove_domain(self, name: str) -> None: ...
    async def list_domains(self) -> list[str]: ...
    async def is_local_domain(self, name: str) -> bool: ...

    # -- accounts ------------------------------------------------------------------------
    async def add_account(
        self,
        address: str,
        password_hash: str,
        scram_sha256: str | None,
        quota_bytes: int | None = None,
        quota_messages: int | None = None,
    ) -> Account: ...
    async def remove_account(self, address: str) -> None: ...
    async def get_account(self, address: str) -> Account | None: ...
    async def list_accounts(self) -> list[Account]: ...
    async def get_credentials(self, address: str) -> Credentials | None: ...
    async def set_password(
        self, address: str, password_hash: str, scram_sha256: str | None
    ) -> None: ...
    async def set_quota(
        self, address: str, quota_bytes: int | None, quota_messages: int | None
    ) -> Account: ...

    # -- POP3 (issue 5) ------------------------------------------------------------------
    async def get_pop_policy(self, address: str) -> PopAccountPolicy | None: ...
    async def set_pop_policy(
        self,
        address: str,
        *,
        enabled: bool,
        login_delay: int,
        expire_days: int | None,
        apop_secret: str | None,
    ) -> PopAccountPolicy: ...
    async def pop_bounds(self) -> PopBounds:
        """The smallest EXPIRE and largest LOGIN-DELAY of any account, for CAPA before
        login (RFC 2449 §6.5, §6.7)."""
        ...

    async def pop_open(self, account_id: int, now: dt.datetime) -> PopMaildrop | PopLoginTooSoon:
        """Enforce and record LOGIN-DELAY, apply the expire policy, snapshot INBOX: one
        transaction."""
        ...

    async def pop_update(
        self, mailbox_id: int, deleted: UidSet, retrieved: UidSet, now: dt.datetime
    ) -> list[int]:
        """RFC 1939 UPDATE in one transaction: remove exactly `deleted` whatever their flags
        (publishing `Expunged`), stamp the first RETR time of `retrieved`; the UIDs removed."""
        ...

    # -- aliases -------------------------------------------------------------------------
    async def add_alias(self, address: str, targets: Sequence[str]) -> Alias: ...
    async def remove_alias(self, address: str) -> None: ...
    async def get_alias(self, address: str) -> Alias | None: ...
    async def list_aliases(self) -> list[Alias]: ...

    # -- mailboxes -----------------------------------------------------------------------
    async def create_mailbox(
        self, account_id: int, name: str, special_use: SpecialUse | None = None
    ) -> Mailbox: ...
    async def rename_mailbox(self, account_id: int, old: str, new: str) -> Mailbox: ...
    async def delete_mailbox(self, account_id: int, name: str) -> None: ...
    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    async def list_mailboxes(
        self,
        account_id: int,
        reference: str = "",
        pattern: str = "*",
        subscribed_only: bool = False,
    ) -> list[Mailbox]: ...
    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None: ...
    async def list_subscriptions(self, account_id: int) -> list[str]: ...
    async def status(self, mailbox_id: int) -> MailboxStatus: ...
    async def claim_recent(self, mailbox_id: int, claim: bool) -> int:
        """IMAP \\Recent (RFC 3501 §2.3.2): UIDs above the returned one are recent to the
        caller; with `claim`, they stop being recent to everyone after it."""
        ...

    # -- messages ------------------------------------------------------------------------
    async def append(
        self,
        raw: bytes,
        targets: Sequence[AppendTarget],
        internaldate: dt.datetime | None = None,
    ) -> list[Appended]: ...
    async def uids(self, mailbox_id: int) -> array[int]: ...
    async def fetch(
        self, mailbox_id: int, uids: UidSet, what: FetchWhat = FETCH_BASIC
    ) -> list[Entry]: ...
    async def read_message(self, mailbox_id: int, uid: int) -> bytes | None: ...
    async def read_messages(
        self, mailbox_id: int, uids: UidSet, header_only: bool = False
    ) -> dict[int, bytes]:
        """Several messages in one round trip (uid → prefix + content; expunged ones are
        missing).  `header_only`: only up to the end of the top-level header."""
        ...

    async def store_flags(
        self,
        mailbox_id: int,
        uids: UidSet,
        mode: StoreMode,
        flags: Flag,
        keywords: frozenset[str] = frozenset(),
        unchanged_since: int | None = None,
    ) -> StoreResult: ...
    async def copy(self, mailbox_id: int, uids: UidSet, target_id: int) -> CopyResult: ...
    async def move(self, mailbox_id: int, uids: UidSet, target_id: int) -> CopyResult: ...
    async def expunge(self, mailbox_id: int, uids: UidSet | None = None) -> list[int]: ...
    async def search(self, mailbox_id: int, key: SearchKey) -> list[int]: ...
    async def sort_fields(self, mailbox_id: int, uids: UidSet) -> list[SortFields]: ...
    async def changed_since(self, mailbox_id: int, modseq: int) -> list[Entry]: ...
    async def vanished_since(self, mailbox_id: int, modseq: int) -> list[int]: ...

    # -- maintenance ---------------------------------------------------------------------
    async def counts(self) -> dict[str, int]: ...
    async def sweep(self, min_age_seconds: float = 3600.0) -> int: ...
