"""Typed IMAP commands: what `imap.parser` produces and `imap.session` executes.

Everything here is plain data.  Mailbox names are the strings as the client sent them
(still modified UTF-7 unless UTF8=ACCEPT is on); the session decodes them, because whether
to decode depends on session state.  Flags are kept as sent ("\\Seen", "$Forwarded"); the
session maps them to `store.model.Flag` and keywords.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from postoffice.store import search as s
from postoffice.store.model import StoreMode

# -- sets ------------------------------------------------------------------------------------

STAR = 0  # "*" in a sequence set: the largest number (or UID) in use


@dataclass(frozen=True, slots=True)
class SeqSet:
    """A sequence set as sent: ranges of numbers where STAR (0) stands for "*".

    `saved` is RFC 5182's "$": the result of the last SEARCH ... RETURN (SAVE).
    Ranges are as written ("5:3" stays (5, 3)); the session orders and resolves them.
    """

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False


# -- FETCH -----------------------------------------------------------------------------------

SectionText = Literal["", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"]


@dataclass(frozen=True, slots=True)
class Section:
    """A BODY[...] / BINARY[...] section spec (RFC 9051 §6.4.5)."""

    part: tuple[int, ...] = ()  # () for the whole message; (1, 2) for "1.2"
    text: SectionText = ""
    fields: tuple[str, ...] = ()  # HEADER.FIELDS(.NOT) names, upper-cased as sent

    def render(self) -> str:
        """The section spec as it goes back in the FETCH response: "1.2.HEADER.FIELDS (A B)"."""
        items = [str(n) for n in self.part]
        if self.text:
            items.append(self.text)
        spec = ".".join(items)
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        return spec


@dataclass(frozen=True, slots=True)
class FetchAttr:
    """A simple FETCH item: UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODY BODYSTRUCTURE
    MODSEQ RFC822 RFC822.HEADER RFC822.TEXT (macros ALL, FAST, FULL arrive expanded)."""

    name: str  # upper case


@dataclass(frozen=True, slots=True)
class FetchSection:
    """BODY[...], BODY.PEEK[...], BINARY[...], BINARY.PEEK[...] with an optional <a.b>."""

    section: Section
    peek: bool = False
    binary: bool = False
    partial: tuple[int, int] | None = None  # (offset, length)


@dataclass(frozen=True, slots=True)
class FetchBinarySize:
    """BINARY.SIZE[part] (RFC 3516)."""

    part: tuple[int, ...]


FetchItem = FetchAttr | FetchSection | FetchBinarySize


# -- SEARCH ----------------------------------------------------------------------------------
# The store's keys (store.search) plus what only the session can resolve: sequence sets,
# \Recent, and the combinators over both.


@dataclass(frozen=True, slots=True)
class InSet:
    """A sequence-set key ("1:4", "$") or UID set key ("UID 5:*")."""

    set: SeqSet
    uid: bool


@dataclass(frozen=True, slots=True)
class Recent:
    """RECENT (present) / OLD (not present); NEW arrives as And(Recent, Not(SEEN))."""

    present: bool = True


@dataclass(frozen=True, slots=True)
class SNot:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class SAnd:
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class SOr:
    left: SearchKey
    right: SearchKey


SearchKey = (
    s.All
    | s.HasFlag
    | s.HasKeyword
    | s.Header
    | s.Body
    | s.Text
    | s.InternalDate
    | s.SentDate
    | s.Size
    | s.ModSeq
    | s.Age
    | InSet
    | Recent
    | SNot
    | SAnd
    | SOr
)

# RFC 4731 / 9051 RETURN options (MIN MAX ALL COUNT SAVE), RFC 5267 PARTIAL kept as text.
SearchReturn = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SortCriterion:
    key: Literal[
        "ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"
    ]
    reverse: bool = False


# -- commands --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capability:
    tag: str


@dataclass(frozen=True, slots=True)
class Noop:
    tag: str


@dataclass(frozen=True, slots=True)
class Logout:
    tag: str


@dataclass(frozen=True, slots=True)
class StartTls:
    tag: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    tag: str
    mechanism: str  # upper case
    initial: bytes | None = None  # RFC 4959 SASL-IR, base64-decoded; b"" for "="


@dataclass(frozen=True, slots=True)
class Login:
    tag: str
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class Enable:
    tag: str
    capabilities: tuple[str, ...]  # upper case


@dataclass(frozen=True, slots=True)
class Id:
    tag: str
    params: tuple[tuple[str, str | None], ...] | None  # None for "ID NIL"


@dataclass(frozen=True, slots=True)
class Qresync:
    """SELECT (QRESYNC (uidvalidity modseq [known-uids [(seq-match uid-match)]]))."""

    uidvalidity: int
    modseq: int
    known_uids: SeqSet | None = None
    seq_match: tuple[SeqSet, SeqSet] | None = None


@dataclass(frozen=True, slots=True)
class Select:
    tag: str
    mailbox: str
    readonly: bool = False  # EXAMINE
    condstore: bool = False
    qresync: Qresync | None = None


@dataclass(frozen=True, slots=True)
class Create:
    tag: str
    mailbox: str
    special_use: tuple[str, ...] = ()  # RFC 6154 CREATE (USE (\Sent))


@dataclass(frozen=True, slots=True)
class Delete:
    tag: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename:
    tag: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    tag: str
    mailbox: str
    subscribe: bool = True  # False: UNSUBSCRIBE


@dataclass(frozen=True, slots=True)
class ListMailboxes:
    """LIST (RFC 9051 §6.3.9, LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819) and LSUB."""

    tag: str
    reference: str
    patterns: tuple[str, ...]
    lsub: bool = False
    select_options: frozenset[str] = frozenset()  # SUBSCRIBED REMOTE RECURSIVEMATCH SPECIAL-USE
    return_options: frozenset[str] = frozenset()  # SUBSCRIBED CHILDREN SPECIAL-USE (STATUS aside)
    return_status: tuple[str, ...] | None = None  # RETURN (STATUS (MESSAGES ...))
    extended: bool = False  # the client used the extended syntax (selection or return options)


@dataclass(frozen=True, slots=True)
class Namespace:
    tag: str


@dataclass(frozen=True, slots=True)
class Status:
    tag: str
    mailbox: str
    # Upper case: MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE RECENT HIGHESTMODSEQ ...
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AppendMessage:
    flags: tuple[str, ...]
    date: dt.datetime | None
    data: bytes
    binary: bool = False  # sent as literal8 ~{n} (RFC 3516)


@dataclass(frozen=True, slots=True)
class Append:
    tag: str
    mailbox: str
    messages: tuple[AppendMessage, ...]  # several with MULTIAPPEND (RFC 3502)


@dataclass(frozen=True, slots=True)
class Idle:
    tag: str


@dataclass(frozen=True, slots=True)
class Check:
    tag: str


@dataclass(frozen=True, slots=True)
class Close:
    tag: str


@dataclass(frozen=True, slots=True)
class Unselect:
    tag: str


@dataclass(frozen=True, slots=True)
class Expunge:
    tag: str
    uids: SeqSet | None = None  # UID EXPUNGE (RFC 4315)


@dataclass(frozen=True, slots=True)
class Search:
    tag: str
    uid: bool
    key: SearchKey
    charset: str | None = None
    returns: SearchReturn | None = None  # None: plain SEARCH; () : "RETURN ()" i.e. ESEARCH ALL


@dataclass(frozen=True, slots=True)
class Fetch:
    tag: str
    uid: bool
    set: SeqSet
    items: tuple[FetchItem, ...]
    changed_since: int | None = None  # RFC 7162 CHANGEDSINCE
    vanished: bool = False  # RFC 7162 VANISHED (UID FETCH only)


@dataclass(frozen=True, slots=True)
class StoreFlags:
    tag: str
    uid: bool
    set: SeqSet
    mode: StoreMode
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None  # RFC 7162 UNCHANGEDSINCE


@dataclass(frozen=True, slots=True)
class Copy:
    tag: str
    uid: bool
    set: SeqSet
    mailbox: str
    move: bool = False  # MOVE (RFC 6851)


@dataclass(frozen=True, slots=True)
class Sort:
    tag: str
    uid: bool
    criteria: tuple[SortCriterion, ...]
    charset: str
    key: SearchKey
    returns: SearchReturn | None = None  # RFC 5267 ESORT


@dataclass(frozen=True, slots=True)
class Thread:
    tag: str
    uid: bool
    algorithm: Literal["ORDEREDSUBJECT", "REFERENCES"]
    charset: str
    key: SearchKey


@dataclass(frozen=True, slots=True)
class GetQuota:
    tag: str
    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot:
    tag: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class SetQuota:
    tag: str
    root: str
    limits: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Compress:
    tag: str
    mechanism: str  # upper case; only DEFLATE is offered


Command = (
    Capability
    | Noop
    | Logout
    | StartTls
    | Authenticate
    | Login
    | Enable
    | Id
    | Select
    | Create
    | Delete
    | Rename
    | Subscribe
    | ListMailboxes
    | Namespace
    | Status
    | Append
    | Idle
    | Check
    | Close
    | Unselect
    | Expunge
    | Search
    | Fetch
    | StoreFlags
    | Copy
    | Sort
    | Thread
    | GetQuota
    | GetQuotaRoot
    | SetQuota
    | Compress
)
