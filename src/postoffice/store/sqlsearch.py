"""IMAP SEARCH keys (store/search.py) compiled into one SQLite condition (DESIGN §3).

The store runs the condition as

    SELECT e.uid FROM entries e JOIN messages m ON m.id = e.message_id
    WHERE e.mailbox_id = ? AND (<where>) ORDER BY e.uid

Every user value travels as a bound parameter.  Each compiled condition is 0 or 1, never
NULL, so that NOT keeps its two-valued meaning.

Case-insensitive matching means per-code-point simple case folding, which is what the FTS5
trigram tokenizer does to the indexed text: the functions registered here fold the same way,
so a search gives the same answer whether it went through the index or a scan.  (SQLite's
fold tables are from an older Unicode: letters added since, e.g. Cherokee small letters,
fold in the scan path only.)

The text index (`index_message_text`) keeps each message's header and body text folded and
zlib-compressed in its `messages` row, and indexes it in an external-content FTS5 table with
`detail=none`: trigrams without positions, about the size of the text itself, instead of
five times it.  Substring queries are GLOBs over the folded text: FTS5 narrows them down by
trigram and checks the candidates against the (decompressed) text, so the answer is exact.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import hashlib
import itertools
import sqlite3
import zlib
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, assert_never

from postoffice.store.model import UidSet
from postoffice.store.search import (
    Age,
    All,
    And,
    Body,
    DateOp,
    HasFlag,
    HasKeyword,
    Header,
    InternalDate,
    ModSeq,
    Not,
    Or,
    SearchKey,
    SentDate,
    Size,
    Text,
    Uids,
)

_TRUE: Final = "1"
_FALSE: Final = "0"
_DAY: Final = 86400
_EPOCH: Final = dt.date(1970, 1, 1)

# Header fields the messages row keeps decoded; any other field is looked up in the header text.
_HEADER_COLUMNS: Final = MappingProxyType(
    {
        "from": "m.from_addr",
        "to": "m.to_addr",
        "cc": "m.cc_addr",
        "bcc": "m.bcc_addr",
        "subject": "m.subject",
        "message-id": "m.message_id",
        "in-reply-to": "m.in_reply_to",
        "references": "m.refs",
    }
)

# Up to this many UID ranges are written out as BETWEENs, which SQLite can answer from the
# primary key; longer sets go to uid_in() so the SQL stays the same size.
_INLINE_RANGES: Final = 8
# Parsed UID sets each connection keeps for uid_in().
_UID_SET_CACHE: Final = 16

_FTS_GLOB: Final = "m.id IN (SELECT rowid FROM message_text WHERE {column} GLOB ?)"
_GLOB_SPECIAL: Final = str.maketrans({"*": "[*]", "?": "[?]", "[": "[[]"})
_LOCAL_TIME: Final = "(e.internaldate + e.tz_offset * 60)"


@dataclass(frozen=True, slots=True)
class CompiledSearch:
    where: str
    params: tuple[object, ...]


def compile_search(key: SearchKey, now: float) -> CompiledSearch:
    """`now` (unix time) anchors RFC 5032 OLDER/YOUNGER."""
    compiler = _Compiler(now)
    where = compiler.sql(key)
    return CompiledSearch(where, tuple(compiler.params))


def register_functions(conn: sqlite3.Connection) -> None:
    """Add the SQL functions compiled searches and the text index use; once per connection."""
    functions = _Functions()
    conn.create_function("inflate_text", 1, _inflate_text, deterministic=True)
    conn.create_function("text_contains", 2, functions.text_contains, deterministic=True)
    conn.create_function("header_contains", 3, functions.header_contains, deterministic=True)
    # Not deterministic: it answers NULL when its set is not (or no longer) cached.
    conn.create_function("uid_in", 2, functions.uid_in)
    conn.create_function("uid_in_load", 3, functions.uid_in_load, deterministic=True)


class _Compiler:
    def __init__(self, now: float) -> None:
        self.now = now
        self.params: list[object] = []

    def sql(self, key: SearchKey) -> str:
        """SQL for `key`; its parameters are appended in the order they appear in the text."""
        match key:
            case All():
                return _TRUE
            case Uids(uids):
                return self._uids(uids)
            case HasFlag(flag, present):
                self.params += [int(flag), int(flag)]
                return "(e.flags & ?) = ?" if present else "(e.flags & ?) != ?"
            case HasKeyword(keyword, present):
                return self._keyword(keyword, present)
            case Header(name, value):
                return self._header(name, value)
            case Body(value):
                return self._text(("body",), value)
            case Text(value):
                return self._text(("headers", "body"), value)
            case InternalDate(op, day):
                return self._internal_date(op, day)
            case SentDate(op, day):
                return self._sent_date(op, day)
            case Size(larger, octets):
                self.params.append(octets)
                return "e.size > ?" if larger else "e.size < ?"
            case ModSeq(at_least):
                # RFC 7162 §3.1.5
                self.params.append(at_least)
                return "e.modseq >= ?"
            case Age(older, seconds):
                # RFC 5032 §3: OLDER n: internal date n or more seconds ago; YOUNGER n: n or less.
                self.params.append(self.now - seconds)
                return "e.internaldate <= ?" if older else "e.internaldate >= ?"
            case Not(inner):
                return f"(NOT {self.sql(inner)})"
            case And():
                parts = [self.sql(k) for k in _operands(key)]
                return _balanced("AND", parts) if parts else _TRUE
            case Or():
                return _balanced("OR", [self.sql(k) for k in _operands(key)])
            case _:
                assert_never(key)

    def _uids(self, uids: UidSet) -> str:
        ranges = _merge(uids.ranges)
        if not ranges:
            return _FALSE
        if len(ranges) <= _INLINE_RANGES:
            terms = []
            for low, high in ranges:
                self.params += [low, high]
                terms.append("e.uid BETWEEN ? AND ?")
            return _balanced("OR", terms)
        # uid_in() gets a short digest per row, not the whole set: the set goes to
        # uid_in_load(), which coalesce() evaluates only when uid_in() lacks it.
        spec = ",".join(f"{low}:{high}" for low, high in ranges)
        digest = hashlib.blake2b(spec.encode(), digest_size=16).hexdigest()
        self.params += [ranges[0][0], ranges[-1][1], digest, digest, spec]
        return "(e.uid BETWEEN ? AND ? AND coalesce(uid_in(e.uid, ?), uid_in_load(e.uid, ?, ?)))"

    def _keyword(self, keyword: str, present: bool) -> str:
        if not keyword or " " in keyword:
            # Keywords are atoms; one with a space could only match across two stored ones.
            return _FALSE if present else _TRUE
        # SQLite's lower() folds ASCII only, and so does bytes.lower(); keywords are ASCII
        # atoms, and instr() unlike LIKE gives "_" and "%" no meaning.
        self.params.append(f" {keyword.encode().lower().decode()} ")
        found = "instr(' ' || lower(coalesce(e.keywords, '')) || ' ', ?) > 0"
        return found if present else f"NOT {found}"

    def _header(self, name: str, value: str) -> str:
        name = name.lower()
        column = _HEADER_COLUMNS.get(name)
        if column is not None and value:
            self.params.append(value)
            return f"text_contains({column}, ?)"
        # RFC 9051 §6.4.4: HEADER with "" asks whether the field is there at all, which the
        # columns cannot tell (absent and empty look the same), so that reads the header text.
        narrow = _indexable(name) and "\x00" not in value
        if narrow:
            # The index narrows down the messages; header_contains() then checks the field.
            self.params.append(f"*{_glob_literal(name)}:*{_glob_literal(value)}*")
        self.params += [name, value]
        check = f"header_contains({_stored('headers')}, ?, ?)"
        return f"({_FTS_GLOB.format(column='headers')} AND {check})" if narrow else check

    def _text(self, columns: tuple[str, ...], value: str) -> str:
        if not value:
            # RFC 9051 §6.4.4: the empty string is a substring of any text.
            return _TRUE
        if _indexable(value):
            pattern = f"*{_glob_literal(value)}*"
            self.params += [pattern] * len(columns)
            return _balanced("OR", [_FTS_GLOB.format(column=column) for column in columns])
        # Trigrams cannot find one or two characters: read the text instead.
        self.params += [value] * len(columns)
        return _balanced("OR", [f"text_contains({_stored(column)}, ?)" for column in columns])

    def _internal_date(self, op: DateOp, day: dt.date) -> str:
        # RFC 9051 §6.4.4: BEFORE/ON/SINCE compare the internal date "disregarding time and
        # timezone", i.e. its day in the entry's own zone.  Comparing local seconds with the
        # day's bounds instead of dividing keeps floor semantics before 1970 too.
        start = (day - _EPOCH).days * _DAY
        match op:
            case "before":
                self.params.append(start)
                return f"{_LOCAL_TIME} < ?"
            case "on":
                self.params += [start, start + _DAY]
                return f"({_LOCAL_TIME} >= ? AND {_LOCAL_TIME} < ?)"
            case "since":
                self.params.append(start)
                return f"{_LOCAL_TIME} >= ?"
            case _:
                assert_never(op)

    def _sent_date(self, op: DateOp, day: dt.date) -> str:
        # RFC 9051 §6.4.4: SENTBEFORE/SENTON/SENTSINCE take the Date: field's day, in its own
        # zone.  Without a usable Date: field the internal date stands in, as Dovecot does.
        internal = self._internal_date(op, day)
        self.params.append((day - _EPOCH).days)
        sent = {"before": "m.sent_day < ?", "on": "m.sent_day = ?", "since": "m.sent_day >= ?"}
        return f"(CASE WHEN m.sent_day IS NULL THEN {internal} ELSE {sent[op]} END)"


def _operands(key: And | Or) -> list[SearchKey]:
    """The operands of a chain of the same operator (IMAP nests OR pairwise), left to right.

    Walked with a stack, since a client may send a long OR chain.
    """
    kind = type(key)
    found: list[SearchKey] = []
    stack: list[SearchKey] = [key]
    while stack:
        current = stack.pop()
        if isinstance(current, And) and kind is And:
            stack.extend(reversed(current.keys))
        elif isinstance(current, Or) and kind is Or:
            stack += [current.right, current.left]
        else:
            found.append(current)
    return found


def _balanced(op: str, parts: list[str]) -> str:
    # SQLite refuses expressions deeper than 1000; a balanced tree keeps long chains shallow.
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return f"({_balanced(op, parts[:middle])} {op} {_balanced(op, parts[middle:])})"


def _merge(ranges: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-adjacent closed ranges covering the same UIDs.

    A range with its low end above its high end holds nothing, as in UidSet.__contains__.
    """
    merged: list[tuple[int, int]] = []
    for low, high in sorted(r for r in ranges if r[0] <= r[1]):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def _stored(column: str) -> str:
    # NULL when the message has no indexed text; the functions take that as no text.
    return f"(SELECT {column} FROM message_search WHERE id = m.id)"


def _indexable(value: str) -> bool:
    # Trigrams need three characters; a bound string with NUL ends there in SQLite's C code.
    return len(value) >= 3 and "\x00" not in value


def _glob_literal(value: str) -> str:
    """A GLOB pattern piece matching `value` literally, folded as the stored text is."""
    return fold(value).translate(_GLOB_SPECIAL)


@dataclass(frozen=True, slots=True)
class SearchText:
    """A message's text as the index keeps it: folded, and compressed for its row."""

    headers: str
    body: str
    headers_z: bytes
    body_z: bytes


def fold_message_text(header_text: str, body_text: str) -> SearchText:
    """The CPU part of indexing (folding, compression): done before the write transaction,
    off the single writer thread, so a large body does not hold up everyone's commits."""
    # NUL would cut the text short in SQLite's C string handling; it is never searchable.
    headers = fold(header_text.replace("\x00", " "))
    body = fold(body_text.replace("\x00", " "))
    return SearchText(
        headers, body, zlib.compress(headers.encode(), 6), zlib.compress(body.encode(), 6)
    )


def index_message_text(conn: sqlite3.Connection, message_id: int, text: SearchText) -> None:
    """Keep a new message's text for search: in its row, and in the trigram index."""
    conn.execute(
        "UPDATE messages SET search_headers = ?, search_body = ? WHERE id = ?",
        (text.headers_z, text.body_z, message_id),
    )
    conn.execute(
        "INSERT INTO message_text(rowid, headers, body) VALUES (?, ?, ?)",
        (message_id, text.headers, text.body),
    )


def unindex_message_text(conn: sqlite3.Connection, message_id: int) -> None:
    """Take a message out of the index; before its row goes (the index reads it to delete)."""
    # External-content FTS5 deletes by the values it indexed, read back through the view.
    conn.execute(
        "INSERT INTO message_text(message_text, rowid, headers, body) "
        "SELECT 'delete', id, headers, body FROM message_search "
        "WHERE id = ? AND headers IS NOT NULL",
        (message_id,),
    )


def _inflate_text(data: bytes | None) -> str | None:
    return None if data is None else zlib.decompress(data).decode()


def fold(text: str) -> str:
    """Per-code-point simple case folding, as the trigram tokenizer folds."""
    return text.lower() if text.isascii() else text.translate(_fold_table())


class _Functions:
    """The SQL functions of one connection, with their fold table and UID set cache."""

    def __init__(self) -> None:
        self._uid_sets: dict[str, tuple[list[int], list[int]]] = {}

    fold = staticmethod(fold)

    def text_contains(self, haystack: str | None, needle: str) -> bool:
        return self.fold(needle) in self.fold(haystack or "")

    def header_contains(self, headers: str | None, name: str, value: str) -> bool:
        """Whether a field `name` of the header text contains `value` ("": exists at all).

        The store writes the header text one unfolded "Name: value" line per field.
        """
        name = self.fold(name)
        needle = self.fold(value)
        for line in (headers or "").split("\n"):
            field, colon, body = line.partition(":")
            if colon and self.fold(field.strip()) == name and needle in self.fold(body.strip()):
                return True
        return False

    def uid_in(self, uid: int, digest: str) -> bool | None:
        cached = self._uid_sets.get(digest)
        return None if cached is None else _within(uid, cached)

    def uid_in_load(self, uid: int, digest: str, spec: str) -> bool:
        lows: list[int] = []
        highs: list[int] = []
        for item in spec.split(","):
            low, _, high = item.partition(":")
            lows.append(int(low))
            highs.append(int(high))
        if len(self._uid_sets) >= _UID_SET_CACHE:
            del self._uid_sets[next(iter(self._uid_sets))]
        self._uid_sets[digest] = (lows, highs)
        return _within(uid, (lows, highs))


def _within(uid: int, ranges: tuple[list[int], list[int]]) -> bool:
    lows, highs = ranges
    i = bisect.bisect_right(lows, uid) - 1
    return i >= 0 and uid <= highs[i]


@functools.cache
def _fold_table() -> dict[int, int]:
    """Simple case folding as str.translate() table, for the code points SQLite folds.

    FTS5 folds 1:1 (ẞ to ß, not to "ss") and only in the BMP and Deseret; casefold() is
    Unicode's full folding, so where it expands the 1:1 lowercase stands in, as it does in
    Unicode's own simple folding.
    """
    table: dict[int, int] = {}
    for point in itertools.chain(range(0xD800), range(0xE000, 0x10000), range(0x10400, 0x10428)):
        char = chr(point)
        folded = char.casefold()
        if len(folded) != 1:
            folded = char.lower()
        if len(folded) == 1 and folded != char:
            table[point] = ord(folded)
    return table
