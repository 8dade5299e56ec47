"""FETCH body sections (RFC 9051 §6.4.5) and BINARY (RFC 3516) cut from a stored message.

`store.mime.parse_message` records byte offsets for every MIME part at delivery, so a section
is a slice of the stored bytes: nothing here reparses the MIME tree.  A mailbox entry's message
is `prefix + blob` (per-entry header lines before the shared blob); part offsets are offsets
into the blob, so they shift by `prefix_len`, except that the root header starts at 0 and so
includes the prefix.  The functions are pure and hand-written because stdlib `email` neither
reports offsets nor returns parts byte for byte as stored.

Bodies come back as stored: bare LF line ends are not rewritten (Dovecot rewrites them to
CRLF); only HEADER.FIELDS(.NOT), which rebuilds the header from its fields, ends every line
with CRLF.  A section whose part does not exist is None; Dovecot answers such a FETCH with an
empty string, not NIL (imap-msgpart.c, "MIME part not found. return an empty part").
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator

from postoffice.imap.commands import Section
from postoffice.store.mime import Part, find_part

__all__ = ["UnknownEncoding", "apply_partial", "binary_data", "binary_size", "section_data"]


class UnknownEncoding(Exception):
    """BINARY of a part whose Content-Transfer-Encoding cannot be undone.

    RFC 9051 §7.1 (from RFC 3516): the server answers NO [UNKNOWN-CTE].
    """

    def __init__(self, encoding: str) -> None:
        super().__init__(f"unknown Content-Transfer-Encoding {encoding!r}")
        self.encoding = encoding


# -- slices of the stored message -------------------------------------------------------------


def _path(numbers: tuple[int, ...]) -> str:
    return ".".join(str(n) for n in numbers)


def _header(message: bytes, root: Part, prefix_len: int, part: Part) -> bytes:
    """The part's header including the blank line; the root's starts with the prefix."""
    start = 0 if part is root else prefix_len + part.header_start
    return message[start : prefix_len + part.body_start]


def _body(message: bytes, prefix_len: int, part: Part) -> bytes:
    return message[prefix_len + part.body_start : prefix_len + part.body_end]


# -- header fields ------------------------------------------------------------------------------

_LINE = re.compile(rb"[^\n]*\n|[^\n]+")
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def _fields(header: bytes) -> Iterator[tuple[str | None, bytes]]:
    """(upper-case name, lines ending in CRLF) of each field in a header block, in order.

    Continuation lines stay with their field.  Lines that are no field (no colon, a "From "
    line, a continuation with nothing to continue) come as name None, so that no
    HEADER.FIELDS list selects them and every HEADER.FIELDS.NOT keeps them.
    """
    name: str | None = None
    lines: list[bytes] = []
    for m in _LINE.finditer(header):
        content = m[0].removesuffix(b"\n").removesuffix(b"\r")
        if not content:
            break  # RFC 5322 §2.1: the empty line ends the header
        if content[0] not in b" \t":
            if lines:
                yield name, b"".join(lines)
            field = _FIELD_NAME.match(content)
            name = None if field is None else field[1].decode("ascii").upper()
            lines = []
        lines.append(content + b"\r\n")
    if lines:
        yield name, b"".join(lines)


def _select_fields(header: bytes, names: tuple[str, ...], keep: bool) -> bytes:
    """The fields whose names are (keep) or are not (not keep) in `names`, case-insensitive."""
    wanted = {n.upper() for n in names}
    return b"".join(lines for name, lines in _fields(header) if (name in wanted) == keep)


# -- BODY[section] ------------------------------------------------------------------------------


def section_data(message: bytes, root: Part, prefix_len: int, section: Section) -> bytes | None:
    """The content of BODY[section] (RFC 9051 §6.4.5), or None when the part does not exist."""
    if not section.part:
        if section.text == "":
            return message
        entity = root
    else:
        part = find_part(root, _path(section.part))
        if part is None:
            return None
        if section.text == "":
            # BODY[n] of a message/rfc822 part is the whole embedded message
            return _body(message, prefix_len, part)
        if section.text == "MIME":
            # Dovecot, like RFC 9051, gives the part's own header; for part 1 of a
            # single-part message that is the message header
            return _header(message, root, prefix_len, part)
        # RFC 9051 §6.4.5: HEADER, HEADER.FIELDS(.NOT) and TEXT after a part number address
        # the message embedded in a message/rfc822 part (its only child)
        if part.type != "message" or not part.children:
            return None
        entity = part.children[0]
    match section.text:
        case "HEADER":
            return _header(message, root, prefix_len, entity)
        case "TEXT":
            return _body(message, prefix_len, entity)
        case "HEADER.FIELDS" | "HEADER.FIELDS.NOT":
            header = _header(message, root, prefix_len, entity)
            keep = section.text == "HEADER.FIELDS"
            # RFC 9051 §6.4.5: the selected fields, then the blank line that ends a header
            return _select_fields(header, section.fields, keep) + b"\r\n"
    return None  # MIME without a part number names nothing


# -- BINARY[part] (RFC 3516) --------------------------------------------------------------------

_IDENTITY = frozenset({"7bit", "8bit", "binary"})

_NOT_BASE64 = bytes(
    sorted(
        set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    )
)
_PADDING = re.compile(rb"=+")


def _base64(data: bytes) -> bytes:
    """Decode base64 tolerantly: skip whitespace and junk, repair missing padding.

    `binascii.a2b_base64` alone would raise on a length that is not a multiple of 4 and stop
    at the first padding; decoding each padded block separately keeps what follows it, as
    when base64 blocks are concatenated.  A block with one character left over drops it (six
    bits make no octet).
    """
    out: list[bytes] = []
    for block in _PADDING.split(data.translate(None, _NOT_BASE64)):
        extra = len(block) % 4
        if extra == 1:
            block = block[:-1]
        elif extra:
            block += b"=" * (4 - extra)
        out.append(binascii.a2b_base64(block))
    return b"".join(out)


# RFC 2045 §6.7: "=" at the end of a line is a soft line break, and trailing whitespace on
# a line was added in transport and is dropped (rule 3), also between the "=" and the end.
_QP_LINE_END = re.compile(rb"=[ \t]*(?:\r?\n|\Z)|(?<![ \t])[ \t]*(\r?\n|\Z)")


def _quoted_printable(data: bytes) -> bytes:
    """Decode quoted-printable; hard line breaks become CRLF.

    `binascii.a2b_qp` neither drops trailing whitespace nor sees "= " before a line end as a
    soft break, so line ends are settled first; it then decodes the "=XX" escapes (leaving a
    malformed "=" as it is).
    """
    return binascii.a2b_qp(_QP_LINE_END.sub(lambda m: b"\r\n" if m[1] else b"", data))


def _decode(encoding: str, data: bytes) -> bytes:
    if encoding in _IDENTITY:
        return data
    if encoding == "base64":
        return _base64(data)
    if encoding == "quoted-printable":
        return _quoted_printable(data)
    raise UnknownEncoding(encoding)


def binary_data(message: bytes, root: Part, prefix_len: int, part: tuple[int, ...]) -> bytes | None:
    """The content of BINARY[part] (RFC 3516 §4.2), or None when the part does not exist.

    A leaf's body loses its Content-Transfer-Encoding.  Multiparts and message/rfc822 parts
    come as stored: Dovecot also decodes the leaves inside them, we do not.  BINARY[] of a
    single-part message keeps the header, with Content-Transfer-Encoding replaced by
    "binary" when the body was decoded, as Dovecot does.  Raises UnknownEncoding.
    """
    if part:
        node = find_part(root, _path(part))
        if node is None:
            return None
        body = _body(message, prefix_len, node)
        return body if node.children else _decode(node.encoding, body)
    if root.children:
        return message
    body = _decode(root.encoding, _body(message, prefix_len, root))
    header = _header(message, root, prefix_len, root)
    if root.encoding in _IDENTITY:
        return header + body
    fields = _select_fields(header, ("Content-Transfer-Encoding",), keep=False)
    return fields + b"Content-Transfer-Encoding: binary\r\n\r\n" + body


def binary_size(message: bytes, root: Part, prefix_len: int, part: tuple[int, ...]) -> int | None:
    """BINARY.SIZE[part] (RFC 3516 §4.2): the length of BINARY[part]; raises UnknownEncoding."""
    data = binary_data(message, root, prefix_len, part)
    return None if data is None else len(data)


def apply_partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    """The <offset.length> slice of a section (RFC 9051 §6.4.5); past the end it is empty."""
    if partial is None:
        return data
    offset, length = partial
    return data[offset : offset + length]
