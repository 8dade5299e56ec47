"""imap/sections.py: BODY[section], BINARY[part], BINARY.SIZE and <partial>.

The tables are imaptest's fetch-body* and fetch-binary-mime* scripts (Dovecot's reference
behaviour): each message is the script's .mbox message with the From line removed and LF
turned into CRLF, as imaptest appends it; each expectation is the literal the script expects.
Every case also runs with a per-entry prefix in front of the shared blob.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage, Message

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.imap.commands import Section, SectionText
from postoffice.imap.sections import (
    UnknownEncoding,
    apply_partial,
    binary_data,
    binary_size,
    section_data,
)
from postoffice.store.mime import parse_message

PREFIX = b"Delivered-To: user@example.test\r\n"
PREFIXES = pytest.mark.parametrize("prefix", [b"", PREFIX], ids=["no-prefix", "prefix"])


def crlf(text: str) -> bytes:
    """Text written with \\n line ends as the CRLF bytes imaptest sends."""
    return text.replace("\n", "\r\n").encode("utf-8")


_TEXTS: dict[str, SectionText] = {
    "": "",
    "HEADER": "HEADER",
    "HEADER.FIELDS": "HEADER.FIELDS",
    "HEADER.FIELDS.NOT": "HEADER.FIELDS.NOT",
    "TEXT": "TEXT",
    "MIME": "MIME",
}


def section(spec: str) -> Section:
    """A section spec as written in a FETCH: "1.2.header.fields (from subject)"."""
    spec, _, fields = spec.partition(" (")
    items = spec.split(".") if spec else []
    part = tuple(int(item) for item in items if item.isdigit())
    text = _TEXTS[".".join(item for item in items if not item.isdigit()).upper()]
    return Section(part, text, tuple(fields.rstrip(")").upper().split()))


def body(blob: bytes, prefix: bytes, spec: str) -> bytes | None:
    return section_data(prefix + blob, parse_message(blob).root, len(prefix), section(spec))


def binary(blob: bytes, prefix: bytes, *part: int) -> bytes | None:
    return binary_data(prefix + blob, parse_message(blob).root, len(prefix), part)


def size(blob: bytes, prefix: bytes, *part: int) -> int | None:
    return binary_size(prefix + blob, parse_message(blob).root, len(prefix), part)


# -- the imaptest messages ------------------------------------------------------------------------

# fetch-body.mbox
SIMPLE_HEADERS = [
    crlf(f"From: User{n} <user{n}@domain.org>\nDate: Sat, 24 Mar 2007 23:00:00 +0200\n")
    + crlf(f"Subject: s{str(n) * n}\n\n")
    for n in (1, 2, 3, 4)
]
SIMPLE = [
    header + crlf(f"{text}\n\n")
    for header, text in zip(SIMPLE_HEADERS, ["body1", "body22", "body33", "body4444"], strict=True)
]

SUBMSG = crlf("From: sub@domain.org\nDate: Sun, 12 Aug 2012 12:34:56 +0300\nSubject: submsg\n")
OUTER = crlf(
    "From: user@domain.org\nDate: Sat, 24 Mar 2007 23:00:00 +0200\nMime-Version: 1.0\n"
    "Content-Type: message/rfc822\n\n"
)
# fetch-body-message-rfc822.mbox
RFC822 = OUTER + SUBMSG + crlf("\nHello world\n")
# fetch-body-message-rfc822-x2.mbox
MIDDLE = crlf(
    "From: user2@domain.org\nDate: Fri, 23 Mar 2007 11:22:33 +0200\nMime-Version: 1.0\n"
    "Content-Type: message/rfc822\n\n"
)
RFC822_X2 = OUTER + MIDDLE + SUBMSG + crlf("\nHello world\n")
# fetch-body-message-rfc822-mime.mbox
DIGEST_HEADER = SUBMSG + crlf('Content-Type: multipart/digest; boundary="foo"\n\n')
M1 = crlf("From: m1@example.com\nSubject: m1\n\nm1 body\n")
M2 = crlf("From: m2@example.com\nSubject: m2\n\nm2 body\n")
DIGEST_TEXT = (
    crlf("prologue\n\n--foo \n\n")
    + M1
    + crlf("\n--foo \nX-Mime: m2 header\n\n")
    + M2
    + crlf("\n--foo--\n\nepilogue\n")
)
DIGEST = OUTER + DIGEST_HEADER + DIGEST_TEXT

# fetch-body-mime.mbox, also fetch-binary-mime.mbox
MIME_HEADER = crlf(
    "From: user@domain.org\nDate: Sat, 24 Mar 2007 23:00:00 +0200\nMime-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="foo\n bar"\n\n'
)
SUB_HEADER = SUBMSG + crlf('Content-Type: multipart/alternative; boundary="sub1"\n\n')
SUB_TEXT = crlf(
    "Sub MIME prologue\n--sub1\nContent-Type: text/html\n\n<p>Hello world</p>\n\n"
    "--sub1\nContent-Type: text/plain\n\nHello another world\n\n--sub1--\nSub MIME epilogue\n"
)
MIME_TEXT = (
    crlf(
        "Root MIME prologue\n\n--foo bar\nContent-Type: text/x-myown; charset=us-ascii\n\n"
        "hello\n\n--foo bar\nContent-Type: message/rfc822\n\n"
    )
    + SUB_HEADER
    + SUB_TEXT
    + crlf("\n--foo bar--\nRoot MIME epilogue\n")
)
MIME = MIME_HEADER + MIME_TEXT

_B64_PART = "--foo bar\nContent-Type: text/x-myown; charset=us-ascii\n"
_B64_PART += "Content-Transfer-Encoding: base64\n\n"
# fetch-binary-mime-base64.mbox
BASE64 = MIME_HEADER + crlf(
    f"Root MIME prologue\n\n{_B64_PART}\naGVs\nbG8gd29y\nbGQ=\n\n"
    f"{_B64_PART}  aGVs    \n bG8g  \n   d29y  \t \n    bGQ= \n\n\n"
    f"{_B64_PART}aGVsbG8g\ndG8geW91IHRv\nbw==\n\n"
    f"{_B64_PART}aGVsbG8gdG8gZXZlcnlvbmUh\n"
    f"{_B64_PART}YWJjZGVmZw1oaWprbA0KbW5vCnBxcnN0dXZxeHl6\n\n"
    "--foo bar--\nRoot MIME epilogue\n"
)
# fetch-binary-mime-qp.mbox
QP = MIME_HEADER + crlf(
    "Root MIME prologue\n\n--foo bar\nContent-Type: text/x-myown; charset=us-ascii\n"
    "Content-Transfer-Encoding: quoted-printable\n\n"
    "hello  \nbar=\n\nfoo\t=\nbar\nfoo\t \t= \n=62\nfoo = \t\nbar\nfoo =\n=62\nfoo  \nbar=\n\n"
    "foo_bar\n\n--foo bar--\nRoot MIME epilogue\n"
)
QP_DECODED = crlf("hello\nbar\nfoo\tbar\nfoo\t \tb\nfoo bar\nfoo b\nfoo\nbar\nfoo_bar\n")


# -- BODY[section] --------------------------------------------------------------------------------

# (message, section, expected, whether the expected bytes start with the root header and so
# with the per-entry prefix)
BODY_CASES: list[tuple[str, bytes, str, bytes, bool]] = [
    # fetch-body
    ("body-1", SIMPLE[0], "header", SIMPLE_HEADERS[0], True),
    ("body-1", SIMPLE[0], "text", crlf("body1\n\n"), False),
    ("body-2", SIMPLE[1], "", SIMPLE[1], True),
    ("body-4", SIMPLE[3], "header", SIMPLE_HEADERS[3], True),
    (
        "body-1",
        SIMPLE[0],
        "header.fields (from)",
        crlf("From: User1 <user1@domain.org>\n\n"),
        False,
    ),
    (
        "body-1",
        SIMPLE[0],
        "header.fields (from from)",
        crlf("From: User1 <user1@domain.org>\n\n"),
        False,
    ),
    (
        "body-1",
        SIMPLE[0],
        "header.fields (from subject)",
        crlf("From: User1 <user1@domain.org>\nSubject: s1\n\n"),
        False,
    ),
    # the script only forbids the Date line ("!"); the rest is RFC 9051 §6.4.5
    (
        "body-1",
        SIMPLE[0],
        "header.fields.not (date)",
        crlf("From: User1 <user1@domain.org>\nSubject: s1\n\n"),
        True,
    ),
    (
        "body-1",
        SIMPLE[0],
        "header.fields.not (date date)",
        crlf("From: User1 <user1@domain.org>\nSubject: s1\n\n"),
        True,
    ),
    ("body-1", SIMPLE[0], "header.fields (xyz)", b"\r\n", False),
    # fetch-body-message-rfc822
    ("rfc822", RFC822, "", RFC822, True),
    ("rfc822", RFC822, "text", SUBMSG + crlf("\nHello world\n"), False),
    ("rfc822", RFC822, "1", SUBMSG + crlf("\nHello world\n"), False),
    ("rfc822", RFC822, "1.1", crlf("Hello world\n"), False),
    ("rfc822", RFC822, "1.header", SUBMSG + b"\r\n", False),
    (
        "rfc822",
        RFC822,
        "1.header.fields (from subject X-foo)",
        crlf("From: sub@domain.org\nSubject: submsg\n\n"),
        False,
    ),
    (
        "rfc822",
        RFC822,
        "1.header.fields.not (from subject X-foo)",
        crlf("Date: Sun, 12 Aug 2012 12:34:56 +0300\n\n"),
        False,
    ),
    ("rfc822", RFC822, "1.text", crlf("Hello world\n"), False),
    # fetch-body-message-rfc822-x2
    ("rfc822-x2", RFC822_X2, "", RFC822_X2, True),
    ("rfc822-x2", RFC822_X2, "text", MIDDLE + SUBMSG + crlf("\nHello world\n"), False),
    ("rfc822-x2", RFC822_X2, "1", MIDDLE + SUBMSG + crlf("\nHello world\n"), False),
    ("rfc822-x2", RFC822_X2, "1.1", SUBMSG + crlf("\nHello world\n"), False),
    ("rfc822-x2", RFC822_X2, "1.header", MIDDLE, False),
    ("rfc822-x2", RFC822_X2, "1.text", SUBMSG + crlf("\nHello world\n"), False),
    ("rfc822-x2", RFC822_X2, "1.1.1", crlf("Hello world\n"), False),
    ("rfc822-x2", RFC822_X2, "1.1.header", SUBMSG + b"\r\n", False),
    ("rfc822-x2", RFC822_X2, "1.1.text", crlf("Hello world\n"), False),
    # fetch-body-message-rfc822-mime
    ("digest", DIGEST, "", DIGEST, True),
    ("digest", DIGEST, "text", DIGEST_HEADER + DIGEST_TEXT, False),
    ("digest", DIGEST, "1", DIGEST_HEADER + DIGEST_TEXT, False),
    ("digest", DIGEST, "1.header", DIGEST_HEADER, False),
    ("digest", DIGEST, "1.text", DIGEST_TEXT, False),
    ("digest", DIGEST, "1.1", M1, False),
    ("digest", DIGEST, "1.1.MIME", b"\r\n", False),
    ("digest", DIGEST, "1.1.HEADER", crlf("From: m1@example.com\nSubject: m1\n\n"), False),
    ("digest", DIGEST, "1.1.TEXT", crlf("m1 body\n"), False),
    ("digest", DIGEST, "1.2", M2, False),
    ("digest", DIGEST, "1.2.MIME", crlf("X-Mime: m2 header\n\n"), False),
    ("digest", DIGEST, "1.2.HEADER", crlf("From: m2@example.com\nSubject: m2\n\n"), False),
    ("digest", DIGEST, "1.2.TEXT", crlf("m2 body\n"), False),
    # fetch-body-mime
    ("mime", MIME, "", MIME, True),
    ("mime", MIME, "text", MIME_TEXT, False),
    ("mime", MIME, "1", crlf("hello\n"), False),
    ("mime", MIME, "1.mime", crlf("Content-Type: text/x-myown; charset=us-ascii\n\n"), False),
    ("mime", MIME, "2", SUB_HEADER + SUB_TEXT, False),
    ("mime", MIME, "2.mime", crlf("Content-Type: message/rfc822\n\n"), False),
    ("mime", MIME, "2.header", SUB_HEADER, False),
    (
        "mime",
        MIME,
        "2.header.fields (from subject X-foo)",
        crlf("From: sub@domain.org\nSubject: submsg\n\n"),
        False,
    ),
    (
        "mime",
        MIME,
        "2.header.fields.not (from subject X-foo)",
        crlf(
            "Date: Sun, 12 Aug 2012 12:34:56 +0300\n"
            'Content-Type: multipart/alternative; boundary="sub1"\n\n'
        ),
        False,
    ),
    ("mime", MIME, "2.text", SUB_TEXT, False),
    ("mime", MIME, "2.1.mime", crlf("Content-Type: text/html\n\n"), False),
    ("mime", MIME, "2.1", crlf("<p>Hello world</p>\n"), False),
    ("mime", MIME, "2.2.mime", crlf("Content-Type: text/plain\n\n"), False),
    ("mime", MIME, "2.2", crlf("Hello another world\n"), False),
]


@PREFIXES
@pytest.mark.parametrize(
    ("blob", "spec", "expected", "has_prefix"),
    [pytest.param(*case[1:], id=f"{case[0]}[{case[2]}]") for case in BODY_CASES],
)
def test_body_section(
    prefix: bytes, blob: bytes, spec: str, expected: bytes, has_prefix: bool
) -> None:
    assert body(blob, prefix, spec) == (prefix + expected if has_prefix else expected)


def test_body_header_is_rfc822_header() -> None:
    # fetch-body: RFC822.HEADER and BODY[HEADER] are the same bytes, and so are RFC822.TEXT
    # and BODY[TEXT] (both are served from here); the whole message is their concatenation
    for blob in [*SIMPLE, RFC822, DIGEST, MIME]:
        header, text = body(blob, PREFIX, "header"), body(blob, PREFIX, "text")
        assert header is not None
        assert text is not None
        assert header + text == PREFIX + blob


# fetch-body "partial fetches": (message, section, <offset.length>, expected)
PARTIAL_CASES = [
    (SIMPLE[1], (0, 3), b"bod"),
    (SIMPLE[1], (3, 3), b"y22"),
    (SIMPLE[2], (0, 1), b"b"),
    (SIMPLE[2], (5, 1), b"3"),
    (SIMPLE[2], (5, 2), b"3\r"),
    (SIMPLE[2], (5, 3), b"3\r\n"),
    (SIMPLE[2], (6, 1), b"\r"),
    (SIMPLE[2], (6, 2), b"\r\n"),
    (SIMPLE[2], (7, 1), b"\n"),
]


@PREFIXES
@pytest.mark.parametrize(("blob", "partial", "expected"), PARTIAL_CASES)
def test_partial_text(
    prefix: bytes, blob: bytes, partial: tuple[int, int], expected: bytes
) -> None:
    assert apply_partial(body(blob, prefix, "text") or b"", partial) == expected


def test_partial_edges() -> None:
    assert apply_partial(b"abc", None) == b"abc"
    assert apply_partial(b"abc", (1, 100)) == b"bc"
    assert apply_partial(b"abc", (3, 1)) == b""
    assert apply_partial(b"abc", (100, 1)) == b""
    assert apply_partial(b"abc", (0, 0)) == b""


@PREFIXES
@pytest.mark.parametrize(
    ("blob", "spec"),
    [
        (MIME, "3"),  # past the last part
        (MIME, "1.1"),  # below a leaf
        (MIME, "2.3"),
        (MIME, "1.header"),  # HEADER and TEXT need a message/rfc822 part
        (MIME, "1.text"),
        (MIME, "1.header.fields (from)"),
        (MIME, "2.1.text"),
        (SIMPLE[0], "2"),  # a single-part message has only part 1
        (SIMPLE[0], "1.1"),
        (SIMPLE[0], "1.header"),
        (MIME, "0"),
        (MIME, "mime"),  # MIME needs a part number
    ],
)
def test_missing_part(prefix: bytes, blob: bytes, spec: str) -> None:
    assert body(blob, prefix, spec) is None


@PREFIXES
def test_part_one_of_single_part_message(prefix: bytes) -> None:
    # RFC 9051 §6.4.5: part 1 of a non-multipart message is its body; its MIME header is the
    # message header, as Dovecot answers
    assert body(SIMPLE[0], prefix, "1") == crlf("body1\n\n")
    assert body(SIMPLE[0], prefix, "1.mime") == prefix + SIMPLE_HEADERS[0]


@PREFIXES
def test_header_fields_cover_the_prefix(prefix: bytes) -> None:
    fields = body(SIMPLE[0], prefix, "header.fields (delivered-to)")
    assert fields == prefix + b"\r\n"


def test_header_fields_keep_folding_order_and_case() -> None:
    blob = crlf(
        "Subject: one\n two\nX-A: 1\nsubject: again\nFrom x@example.test  Sat Jan  1 2000\n"
        "\tcontinued\nReceived : obs space\n\nbody\n"
    )
    assert body(blob, b"", "header.fields (SUBJECT received)") == crlf(
        "Subject: one\n two\nsubject: again\nReceived : obs space\n\n"
    )
    assert body(blob, b"", "header.fields.not (subject RECEIVED)") == crlf(
        "X-A: 1\nFrom x@example.test  Sat Jan  1 2000\n\tcontinued\n\n"
    )


def test_bare_lf_is_returned_as_stored() -> None:
    blob = b"From: a@example.test\nSubject: lf\n  folded\n\nline 1\nline 2\n"
    root = parse_message(blob).root
    header = b"From: a@example.test\nSubject: lf\n  folded\n\n"
    assert section_data(blob, root, 0, Section(text="HEADER")) == header
    assert section_data(blob, root, 0, Section(text="TEXT")) == b"line 1\nline 2\n"
    assert section_data(blob, root, 0, Section((1,))) == b"line 1\nline 2\n"
    # HEADER.FIELDS rebuilds the lines, with CRLF
    fields = section_data(blob, root, 0, Section(text="HEADER.FIELDS", fields=("SUBJECT",)))
    assert fields == b"Subject: lf\r\n  folded\r\n\r\n"


def test_header_without_body() -> None:
    blob = b"Subject: no body"
    assert body(blob, b"", "header") == blob
    assert body(blob, b"", "header.fields (subject)") == b"Subject: no body\r\n\r\n"
    assert body(blob, b"", "text") == b""


# -- BINARY[part] ---------------------------------------------------------------------------------


@PREFIXES
def test_binary_mime_unconverted(prefix: bytes) -> None:
    # fetch-binary-mime: nothing to decode, so BINARY equals BODY
    assert binary(MIME, prefix) == prefix + MIME
    assert size(MIME, b"") == 602
    assert size(MIME, prefix) == 602 + len(prefix)
    assert binary(MIME, prefix, 1) == crlf("hello\n")
    assert size(MIME, prefix, 1) == 7
    assert binary(MIME, prefix, 2) == SUB_HEADER + SUB_TEXT
    assert size(MIME, prefix, 2) == 298
    assert binary(MIME, prefix, 2, 1) == crlf("<p>Hello world</p>\n")
    assert size(MIME, prefix, 2, 1) == 20
    assert binary(MIME, prefix, 2, 2) == crlf("Hello another world\n")
    assert size(MIME, prefix, 2, 2) == 21


BASE64_PARTS = [
    b"hello world",
    b"hello world",
    b"hello to you too",
    b"hello to everyone!",
    b"abcdefg\rhijkl\r\nmno\npqrstuvqxyz",
]


@PREFIXES
@pytest.mark.parametrize(("number", "expected"), list(enumerate(BASE64_PARTS, 1)))
def test_binary_base64(prefix: bytes, number: int, expected: bytes) -> None:
    # fetch-binary-mime-base64, whitespace around and inside the lines included
    assert binary(BASE64, prefix, number) == expected
    assert size(BASE64, prefix, number) == len(expected)


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        ((0, 7), b"abcdefg"),
        ((0, 8), b"abcdefg\r"),
        ((0, 10), b"abcdefg\rhi"),
        ((10, 10), b"jkl\r\nmno\np"),
        ((5, 10), b"fg\rhijkl\r\n"),
        ((15, 100), b"mno\npqrstuvqxyz"),
    ],
)
def test_binary_base64_partial(partial: tuple[int, int], expected: bytes) -> None:
    assert apply_partial(binary(BASE64, PREFIX, 5) or b"", partial) == expected


@PREFIXES
def test_binary_quoted_printable(prefix: bytes) -> None:
    # fetch-binary-mime-qp: soft breaks (also "= " before the line end), trailing white space
    # dropped, "_" kept in a body
    assert binary(QP, prefix, 1) == QP_DECODED
    assert size(QP, prefix, 1) == 65


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        ((0, 10), b"hello\r\nbar"),
        ((10, 10), b"\r\nfoo\tbar\r"),
        ((20, 10), b"\nfoo\t \tb\r\n"),
        ((15, 10), b"\tbar\r\nfoo\t"),
        ((40, 100), b"oo b\r\nfoo\r\nbar\r\nfoo_bar\r\n"),
    ],
)
def test_binary_quoted_printable_partial(partial: tuple[int, int], expected: bytes) -> None:
    assert apply_partial(binary(QP, PREFIX, 1) or b"", partial) == expected


def single_part(encoding: str, content: str) -> bytes:
    return crlf(f"Subject: one\nContent-Transfer-Encoding: {encoding}\nX-B: 2\n\n{content}")


@PREFIXES
def test_binary_whole_single_part_message(prefix: bytes) -> None:
    blob = single_part("base64", "aGVsbG8=\n")
    # the header stays, with the encoding changed to binary, as Dovecot does
    assert binary(blob, prefix) == prefix + crlf(
        "Subject: one\nX-B: 2\nContent-Transfer-Encoding: binary\n\nhello"
    )
    assert binary(blob, prefix, 1) == b"hello"
    assert size(blob, prefix, 1) == 5
    plain = single_part("8bit", "h\u00e9\n")
    assert binary(plain, prefix) == prefix + plain


@PREFIXES
def test_binary_missing_part(prefix: bytes) -> None:
    assert binary(MIME, prefix, 3) is None
    assert binary(MIME, prefix, 1, 1) is None
    assert size(MIME, prefix, 3) is None
    assert binary(SIMPLE[0], prefix, 2) is None


@pytest.mark.parametrize("encoding", ["x-uuencode", "base-64", "7 bit"])
def test_binary_unknown_encoding(encoding: str) -> None:
    blob = single_part(encoding, "begin 644 x\n")
    with pytest.raises(UnknownEncoding) as info:
        binary(blob, b"", 1)
    assert info.value.encoding == encoding
    with pytest.raises(UnknownEncoding):
        binary(blob, b"")
    with pytest.raises(UnknownEncoding):
        size(blob, b"", 1)
    # BODY does not decode, so it does not care
    assert body(blob, b"", "1") == crlf("begin 644 x\n")


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("aGVs\nbG8=\n", b"hello"),
        ("aGVsbG8\n", b"hello"),  # padding missing
        ("aG!V*sb\x7fG8=", b"hello"),  # junk skipped
        ("aGVsbG8=\nIHdvcmxk\n", b"hello world"),  # blocks after padding still decoded
        ("aGVsbA==Zm9v", b"hellfoo"),
        ("aGVsbG8gd", b"hello "),  # a lone sextet makes no octet
        ("", b""),
        ("====", b""),
    ],
)
def test_base64_tolerance(encoded: str, decoded: bytes) -> None:
    assert binary(single_part("base64", encoded), b"", 1) == decoded


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("a=3Db\n", b"a=b\r\n"),
        ("=c3=A9\n", b"\xc3\xa9\r\n"),  # either case of hex digits
        ("50=zz% =\n", b"50=zz% "),  # a malformed escape stays as it is
        ("soft=", b"soft"),  # a soft break at the very end
        ("tail \t", b"tail"),
    ],
)
def test_quoted_printable_details(encoded: str, decoded: bytes) -> None:
    assert binary(single_part("quoted-printable", encoded), b"", 1) == decoded


def test_quoted_printable_bare_lf_becomes_crlf() -> None:
    blob = b"Content-Transfer-Encoding: quoted-printable\n\nline  \nsoft=\nbreak\n"
    assert binary_data(blob, parse_message(blob).root, 0, (1,)) == b"line\r\nsoftbreak\r\n"


# -- property: agree with stdlib email ------------------------------------------------------------

_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")) | st.just("\n"),
    max_size=120,
)
_ASCII = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\n"), max_size=120
)


@st.composite
def _leaf(draw: st.DrawFn) -> EmailMessage:
    part = EmailMessage()
    kind = draw(st.sampled_from(["7bit", "8bit", "quoted-printable", "base64", "bytes"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=120))
        cte = draw(st.sampled_from(["base64", "quoted-printable"]))
        part.set_content(data, maintype="application", subtype="octet-stream", cte=cte)
    else:
        part.set_content(draw(_ASCII if kind == "7bit" else _TEXT), cte=kind)
    return part


def _multipart(children: list[EmailMessage]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = "generated"
    message.make_mixed()
    for child in children:
        message.attach(child)
    return message


def _embedded(inner: EmailMessage) -> EmailMessage:
    part = EmailMessage()
    part.set_content(inner)
    return part


_ENTITY = st.recursive(
    _leaf(),
    lambda children: (
        st.lists(children, min_size=1, max_size=3).map(_multipart) | children.map(_embedded)
    ),
    max_leaves=6,
)
_MESSAGE = st.lists(_ENTITY, min_size=1, max_size=4).map(_multipart)


def _part_leaves(
    part: Message, number: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], Message]]:
    """(IMAP part number, leaf) below a body part with that number (RFC 9051 §6.4.5)."""
    if part.get_content_type() == "message/rfc822":
        embedded = part.get_payload(0)
        assert isinstance(embedded, Message)
        yield from _message_leaves(embedded, number)
    elif part.get_content_maintype() == "multipart":
        for index, child in enumerate(part.get_payload(), 1):
            yield from _part_leaves(child, (*number, index))
    else:
        yield number, part


def _message_leaves(
    message: Message, number: tuple[int, ...]
) -> Iterator[tuple[tuple[int, ...], Message]]:
    if message.get_content_maintype() == "multipart":
        for index, child in enumerate(message.get_payload(), 1):
            yield from _part_leaves(child, (*number, index))
    else:
        # a non-multipart message has one part: its body
        yield from _part_leaves(message, (*number, 1))


@settings(max_examples=150, deadline=None)
@given(_MESSAGE, st.sampled_from([b"", PREFIX]))
def test_leaves_agree_with_email(generated: EmailMessage, prefix: bytes) -> None:
    blob = generated.as_bytes(policy=email.policy.SMTP)
    message = prefix + blob
    root = parse_message(blob).root
    stdlib = email.message_from_bytes(blob, policy=email.policy.compat32)
    leaves = list(_message_leaves(stdlib, ()))
    assert leaves
    for number, leaf in leaves:
        raw = leaf.get_payload()
        assert isinstance(raw, str)
        # compat32 hands 8-bit payloads back decoded with the part's charset (UTF-8 here)
        assert section_data(message, root, len(prefix), Section(number)) == raw.encode("utf-8")
        assert binary_data(message, root, len(prefix), number) == leaf.get_payload(decode=True)
    assert (
        section_data(message, root, len(prefix), Section(text="HEADER"))
        == prefix + blob[: blob.index(b"\r\n\r\n") + 4]
    )
