"""Parse a raw RFC 5322 message once, at delivery, into everything IMAP and search need.

`parse_message` walks the MIME tree with its own boundary scanner so that every part carries
exact byte offsets into the raw message (stdlib `email` does not report offsets); BODY[1.2]
then becomes a byte-range read instead of a reparse.  The same pass renders the IMAP ENVELOPE,
BODY and BODYSTRUCTURE wire forms and extracts the header fields used by SEARCH, SORT and
THREAD plus the text for full-text search (DESIGN §3).

The module is pure (no I/O) and total: any byte string yields a `ParsedMessage`.  Malformed
input degrades the way Dovecot and Python's `email` degrade it, documented at each rule.
"""

from __future__ import annotations

import binascii
import datetime as dt
import html
import json
import re
from dataclasses import dataclass
from email.utils import parsedate_tz
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "ParsedMessage",
    "Part",
    "decode_parts",
    "encode_parts",
    "find_part",
    "parse_message",
    "quote_string",
]

# Deeper multipart / message nesting is kept as one opaque leaf: it bounds recursion and
# the O(size x depth) boundary scanning that nesting costs (Dovecot caps nesting at 100 too).
MAX_DEPTH = 100
# Parts beyond this many are not split out; Dovecot's max_total_mime_parts default.
MAX_PARTS = 10_000


@dataclass(frozen=True, slots=True)
class Part:
    """One MIME entity with its byte offsets in the raw message."""

    path: str  # "" for the root; "1", "1.2", ...; an embedded message's root takes its part's path
    type: str  # lower-case media type, e.g. "text"
    subtype: str  # lower-case, e.g. "plain"
    params: tuple[tuple[str, str], ...]  # content-type parameters, names lower-case
    encoding: str  # lower-case Content-Transfer-Encoding, "7bit" when absent
    header_start: int
    body_start: int  # just after the blank line that ends the header
    body_end: int  # exclusive; the CRLF before a boundary belongs to the boundary
    lines: int
    children: tuple[Part, ...]  # multipart: its parts; message/rfc822: the embedded root


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What the store caches for one message."""

    envelope: bytes
    body: bytes
    bodystructure: bytes
    root: Part
    header_end: int
    sent_date: dt.datetime | None
    subject: str
    base_subject: str
    from_addr: str
    to_addr: str
    cc_addr: str
    bcc_addr: str
    sort_from: str
    sort_to: str
    sort_cc: str
    display_from: str
    display_to: str
    message_id: str
    in_reply_to: str
    references: tuple[str, ...]
    header_text: str
    body_text: str


# -- IMAP strings ----------------------------------------------------------------------------

_LITERAL_NEEDED = re.compile(rb"[\x00\r\n\x80-\xff]")


def quote_string(value: bytes | str) -> bytes:
    """Render `value` as an IMAP string: quoted when it can be, else a literal."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if _LITERAL_NEEDED.search(data) is None:
        # RFC 9051 §4.3: only the two quoted-specials need escaping inside a quoted string
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    # RFC 9051 §9 (CHAR8): NUL may not appear even in a literal; 0x80 keeps the length
    data = data.replace(b"\x00", b"\x80")
    return b"{%d}\r\n%b" % (len(data), data)


def _nstring(value: bytes | str | None) -> bytes:
    return b"NIL" if value is None else quote_string(value)


# -- header block ------------------------------------------------------------------------------

# What Python's feedparser accepts as header lines (plus obs-optional WSP before the colon,
# RFC 5322 §4.5); the header ends at the first line that is none of these.  One regex pass
# over the whole block keeps the per-line work in C.
_HEADER_LINE = rb"(?:[\x21-\x39\x3b-\x7e]*+[ \t]*:|[ \t]|From )[^\n]*+"
_HEADER_LINES = re.compile(rb"(?:%b\n)*+" % _HEADER_LINE)
_LAST_HEADER_LINE = re.compile(_HEADER_LINE)
_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:([^\n]*+(?:\n[ \t][^\n]*+)*+)", re.M)


def _scan_header(raw: bytes, start: int, end: int) -> tuple[int, int]:
    """Return (header_end, body_start) of the entity in raw[start:end]."""
    lines = _HEADER_LINES.match(raw, start, end)
    pos = end if lines is None else lines.end()  # the pattern matches the empty string
    # RFC 5322 §2.1: an empty line separates header and body
    if raw.startswith(b"\n", pos, end):
        return pos, pos + 1
    if raw.startswith(b"\r\n", pos, end) or (pos + 1 == end and raw[pos] == 0x0D):
        return pos, min(pos + 2, end)
    if raw.find(b"\n", pos, end) < 0 and _LAST_HEADER_LINE.fullmatch(raw, pos, end):
        return end, end
    # no separator: the body starts at the first line that is not a header line
    return pos, pos


def _split_fields(raw: bytes, start: int, end: int) -> list[tuple[str, bytes]]:
    """Split a header block into (name, unfolded value) pairs, in order.

    Lines that are no field (a mbox "From " line, a continuation with nothing to continue)
    are skipped.
    """
    fields: list[tuple[str, bytes]] = []
    for m in _FIELD.finditer(raw[start:end]):
        value: bytes = m[2]
        if b"\n" in value:
            # RFC 5322 §2.2.3: unfolding removes the CRLF and keeps the whitespace
            value = value.replace(b"\r\n", b"").replace(b"\n", b"")
        fields.append((m[1].decode("ascii"), value.removesuffix(b"\r")))
    return fields


def _first_values(fields: list[tuple[str, bytes]]) -> dict[str, bytes]:
    first: dict[str, bytes] = {}
    for name, value in fields:
        first.setdefault(name.lower(), value)
    return first


def _nolf(value: bytes | None) -> bytes | None:
    """The field value as Dovecot puts it in ENVELOPE: no CR/LF, outer whitespace trimmed."""
    if value is None:
        return None
    return value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# -- charsets and encoded words ----------------------------------------------------------------

# Labels that promise ASCII (or promise nothing) but in practice carry UTF-8 or worse;
# UTF-8 with replacement is the most useful reading of them.
_UTF8_ALIASES = frozenset({"", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown"})


def _decode_charset(data: bytes, charset: str) -> str:
    name = charset.strip().strip('"').lower()
    if name in _UTF8_ALIASES:
        return _text(data)
    try:
        return data.decode(name, "replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        # unknown labels, bytes-to-bytes codecs ("base64") and codecs that raise despite
        # errors="replace" ("idna")
        return _text(data)


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_B64 = bytes(sorted(set(range(256)) - set(_B64_ALPHABET)))


def _b64decode(data: bytes) -> bytes:
    """Decode base64 the lenient way mail needs: skip junk, repair padding."""
    clean = data.translate(None, _NOT_B64)
    extra = len(clean) % 4
    if extra == 1:
        clean = clean[:-1]
    elif extra:
        clean += b"=" * (4 - extra)
    try:
        return binascii.a2b_base64(clean)
    except binascii.Error:
        return b""


_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def _decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words, leniently (also inside quotes and words)."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pending_charset = ""
    pending = bytearray()
    have_pending = False
    pos = 0
    for m in _ENCODED_WORD.finditer(text):
        between = text[pos : m.start()]
        # RFC 2047 §6.2: whitespace between adjacent encoded words is not displayed
        if not (have_pending and between.strip(" \t\r\n") == ""):
            if have_pending:
                out.append(_decode_charset(bytes(pending), pending_charset))
                have_pending = False
            out.append(between)
        # RFC 2231 §5: a charset may carry a "*language" suffix
        charset = m[1].split("*", 1)[0].lower()
        encoded = m[3].encode("utf-8")
        data = _b64decode(encoded) if m[2] in "bB" else binascii.a2b_qp(encoded, header=True)
        if have_pending and charset == pending_charset:
            # joining first keeps multi-byte characters split across words intact
            pending += data
        else:
            if have_pending:
                out.append(_decode_charset(bytes(pending), pending_charset))
            pending_charset, pending, have_pending = charset, bytearray(data), True
        pos = m.end()
    if have_pending:
        out.append(_decode_charset(bytes(pending), pending_charset))
    out.append(text[pos:])
    return "".join(out)


def _readable(value: bytes) -> str:
    """A header value as a person reads it: unfolded, 8-bit as UTF-8, encoded words decoded."""
    return _decode_words(_text(value.replace(b"\r", b"").replace(b"\n", b""))).strip()


# -- MIME header values (RFC 2045 §5.1, RFC 2183, RFC 2231) -----------------------------------

_MIME_CHUNK = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[^";]+|;', re.S)
_QUOTED = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"?', re.S)
_BACKSLASH = re.compile(r"\\(.)", re.S)
_COMMENT = re.compile(r"\([^()]*\)")
_TOKEN = re.compile(r'[^\x00-\x20\x7f-\xff()<>@,;:\\"/\[\]?=]+')
_EXT_NAME = re.compile(r"([^*]+)\*(?:([0-9]{1,4})(\*)?)?")


def _unquote(text: str) -> str:
    """Content of the quoted string at the start of `text` (closing quote optional)."""
    m = _QUOTED.match(text)
    return "" if m is None else _BACKSLASH.sub(r"\1", m[1])


def _split_params(value: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a MIME value (one char per octet) into its main item and raw parameters."""
    segments: list[list[str]] = [[]]
    for m in _MIME_CHUNK.finditer(value):
        if m[0] == ";":
            segments.append([])
        else:
            segments[-1].append(m[0])
    main = _COMMENT.sub("", "".join(segments[0])).strip().lower()
    params: list[tuple[str, str]] = []
    for segment in segments[1:]:
        name, eq, val = "".join(segment).partition("=")
        name = name.strip().lower()
        if not eq or not name:
            continue
        val = val.strip()
        # RFC 2045 §5.1 allows comments after a token value ("us-ascii (Plain text)")
        val = _unquote(val) if val.startswith('"') else val.split("(", 1)[0].strip()
        params.append((name, val))
    return main, params


def _latin1_text(value: str) -> str:
    return _text(value.encode("latin-1"))


def _decode_2231(segments: dict[int, tuple[bool, str]]) -> str:
    charset = ""
    data = bytearray()
    for number in sorted(segments):
        encoded, value = segments[number]
        if encoded:
            if number == 0:
                # RFC 2231 §4: charset'language'value in the first (or only) section
                pieces = value.split("'", 2)
                if len(pieces) == 3:
                    charset, value = pieces[0], pieces[2]
            data += unquote_to_bytes(value.encode("latin-1"))
        else:
            data += value.encode("latin-1")
    return _decode_charset(bytes(data), charset)


def _resolve_params(raw: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Join RFC 2231 continuations and decode charsets; the first of duplicates wins."""
    order: list[str] = []
    plain: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[bool, str]]] = {}
    for name, value in raw:
        m = _EXT_NAME.fullmatch(name)
        if m is None:
            base = name
            plain.setdefault(name, value)
        else:
            base = m[1]
            number = int(m[2]) if m[2] is not None else 0
            # RFC 2231 §3-4: "name*" and "name*N*" are %-encoded, "name*N" is not
            encoded = m[2] is None or m[3] is not None
            extended.setdefault(base, {}).setdefault(number, (encoded, value))
        if base not in order:
            order.append(base)
    # RFC 2231 §4: an extended value supersedes the plain one of the same name
    return tuple(
        (name, _decode_2231(extended[name]) if name in extended else _latin1_text(plain[name]))
        for name in order
    )


class _ContentType(NamedTuple):
    type: str
    subtype: str
    params: tuple[tuple[str, str], ...]
    boundary: bytes


def _content_type(value: bytes | None, in_digest: bool) -> _ContentType:
    # RFC 2046 §5.1.5: parts of multipart/digest default to message/rfc822
    default = ("message", "rfc822") if in_digest else ("text", "plain")
    if value is None:
        return _ContentType(*default, (), b"")
    main, raw = _split_params(value.decode("latin-1"))
    mtype, slash, subtype = main.partition("/")
    mtype = mtype.strip()
    subtype = (subtype.split() or [""])[0]
    if not slash or _TOKEN.fullmatch(mtype) is None or _TOKEN.fullmatch(subtype) is None:
        # RFC 2045 §5.2: a syntactically invalid Content-Type means text/plain us-ascii
        return _ContentType("text", "plain", (), b"")
    boundary = next((v for n, v in raw if n == "boundary"), "").encode("latin-1")
    return _ContentType(mtype, subtype, _resolve_params(raw), boundary)


def _transfer_encoding(value: bytes | None) -> str:
    if value is None:
        return "7bit"
    # RFC 2045 §6.1: default 7bit
    return _text(value).split("(", 1)[0].strip().lower() or "7bit"


def _render_params(params: tuple[tuple[str, str], ...]) -> bytes:
    if not params:
        return b"NIL"
    return (
        b"(" + b" ".join(quote_string(n.upper()) + b" " + quote_string(v) for n, v in params) + b")"
    )


def _disposition(value: bytes | None) -> bytes:
    if value is None:
        return b"NIL"
    main, raw = _split_params(value.decode("latin-1"))
    kind = (main.split() or [""])[0]
    if _TOKEN.fullmatch(kind) is None:
        return b"NIL"
    # RFC 9051 §7.5.2 body-fld-dsp: ("type" params)
    return b"(" + quote_string(kind.upper()) + b" " + _render_params(_resolve_params(raw)) + b")"


def _language(value: bytes | None) -> bytes:
    if value is None:
        return b"NIL"
    tags = [t.strip() for t in _COMMENT.sub("", _text(value)).split(",") if t.strip()]
    if not tags:
        return b"NIL"
    if len(tags) == 1:
        return quote_string(tags[0])
    # RFC 9051 §7.5.2 body-fld-lang: a string or a list of strings
    return b"(" + b" ".join(quote_string(t) for t in tags) + b")"


# -- addresses (RFC 5322 §3.4, with the obsolete forms of §4.4) --------------------------------


@dataclass(frozen=True, slots=True)
class _Mailbox:
    # one char per octet of the raw header (latin-1), so ENVELOPE can give the bytes back
    name: str | None
    adl: str | None
    local: str
    domain: str


@dataclass(frozen=True, slots=True)
class _Group:
    name: str | None  # None ends the group


_Address = _Mailbox | _Group
_GROUP_END = _Group(None)

_ADDR_TOKEN = re.compile(
    r'(?P<ws>[ \t\r\n]+)|(?P<qs>"[^"\\]*(?:\\.[^"\\]*)*"?)|(?P<dl>\[[^\]\\]*(?:\\.[^\]\\]*)*\]?)'
    r'|(?P<cm>\()|(?P<atom>[^ \t\r\n()<>\[\]:;@,."]+)|(?P<sp>.)',
    re.S,
)
_COMMENT_STOP = re.compile(r"[()\\]")


class _Token(NamedTuple):
    kind: str  # "atom", "qs", "dl", "cm" or the special character itself
    text: str  # quoted strings and comments unquoted
    space: bool  # whitespace or a comment came before it


def _skip_comment(s: str, pos: int) -> tuple[str, int]:
    """Return the text of the (possibly nested) comment opening at s[pos] and its end."""
    depth = 0
    start = pos + 1
    while True:
        m = _COMMENT_STOP.search(s, pos)
        if m is None:
            return s[start:], len(s)
        pos = m.end()
        if m[0] == "\\":
            pos += 1
        elif m[0] == "(":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return s[start : m.start()], pos


def _tokenize(s: str) -> list[_Token]:
    tokens: list[_Token] = []
    space = False
    pos = 0
    while pos < len(s):
        # finditer runs until a comment, whose nesting needs _skip_comment, then restarts
        for m in _ADDR_TOKEN.finditer(s, pos):
            kind = m.lastgroup or "sp"
            if kind == "ws":
                space = True
                continue
            if kind == "cm":
                comment, pos = _skip_comment(s, m.start())
                tokens.append(_Token("cm", _BACKSLASH.sub(r"\1", comment), space))
                space = True
                break
            text = m[0]
            if kind == "qs":
                text = _unquote(text)
            elif kind == "sp":
                kind = text if text in "<>@,;:." else "atom"
            tokens.append(_Token(kind, text, space))
            space = False
        else:
            break
    return tokens


def _phrase(tokens: list[_Token]) -> str:
    out: list[str] = []
    for token in tokens:
        if token.kind == "cm":
            continue
        if out and token.space:
            out.append(" ")
        out.append(token.text)
    return "".join(out)


def _addr_spec(tokens: list[_Token]) -> tuple[str, str]:
    words = [t.text for t in tokens if t.kind != "cm"]
    at = words.index("@") if "@" in words else len(words)
    # obs-local-part / obs-domain allow CFWS around the dots: drop it
    return "".join(words[:at]), "".join(words[at + 1 :])


def _mailbox(segment: list[_Token]) -> _Mailbox | None:
    if all(t.kind == "cm" for t in segment):
        return None
    kinds = [t.kind for t in segment]
    if "<" not in kinds:
        comments = [t.text.strip() for t in segment if t.kind == "cm" and t.text.strip()]
        local, domain = _addr_spec(segment)
        # Dovecot's reading of "a@b (Name)": the trailing comment is the display name
        return _Mailbox(comments[-1] if comments else None, None, local, domain)
    lt = kinds.index("<")
    name = _phrase(segment[:lt]) or None
    inner: list[_Token] = []
    for token in segment[lt + 1 :]:
        if token.kind == ">":
            break
        if token.kind != "cm":
            inner.append(token)
    adl = None
    if inner and inner[0].kind == "@" and any(t.kind == ":" for t in inner):
        # RFC 5322 §4.4 obs-route "@a,@b:" before the addr-spec
        colon = [t.kind for t in inner].index(":")
        adl = "".join(t.text for t in inner[:colon])
        inner = inner[colon + 1 :]
    local, domain = _addr_spec(inner)
    return _Mailbox(name, adl, local, domain)


def _parse_addresses(value: str) -> list[_Address]:
    items: list[_Address] = []
    segment: list[_Token] = []
    in_group = False
    in_angle = False

    def flush() -> None:
        mailbox = _mailbox(segment)
        if mailbox is not None:
            items.append(mailbox)
        segment.clear()

    for token in _tokenize(value):
        kind = token.kind
        if in_angle:
            # commas and colons inside <...> belong to an obs-route
            segment.append(token)
            in_angle = kind != ">"
        elif kind == "<":
            segment.append(token)
            in_angle = True
        elif kind == ",":
            flush()
        elif kind == ":" and not in_group and all(t.kind not in "@<" for t in segment):
            # RFC 5322 §3.4: group = display-name ":" [group-list] ";"
            items.append(_Group(_phrase(segment)))
            segment.clear()
            in_group = True
        elif kind == ";":
            flush()
            if in_group:
                items.append(_GROUP_END)
                in_group = False
        else:
            segment.append(token)
    flush()
    if in_group:
        items.append(_GROUP_END)
    return items


def _render_addresses(items: list[_Address]) -> bytes:
    if not items:
        return b"NIL"
    out = [b"("]
    for item in items:
        if isinstance(item, _Group):
            if item.name is None:
                # RFC 9051 §7.5.2: NIL mailbox and host end a group
                out.append(b"(NIL NIL NIL NIL)")
            else:
                # RFC 9051 §7.5.2: NIL host, group name as mailbox starts a group
                out.append(b"(NIL NIL " + quote_string(item.name.encode("latin-1")) + b" NIL)")
            continue
        # A NIL host would read as group syntax, so fill the gaps the way Dovecot does.
        out.append(
            b"("
            + _nstring(None if item.name is None else item.name.encode("latin-1"))
            + b" "
            + _nstring(None if item.adl is None else item.adl.encode("latin-1"))
            + b" "
            + quote_string((item.local or "MISSING_MAILBOX").encode("latin-1"))
            + b" "
            + quote_string((item.domain or "MISSING_DOMAIN").encode("latin-1"))
            + b")"
        )
    out.append(b")")
    return b"".join(out)


def _addr_text(mailbox: _Mailbox) -> str:
    local = _latin1_text(mailbox.local)
    return f"{local}@{_latin1_text(mailbox.domain)}" if mailbox.domain else local


def _display_name(mailbox: _Mailbox) -> str:
    return "" if mailbox.name is None else _decode_words(_latin1_text(mailbox.name)).strip()


def _readable_addresses(items: list[_Address]) -> str:
    """Addresses as people write them, names decoded, for SEARCH substring matching."""
    out: list[str] = []
    for item in items:
        if item == _GROUP_END:
            out.append(";")
            continue
        if isinstance(item, _Group):
            entry = _decode_words(_latin1_text(item.name or "")) + ":"
        else:
            name = _display_name(item)
            entry = f"{name} <{_addr_text(item)}>" if name else _addr_text(item)
        if out:
            out.append(" " if out[-1].endswith(":") else ", ")
        out.append(entry)
    return "".join(out)


def _first_address(items: list[_Address]) -> _Address | None:
    # A group's start counts as its first address: its name is what the ENVELOPE's first
    # (group-start) entry carries as addr-mailbox, and what Dovecot sorts by.
    return next((i for i in items if i != _GROUP_END), None)


def _sort_key(items: list[_Address]) -> str:
    first = _first_address(items)
    # RFC 5256 §3: the addr-mailbox of the first address
    if isinstance(first, _Group):
        return _latin1_text(first.name or "").lower()
    return "" if first is None else _latin1_text(first.local).lower()


def _display_key(items: list[_Address]) -> str:
    first = _first_address(items)
    if isinstance(first, _Group):
        return _decode_words(_latin1_text(first.name or "")).strip()
    if first is None:
        return ""
    # RFC 5957 §3: the display-name, else the addr-spec
    return _display_name(first) or _addr_text(first)


_ADDRESS_FIELDS = ("from", "sender", "reply-to", "to", "cc", "bcc")


# Address parsing costs a few microseconds per token in Python.  A longer address field is
# an attack or a list no MTA passes on (Postfix's header_size_limit is 100 KiB for the whole
# header), so ENVELOPE and the search fields use only its leading addresses.
_MAX_ADDRESS_FIELD = 65_536


def _address_fields(first: dict[str, bytes]) -> dict[str, list[_Address]]:
    lists: dict[str, list[_Address]] = {}
    for name in _ADDRESS_FIELDS:
        value = first.get(name)
        if value is None:
            lists[name] = []
            continue
        if len(value) > _MAX_ADDRESS_FIELD:
            cut = value.rfind(b",", 0, _MAX_ADDRESS_FIELD)
            value = value[: cut if cut > 0 else _MAX_ADDRESS_FIELD]
        lists[name] = _parse_addresses(value.decode("latin-1"))
    return lists


def _envelope(first: dict[str, bytes], addresses: dict[str, list[_Address]]) -> bytes:
    # RFC 9051 §7.5.2: an absent or empty Sender / Reply-To is given as From
    sender = addresses["sender"] or addresses["from"]
    reply_to = addresses["reply-to"] or addresses["from"]
    fields = [
        _nstring(_nolf(first.get("date"))),
        _nstring(_nolf(first.get("subject"))),
        _render_addresses(addresses["from"]),
        _render_addresses(sender),
        _render_addresses(reply_to),
        _render_addresses(addresses["to"]),
        _render_addresses(addresses["cc"]),
        _render_addresses(addresses["bcc"]),
        _nstring(_nolf(first.get("in-reply-to"))),
        _nstring(_nolf(first.get("message-id"))),
    ]
    return b"(" + b" ".join(fields) + b")"


# -- SORT / THREAD keys --------------------------------------------------------------------------

_MSG_ID = re.compile(r"<([^<>]*)>")
_WSP_RUN = re.compile(r"[ \t\r\n]+")
_BLOB = r"\[[^\[\]]*\][ \t]*"
_SUBJ_LEADER = re.compile(rf"(?:{_BLOB})*(?:re|fwd?)[ \t]*(?:{_BLOB})?:|[ \t]+", re.I)
_SUBJ_BLOB = re.compile(_BLOB)


def _msg_ids(value: bytes | None) -> list[str]:
    if value is None:
        return []
    ids = ("".join(m[1].split()) for m in _MSG_ID.finditer(_text(value)))
    return [f"<{i}>" for i in ids if i]


def _base_subject(subject: str) -> str:
    """RFC 5256 §2.1 base subject; indices instead of slicing keep it linear."""
    # RFC 5256 §2.1 (1): tabs and continuations to space, runs of spaces to one
    s = _WSP_RUN.sub(" ", subject)
    start, end = 0, len(s)
    while True:
        # (2) drop trailing "(fwd)" and whitespace
        while end > start:
            if s[end - 1] == " ":
                end -= 1
            elif end - start >= 5 and s[end - 5 : end].lower() == "(fwd)":
                end -= 5
            else:
                break
        # (3)-(5) drop leading subj-leader, and subj-blob when text remains after it
        while start < end:
            m = _SUBJ_LEADER.match(s, start, end)
            if m is not None and m.end() > start:
                start = m.end()
                continue
            # A blob run that no leader follows stays so after losing its first blob, so
            # the whole run goes at once; this keeps "[a][b][c]..." linear, not quadratic.
            run_end = last = start
            while (blob := _SUBJ_BLOB.match(s, run_end, end)) is not None:
                last, run_end = run_end, blob.end()
            if run_end == start:
                break
            if run_end < end:
                start = run_end
                continue
            # the run reaches the end: its last blob is all the subject there is
            start = last
            break
        # (6) "[fwd: ...]" wrapper
        if end - start >= 6 and s[start : start + 5].lower() == "[fwd:" and s[end - 1] == "]":
            start, end = start + 5, end - 1
            continue
        return s[start:end]


def _parse_date(value: bytes | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = parsedate_tz(_text(value))
    except (ValueError, IndexError, TypeError, OverflowError):
        return None
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    try:
        # RFC 5322 §3.3: "-0000" (offset None) is UTC with no known local zone
        zone = dt.timezone(dt.timedelta(seconds=parsed[9] or 0))
        # RFC 5322 §3.3 allows a leap second; datetime does not
        return dt.datetime(year, month, day, hour, minute, min(second, 59), tzinfo=zone)
    except (ValueError, OverflowError):
        return None


# -- text for full-text search ----------------------------------------------------------------

_HTML_TAG = re.compile(r"<(?:(!--)|(script|style)\b|[a-z/!?])", re.I)
_SCRIPT_END = re.compile(r"</script", re.I)
_STYLE_END = re.compile(r"</style", re.I)


def _strip_html(text: str) -> str:
    """Text content of an HTML document; a linear scan, robust to unclosed constructs."""
    out: list[str] = []
    pos = 0
    while (m := _HTML_TAG.search(text, pos)) is not None:
        out.append(text[pos : m.start()])
        out.append(" ")
        if m[1] is not None:
            close = text.find("-->", m.end())
            pos = len(text) if close < 0 else close + 3
            continue
        if m[2] is not None:
            # script and style content is code, not text: skip to the matching end tag
            end_tag = _SCRIPT_END if m[2].lower() == "script" else _STYLE_END
            closing = end_tag.search(text, m.end())
            if closing is None:
                break
            pos = closing.end()
        gt = text.find(">", pos)
        if gt < 0:
            pos = len(text)
            break
        pos = gt + 1
    else:
        out.append(text[pos:])
    return " ".join(html.unescape("".join(out)).split())


def _header_text(fields: list[tuple[str, bytes]]) -> str:
    return "".join(f"{name}: {_readable(value)}\n" for name, value in fields)


class _Context:
    """What one parse accumulates while walking the tree."""

    __slots__ = ("parts_left", "raw", "text_room", "texts")

    def __init__(self, raw: bytes, max_text: int) -> None:
        self.raw = raw
        self.parts_left = MAX_PARTS
        self.texts: list[str] = []
        self.text_room = max_text

    def add_text(self, text: str) -> None:
        if self.text_room <= 0 or not text:
            return
        piece = text[: self.text_room]
        self.texts.append(piece)
        self.text_room -= len(piece) + 1  # + the "\n" that joins pieces

    def add_part_text(
        self, start: int, end: int, encoding: str, charset: str, is_html: bool
    ) -> None:
        if self.text_room <= 0:
            return
        # Transfer and charset encodings expand text at most ~12x (QP of 4-byte UTF-8),
        # so more encoded input than that cannot be needed to fill the remaining room.
        data = self.raw[start : min(end, start + self.text_room * 12 + 16)]
        if encoding == "base64":
            data = _b64decode(data)
        elif encoding == "quoted-printable":
            data = binascii.a2b_qp(data)
        text = _decode_charset(data, charset)
        self.add_text(_strip_html(text) if is_html else text.replace("\r\n", "\n"))


# -- the MIME tree -----------------------------------------------------------------------------

# RFC 2046 §5.1.1: "--" boundary ["--"] transport-padding CRLF (bare LF tolerated)
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r?\n|\Z)")


def _split_multipart(
    raw: bytes, start: int, end: int, boundary: bytes, limit: int
) -> list[tuple[int, int]]:
    """Byte ranges of the first `limit` body parts of the multipart body raw[start:end]."""
    delimiter = b"--" + boundary
    ranges: list[tuple[int, int]] = []
    part_start = -1
    pos = start
    while (i := raw.find(delimiter, pos, end)) >= 0:
        pos = i + 1
        # RFC 2046 §5.1.1: a delimiter is a whole line
        if i != start and raw[i - 1] != 0x0A:
            continue
        tail = _DELIMITER_TAIL.match(raw, i + len(delimiter), end)
        if tail is None:
            continue
        if part_start >= 0:
            # RFC 2046 §5.1.1: the CRLF before the delimiter is part of it
            eol = 2 if raw[i - 2 : i] == b"\r\n" else 1
            ranges.append((part_start, max(part_start, i - eol)))
        # a close delimiter starts the epilogue; past the limit the rest stays unsplit
        if tail[1] is not None or len(ranges) >= limit:
            return ranges
        part_start = pos = tail.end()
    if part_start >= 0:
        ranges.append((part_start, end))
    return ranges


def _count_lines(raw: bytes, start: int, end: int) -> int:
    lines = raw.count(b"\n", start, end)
    return lines + 1 if end > start and raw[end - 1] != 0x0A else lines


def _join(path: str, number: int | str) -> str:
    return f"{path}.{number}" if path else str(number)


class _Built(NamedTuple):
    part: Part
    body: bytes
    bodystructure: bytes
    fields: list[tuple[str, bytes]]
    first: dict[str, bytes]


def _empty_part(path: str, pos: int) -> _Built:
    """The zero-length text/plain Dovecot reports for a multipart that has no parts."""
    part = Part(path, "text", "plain", (), "7bit", pos, pos, pos, 0, ())
    body, bodystructure = _render_leaf(part, {}, None)
    return _Built(part, body, bodystructure, [], {})


def _render_leaf(
    part: Part, first: dict[str, bytes], embedded: tuple[bytes, _Built] | None
) -> tuple[bytes, bytes]:
    params = part.params
    if part.type == "text" and all(name != "charset" for name, _ in params):
        # RFC 2045 §5.2: text without a charset is us-ascii
        params = (("charset", "us-ascii"), *params)
    # RFC 9051 §7.5.2 body-type-1part: type, subtype, body-fields
    head = b" ".join(
        [
            quote_string(part.type.upper()),
            quote_string(part.subtype.upper()),
            _render_params(params),
            _nstring(_nolf(first.get("content-id"))),
            _nstring(_nolf(first.get("content-description"))),
            quote_string(part.encoding.upper()),
            b"%d" % (part.body_end - part.body_start),
        ]
    )
    body = bodystructure = head
    if embedded is not None:
        # RFC 9051 §7.5.2 body-type-msg: envelope, body and line count of the message
        envelope, child = embedded
        body += b" %b %b %d" % (envelope, child.body, part.lines)
        bodystructure += b" %b %b %d" % (envelope, child.bodystructure, part.lines)
    elif part.type == "text":
        # RFC 9051 §7.5.2 body-type-text: line count
        body += b" %d" % part.lines
        bodystructure += b" %d" % part.lines
    # RFC 9051 §7.5.2 body-ext-1part: md5, disposition, language, location
    extension = b" ".join(
        [
            b"",
            _nstring(_nolf(first.get("content-md5"))),
            _disposition(first.get("content-disposition")),
            _language(first.get("content-language")),
            _nstring(_nolf(first.get("content-location"))),
        ]
    )
    return b"(" + body + b")", b"(" + bodystructure + extension + b")"


def _render_multipart(
    part: Part, first: dict[str, bytes], children: list[_Built]
) -> tuple[bytes, bytes]:
    subtype = quote_string(part.subtype.upper())
    body = b"(" + b"".join(c.body for c in children) + b" " + subtype + b")"
    # RFC 9051 §7.5.2 body-ext-mpart: params, disposition, language, location
    extension = b" ".join(
        [
            b"",
            _render_params(part.params),
            _disposition(first.get("content-disposition")),
            _language(first.get("content-language")),
            _nstring(_nolf(first.get("content-location"))),
        ]
    )
    bodystructure = (
        b"(" + b"".join(c.bodystructure for c in children) + b" " + subtype + extension + b")"
    )
    return body, bodystructure


def _entity(
    ctx: _Context,
    start: int,
    end: int,
    path: str,
    depth: int,
    in_digest: bool,
    message_root: bool,
) -> _Built:
    """Parse the entity raw[start:end] and everything below it."""
    raw = ctx.raw
    ctx.parts_left -= 1
    header_end, body_start = _scan_header(raw, start, end)
    fields = _split_fields(raw, start, header_end)
    first = _first_values(fields)
    if message_root and depth > 0:
        # the header of an embedded message is body text of the message around it
        ctx.add_text(_header_text(fields))
    mtype, subtype, params, boundary = _content_type(first.get("content-type"), in_digest)
    encoding = _transfer_encoding(first.get("content-transfer-encoding"))
    children: list[_Built] = []
    embedded: tuple[bytes, _Built] | None = None
    can_nest = depth < MAX_DEPTH and ctx.parts_left > 0
    if mtype == "multipart":
        if boundary and can_nest:
            ranges = _split_multipart(raw, body_start, end, boundary, ctx.parts_left)
            for number, (s, e) in enumerate(ranges, 1):
                if ctx.parts_left <= 0:
                    break
                children.append(
                    _entity(ctx, s, e, _join(path, number), depth + 1, subtype == "digest", False)
                )
            if not children:
                # RFC 9051 §7.5.2 body-type-mpart needs at least one part
                children.append(_empty_part(_join(path, 1), end))
        else:
            # Unsplittable (no boundary, or past the limits): an opaque attachment, which is
            # also how Dovecot reports parts past its limits.
            mtype, subtype = "application", "octet-stream"
    elif mtype == "message" and subtype in ("rfc822", "global"):
        # RFC 2046 §5.2.1: only identity encodings leave the embedded message readable
        if encoding in ("7bit", "8bit", "binary") and can_nest:
            # the embedded message's parts are numbered below this part's IMAP number
            inner_path = _join(path, 1) if message_root else path
            child = _entity(ctx, body_start, end, inner_path, depth + 1, False, True)
            embedded = (_envelope(child.first, _address_fields(child.first)), child)
            children.append(child)
        else:
            mtype, subtype = "application", "octet-stream"
    elif mtype == "text":
        charset = next((v for n, v in params if n == "charset"), "")
        ctx.add_part_text(body_start, end, encoding, charset, subtype == "html")
    part = Part(
        path=path,
        type=mtype,
        subtype=subtype,
        params=params,
        encoding=encoding,
        header_start=start,
        body_start=body_start,
        body_end=end,
        lines=_count_lines(raw, body_start, end),
        children=tuple(c.part for c in children),
    )
    if mtype == "multipart":
        body, bodystructure = _render_multipart(part, first, children)
    else:
        body, bodystructure = _render_leaf(part, first, embedded)
    return _Built(part, body, bodystructure, fields, first)


# -- public entry points -------------------------------------------------------------------------


def parse_message(raw: bytes, max_text: int = 1_000_000) -> ParsedMessage:
    """Parse `raw` once; never raises, whatever the bytes."""
    raw = bytes(raw)
    ctx = _Context(raw, max_text)
    built = _entity(ctx, 0, len(raw), "", 0, False, True)
    first = built.first
    addresses = _address_fields(first)
    subject = _readable(first.get("subject", b""))
    references = tuple(_msg_ids(first.get("references")))
    in_reply_to = _msg_ids(first.get("in-reply-to"))
    message_id = _msg_ids(first.get("message-id"))
    return ParsedMessage(
        envelope=_envelope(first, addresses),
        body=built.body,
        bodystructure=built.bodystructure,
        root=built.part,
        header_end=built.part.body_start,
        sent_date=_parse_date(first.get("date")),
        subject=subject,
        base_subject=_base_subject(subject),
        from_addr=_readable_addresses(addresses["from"]),
        to_addr=_readable_addresses(addresses["to"]),
        cc_addr=_readable_addresses(addresses["cc"]),
        bcc_addr=_readable_addresses(addresses["bcc"]),
        sort_from=_sort_key(addresses["from"]),
        sort_to=_sort_key(addresses["to"]),
        sort_cc=_sort_key(addresses["cc"]),
        display_from=_display_key(addresses["from"]),
        display_to=_display_key(addresses["to"]),
        message_id=message_id[0] if message_id else "",
        in_reply_to=in_reply_to[0] if in_reply_to else "",
        references=references,
        header_text=_header_text(built.fields),
        body_text="\n".join(ctx.texts)[: max(max_text, 0)],
    )


def _part_to_json(part: Part) -> list[object]:
    return [
        part.path,
        part.type,
        part.subtype,
        [[name, value] for name, value in part.params],
        part.encoding,
        part.header_start,
        part.body_start,
        part.body_end,
        part.lines,
        [_part_to_json(child) for child in part.children],
    ]


def encode_parts(root: Part) -> bytes:
    """Serialise a part tree for the metadata store (compact JSON)."""
    return json.dumps(_part_to_json(root), ensure_ascii=False, separators=(",", ":")).encode()


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"bad part tree: expected a string, got {value!r}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"bad part tree: expected an integer, got {value!r}")
    return value


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise ValueError(f"bad part tree: expected a list, got {value!r}")
    return value


def _part_from_json(value: object) -> Part:
    items = _list(value)
    if len(items) != 10:
        raise ValueError(f"bad part tree: expected 10 fields, got {len(items)}")
    params: list[tuple[str, str]] = []
    for pair in _list(items[3]):
        name, val = _list(pair)
        params.append((_str(name), _str(val)))
    return Part(
        path=_str(items[0]),
        type=_str(items[1]),
        subtype=_str(items[2]),
        params=tuple(params),
        encoding=_str(items[4]),
        header_start=_int(items[5]),
        body_start=_int(items[6]),
        body_end=_int(items[7]),
        lines=_int(items[8]),
        children=tuple(_part_from_json(child) for child in _list(items[9])),
    )


def decode_parts(data: bytes) -> Part:
    """Inverse of `encode_parts`; raises ValueError on anything it did not write."""
    return _part_from_json(json.loads(data))


def find_part(root: Part, path: str) -> Part | None:
    """The part an IMAP section part number names, or None when there is none.

    RFC 9051 §6.4.5: part "1" of a non-multipart message is its body; below a message/rfc822
    part, numbers continue into the embedded message by the same rule.
    """
    if path == "":
        return root
    numbers: list[int] = []
    for piece in path.split("."):
        if not piece.isascii() or not piece.isdigit() or piece.startswith("0") or len(piece) > 9:
            return None
        numbers.append(int(piece))
    node = root
    at_message = True  # node is the root entity of a message
    for number in numbers:
        if not at_message and node.type == "message" and node.children:
            node, at_message = node.children[0], True
        if node.type == "multipart":
            if number > len(node.children):
                return None
            node = node.children[number - 1]
        elif not at_message or number != 1:
            return None
        at_message = False
    return node
