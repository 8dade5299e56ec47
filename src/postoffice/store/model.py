"""The typed values the store hands out and takes in (DESIGN §3).

Front-ends see only these types; rows, SQL and paths stay inside the backends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntFlag, StrEnum
from typing import Literal


class Flag(IntFlag):
    """IMAP system flags kept as a bitmask (\\Recent is per session, not stored)."""

    SEEN = 1
    ANSWERED = 2
    FLAGGED = 4
    DELETED = 8
    DRAFT = 16


NO_FLAGS = Flag(0)

FLAG_NAMES: dict[Flag, str] = {
    Flag.SEEN: "\\Seen",
    Flag.ANSWERED: "\\Answered",
    Flag.FLAGGED: "\\Flagged",
    Flag.DELETED: "\\Deleted",
    Flag.DRAFT: "\\Draft",
}


class SpecialUse(StrEnum):
    """RFC 6154 special-use attributes."""

    ALL = "\\All"
    ARCHIVE = "\\Archive"
    DRAFTS = "\\Drafts"
    FLAGGED = "\\Flagged"
    JUNK = "\\Junk"
    SENT = "\\Sent"
    TRASH = "\\Trash"


# Created with every account (DESIGN §3).
DEFAULT_MAILBOXES: tuple[tuple[str, SpecialUse | None], ...] = (
    ("INBOX", None),
    ("Drafts", SpecialUse.DRAFTS),
    ("Sent", SpecialUse.SENT),
    ("Trash", SpecialUse.TRASH),
    ("Junk", SpecialUse.JUNK),
    ("Archive", SpecialUse.ARCHIVE),
)

HIERARCHY_SEPARATOR = "/"


# The SMTP envelope: what delivery routes and the outbound queue keeps.
@dataclass(frozen=True, slots=True)
class Recipient:
    """One RCPT TO, with its RFC 3461 DSN parameters."""

    address: str  # as given, without <>; local part case kept, domain lower-cased
    notify: tuple[str, ...] | None = None  # ("SUCCESS", "FAILURE", "DELAY") or ("NEVER",)
    orcpt: str | None = None  # "rfc822;user@example.org" as given (xtext-decoded)


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str  # "" for the null reverse-path <>
    recipients: tuple[Recipient, ...]
    body: Literal["7BIT", "8BITMIME", "BINARYMIME"] | None = None
    smtputf8: bool = False
    ret: Literal["FULL", "HDRS"] | None = None  # RFC 3461 §4.3
    envid: str | None = None  # RFC 3461 §4.4, xtext-decoded


class StoreError(Exception):
    """Base of the errors a store operation reports to its caller (never a crash)."""


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class InvalidName(StoreError):
    pass


class QuotaExceeded(StoreError):
    def __init__(self, address: str, what: str) -> None:
        super().__init__(f"quota exceeded for {address} ({what})")
        self.address = address
        self.what = what


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str
    quota_bytes: int | None
    quota_messages: int | None
    used_bytes: int
    used_messages: int
    # Read with the account, so delivery's filters know without a query of their own
    # whether there is anything to do: most accounts have no script and an untrained
    # classifier.
    sieve_active: bool = False
    junk_spam: int = 0  # messages its junk classifier was trained on, per class
    junk_ham: int = 0


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the auth core needs to check a login; kept apart from Account on purpose."""

    account_id: int
    address: str
    password_hash: str
    scram_sha256: str | None  # scramp's stored form: "salt,stored_key,server_key,iterations"


@dataclass(frozen=True, slots=True)
class Alias:
    address: str  # "user@domain", or "@domain" for a catch-all
    targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str  # Unicode, "/"-separated; the IMAP layer does modified UTF-7
    special_use: SpecialUse | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    mailbox: Mailbox
    messages: int
    unseen: int
    deleted: int
    size: int  # octets, RFC 8438 STATUS=SIZE


@dataclass(frozen=True, slots=True)
class UidSet:
    """Closed UID ranges, already resolved ("*" turned into a number by the caller)."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, uids: Sequence[int]) -> UidSet:
        ranges: list[tuple[int, int]] = []
        for uid in sorted(set(uids)):
            if ranges and ranges[-1][1] == uid - 1:
                ranges[-1] = (ranges[-1][0], uid)
            else:
                ranges.append((uid, uid))
        return cls(tuple(ranges))

    @classmethod
    def span(cls, low: int, high: int) -> UidSet:
        low, high = min(low, high), max(low, high)
        return cls(((low, high),))

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and any(lo <= uid <= hi for lo, hi in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self.ranges:
            yield from range(lo, hi + 1)


@dataclass(frozen=True, slots=True)
class Entry:
    """One message as it stands in one mailbox.

    `size` counts the per-entry prefix plus the shared blob; cached IMAP forms are
    filled only when the fetch asked for them.
    """

    uid: int
    modseq: int
    flags: Flag
    keywords: frozenset[str]
    internaldate: dt.datetime  # timezone-aware, as given at append
    size: int
    message_id: int  # the shared message (blob) row
    prefix_len: int
    envelope: bytes | None = None  # IMAP wire form "(...)"
    body: bytes | None = None  # BODY (non-extensible) wire form
    bodystructure: bytes | None = None  # BODYSTRUCTURE wire form with extension data
    parts: object | None = None  # postoffice.store.mime.Part tree (offsets in the blob)


@dataclass(frozen=True, slots=True)
class FetchWhat:
    envelope: bool = False
    bodystructure: bool = False  # also fills `body`
    parts: bool = False


@dataclass(frozen=True, slots=True)
class AppendTarget:
    """Where one copy of an appended message goes."""

    mailbox_id: int
    flags: Flag = NO_FLAGS
    keywords: frozenset[str] = frozenset()
    prefix: bytes = b""  # per-recipient header lines (Delivered-To, ...), CRLF-terminated


@dataclass(frozen=True, slots=True)
class Appended:
    mailbox_id: int
    uidvalidity: int
    uid: int
    modseq: int


class StoreMode(StrEnum):
    """How store_flags combines the given flags with the current ones (IMAP STORE)."""

    REPLACE = "replace"
    ADD = "add"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    uid: int
    modseq: int
    flags: Flag
    keywords: frozenset[str]


@dataclass(frozen=True, slots=True)
class StoreResult:
    updated: list[FlagUpdate]
    failed_unchanged_since: list[int] = field(default_factory=list)  # RFC 7162 MODIFIED


@dataclass(frozen=True, slots=True)
class CopyResult:
    uidvalidity: int  # of the destination, for COPYUID (RFC 4315)
    pairs: list[tuple[int, int]]  # (source uid, destination uid)


FETCH_BASIC = FetchWhat()  # uid, modseq, flags, dates and sizes only


@dataclass(frozen=True, slots=True)
class SortFields:
    """What SORT (RFC 5256 §3, RFC 5957) and THREAD (RFC 5256 §2) read of one message."""

    uid: int
    internaldate: dt.datetime
    sent_date: dt.datetime | None  # Date: header in UTC; None when absent or unparsable
    size: int
    subject: str  # decoded; THREAD=REFERENCES tells replies from it
    base_subject: str  # RFC 5256 §2.1
    sort_from: str  # RFC 5256 §3: addr-mailbox of the first address
    sort_to: str
    sort_cc: str
    display_from: str  # RFC 5957
    display_to: str
    message_id: str  # "<...>", "" when none
    in_reply_to: str  # first msg-id of In-Reply-To, "" when none
    references: tuple[str, ...]


# -- POP3 (issue 5) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PopAccountPolicy:
    """An account's POP3 policy, set by the admin (`postoffice user pop`)."""

    account_id: int
    address: str
    enabled: bool = True
    login_delay: int = 0  # RFC 2449 §6.5: seconds between logins; 0 for none
    expire_days: int | None = None  # RFC 2449 §6.7: None is NEVER
    # Kept retrievable because APOP (RFC 1939 §7) needs the shared secret itself: set only
    # for accounts an admin enables APOP for.
    apop_secret: str | None = None


@dataclass(frozen=True, slots=True)
class PopBounds:
    """What CAPA announces before login (RFC 2449 §6.5, §6.7): the strictest policy in use."""

    min_expire_days: int | None  # None: every account is NEVER
    max_login_delay: int
    per_user: bool  # accounts differ, so the announcement ends in USER


@dataclass(frozen=True, slots=True)
class PopMaildrop:
    """The snapshot a POP3 session works on, taken when it opens the maildrop (INBOX)."""

    mailbox_id: int
    uidvalidity: int
    messages: tuple[tuple[int, int], ...]  # (uid, size), ascending by UID
    expired: int  # messages the expire policy removed just before the snapshot


@dataclass(frozen=True, slots=True)
class PopLoginTooSoon:
    """The account's LOGIN-DELAY has not passed since its last POP3 login."""

    retry_after: int  # seconds
