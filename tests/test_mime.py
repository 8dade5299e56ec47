"""store/mime.py: IMAP wire forms, exact part offsets, search/sort fields, robustness."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from collections.abc import Iterator
from email.message import Message

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from imapclient.response_parser import parse_fetch_response

from postoffice.store.mime import (
    MAX_DEPTH,
    ParsedMessage,
    Part,
    decode_parts,
    encode_parts,
    find_part,
    parse_message,
    quote_string,
)


def crlf(text: str) -> bytes:
    """A test message written with \\n line ends, as the CRLF bytes a server receives."""
    return text.replace("\n", "\r\n").encode("utf-8")


# -- a minimal IMAP value reader, to check that every wire form is well-formed ------------------

IMAPValue = None | int | bytes | list["IMAPValue"]
_ATOM = re.compile(rb"[^\x00-\x20\x7f(){%*\"\\\]]+")


def read_imap(data: bytes) -> IMAPValue:
    """Parse one IMAP value (NIL, number, quoted, literal, list); it must use all of `data`."""
    value, pos = _read(data, 0)
    assert pos == len(data), f"trailing data at {pos}: {data[pos : pos + 20]!r}"
    return value


def _read(data: bytes, pos: int) -> tuple[IMAPValue, int]:
    head = data[pos : pos + 1]
    if head == b"(":
        items: list[IMAPValue] = []
        pos += 1
        while data[pos : pos + 1] != b")":
            # 1*address and 1*body are the two places where lists abut without a space
            if items and not (isinstance(items[-1], list) and data[pos : pos + 1] == b"("):
                assert data[pos : pos + 1] == b" ", f"missing space at {pos}"
                pos += 1
            item, pos = _read(data, pos)
            items.append(item)
        return items, pos + 1
    if head == b'"':
        out = bytearray()
        pos += 1
        while data[pos : pos + 1] != b'"':
            char = data[pos : pos + 1]
            assert char not in (b"", b"\r", b"\n"), "quoted strings cannot hold CR or LF"
            assert char[0] < 0x80, "8-bit text needs a literal"
            if char == b"\\":
                pos += 1
                assert data[pos : pos + 1] in (b"\\", b'"'), "bad escape"
            out += data[pos : pos + 1]
            pos += 1
        return bytes(out), pos + 1
    if head == b"{":
        m = re.compile(rb"\{(\d+)\}\r\n").match(data, pos)
        assert m is not None, "bad literal header"
        size = int(m[1])
        literal = data[m.end() : m.end() + size]
        assert len(literal) == size
        assert b"\x00" not in literal
        return literal, m.end() + size
    m = _ATOM.match(data, pos)
    assert m is not None, f"unexpected {data[pos : pos + 20]!r} at {pos}"
    if m[0] == b"NIL":
        return None, m.end()
    assert m[0].isdigit(), f"unexpected atom {m[0]!r}"
    return int(m[0]), m.end()


def check_envelope(value: IMAPValue) -> None:
    assert isinstance(value, list)
    assert len(value) == 10
    for index in (0, 1, 8, 9):
        assert value[index] is None or isinstance(value[index], bytes)
    for addresses in value[2:8]:
        if addresses is None:
            continue
        assert isinstance(addresses, list)
        assert addresses
        for address in addresses:
            assert isinstance(address, list)
            assert len(address) == 4
            assert all(v is None or isinstance(v, bytes) for v in address)


def check_body(value: IMAPValue, part: Part, extended: bool) -> None:
    """The wire structure agrees with the part tree: arity, types, sizes, children."""
    assert isinstance(value, list)
    if part.type == "multipart":
        children = [v for v in value if isinstance(v, list)][: len(part.children)]
        assert len(children) == len(part.children)
        assert value[: len(children)] == children
        for child_value, child in zip(children, part.children, strict=True):
            check_body(child_value, child, extended)
        rest = value[len(children) :]
        assert rest[0] == part.subtype.upper().encode()
        assert len(rest) == (5 if extended else 1)
        return
    kind, subtype, params, _id, _desc, encoding, size, *more = value
    assert kind == part.type.upper().encode()
    assert subtype == part.subtype.upper().encode()
    assert params is None or (isinstance(params, list) and len(params) % 2 == 0)
    assert encoding == part.encoding.upper().encode()
    assert size == part.body_end - part.body_start
    # RFC 9051 §7.5.2: only message/rfc822 (and message/global) carry an envelope and body;
    # any other message/* subtype is a basic part.
    if part.type == "message" and part.subtype in ("rfc822", "global"):
        envelope, inner, lines, *more = more
        check_envelope(envelope)
        check_body(inner, part.children[0], extended)
        assert lines == part.lines
    elif part.type == "text":
        lines, *more = more
        assert lines == part.lines
    else:
        assert not part.children
    assert len(more) == (4 if extended else 0)


def check_offsets(part: Part, size: int) -> None:
    assert 0 <= part.header_start <= part.body_start <= part.body_end <= size
    if part.type == "message" and part.subtype in ("rfc822", "global"):
        (inner,) = part.children
        assert (inner.header_start, inner.body_end) == (part.body_start, part.body_end)
    previous_end = part.body_start
    for child in part.children:
        check_offsets(child, size)
        if part.type == "multipart":
            assert previous_end <= child.header_start
            assert child.body_end <= part.body_end
            previous_end = child.body_end


def check_parsed(raw: bytes, parsed: ParsedMessage) -> None:
    check_offsets(parsed.root, len(raw))
    assert parsed.header_end == parsed.root.body_start
    check_envelope(read_imap(parsed.envelope))
    check_body(read_imap(parsed.body), parsed.root, extended=False)
    check_body(read_imap(parsed.bodystructure), parsed.root, extended=True)
    assert decode_parts(encode_parts(parsed.root)) == parsed.root


def imapclient_fetch(parsed: ParsedMessage) -> dict[bytes, object]:
    """What a real client library makes of our ENVELOPE and BODYSTRUCTURE."""
    line = b"1 (ENVELOPE " + parsed.envelope + b" BODYSTRUCTURE " + parsed.bodystructure + b")"
    # imaplib hands literals over as (text-before, literal) tuples
    response: list[bytes | tuple[bytes, bytes]] = []
    pos = 0
    for m in re.finditer(rb"\{(\d+)\}\r\n", line):
        if m.start() < pos:
            continue
        literal_end = m.end() + int(m[1])
        response.append((line[pos : m.start()] + b"{" + m[1] + b"}", line[m.end() : literal_end]))
        pos = literal_end
    response.append(line[pos:])
    fetched: dict[bytes, object] = parse_fetch_response(response)[1]
    return fetched


# -- sample messages ---------------------------------------------------------------------------

PLAIN = crlf(
    """\
Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0

Hello,
world
"""
)

ALTERNATIVE = crlf(
    """\
From: a@example.org
To: b@example.org
Subject: alt
Content-Type: multipart/alternative; boundary="=_alt"

--=_alt
Content-Type: text/plain; charset=ISO-8859-1; format=flowed
Content-Transfer-Encoding: quoted-printable

caf=E9 au lait=
 please
--=_alt
Content-Type: text/html; charset=utf-8

<html><head><style>p {color: red}</style></head><body><p>caf&eacute; &amp; tea</p>\
<script>alert(1)</script></body></html>
--=_alt--
"""
)

# outer mixed: 1 text, 2 message/rfc822 (mixed: 2.1 text, 2.2 alternative: 2.2.1, 2.2.2), 3 pdf
NESTED = crlf(
    """\
From: Outer <outer@example.org>
To: inner@example.org
Subject: Fwd: nested
Date: Thu, 01 Feb 2024 10:00:00 +0100
Content-Type: multipart/mixed; boundary=outer

This is a preamble.
--outer
Content-Type: text/plain

See the forwarded message.
--outer
Content-Type: message/rfc822
Content-Description: forwarded

From: Inner Sender <sender@example.com>
Subject: inner subject
Message-ID: <inner@example.com>
Content-Type: multipart/mixed; boundary="inner"

--inner

first inner part
--inner
Content-Type: multipart/alternative; boundary=alt

--alt
Content-Type: text/plain; charset=us-ascii

deep plain
--alt
Content-Type: text/html

<b>deep</b> html
--alt--

--inner--

--outer
Content-Type: application/pdf; name="doc.pdf"
Content-Disposition: attachment; filename="doc.pdf"
Content-Transfer-Encoding: base64
Content-Language: en, de
Content-Location: http://example.org/doc.pdf
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==

JVBERi0xLjQK
--outer--
epilogue
"""
)

GROUPS = crlf(
    """\
From: "Joe Q. Public" <john.q.public@example.com>
To: A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;, Mary <mary@x.test>
Cc: Undisclosed recipients:;
Bcc: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>
Reply-To: <@route.test,@other.test:box@host.test>
Sender: just-local

body
"""
)

ENCODED = crlf(
    """\
From: =?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@dkuug.dk>
To: =?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>
Subject: =?utf-8?b?UmU6IMOcYmVy?=
 =?utf-8?q?_gr=C3=BC=C3=9Fe?=
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

w5xiZXIgZ3LDvMOfZQo=
"""
)

MISSING = b"\r\nno header at all\r\n"

BAD_BOUNDARY = crlf(
    """\
Content-Type: multipart/mixed; boundary=declared

--other
Content-Type: text/plain

text
--other--
"""
)

UNTERMINATED = crlf(
    """\
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

one
--b
Content-Type: text/plain

two, never closed
"""
)

NO_BOUNDARY = crlf(
    """\
Content-Type: multipart/mixed

--b
x
"""
)

LF_ONLY = (
    b"From: lf@example.org\n"
    b"Subject: bare LF\n"
    b"Content-Type: multipart/mixed; boundary=lf\n"
    b"\n"
    b"--lf\n"
    b"Content-Type: text/plain\n"
    b"\n"
    b"line one\n"
    b"line two\n"
    b"--lf\n"
    b"\n"
    b"no headers here\n"
    b"--lf--\n"
)

DIGEST = crlf(
    """\
Content-Type: multipart/digest; boundary=d

--d

From: one@example.org
Subject: first

one
--d
Content-Type: text/plain

not a message
--d--
"""
)

SAMPLES = [PLAIN, ALTERNATIVE, NESTED, GROUPS, ENCODED, LF_ONLY, DIGEST]

PLAIN_ENVELOPE = (
    b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
    b'((NIL NIL "imap" "cac.washington.edu")) '
    b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
    b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
)

NESTED_INNER_ENVELOPE = (
    b'(NIL "inner subject" (("Inner Sender" NIL "sender" "example.com")) '
    b'(("Inner Sender" NIL "sender" "example.com")) '
    b'(("Inner Sender" NIL "sender" "example.com")) NIL NIL NIL NIL "<inner@example.com>")'
)

ENVELOPES = [
    pytest.param(PLAIN, PLAIN_ENVELOPE, id="rfc3501-example"),
    pytest.param(
        GROUPS,
        b'(NIL NIL (("Joe Q. Public" NIL "john.q.public" "example.com")) '
        b'((NIL NIL "just-local" "MISSING_DOMAIN")) '
        b'((NIL "@route.test,@other.test" "box" "host.test")) '
        b'((NIL NIL "A Group" NIL)("Ed Jones" NIL "c" "a.test")(NIL NIL "joe" "where.test")'
        b'("John" NIL "jdoe" "one.test")(NIL NIL NIL NIL)("Mary" NIL "mary" "x.test")) '
        b'((NIL NIL "Undisclosed recipients" NIL)(NIL NIL NIL NIL)) '
        b'(("Pete" NIL "pete" "silly.test")) NIL NIL)',
        id="groups-routes-comments",
    ),
    pytest.param(
        ENCODED,
        b'(NIL "=?utf-8?b?UmU6IMOcYmVy?= =?utf-8?q?_gr=C3=BC=C3=9Fe?=" '
        b'(("=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?=" NIL "keld" "dkuug.dk")) '
        b'(("=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?=" NIL "keld" "dkuug.dk")) '
        b'(("=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?=" NIL "keld" "dkuug.dk")) '
        b'(("=?US-ASCII?Q?Keith_Moore?=" NIL "moore" "cs.utk.edu")) NIL NIL NIL NIL)',
        id="encoded-words-stay-encoded",
    ),
    pytest.param(MISSING, b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)", id="no-header"),
    pytest.param(b"", b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)", id="empty"),
    pytest.param(
        b"Subject: caf\xc3\xa9\r\nFrom: \xc3\x89 <e@x.test>\r\nIn-Reply-To: <a@b>\r\n\r\n",
        b'(NIL {5}\r\ncaf\xc3\xa9 (({2}\r\n\xc3\x89 NIL "e" "x.test")) '
        b'(({2}\r\n\xc3\x89 NIL "e" "x.test")) (({2}\r\n\xc3\x89 NIL "e" "x.test")) '
        b'NIL NIL NIL "<a@b>" NIL)',
        id="8bit-as-literals",
    ),
    pytest.param(
        b'Subject: say "hi" \\ bye\r\nTo: "Doe, \\"J\\"" <j@x.test>\r\n\r\n',
        b'(NIL "say \\"hi\\" \\\\ bye" NIL NIL NIL (("Doe, \\"J\\"" NIL "j" "x.test")) '
        b"NIL NIL NIL NIL)",
        id="quoting",
    ),
    pytest.param(
        b"Subject: folded\r\n  over\r\n\tlines\r\nTo: <>, plain\r\n\r\n",
        b'(NIL "folded  over\tlines" NIL NIL NIL '
        b'((NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")(NIL NIL "plain" "MISSING_DOMAIN")) '
        b"NIL NIL NIL NIL)",
        id="folding-and-missing-parts",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), ENVELOPES)
def test_envelope(raw: bytes, expected: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.envelope == expected
    check_parsed(raw, parsed)


PLAIN_BS = b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 15 2 NIL NIL NIL NIL)'

BODYSTRUCTURES = [
    pytest.param(PLAIN, PLAIN_BS, id="plain"),
    pytest.param(
        ALTERNATIVE,
        b'(("TEXT" "PLAIN" ("CHARSET" "ISO-8859-1" "FORMAT" "flowed") NIL NIL '
        b'"QUOTED-PRINTABLE" 24 2 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8") NIL NIL "7BIT" 121 1 NIL NIL NIL NIL) '
        b'"ALTERNATIVE" ("BOUNDARY" "=_alt") NIL NIL NIL)',
        id="alternative",
    ),
    pytest.param(
        NESTED,
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 26 1 NIL NIL NIL NIL)'
        b'("MESSAGE" "RFC822" NIL NIL "forwarded" "7BIT" 379 '
        + NESTED_INNER_ENVELOPE
        + b' (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 16 1 NIL NIL NIL NIL)'
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 16 1 NIL NIL NIL NIL) '
        b'"ALTERNATIVE" ("BOUNDARY" "alt") NIL NIL NIL) '
        b'"MIXED" ("BOUNDARY" "inner") NIL NIL NIL) 22 NIL NIL NIL NIL)'
        b'("APPLICATION" "PDF" ("NAME" "doc.pdf") NIL NIL "BASE64" 12 '
        b'"Q2hlY2sgSW50ZWdyaXR5IQ==" ("ATTACHMENT" ("FILENAME" "doc.pdf")) ("en" "de") '
        b'"http://example.org/doc.pdf") '
        b'"MIXED" ("BOUNDARY" "outer") NIL NIL NIL)',
        id="mixed-with-message-rfc822",
    ),
    pytest.param(
        MISSING,
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 18 1 NIL NIL NIL NIL)',
        id="no-header",
    ),
    pytest.param(
        BAD_BOUNDARY,
        # no delimiter line at all: Dovecot's empty text/plain stands in for the parts
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL) '
        b'"MIXED" ("BOUNDARY" "declared") NIL NIL NIL)',
        id="boundary-never-used",
    ),
    pytest.param(
        UNTERMINATED,
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 3 1 NIL NIL NIL NIL)'
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 19 1 NIL NIL NIL NIL) '
        b'"MIXED" ("BOUNDARY" "b") NIL NIL NIL)',
        id="no-close-delimiter",
    ),
    pytest.param(
        NO_BOUNDARY,
        b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "7BIT" 8 NIL NIL NIL NIL)',
        id="multipart-without-boundary",
    ),
    pytest.param(
        LF_ONLY,
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 17 2 NIL NIL NIL NIL)'
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 15 1 NIL NIL NIL NIL) '
        b'"MIXED" ("BOUNDARY" "lf") NIL NIL NIL)',
        id="bare-lf",
    ),
    pytest.param(
        DIGEST,
        b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 44 '
        b'(NIL "first" ((NIL NIL "one" "example.org")) ((NIL NIL "one" "example.org")) '
        b'((NIL NIL "one" "example.org")) NIL NIL NIL NIL NIL) '
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 3 1 NIL NIL NIL NIL) 4 '
        b"NIL NIL NIL NIL)"
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 13 1 NIL NIL NIL NIL) '
        b'"DIGEST" ("BOUNDARY" "d") NIL NIL NIL)',
        id="digest-defaults-to-message",
    ),
    pytest.param(
        crlf(
            """\
Content-Type: message/rfc822
Content-Transfer-Encoding: base64

U3ViamVjdDogeA0KDQp5DQo=
"""
        ),
        b'("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 26 NIL NIL NIL NIL)',
        id="encoded-message-rfc822-is-opaque",
    ),
    pytest.param(
        crlf(
            """\
Content-Type: text/plain; charset="utf-8" (comment); format=flowed
Content-ID: <id@x>
Content-Disposition: inline
Content-Language: fr

x"""
        ),
        b'("TEXT" "PLAIN" ("CHARSET" "utf-8" "FORMAT" "flowed") "<id@x>" NIL "7BIT" 1 1 '
        b'NIL ("INLINE" NIL) "fr" NIL)',
        id="single-part-extension-data",
    ),
    pytest.param(
        b"Content-Type: text\r\n\r\n",
        b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)',
        id="invalid-content-type-defaults",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), BODYSTRUCTURES)
def test_bodystructure(raw: bytes, expected: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.bodystructure == expected
    check_parsed(raw, parsed)


def test_body_is_bodystructure_without_extension_data() -> None:
    parsed = parse_message(NESTED)
    assert parsed.body == (
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 26 1)'
        b'("MESSAGE" "RFC822" NIL NIL "forwarded" "7BIT" 379 '
        + NESTED_INNER_ENVELOPE
        + b' (("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 16 1)'
        b'(("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 1)'
        b'("TEXT" "HTML" ("CHARSET" "us-ascii") NIL NIL "7BIT" 16 1) "ALTERNATIVE") '
        b'"MIXED") 22)'
        b'("APPLICATION" "PDF" ("NAME" "doc.pdf") NIL NIL "BASE64" 12) "MIXED")'
    )


# -- offsets -------------------------------------------------------------------------------------

NESTED_ALTERNATIVE = crlf(
    """\
--alt
Content-Type: text/plain; charset=us-ascii

deep plain
--alt
Content-Type: text/html

<b>deep</b> html
--alt--
"""
)
NESTED_MESSAGE = NESTED[
    NESTED.index(b"From: Inner") : NESTED.index(b"\r\n--outer\r\nContent-Type: app")
]

NESTED_SECTIONS = [
    ("1", "text/plain", b"See the forwarded message."),
    ("2", "message/rfc822", NESTED_MESSAGE),
    ("2.1", "text/plain", b"first inner part"),
    ("2.2", "multipart/alternative", NESTED_ALTERNATIVE),
    ("2.2.1", "text/plain", b"deep plain"),
    ("2.2.2", "text/html", b"<b>deep</b> html"),
    ("3", "application/pdf", b"JVBERi0xLjQK"),
]


@pytest.mark.parametrize(("section", "media", "body"), NESTED_SECTIONS)
def test_nested_part_offsets(section: str, media: str, body: bytes) -> None:
    part = find_part(parse_message(NESTED).root, section)
    assert part is not None
    assert f"{part.type}/{part.subtype}" == media
    assert NESTED[part.body_start : part.body_end] == body


def test_nested_mime_headers_and_paths() -> None:
    root = parse_message(NESTED).root
    pdf = find_part(root, "3")
    assert pdf is not None
    assert pdf.path == "3"
    assert NESTED[pdf.header_start : pdf.body_start].startswith(b"Content-Type: application/pdf")
    assert NESTED[pdf.header_start : pdf.body_start].endswith(b"IQ==\r\n\r\n")
    message = find_part(root, "2")
    assert message is not None
    (embedded,) = message.children
    # the embedded root keeps its part's number; its parts go on below it
    assert embedded.path == "2"
    assert [c.path for c in embedded.children] == ["2.1", "2.2"]
    assert [c.path for c in embedded.children[1].children] == ["2.2.1", "2.2.2"]
    # BODY[2.HEADER] is the embedded message's header
    assert NESTED[embedded.header_start : embedded.body_start].startswith(b"From: Inner Sender")
    assert NESTED[root.header_start : root.body_start].endswith(b"boundary=outer\r\n\r\n")
    assert root.body_end == len(NESTED)


def test_lf_only_offsets() -> None:
    parsed = parse_message(LF_ONLY)
    first, second = parsed.root.children
    assert LF_ONLY[first.body_start : first.body_end] == b"line one\nline two"
    assert LF_ONLY[second.header_start : second.body_start] == b"\n"
    assert LF_ONLY[second.body_start : second.body_end] == b"no headers here"
    assert parsed.header_end == LF_ONLY.index(b"\n\n") + 2


def python_payloads(raw: bytes, part: Part, message: Message) -> Iterator[tuple[bytes, bytes]]:
    """Pairs (our byte range, Python's payload) for every leaf, walking both trees together."""
    payload = message.get_payload()
    if part.type == "multipart":
        assert isinstance(payload, list)
        for child, sub in zip(part.children, payload, strict=True):
            assert isinstance(sub, Message)
            yield from python_payloads(raw, child, sub)
    elif part.type == "message":
        assert isinstance(payload, list)
        assert isinstance(payload[0], Message)
        yield from python_payloads(raw, part.children[0], payload[0])
    else:
        assert isinstance(payload, str)
        yield raw[part.body_start : part.body_end], payload.encode("ascii", "surrogateescape")


@pytest.mark.parametrize("raw", SAMPLES)
def test_offsets_agree_with_python_email(raw: bytes) -> None:
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    pairs = list(python_payloads(raw, parse_message(raw).root, message))
    assert pairs
    for ours, theirs in pairs:
        assert ours == theirs


def test_unterminated_multipart_runs_to_the_end() -> None:
    # Python's email drops the final CRLF here too, as if a delimiter followed; with no
    # delimiter there is nothing for that CRLF to belong to, so it stays in the part.
    last = parse_message(UNTERMINATED).root.children[-1]
    assert UNTERMINATED[last.body_start : last.body_end] == b"two, never closed\r\n"


def test_message_without_header_separator() -> None:
    # like Python's email: the first line that is not a header line starts the body
    raw = b"Subject: x\r\nthis is not a header\r\nmore\r\n"
    parsed = parse_message(raw)
    assert parsed.header_end == raw.index(b"this")
    assert parsed.subject == "x"
    headers_only = parse_message(b"Subject: only\r\n")
    assert headers_only.header_end == headers_only.root.body_end == len(b"Subject: only\r\n")


def test_mbox_from_line_is_skipped() -> None:
    raw = b"From someone@x Mon Jan  1 00:00:00 2024\r\nSubject: s\r\n\r\nb\r\n"
    parsed = parse_message(raw)
    assert parsed.subject == "s"
    assert raw[parsed.root.body_start :] == b"b\r\n"


# -- find_part -----------------------------------------------------------------------------------

MESSAGE_AT_ROOT = crlf(
    "Content-Type: message/rfc822\n\n"
    "Subject: inner\nContent-Type: multipart/mixed; boundary=x\n\n--x\n\na\n--x\n\nb\n--x--\n"
)


@pytest.mark.parametrize(
    ("raw", "section", "expected"),
    [
        pytest.param(PLAIN, "1", b"Hello,\r\nworld\r\n", id="single-part-1-is-body"),
        pytest.param(PLAIN, "2", None, id="single-part-has-no-2"),
        pytest.param(PLAIN, "1.1", None, id="text-has-no-subparts"),
        pytest.param(MESSAGE_AT_ROOT, "1.1", b"a", id="root-message-rfc822"),
        pytest.param(MESSAGE_AT_ROOT, "1.2", b"b", id="root-message-rfc822-2"),
        pytest.param(MESSAGE_AT_ROOT, "1.3", None, id="past-last"),
        pytest.param(PLAIN, "0", None, id="zero"),
        pytest.param(PLAIN, "01", None, id="leading-zero"),
        pytest.param(PLAIN, "1.", None, id="empty-number"),
        pytest.param(PLAIN, "x", None, id="not-a-number"),
        pytest.param(PLAIN, "\u0661", None, id="non-ascii-digit"),
    ],
)
def test_find_part(raw: bytes, section: str, expected: bytes | None) -> None:
    part = find_part(parse_message(raw).root, section)
    if expected is None:
        assert part is None
    else:
        assert part is not None
        assert raw[part.body_start : part.body_end] == expected


def test_find_part_root() -> None:
    root = parse_message(PLAIN).root
    assert find_part(root, "") is root


def test_embedded_single_part_message() -> None:
    raw = crlf(
        "Content-Type: multipart/mixed; boundary=m\n\n--m\nContent-Type: message/rfc822\n\n"
        "Subject: in\n\ninner body\n--m--\n"
    )
    root = parse_message(raw).root
    inner = find_part(root, "1.1")
    assert inner is not None
    assert raw[inner.body_start : inner.body_end] == b"inner body"
    assert find_part(root, "1.2") is None


# -- search and sort fields ---------------------------------------------------------------------


def test_plain_fields() -> None:
    parsed = parse_message(PLAIN)
    assert parsed.subject == "IMAP4rev1 WG mtg summary and minutes"
    assert parsed.sent_date == dt.datetime(
        1996, 7, 17, 2, 23, 25, tzinfo=dt.timezone(dt.timedelta(hours=-7))
    )
    assert parsed.from_addr == "Terry Gray <gray@cac.washington.edu>"
    assert parsed.cc_addr == "minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>"
    assert (parsed.sort_from, parsed.sort_to, parsed.sort_cc) == ("gray", "imap", "minutes")
    assert parsed.display_from == "Terry Gray"
    assert parsed.display_to == "imap@cac.washington.edu"
    assert parsed.message_id == "<B27397-0100000@cac.washington.edu>"
    assert parsed.header_text.startswith("Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\nFrom: ")
    assert "Message-Id: <B27397-0100000@cac.washington.edu>\n" in parsed.header_text
    assert parsed.body_text == "Hello,\nworld\n"


def test_encoded_fields() -> None:
    parsed = parse_message(ENCODED)
    # RFC 2047 §6.2: the whitespace between the two encoded words disappears
    assert parsed.subject == "Re: Über grüße"
    assert parsed.base_subject == "Über grüße"
    assert parsed.from_addr == "Keld Jørn Simonsen <keld@dkuug.dk>"
    assert parsed.display_from == "Keld Jørn Simonsen"
    assert parsed.display_to == "Keith Moore"
    assert "Subject: Re: Über grüße\n" in parsed.header_text
    assert parsed.body_text == "Über grüße\n"


def test_group_fields() -> None:
    parsed = parse_message(GROUPS)
    assert parsed.to_addr == (
        "A Group: Ed Jones <c@a.test>, joe@where.test, John <jdoe@one.test>;, Mary <mary@x.test>"
    )
    assert parsed.cc_addr == "Undisclosed recipients:;"
    assert parsed.bcc_addr == "Pete <pete@silly.test>"
    # RFC 5256 §3 read on the ENVELOPE, as Dovecot does: a group sorts by its name.
    assert (parsed.sort_to, parsed.sort_cc) == ("a group", "undisclosed recipients")
    assert parsed.display_to == "A Group"  # a group displays as its name
    assert parsed.display_from == "Joe Q. Public"


def test_comment_is_display_name_of_bare_address() -> None:
    parsed = parse_message(b"From: joe@x.test (Joe Bloggs)\r\n\r\n")
    assert parsed.envelope.split(b" ((")[1].startswith(b'"Joe Bloggs" NIL "joe" "x.test"')
    assert parsed.display_from == "Joe Bloggs"


def test_message_ids() -> None:
    parsed = parse_message(
        b"Message-ID: junk <a@b.test> <ignored@x>\r\n"
        b"In-Reply-To: <parent@x.test> (comment)\r\n"
        b"References: <root@x.test>\r\n <mid@x.test>\r\n\t<par\r\n ent@x.test> <>\r\n\r\n"
    )
    assert parsed.message_id == "<a@b.test>"
    assert parsed.in_reply_to == "<parent@x.test>"
    assert parsed.references == ("<root@x.test>", "<mid@x.test>", "<parent@x.test>")
    bare = parse_message(b"Message-ID: no-brackets@x\r\n\r\n")
    assert (bare.message_id, bare.in_reply_to, bare.references) == ("", "", ())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Thu, 01 Feb 2024 10:00:00 +0100", dt.datetime(2024, 2, 1, 9, 0, tzinfo=dt.UTC)),
        ("1 Feb 2024 10:00 -0000", dt.datetime(2024, 2, 1, 10, 0, tzinfo=dt.UTC)),
        ("Sat, 31 Dec 2016 23:59:60 +0000", dt.datetime(2016, 12, 31, 23, 59, 59, tzinfo=dt.UTC)),
        ("yesterday", None),
        ("Mon, 32 Jan 2024 10:00:00 +0000", None),
        ("Mon, 1 Jan 2024 10:00:00 +9999", None),
        ("", None),
    ],
)
def test_sent_date(value: str, expected: dt.datetime | None) -> None:
    sent = parse_message(f"Date: {value}\r\n\r\n".encode()).sent_date
    assert sent == expected
    assert sent is None or sent.tzinfo is not None


@pytest.mark.parametrize(
    ("subject", "base"),
    [
        ("test", "test"),
        ("Re: test", "test"),
        ("RE: Re: re: test", "test"),
        ("Fwd: test", "test"),
        ("Fw: test", "test"),
        ("re [blob]: test", "test"),
        ("[PATCH] Re: test", "test"),
        ("[PATCH] test", "test"),
        ("[a][b] [c] test", "test"),
        ("[PATCH]", "[PATCH]"),
        ("[a][b]", "[b]"),
        ("test (fwd)", "test"),
        ("test (FWD) (fwd)  ", "test"),
        ("[fwd: test]", "test"),
        ("Re: [Fwd: Re: test] (fwd)", "test"),
        ("[Fwd: [list] Re: x]", "x"),
        ("  spaced \t  out  ", "spaced out"),
        ("Rebecca", "Rebecca"),
        ("Re:", ""),
        ("", ""),
    ],
)
def test_base_subject(subject: str, base: str) -> None:
    parsed = parse_message(f"Subject: {subject}\r\n\r\n".encode())
    assert parsed.base_subject == base


def test_base_subject_is_linear_on_hostile_input() -> None:
    parse_message(b"Subject: " + b"[a]" * 30_000 + b"x\r\n\r\n")
    parse_message(b"Subject: " + b"re:" * 30_000 + b"\r\n\r\n")
    parse_message(b"Subject: " + b"[fwd: " * 10_000 + b"]" * 10_000 + b"\r\n\r\n")


# -- MIME parameters and text ------------------------------------------------------------------


def test_rfc2231_parameters() -> None:
    raw = crlf(
        """\
Content-Type: application/x-stuff;
 title*0*=us-ascii'en'This%20is%20even%20more%20;
 title*1*=%2A%2A%2Afun%2A%2A%2A%20;
 title*2="isn't it!"; name=plain; name*=UTF-8''%E2%82%AC%20rates.pdf
Content-Disposition: attachment; filename*=iso-8859-1'de'Gr%FC%DFe.txt

x"""
    )
    parsed = parse_message(raw)
    assert parsed.root.params == (
        ("title", "This is even more ***fun*** isn't it!"),
        ("name", "€ rates.pdf"),
    )
    assert b'("ATTACHMENT" ("FILENAME" {11}\r\nGr\xc3\xbc\xc3\x9fe.txt))' in parsed.bodystructure
    check_parsed(raw, parsed)


def test_body_text_decodes_and_strips_html() -> None:
    parsed = parse_message(ALTERNATIVE)
    assert parsed.body_text == "café au lait please\ncafé & tea"


def test_body_text_skips_non_text_and_includes_embedded_headers() -> None:
    text = parse_message(NESTED).body_text
    assert "See the forwarded message." in text
    assert "Subject: inner subject" in text
    assert "deep plain" in text
    assert "deep html" in text
    assert "JVBERi0" not in text
    assert "%PDF" not in text
    assert "preamble" not in text
    assert "epilogue" not in text


def test_body_text_is_capped() -> None:
    raw = b"Subject: big\r\n\r\n" + b"word " * 10_000
    assert len(parse_message(raw, max_text=100).body_text) == 100
    assert parse_message(raw, max_text=0).body_text == ""


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        pytest.param(
            "Content-Type: text/plain; charset=koi8-r",
            b"\xf0\xd2\xc9\xd7\xc5\xd4",
            "Привет",
            id="charset",
        ),
        pytest.param(
            "Content-Type: text/plain; charset=x-nonsense",
            b"ok \xff",
            "ok \ufffd",
            id="unknown-charset",
        ),
        pytest.param(
            "Content-Type: text/plain; charset=idna", b"\xff", "\ufffd", id="codec-that-raises"
        ),
        pytest.param("Content-Transfer-Encoding: base64", b"aGVs!!bG8", "hello", id="bad-base64"),
        pytest.param(
            "Content-Type: text/html",
            b"a < b <!-- x --> <i>c</i> &lt;d",
            "a < b c <d",
            id="html-lt",
        ),
        pytest.param("Content-Type: text/html", b"x<script>never closed", "x", id="html-open"),
    ],
)
def test_body_text_decoding(headers: str, body: bytes, expected: str) -> None:
    raw = headers.encode() + b"\r\n\r\n" + body
    assert parse_message(raw).body_text == expected


# -- quote_string ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", b'"abc"'),
        ("", b'""'),
        ('a"b\\c', b'"a\\"b\\\\c"'),
        ("héllo", b"{6}\r\nh\xc3\xa9llo"),
        (b"a\r\nb", b"{4}\r\na\r\nb"),
        (b"a\x00b", b"{3}\r\na\x80b"),
        (b"NIL", b'"NIL"'),
    ],
)
def test_quote_string(value: bytes | str, expected: bytes) -> None:
    assert quote_string(value) == expected


# -- a real client's view ---------------------------------------------------------------------


def test_imapclient_reads_our_wire_forms() -> None:
    fetched = imapclient_fetch(parse_message(GROUPS))
    envelope: object = fetched[b"ENVELOPE"]
    to = envelope.to  # type: ignore[attr-defined]
    assert [(a.name, a.mailbox, a.host) for a in to][:2] == [
        (None, b"A Group", None),
        (b"Ed Jones", b"c", b"a.test"),
    ]
    structure: object = fetched[b"BODYSTRUCTURE"]
    assert structure[0] == b"TEXT"  # type: ignore[index]

    nested = imapclient_fetch(parse_message(NESTED))
    body: object = nested[b"BODYSTRUCTURE"]
    assert body.is_multipart  # type: ignore[attr-defined]
    assert body[0][1][7][1] == b"inner subject"  # type: ignore[index]

    literal = imapclient_fetch(parse_message(b"Subject: caf\xc3\xa9\r\n\r\n"))
    assert literal[b"ENVELOPE"].subject == b"caf\xc3\xa9"  # type: ignore[attr-defined]


# -- limits and robustness ---------------------------------------------------------------------


def test_nesting_is_capped() -> None:
    depth = MAX_DEPTH + 50
    raw = (
        b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(depth)
        )
        + b"\r\ndeepest\r\n"
    )
    parsed = parse_message(raw)
    part = parsed.root
    levels = 0
    while part.children:
        (part,) = part.children
        levels += 1
    assert levels == MAX_DEPTH
    assert (part.type, part.subtype) == ("application", "octet-stream")
    check_parsed(raw, parsed)


def test_nested_messages_are_capped() -> None:
    raw = b"Content-Type: message/rfc822\r\n\r\n" * (MAX_DEPTH + 20) + b"Subject: x\r\n\r\nend"
    parsed = parse_message(raw)
    check_parsed(raw, parsed)


def test_many_parts() -> None:
    raw = b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" + b"--p\r\n\r\nx\r\n" * 20_000
    parsed = parse_message(raw)
    assert 5_000 < len(parsed.root.children) <= 10_000
    check_offsets(parsed.root, len(raw))


def test_huge_address_field_is_cut_between_addresses() -> None:
    raw = b"To: " + b", ".join(b"user%d@example.org" % i for i in range(20_000)) + b"\r\n\r\n"
    parsed = parse_message(raw)
    addresses = parsed.to_addr.split(", ")
    assert 1_000 < len(addresses) < 20_000
    assert addresses[-1] == f"user{len(addresses) - 1}@example.org"
    check_parsed(raw, parsed)


def test_raw_8bit_parameters_and_message_global() -> None:
    raw = crlf(
        """\
Content-Type: multipart/mixed; boundary=g

--g
Content-Type: application/pdf; name="résumé.pdf"

x
--g
Content-Type: message/global

Subject: ünïcode

body
--g--
"""
    )
    parsed = parse_message(raw)
    pdf, message = parsed.root.children
    assert pdf.params == (("name", "résumé.pdf"),)
    assert (message.type, message.subtype) == ("message", "global")
    assert b'("MESSAGE" "GLOBAL" NIL NIL NIL "7BIT" 26 (NIL {9}\r\n\xc3\xbcn\xc3\xafcode ' in (
        parsed.bodystructure
    )
    assert "Subject: ünïcode" in parsed.body_text
    check_parsed(raw, parsed)


def test_prefix_boundaries_and_whitespace_after_delimiter() -> None:
    raw = crlf(
        """\
Content-Type: multipart/mixed; boundary=ab

--ab \t
Content-Type: multipart/mixed; boundary=abc

--abc

inner
--abc--
--abx

still inside part 1
--ab--
"""
    )
    parsed = parse_message(raw)
    (outer_part,) = parsed.root.children
    assert outer_part.type == "multipart"
    assert raw[outer_part.children[0].body_start : outer_part.children[0].body_end] == b"inner"
    assert raw[outer_part.body_end - 19 : outer_part.body_end] == b"still inside part 1"
    check_parsed(raw, parsed)


def test_decode_parts_rejects_garbage() -> None:
    for data in (b"[]", b'"x"', b"[1,2,3,4,5,6,7,8,9,10]", b"not json"):
        with pytest.raises(ValueError, match=r"bad part tree|Expecting value"):
            decode_parts(data)


FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"Content-Type: multipart/mixed; boundary=a\r\n",
    b'Content-Type: multipart/digest; boundary="b"\r\n',
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/html; charset=utf-8\r\n",
    b"Content-Type: text/plain; name*0*=utf-8''%E2%82; name*1*=%AC\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b'Content-Disposition: attachment; filename="x"\r\n',
    b"Content-Language: en, de\r\n",
    b"--a\r\n",
    b"--a--\r\n",
    b"--b\r\n",
    b"--b--\n",
    b'From: "A (B)" <a@b>, g: c@d, <@r:e@f>;\r\n',
    b"To: =?utf-8?q?x=C3?= =?utf-8?b?qQ==?= <y@z>\r\n",
    b"Subject: Re: [x] Fwd: =?iso-8859-1?q?=E9?= (fwd)\r\n",
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n",
    b" folded\r\n",
    b"<p>&amp;<script>",
    b"=E9=\r\n",
    b"\xff\x00\x80",
]


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    pieces = draw(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=6), max_size=40))
    return b"".join(pieces)


@example(b"ContenT-type:message/!")  # a message/* subtype that is not an embedded message
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    check_parsed(raw, parse_message(raw))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.integers(min_value=0, max_value=50))
def test_never_raises_on_mime_shaped_bytes(raw: bytes, max_text: int) -> None:
    parsed = parse_message(raw, max_text=max_text)
    check_parsed(raw, parsed)
    assert len(parsed.body_text) <= max_text


@settings(max_examples=100, deadline=None)
@given(messages())
def test_find_part_agrees_with_the_tree(raw: bytes) -> None:
    root = parse_message(raw).root

    def walk(part: Part) -> Iterator[Part]:
        yield part
        for child in part.children:
            yield from walk(child)

    for part in walk(root):
        if part.path and part.type != "multipart":
            found = find_part(root, part.path)
            assert found is not None
            # a message/rfc822 part and its single-part embedded root share one path
            assert found is part or part in found.children or found in part.children
