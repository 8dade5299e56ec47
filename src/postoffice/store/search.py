"""The IMAP SEARCH key tree as the store understands it (RFC 9051 §6.4.4, RFC 3501 §6.4.4).

The IMAP parser builds these; session-relative keys (sequence sets, \\Recent, NEW, $ of
SEARCHRES) are turned into `Uids` by the session before the store sees them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from postoffice.store.model import Flag, UidSet

DateOp = Literal["before", "on", "since"]


@dataclass(frozen=True, slots=True)
class All:
    pass


@dataclass(frozen=True, slots=True)
class Uids:
    uids: UidSet


@dataclass(frozen=True, slots=True)
class HasFlag:
    flag: Flag
    present: bool = True


@dataclass(frozen=True, slots=True)
class HasKeyword:
    keyword: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class Header:
    """Substring of a header field, case-insensitive; value "" matches any message having it."""

    name: str  # lower case: "from", "subject", "x-anything"
    value: str


@dataclass(frozen=True, slots=True)
class Body:
    value: str


@dataclass(frozen=True, slots=True)
class Text:
    """Header or body contains the value."""

    value: str


@dataclass(frozen=True, slots=True)
class InternalDate:
    op: DateOp
    day: dt.date


@dataclass(frozen=True, slots=True)
class SentDate:
    op: DateOp
    day: dt.date


@dataclass(frozen=True, slots=True)
class Size:
    larger: bool  # False: SMALLER
    octets: int


@dataclass(frozen=True, slots=True)
class ModSeq:
    """RFC 7162 MODSEQ: entries whose modseq is >= the value."""

    at_least: int


@dataclass(frozen=True, slots=True)
class Age:
    """RFC 5032 WITHIN: OLDER (older=True) or YOUNGER than `seconds`, by internal date."""

    older: bool
    seconds: int


@dataclass(frozen=True, slots=True)
class Not:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class And:
    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class Or:
    left: SearchKey
    right: SearchKey


SearchKey = (
    All
    | Uids
    | HasFlag
    | HasKeyword
    | Header
    | Body
    | Text
    | InternalDate
    | SentDate
    | Size
    | ModSeq
    | Age
    | Not
    | And
    | Or
)
