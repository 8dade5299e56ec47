"""IMAP command lines and literals → typed commands (`imap.commands`): pure, no I/O.

`CommandAssembler` collects the lines and literals of one command as the session reads them
(telling it after each line whether a literal follows and how big it is, so that oversized
literals are refused before a "+" or a byte of them is read), then `finish()` parses the
whole command against RFC 9051 §9 / RFC 3501 §9 and the extensions we offer.

The scanner is hand-written over bytes: IMAP is not a token language (a literal's length
comes from the text before it, astrings and list-mailboxes differ by one character class,
FETCH section specs are a grammar of their own), every FETCH and STORE line passes through
here, and every limit (literal count, nesting depth, number sizes) must be checked where the
input is read.  Compiled regular expressions match whole tokens, never single characters.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, NoReturn, get_args

from postoffice.imap import commands as c
from postoffice.store import search as s
from postoffice.store.model import Flag, StoreMode

MAX_LITERALS: Final = 1000  # literals in one command (MULTIAPPEND, literal-heavy SEARCH)
MAX_DEPTH: Final = 100  # nesting of SEARCH keys: parentheses, NOT and OR
_U32: Final = 2**32 - 1  # RFC 9051 §9 number / nz-number
_U63: Final = 2**63 - 1  # RFC 9051 §9 number64, RFC 7162 mod-sequence-value
_MAX_DIGITS: Final = 20  # more digits cannot fit number64; int() of them is never tried

_SortKey = Literal[
    "ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"
]
_ThreadAlgorithm = Literal["ORDEREDSUBJECT", "REFERENCES"]


class ParseError(Exception):
    """A command that cannot be parsed; the session answers `tag BAD message` (or `* BAD`
    when tag is None) and stays usable."""

    def __init__(self, message: str, tag: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tag = tag
        self.code = code  # RFC 5530 response code: "TOOBIG", "BADCHARSET", "CLIENTBUG"


class LiteralTooLarge(ParseError):
    """The line announced a literal over the limit; nothing of it has been read.

    A synchronizing literal is refused instead of sending "+"; a non-synchronizing one is on
    its way, so the session reads and drops `size` bytes before answering.
    """

    def __init__(self, message: str, tag: str | None, size: int, synchronizing: bool) -> None:
        super().__init__(message, tag, "TOOBIG")
        self.size = size
        self.synchronizing = synchronizing


@dataclass(frozen=True, slots=True)
class LiteralWanted:
    size: int
    synchronizing: bool  # {n}: the session sends "+ ..." first; {n+} (RFC 7888): it does not
    binary: bool  # ~{n} literal8 (RFC 3516)


# -- character classes (RFC 9051 §9) ----------------------------------------------------------
# ATOM-CHAR is any CHAR except atom-specials: ( ) { SP CTL % * DQUOTE \ ]
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_ASTRING_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')  # ASTRING-CHAR adds "]"
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')  # ASTRING-CHAR except "+"
_LIST_MAILBOX = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]+')  # list-char adds % * ]
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_QUOTED_ESCAPE = re.compile(rb'\\(["\\])')
_DIGITS = re.compile(rb"[0-9]+")
_LITERAL = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\Z")  # only ever at the end of a line
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_PARTIAL_RANGE = re.compile(rb"(-?)([0-9]{1,10}):(-?)([0-9]{1,10})")
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")
_DATE_TIME = re.compile(
    r"([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4})"
    r" ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z"
)
_MONTHS: Final = {
    m: i + 1
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}


def parse_date_time(text: str) -> dt.datetime:
    """RFC 9051 §9 date-time without its quotes, "dd-Mon-yyyy hh:mm:ss +zzzz" (day may be
    " d" or "d"), as an aware datetime; ValueError when it is not one."""
    m = _DATE_TIME.match(text)
    if m is None:
        raise ValueError(f"not an IMAP date-time: {text!r}")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    month = _MONTHS.get(mon.upper())
    if month is None or int(zm) > 59:
        raise ValueError(f"not an IMAP date-time: {text!r}")
    offset = dt.timedelta(hours=int(zh), minutes=int(zm))
    zone = dt.timezone(-offset if sign == "-" else offset)  # ValueError beyond ±24h
    return dt.datetime(int(year), month, int(day), int(hh), int(mm), int(ss), tzinfo=zone)


def _parse_date(text: str) -> dt.date:
    m = _DATE.match(text)
    month = _MONTHS.get(m.group(2).upper()) if m else None
    if m is None or month is None:
        raise ValueError(text)
    return dt.date(int(m.group(3)), month, int(m.group(1)))


# -- search key tables (RFC 9051 §6.4.4, RFC 3501 §6.4.4) -------------------------------------

_FLAG_KEYS: Final[dict[bytes, s.HasFlag]] = {
    word: s.HasFlag(flag, present)
    for flag, name in (
        (Flag.ANSWERED, b"ANSWERED"),
        (Flag.DELETED, b"DELETED"),
        (Flag.DRAFT, b"DRAFT"),
        (Flag.FLAGGED, b"FLAGGED"),
        (Flag.SEEN, b"SEEN"),
    )
    for word, present in ((name, True), (b"UN" + name, False))
}
_HEADER_KEYS: Final = {
    b"BCC": "bcc",
    b"CC": "cc",
    b"FROM": "from",
    b"SUBJECT": "subject",
    b"TO": "to",
}
_DATE_OPS: Final[dict[bytes, s.DateOp]] = {b"BEFORE": "before", b"ON": "on", b"SINCE": "since"}
_FIXED_KEYS: Final[dict[bytes, c.SearchKey]] = {
    b"ALL": s.All(),
    b"RECENT": c.Recent(),
    b"OLD": c.Recent(False),
    b"NEW": c.SAnd((c.Recent(), s.HasFlag(Flag.SEEN, False))),
    **_FLAG_KEYS,
}
_CHARSETS: Final = {b"US-ASCII": "US-ASCII", b"UTF-8": "UTF-8"}
_SEARCH_RETURNS: Final = frozenset({b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE"})
_SORT_KEYS: Final[dict[bytes, _SortKey]] = {k.encode(): k for k in get_args(_SortKey)}
_THREAD_ALGORITHMS: Final[dict[bytes, _ThreadAlgorithm]] = {
    k.encode(): k for k in get_args(_ThreadAlgorithm)
}

# -- FETCH -----------------------------------------------------------------------------------
_FETCH_ATTRS: Final = frozenset(
    {
        b"UID",
        b"FLAGS",
        b"INTERNALDATE",
        b"RFC822.SIZE",
        b"ENVELOPE",
        b"BODY",
        b"BODYSTRUCTURE",
        b"MODSEQ",
        b"RFC822",
        b"RFC822.HEADER",
        b"RFC822.TEXT",
    }
)
_FAST: Final = tuple(c.FetchAttr(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE"))
_ALL: Final = (*_FAST, c.FetchAttr("ENVELOPE"))
_FETCH_MACROS: Final[dict[bytes, tuple[c.FetchItem, ...]]] = {
    b"FAST": _FAST,
    b"ALL": _ALL,
    b"FULL": (*_ALL, c.FetchAttr("BODY")),
}
_SECTION_TEXTS: Final[dict[bytes, c.SectionText]] = {
    k.encode(): k for k in get_args(c.SectionText) if k
}

_STATUS_ITEMS: Final = frozenset(
    {
        b"MESSAGES",
        b"UIDNEXT",
        b"UIDVALIDITY",
        b"UNSEEN",
        b"DELETED",
        b"SIZE",
        b"RECENT",
        b"HIGHESTMODSEQ",
        b"APPENDLIMIT",
    }
)
# RFC 5258 §3, RFC 6154 §5.1
_LIST_SELECT: Final = frozenset({b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"})
_LIST_RETURN: Final = frozenset({b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE"})


class _Scanner:
    """A cursor over one command: its lines (without CRLF) and the literals between them.

    Every line but the last ends with a literal marker, and literal i follows line i, so
    reading a literal moves the cursor to the start of the next line.
    """

    __slots__ = ("buf", "charset", "index", "lines", "literals", "pos", "tag", "utf8")

    def __init__(self, lines: list[bytes], literals: list[bytes], utf8: bool) -> None:
        self.lines = lines
        self.literals = literals
        self.utf8 = utf8
        self.index = 0
        self.buf = lines[0]
        self.pos = 0
        self.tag: str | None = None
        self.charset = "UTF-8"  # how SEARCH strings decode (RFC 9051 §6.4.4 CHARSET)

    # -- primitives -------------------------------------------------------------------------

    def fail(self, message: str, code: str | None = None) -> NoReturn:
        raise ParseError(message, self.tag, code)

    def peek(self) -> int:
        """The next byte, or -1 at the end of the line."""
        return self.buf[self.pos] if self.pos < len(self.buf) else -1

    def at_end(self) -> bool:
        return self.pos >= len(self.buf)

    def end(self) -> None:
        if not self.at_end():
            self.fail("Unexpected extra arguments")

    def char(self, ch: int, what: str) -> None:
        if self.peek() != ch:
            self.fail(f"Expected {what}")
        self.pos += 1

    def space(self, what: str) -> None:
        """The SP before an argument: "Missing <what>" when the command ends instead."""
        if self.at_end():
            self.fail(f"Missing {what}")
        if self.buf[self.pos] != 0x20:
            self.fail(f"Expected space before {what}")
        self.pos += 1

    def more(self, close: int, what: str) -> bool:
        """Inside a parenthesised list: False (and consumes it) at `close`, else reads the SP
        between items and returns True."""
        if self.peek() == close:
            self.pos += 1
            return False
        self.space(what)
        return True

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        m = pattern.match(self.buf, self.pos)
        if m is None:
            self.fail(f"Expected {what}")
        self.pos = m.end()
        return m.group()

    def atom(self, what: str) -> bytes:
        """An atom in upper case (command names, keywords, options)."""
        return self.match(_ATOM, what).upper()

    def keyword(self, word: bytes) -> bool:
        """Consumes the atom `word` (case-insensitive) if it comes next."""
        m = _ATOM.match(self.buf, self.pos)
        if m is not None and m.group().upper() == word:
            self.pos = m.end()
            return True
        return False

    def number(self, what: str, low: int = 0, high: int = _U32) -> int:
        digits = self.match(_DIGITS, what)
        if len(digits) > _MAX_DIGITS or not low <= int(digits) <= high:
            self.fail(f"Number out of range for {what}")
        return int(digits)

    # -- strings ----------------------------------------------------------------------------

    def literal(self, what: str, binary_ok: bool = False) -> tuple[bytes, bool]:
        """A literal or literal8 (RFC 3516) and whether it was literal8."""
        m = _LITERAL.match(self.buf, self.pos)
        if m is None:
            self.fail(f"Expected {what}")
        binary = bool(m.group(1))
        if binary and not binary_ok:
            self.fail(f"Literal8 not allowed for {what}")
        # The assembler read this same marker and took exactly that many bytes.
        data = self.literals[self.index]
        self.index += 1
        self.buf = self.lines[self.index]
        self.pos = 0
        return data, binary

    def string(self, what: str) -> bytes:
        """quoted / literal, as raw bytes."""
        ch = self.peek()
        if ch == 0x22:  # DQUOTE
            m = _QUOTED.match(self.buf, self.pos)
            if m is None:
                self.fail(f"Bad quoted string for {what}")
            self.pos = m.end()
            raw = m.group(1)
            if not raw.isascii() and not self.utf8:
                # RFC 3501 §9 quoted is 7-bit; RFC 6855 §3 allows UTF-8 after ENABLE UTF8=ACCEPT
                self.fail(f"8-bit characters in quoted {what}")
            return _QUOTED_ESCAPE.sub(rb"\1", raw) if b"\\" in raw else raw
        if ch == 0x7B:  # {
            data, _ = self.literal(what)
            if b"\x00" in data:  # RFC 9051 §9 CHAR8 excludes NUL
                self.fail(f"NUL in {what}")
            return data
        self.fail(f"Expected {what}")

    def astring_bytes(self, what: str) -> bytes:
        m = _ASTRING_ATOM.match(self.buf, self.pos)
        if m is not None:
            self.pos = m.end()
            return m.group()
        return self.string(what)

    def text(self, data: bytes, what: str, charset: str = "UTF-8") -> str:
        try:
            return data.decode(charset)
        except UnicodeDecodeError:
            self.fail(f"Invalid {charset} in {what}")

    def astring(self, what: str) -> str:
        return self.text(self.astring_bytes(what), what)

    def nstring(self, what: str) -> str | None:
        if self.keyword(b"NIL"):
            return None
        return self.text(self.string(what), what)

    def mailbox(self, what: str = "mailbox name") -> str:
        return self.astring(what)

    def list_mailbox(self) -> str:
        """RFC 9051 §9 list-mailbox: like astring, but % and * need no quotes."""
        m = _LIST_MAILBOX.match(self.buf, self.pos)
        if m is not None:
            self.pos = m.end()
            return m.group().decode("ascii")
        return self.text(self.string("mailbox pattern"), "mailbox pattern")

    # -- sets, flags, options ---------------------------------------------------------------

    def seq_number(self, what: str) -> int:
        if self.peek() == 0x2A:  # *
            self.pos += 1
            return c.STAR
        return self.number(what, 1)

    def seqset(self, what: str = "sequence set") -> c.SeqSet:
        """RFC 9051 §9 sequence-set, or RFC 5182's "$" (the saved search result)."""
        if self.peek() == 0x24:  # $
            self.pos += 1
            return c.SeqSet((), saved=True)
        ranges: list[tuple[int, int]] = []
        while True:
            first = self.seq_number(what)
            last = first
            if self.peek() == 0x3A:  # :
                self.pos += 1
                last = self.seq_number(what)
            ranges.append((first, last))
            if self.peek() != 0x2C:  # ,
                return c.SeqSet(tuple(ranges))
            self.pos += 1

    def flag(self) -> str:
        """flag / flag-keyword / flag-extension, as sent ("\\*" is not a flag here)."""
        if self.peek() == 0x5C:  # backslash
            self.pos += 1
            return "\\" + self.match(_ATOM, "flag").decode("ascii")
        return self.match(_ATOM, "flag").decode("ascii")

    def flag_list(self) -> tuple[str, ...]:
        self.char(0x28, "flag list")
        flags: list[str] = []
        if self.peek() == 0x29:
            self.pos += 1
            return ()
        flags.append(self.flag())
        while self.more(0x29, "flag"):
            flags.append(self.flag())
        return tuple(flags)

    def atom_list(self, what: str) -> list[bytes]:
        """ "(" [atom *(SP atom)] ")" in upper case."""
        self.char(0x28, f"{what} list")
        if self.peek() == 0x29:
            self.pos += 1
            return []
        items = [self.atom(what)]
        while self.more(0x29, what):
            items.append(self.atom(what))
        return items

    def charset_name(self) -> str:
        ch = self.peek()
        raw = self.string("charset") if ch in (0x22, 0x7B) else self.match(_ATOM, "charset")
        name = _CHARSETS.get(raw.upper())
        if name is None:
            # RFC 9051 §6.4.4: the session answers NO [BADCHARSET], not BAD
            self.fail("Unsupported charset", "BADCHARSET")
        return name

    # -- SEARCH -----------------------------------------------------------------------------

    def search_string(self, what: str) -> str:
        return self.text(self.astring_bytes(what), what, self.charset)

    def search_program(self) -> c.SearchKey:
        """1*search-key up to the end of the command, AND-ed."""
        keys = [self.search_key(0)]
        while not self.at_end():
            self.space("search key")
            keys.append(self.search_key(0))
        return keys[0] if len(keys) == 1 else c.SAnd(tuple(keys))

    def search_key(self, depth: int) -> c.SearchKey:
        if depth >= MAX_DEPTH:
            self.fail("Search keys nested too deeply")
        ch = self.peek()
        if ch == 0x28:  # (
            self.pos += 1
            keys = [self.search_key(depth + 1)]
            while self.more(0x29, "search key"):
                keys.append(self.search_key(depth + 1))
            return keys[0] if len(keys) == 1 else c.SAnd(tuple(keys))
        if ch == 0x24 or ch == 0x2A or 0x30 <= ch <= 0x39:  # $ * digit
            return c.InSet(self.seqset(), uid=False)
        word = self.atom("search key")
        fixed = _FIXED_KEYS.get(word)
        if fixed is not None:
            return fixed
        header = _HEADER_KEYS.get(word)
        if header is not None:
            self.space("search string")
            return s.Header(header, self.search_string("search string"))
        if word in _DATE_OPS:
            return s.InternalDate(_DATE_OPS[word], self.search_date())
        if word.startswith(b"SENT") and word[4:] in _DATE_OPS:
            return s.SentDate(_DATE_OPS[word[4:]], self.search_date())
        match word:
            case b"BODY":
                self.space("search string")
                return s.Body(self.search_string("search string"))
            case b"TEXT":
                self.space("search string")
                return s.Text(self.search_string("search string"))
            case b"HEADER":
                self.space("header field name")
                name = self.search_string("header field name").lower()
                self.space("search string")
                return s.Header(name, self.search_string("search string"))
            case b"KEYWORD" | b"UNKEYWORD":
                self.space("keyword")
                keyword = self.match(_ATOM, "keyword").decode("ascii")
                return s.HasKeyword(keyword, word == b"KEYWORD")
            case b"LARGER" | b"SMALLER":
                self.space("size")
                return s.Size(word == b"LARGER", self.number("size", 0, _U63))
            case b"UID":
                self.space("UID set")
                return c.InSet(self.seqset("UID set"), uid=True)
            case b"NOT":
                self.space("search key")
                return c.SNot(self.search_key(depth + 1))
            case b"OR":
                self.space("search key")
                left = self.search_key(depth + 1)
                self.space("search key")
                return c.SOr(left, self.search_key(depth + 1))
            case b"MODSEQ":
                # RFC 7162 §3.1.5: MODSEQ [entry-name entry-type-req] mod-sequence-valzer
                self.space("mod-sequence")
                if self.peek() == 0x22:
                    self.string("entry name")
                    self.space("entry type")
                    if self.atom("entry type") not in (b"PRIV", b"SHARED", b"ALL"):
                        self.fail("Expected entry type")
                    self.space("mod-sequence")
                return s.ModSeq(self.number("mod-sequence", 0, _U63))
            case b"OLDER" | b"YOUNGER":
                self.space("interval")  # RFC 5032
                return s.Age(word == b"OLDER", self.number("interval", 1))
        self.fail("Unknown search key")

    def search_date(self) -> dt.date:
        self.space("date")
        quoted = self.peek() == 0x22
        raw = self.string("date") if quoted else self.match(_ATOM, "date")
        try:
            return _parse_date(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            self.fail("Expected date (dd-Mon-yyyy)")

    def search_returns(self) -> c.SearchReturn | None:
        """[SP] RETURN (options) of RFC 4731 / RFC 9051 §6.4.4, PARTIAL of RFC 9394."""
        if not self.keyword(b"RETURN"):
            return None
        self.space("search return options")
        self.char(0x28, "search return options")
        if self.peek() == 0x29:
            self.pos += 1
            return ()
        opts: list[str] = []
        while True:
            word = self.atom("search return option")
            if word == b"PARTIAL":
                self.space("partial range")
                m = _PARTIAL_RANGE.match(self.buf, self.pos)
                if m is None or m.group(1) != m.group(3):
                    self.fail("Expected partial range")
                low, high = int(m.group(2)), int(m.group(4))
                if not 0 < low <= _U32 or not 0 < high <= _U32:
                    self.fail("Number out of range for partial range")
                self.pos = m.end()
                opts.append("PARTIAL " + m.group().decode("ascii"))
            elif word in _SEARCH_RETURNS:
                opts.append(word.decode("ascii"))
            else:
                self.fail("Unknown search return option")
            if not self.more(0x29, "search return option"):
                return tuple(opts)

    # -- FETCH ------------------------------------------------------------------------------

    def fetch_items(self) -> tuple[c.FetchItem, ...]:
        if self.peek() == 0x28:
            self.pos += 1
            items = [self.fetch_item()]
            while self.more(0x29, "fetch item"):
                items.append(self.fetch_item())
            return tuple(items)
        m = _ATOM.match(self.buf, self.pos)
        macro = _FETCH_MACROS.get(m.group().upper()) if m else None
        if m is not None and macro is not None:
            self.pos = m.end()
            return macro
        return (self.fetch_item(),)

    def fetch_item(self) -> c.FetchItem:
        name = self.match(_FETCH_NAME, "fetch item").upper()
        bracket = self.peek() == 0x5B  # [
        if name in _FETCH_ATTRS and not (name == b"BODY" and bracket):
            return c.FetchAttr(name.decode("ascii"))
        match name:
            case b"BODY" | b"BODY.PEEK" if bracket:
                section = self.section()
                return c.FetchSection(section, peek=name == b"BODY.PEEK", partial=self.partial())
            case b"BINARY" | b"BINARY.PEEK" if bracket:
                part = self.section_binary()
                return c.FetchSection(
                    c.Section(part),
                    peek=name == b"BINARY.PEEK",
                    binary=True,
                    partial=self.partial(),
                )
            case b"BINARY.SIZE" if bracket:
                return c.FetchBinarySize(self.section_binary())
        self.fail("Unknown fetch item")

    def section_part(self) -> list[int]:
        """nz-number *("." nz-number), stopping before a "." that starts a section-text."""
        part = [self.number("section part", 1)]
        while self.peek() == 0x2E and self.pos + 1 < len(self.buf):
            nxt = self.buf[self.pos + 1]
            if not 0x30 <= nxt <= 0x39:
                break
            self.pos += 1
            part.append(self.number("section part", 1))
        return part

    def section(self) -> c.Section:
        """RFC 9051 §9 section: "[" [section-spec] "]"."""
        self.pos += 1  # [
        part: list[int] = []
        text: c.SectionText = ""
        fields: tuple[str, ...] = ()
        if 0x30 <= self.peek() <= 0x39:
            part = self.section_part()
            if self.peek() == 0x2E:
                self.pos += 1
                text = self.section_text()
        elif self.peek() != 0x5D:
            text = self.section_text()
        if text == "MIME" and not part:
            self.fail("MIME needs a part number")
        if text.startswith("HEADER.FIELDS"):
            self.space("header list")
            self.char(0x28, "header list")
            names = [self.astring("header field name").upper()]
            while self.more(0x29, "header field name"):
                names.append(self.astring("header field name").upper())
            fields = tuple(names)
        self.char(0x5D, "]")
        return c.Section(tuple(part), text, fields)

    def section_text(self) -> c.SectionText:
        text = _SECTION_TEXTS.get(self.match(_FETCH_NAME, "section text").upper())
        if text is None:
            self.fail("Unknown section text")
        return text

    def section_binary(self) -> tuple[int, ...]:
        """RFC 3516 section-binary: "[" [section-part] "]"."""
        self.pos += 1  # [
        part = self.section_part() if self.peek() != 0x5D else []
        self.char(0x5D, "]")
        return tuple(part)

    def partial(self) -> tuple[int, int] | None:
        """ "<" number "." nz-number ">" (number64 in RFC 9051)."""
        if self.peek() != 0x3C:  # <
            return None
        self.pos += 1
        offset = self.number("partial offset", 0, _U63)
        self.char(0x2E, "'.' in partial")
        length = self.number("partial length", 1, _U63)
        self.char(0x3E, "'>' after partial")
        return offset, length


# -- commands ----------------------------------------------------------------------------------

_Handler = Callable[[_Scanner, str, bool], c.Command]


def _no_args(make: Callable[[str], c.Command]) -> _Handler:
    def handler(sc: _Scanner, tag: str, uid: bool) -> c.Command:
        sc.end()
        return make(tag)

    return handler


def _mailbox_only(make: Callable[[str, str], c.Command]) -> _Handler:
    def handler(sc: _Scanner, tag: str, uid: bool) -> c.Command:
        sc.space("mailbox name")
        mailbox = sc.mailbox()
        sc.end()
        return make(tag, mailbox)

    return handler


def _authenticate(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("SASL mechanism")
    mechanism = sc.atom("SASL mechanism").decode("ascii")
    initial: bytes | None = None
    if not sc.at_end():
        sc.space("initial response")  # RFC 4959 SASL-IR
        if sc.peek() == 0x3D:  # "=": an empty initial response
            sc.pos += 1
            initial = b""
        else:
            try:
                initial = base64.b64decode(sc.match(_BASE64, "initial response"), validate=True)
            except binascii.Error:
                sc.fail("Invalid base64 in initial response")
    sc.end()
    return c.Authenticate(tag, mechanism, initial)


def _login(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("user name")
    username = sc.astring("user name")
    sc.space("password")
    password = sc.astring("password")
    sc.end()
    return c.Login(tag, username, password)


def _enable(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    caps = []
    sc.space("capability")
    caps.append(sc.atom("capability").decode("ascii"))
    while not sc.at_end():
        sc.space("capability")
        caps.append(sc.atom("capability").decode("ascii"))
    return c.Enable(tag, tuple(caps))


def _id(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    """RFC 2971: "ID" SP ("(" *(string SP nstring) ")" / nil)."""
    sc.space("ID parameters")
    if sc.keyword(b"NIL"):
        sc.end()
        return c.Id(tag, None)
    sc.char(0x28, "ID parameter list")
    params: list[tuple[str, str | None]] = []
    if sc.peek() == 0x29:
        sc.pos += 1
    else:
        while True:
            key = sc.text(sc.string("ID field"), "ID field")
            sc.space("ID value")
            params.append((key, sc.nstring("ID value")))
            if not sc.more(0x29, "ID field"):
                break
    sc.end()
    return c.Id(tag, tuple(params))


def _qresync(sc: _Scanner) -> c.Qresync:
    """RFC 7162 §3.2.5: (uidvalidity mod-sequence-value [known-uids] [seq-match-data])."""
    sc.space("QRESYNC parameters")
    sc.char(0x28, "QRESYNC parameters")
    uidvalidity = sc.number("UIDVALIDITY", 1)
    sc.space("mod-sequence")
    modseq = sc.number("mod-sequence", 1, _U63)
    known: c.SeqSet | None = None
    match: tuple[c.SeqSet, c.SeqSet] | None = None
    if sc.peek() == 0x20:
        sc.pos += 1
        if sc.peek() != 0x28:
            known = sc.seqset("known UIDs")
            if sc.peek() == 0x20:
                sc.pos += 1
                sc.char(0x28, "sequence match data")
            else:
                sc.char(0x29, "')' after QRESYNC parameters")
                return c.Qresync(uidvalidity, modseq, known)
        else:
            sc.pos += 1
        seqs = sc.seqset("known sequence set")
        sc.space("known UID set")
        match = (seqs, sc.seqset("known UID set"))
        sc.char(0x29, "')' after sequence match data")
    sc.char(0x29, "')' after QRESYNC parameters")
    return c.Qresync(uidvalidity, modseq, known, match)


def _select(readonly: bool) -> _Handler:
    def handler(sc: _Scanner, tag: str, uid: bool) -> c.Command:
        sc.space("mailbox name")
        mailbox = sc.mailbox()
        condstore = False
        qresync: c.Qresync | None = None
        if not sc.at_end():
            sc.space("select parameters")  # RFC 4466 §2.2
            sc.char(0x28, "select parameters")
            while True:
                word = sc.atom("select parameter")
                if word == b"CONDSTORE":
                    condstore = True
                elif word == b"QRESYNC":
                    qresync = _qresync(sc)
                else:
                    sc.fail("Unknown select parameter")
                if not sc.more(0x29, "select parameter"):
                    break
        sc.end()
        return c.Select(tag, mailbox, readonly, condstore, qresync)

    return handler


def _create(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("mailbox name")
    mailbox = sc.mailbox()
    uses: list[str] = []
    if not sc.at_end():
        sc.space("create parameters")  # RFC 4466 §2.1, RFC 6154 §3
        sc.char(0x28, "create parameters")
        while True:
            if sc.atom("create parameter") != b"USE":
                sc.fail("Unknown create parameter")
            sc.space("special-use list")
            uses.extend(sc.flag_list())
            if not sc.more(0x29, "create parameter"):
                break
        if any(not u.startswith("\\") for u in uses):
            sc.fail("Expected special-use attribute")
    sc.end()
    return c.Create(tag, mailbox, tuple(uses))


def _rename(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("mailbox name")
    old = sc.mailbox()
    sc.space("new mailbox name")
    new = sc.mailbox("new mailbox name")
    sc.end()
    return c.Rename(tag, old, new)


def _subscribe(subscribe: bool) -> _Handler:
    return _mailbox_only(lambda tag, mailbox: c.Subscribe(tag, mailbox, subscribe))


def _status_items(sc: _Scanner) -> tuple[str, ...]:
    items = sc.atom_list("status item")
    if not items or any(i not in _STATUS_ITEMS for i in items):
        sc.fail("Expected status items")
    return tuple(i.decode("ascii") for i in items)


def _list(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    """RFC 9051 §6.3.9 with RFC 5258 LIST-EXTENDED and RFC 5819 LIST-STATUS."""
    extended = False
    select: frozenset[bytes] = frozenset()
    sc.space("mailbox name")
    if sc.peek() == 0x28:
        extended = True
        select = frozenset(sc.atom_list("selection option"))
        if not select <= _LIST_SELECT:
            sc.fail("Unknown LIST selection option")
        # RFC 5258 §3: RECURSIVEMATCH needs a selection option it can refine
        if b"RECURSIVEMATCH" in select and not select - {b"RECURSIVEMATCH", b"REMOTE"}:
            sc.fail("RECURSIVEMATCH needs another selection option")
        sc.space("mailbox name")
    reference = sc.mailbox("reference name")
    sc.space("mailbox pattern")
    if sc.peek() == 0x28:
        extended = True
        sc.pos += 1
        patterns = [sc.list_mailbox()]
        while sc.more(0x29, "mailbox pattern"):
            patterns.append(sc.list_mailbox())
    else:
        patterns = [sc.list_mailbox()]
    returns: set[bytes] = set()
    status: tuple[str, ...] | None = None
    if not sc.at_end():
        sc.space("RETURN")
        if not sc.keyword(b"RETURN"):
            sc.fail("Expected RETURN")
        extended = True
        sc.space("return options")
        sc.char(0x28, "return options")
        if sc.peek() == 0x29:
            sc.pos += 1
        else:
            while True:
                word = sc.atom("return option")
                if word == b"STATUS":
                    sc.space("status items")
                    status = _status_items(sc)
                elif word in _LIST_RETURN:
                    returns.add(word)
                else:
                    sc.fail("Unknown LIST return option")
                if not sc.more(0x29, "return option"):
                    break
    sc.end()
    return c.ListMailboxes(
        tag,
        reference,
        tuple(patterns),
        select_options=frozenset(o.decode("ascii") for o in select),
        return_options=frozenset(o.decode("ascii") for o in returns),
        return_status=status,
        extended=extended,
    )


def _lsub(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("reference name")
    reference = sc.mailbox("reference name")
    sc.space("mailbox pattern")
    pattern = sc.list_mailbox()
    sc.end()
    return c.ListMailboxes(tag, reference, (pattern,), lsub=True)


def _status(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("mailbox name")
    mailbox = sc.mailbox()
    sc.space("status items")
    items = _status_items(sc)
    sc.end()
    return c.Status(tag, mailbox, items)


def _append(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    """RFC 9051 §6.3.12, RFC 3502 MULTIAPPEND, RFC 3516 literal8."""
    sc.space("mailbox name")
    mailbox = sc.mailbox()
    messages: list[c.AppendMessage] = []
    while True:
        sc.space("message literal")
        flags: tuple[str, ...] = ()
        date: dt.datetime | None = None
        if sc.peek() == 0x28:
            flags = sc.flag_list()
            sc.space("message literal")
        if sc.peek() == 0x22:
            try:
                date = parse_date_time(sc.string("date-time").decode("ascii"))
            except ValueError:  # UnicodeDecodeError included
                sc.fail("Invalid date-time")
            sc.space("message literal")
        data, binary = sc.literal("message literal", binary_ok=True)
        messages.append(c.AppendMessage(flags, date, data, binary))
        if sc.at_end():
            return c.Append(tag, mailbox, tuple(messages))


def _expunge(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    uids: c.SeqSet | None = None
    if uid:  # RFC 4315 UID EXPUNGE
        sc.space("UID set")
        uids = sc.seqset("UID set")
    sc.end()
    return c.Expunge(tag, uids)


def _search(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("search key")
    returns = sc.search_returns()
    if returns is not None:
        sc.space("search key")
    charset: str | None = None
    if sc.keyword(b"CHARSET"):
        sc.space("charset")
        charset = sc.charset = sc.charset_name()
        sc.space("search key")
    return c.Search(tag, uid, sc.search_program(), charset, returns)


def _fetch(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("sequence set")
    seqs = sc.seqset()
    sc.space("fetch items")
    items = sc.fetch_items()
    changed_since: int | None = None
    vanished = False
    if not sc.at_end():
        sc.space("fetch modifiers")  # RFC 4466 §2.4, RFC 7162 §3.1.4 / §3.2.6
        sc.char(0x28, "fetch modifiers")
        while True:
            word = sc.atom("fetch modifier")
            if word == b"CHANGEDSINCE":
                sc.space("mod-sequence")
                changed_since = sc.number("mod-sequence", 1, _U63)
            elif word == b"VANISHED":
                vanished = True
            else:
                sc.fail("Unknown fetch modifier")
            if not sc.more(0x29, "fetch modifier"):
                break
        if vanished and (not uid or changed_since is None):
            sc.fail("VANISHED needs UID FETCH and CHANGEDSINCE")  # RFC 7162 §3.2.6
    sc.end()
    return c.Fetch(tag, uid, seqs, items, changed_since, vanished)


def _store(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("sequence set")
    seqs = sc.seqset()
    sc.space("flags")
    unchanged_since: int | None = None
    if sc.peek() == 0x28:  # RFC 7162 §3.1.3 store-modifier
        sc.pos += 1
        if sc.atom("store modifier") != b"UNCHANGEDSINCE":
            sc.fail("Unknown store modifier")
        sc.space("mod-sequence")
        unchanged_since = sc.number("mod-sequence", 0, _U63)
        sc.char(0x29, "')' after store modifier")
        sc.space("flags")
    mode = StoreMode.REPLACE
    if sc.peek() == 0x2B:  # +
        mode = StoreMode.ADD
        sc.pos += 1
    elif sc.peek() == 0x2D:  # -
        mode = StoreMode.REMOVE
        sc.pos += 1
    word = sc.atom("FLAGS")
    if word not in (b"FLAGS", b"FLAGS.SILENT"):
        sc.fail("Expected FLAGS or FLAGS.SILENT")
    sc.space("flags")
    if sc.peek() == 0x28:
        flags = sc.flag_list()
        sc.end()
    else:
        names = [sc.flag()]
        while not sc.at_end():
            sc.space("flag")
            names.append(sc.flag())
        flags = tuple(names)
    return c.StoreFlags(tag, uid, seqs, mode, word == b"FLAGS.SILENT", flags, unchanged_since)


def _copy(move: bool) -> _Handler:
    def handler(sc: _Scanner, tag: str, uid: bool) -> c.Command:
        sc.space("sequence set")
        seqs = sc.seqset()
        sc.space("mailbox name")
        mailbox = sc.mailbox()
        sc.end()
        return c.Copy(tag, uid, seqs, mailbox, move)

    return handler


def _search_criteria(sc: _Scanner) -> tuple[str, c.SearchKey]:
    """SORT / THREAD's charset 1*(SP search-key) (RFC 5256 §5)."""
    sc.space("charset")
    charset = sc.charset = sc.charset_name()
    sc.space("search key")
    return charset, sc.search_program()


def _sort(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("sort criteria")
    returns = sc.search_returns()  # RFC 5267 ESORT
    if returns is not None:
        sc.space("sort criteria")
    sc.char(0x28, "sort criteria")
    criteria: list[c.SortCriterion] = []
    while True:
        reverse = sc.keyword(b"REVERSE")
        if reverse:
            sc.space("sort key")
        key = _SORT_KEYS.get(sc.atom("sort key"))
        if key is None:
            sc.fail("Unknown sort key")
        criteria.append(c.SortCriterion(key, reverse))
        if not sc.more(0x29, "sort key"):
            break
    charset, key_tree = _search_criteria(sc)
    return c.Sort(tag, uid, tuple(criteria), charset, key_tree, returns)


def _thread(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("thread algorithm")
    algorithm = _THREAD_ALGORITHMS.get(sc.atom("thread algorithm"))
    if algorithm is None:
        sc.fail("Unsupported thread algorithm")
    charset, key_tree = _search_criteria(sc)
    return c.Thread(tag, uid, algorithm, charset, key_tree)


def _getquota(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("quota root")
    root = sc.astring("quota root")
    sc.end()
    return c.GetQuota(tag, root)


def _setquota(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    """RFC 9208 §4.3: SETQUOTA root "(" [resource SP limit *(SP resource SP limit)] ")"."""
    sc.space("quota root")
    root = sc.astring("quota root")
    sc.space("resource limits")
    sc.char(0x28, "resource limits")
    limits: list[tuple[str, int]] = []
    if sc.peek() == 0x29:
        sc.pos += 1
    else:
        while True:
            resource = sc.atom("resource name").decode("ascii")
            sc.space("resource limit")
            limits.append((resource, sc.number("resource limit", 0, _U63)))
            if not sc.more(0x29, "resource name"):
                break
    sc.end()
    return c.SetQuota(tag, root, tuple(limits))


def _compress(sc: _Scanner, tag: str, uid: bool) -> c.Command:
    sc.space("compression mechanism")  # RFC 4978
    mechanism = sc.atom("compression mechanism").decode("ascii")
    sc.end()
    return c.Compress(tag, mechanism)


_COMMANDS: Final[dict[bytes, _Handler]] = {
    b"CAPABILITY": _no_args(c.Capability),
    b"NOOP": _no_args(c.Noop),
    b"LOGOUT": _no_args(c.Logout),
    b"STARTTLS": _no_args(c.StartTls),
    b"AUTHENTICATE": _authenticate,
    b"LOGIN": _login,
    b"ENABLE": _enable,
    b"ID": _id,
    b"SELECT": _select(readonly=False),
    b"EXAMINE": _select(readonly=True),
    b"CREATE": _create,
    b"DELETE": _mailbox_only(c.Delete),
    b"RENAME": _rename,
    b"SUBSCRIBE": _subscribe(True),
    b"UNSUBSCRIBE": _subscribe(False),
    b"LIST": _list,
    b"LSUB": _lsub,
    b"NAMESPACE": _no_args(c.Namespace),
    b"STATUS": _status,
    b"APPEND": _append,
    b"IDLE": _no_args(c.Idle),
    b"CHECK": _no_args(c.Check),
    b"CLOSE": _no_args(c.Close),
    b"UNSELECT": _no_args(c.Unselect),
    b"EXPUNGE": _expunge,
    b"SEARCH": _search,
    b"FETCH": _fetch,
    b"STORE": _store,
    b"COPY": _copy(move=False),
    b"MOVE": _copy(move=True),
    b"SORT": _sort,
    b"THREAD": _thread,
    b"GETQUOTA": _getquota,
    b"GETQUOTAROOT": _mailbox_only(c.GetQuotaRoot),
    b"SETQUOTA": _setquota,
    b"COMPRESS": _compress,
}
_UID_COMMANDS: Final = frozenset(
    {b"FETCH", b"STORE", b"COPY", b"MOVE", b"SEARCH", b"SORT", b"THREAD", b"EXPUNGE"}
)


def _parse(lines: list[bytes], literals: list[bytes], utf8: bool) -> c.Command:
    sc = _Scanner(lines, literals, utf8)
    tag = sc.match(_TAG, "tag").decode("ascii")
    sc.tag = tag
    sc.space("command")
    name = sc.atom("command")
    uid = name == b"UID"
    if uid:
        sc.space("UID command")
        name = sc.atom("UID command")
        if name not in _UID_COMMANDS:
            sc.fail("Unknown UID command")
    handler = _COMMANDS.get(name)
    if handler is None:
        sc.fail("Unknown command")
    return handler(sc, tag, uid)


def _read_tag(line: bytes) -> str | None:
    m = _TAG.match(line)
    if m is None or line[m.end() : m.end() + 1] != b" ":
        return None
    return m.group().decode("ascii")


class CommandAssembler:
    """Collects the lines and literals of one command, then parses it."""

    def __init__(
        self, *, max_line: int, max_literal: int, max_append: int, utf8: bool = False
    ) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_append = max_append
        self.utf8 = utf8
        self._lines: list[bytes] = []
        self._literals: list[bytes] = []
        self._wanted: LiteralWanted | None = None
        self._complete = False
        self._tag: str | None = None
        self._append_at = -1  # APPEND: where the mailbox starts on the first line

    @property
    def tag(self) -> str | None:
        """The tag of the command being assembled, once its first line is in."""
        return self._tag

    def reset(self) -> None:
        self._lines = []
        self._literals = []
        self._wanted = None
        self._complete = False
        self._tag = None
        self._append_at = -1

    def _fail(self, message: str, code: str | None = None) -> NoReturn:
        tag = self._tag
        self.reset()
        raise ParseError(message, tag, code)

    def feed_line(self, line: bytes) -> LiteralWanted | None:
        """`line` ends with CRLF (or LF). Returns what literal comes next, or None when the
        command is complete (call finish())."""
        if self._wanted is not None:
            self._fail("Expected literal data")
        if self._complete:
            self._fail("Command already complete")
        first = not self._lines
        if first:
            self._tag = _read_tag(line)
        if len(line) > self.max_line:
            self._fail("Command line too long", "TOOBIG")
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if first:
            if self._tag is None:
                self._fail("Missing or invalid tag")
            cmd_at = len(self._tag) + 1
            m = _ATOM.match(line, cmd_at)
            if m is not None and m.group().upper() == b"APPEND":
                self._append_at = m.end() + 1
        self._lines.append(line)
        brace = line.rfind(b"{") if line.endswith(b"}") else -1
        start = brace - 1 if brace > 0 and line[brace - 1] == 0x7E else brace  # ~{
        m = _LITERAL.match(line, start) if brace >= 0 else None
        if m is None:
            self._complete = True
            return None
        binary, digits, plus = m.groups()
        if len(digits) > _MAX_DIGITS or int(digits) > _U63:
            self._fail("Invalid literal size")
        if len(self._literals) >= MAX_LITERALS:
            self._fail("Too many literals in one command")
        size = int(digits)
        # RFC 3502: every APPEND literal is a message except a literal mailbox name.
        message = self._append_at >= 0 and not (first and start == self._append_at)
        if size > (self.max_append if message else self.max_literal):
            tag = self._tag
            self.reset()
            raise LiteralTooLarge("Literal too large", tag, size, synchronizing=not plus)
        self._wanted = LiteralWanted(size, synchronizing=not plus, binary=bool(binary))
        return self._wanted

    def feed_literal(self, data: bytes) -> None:
        if self._wanted is None:
            self._fail("Unexpected literal data")
        if len(data) != self._wanted.size:
            self._fail("Literal size mismatch")
        self._literals.append(data)
        self._wanted = None

    def finish(self) -> c.Command:
        """Parse the assembled command; resets the assembler for the next one."""
        if not self._complete:
            self._fail("Incomplete command")
        lines, literals = self._lines, self._literals
        self.reset()
        return _parse(lines, literals, self.utf8)
