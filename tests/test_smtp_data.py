"""Message content after DATA and BDAT: the end of data, dot-stuffing, size, content checks,
and SMTP smuggling, first against the pure reader, then through a real session and the store.

Decision under test (see smtp/data.py): only <CRLF>.<CRLF> ends a message, and a message
holding a bare CR or bare LF is refused whole with 550 5.6.0, so no smuggling form can end a
message early, split it, or reach a mailbox.
"""

from __future__ import annotations

import pytest

import test_smtp_session as shared
from postoffice.smtp.data import ChunkCollector, DataReader, Received, check_content
from postoffice.smtp.replies import (
    SMTP_550_BARE_NEWLINE,
    SMTP_550_LINE_TOO_LONG,
    SMTP_550_NUL,
    SMTP_552_TOO_BIG,
)
from test_smtp_session import BOB, SmtpServer, message, stuffed, transaction

# The in-process server fixtures of test_smtp_session, used here under the same names.
_smtp_template = shared._smtp_template
smtp_data = shared.smtp_data
start_smtp = shared.start_smtp
smtp = shared.smtp

MAX = 10_000


def read_all(
    *chunks: bytes, max_size: int = MAX, long_lines_ok: bool = False
) -> tuple[Received, bytes]:
    """Feed `chunks` until the end of data; the message and everything after it."""
    reader = DataReader(max_size, long_lines_ok=long_lines_ok)
    for i, chunk in enumerate(chunks):
        done = reader.feed(chunk)
        if done is not None:
            received, rest = done
            return received, rest + b"".join(chunks[i + 1 :])
    raise AssertionError("the end of data was not found")


def still_reading(*chunks: bytes) -> bool:
    reader = DataReader(MAX, long_lines_ok=False)
    return all(reader.feed(chunk) is None for chunk in chunks)


# -- the end of data and dot-stuffing --------------------------------------------------------------


def test_a_plain_message() -> None:
    received, rest = read_all(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    assert received == Received(b"Subject: x\r\n\r\nbody\r\n", None, 20)
    assert rest == b""


def test_an_empty_message() -> None:
    received, rest = read_all(b".\r\n")
    assert (received.message, received.refusal, rest) == (b"", None, b"")


def test_dot_unstuffing_including_the_first_line() -> None:
    received, _ = read_all(b"..first\r\nmiddle\r\n...two\r\n..\r\nx.y\r\n.\r\n")
    assert received.message == b".first\r\nmiddle\r\n..two\r\n.\r\nx.y\r\n"


def test_pipelined_input_after_the_end_is_handed_back() -> None:
    received, rest = read_all(b"a\r\n.\r\nQUIT\r\nNOOP\r\n")
    assert received.message == b"a\r\n"
    assert rest == b"QUIT\r\nNOOP\r\n"


def test_the_end_marker_split_at_every_position() -> None:
    wire = b"Subject: split\r\n\r\n..dot\r\nbody\r\n.\r\nNOOP\r\n"
    expected = read_all(wire)
    for cut in range(len(wire) + 1):
        assert read_all(wire[:cut], wire[cut:]) == expected, cut
    assert read_all(*(wire[i : i + 1] for i in range(len(wire)))) == expected


def test_a_dot_line_that_is_not_alone_does_not_end() -> None:
    assert still_reading(b"a\r\n.x\r\n", b"\r\n. \r\n", b"\r\n.\r\r\n")


# -- SMTP smuggling -----------------------------------------------------------------------------

# Sequences other servers have taken for the end of data (SEC Consult, Dec 2023, and
# variants): none may end a message here.
SMUGGLING_FORMS = [
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r.\n",
    b"\r\r\n.\r\r\n",
    b"\r\n.\r\r\n",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
]
SMUGGLED = (
    b"MAIL FROM:<evil@other.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    b"From: evil@other.test\r\nSubject: smuggled\r\n\r\nthe second message\r\n"
)


@pytest.mark.parametrize("form", SMUGGLING_FORMS, ids=[repr(f)[2:-1] for f in SMUGGLING_FORMS])
def test_smuggling_forms_neither_end_nor_pass(form: bytes) -> None:
    first = b"From: a@other.test\r\nSubject: first\r\n\r\nbody"
    assert still_reading(first + form + SMUGGLED)
    received, rest = read_all(first + form + SMUGGLED + b".\r\n")
    assert rest == b""
    assert received.refusal in (SMTP_550_BARE_NEWLINE, SMTP_550_NUL)
    assert received.message == b""


@pytest.mark.parametrize("form", SMUGGLING_FORMS, ids=[repr(f)[2:-1] for f in SMUGGLING_FORMS])
def test_no_second_message_can_be_smuggled_into_the_store(smtp: SmtpServer, form: bytes) -> None:
    with smtp.raw() as c:
        c.greet()
        transaction(c, "a@other.test", BOB)
        c.command("DATA", 354)
        c.send(b"From: a@other.test\r\nSubject: first\r\n\r\nbody" + form + SMUGGLED + b".\r\n")
        # One answer for the whole thing: the would-be second transaction was content.
        c.expect(550, "5.6.0")
        c.command("NOOP", 250, "2.0.0")
        # The session is in step: a real message after it is delivered on its own.
        transaction(c, "a@other.test", BOB)
        c.command("DATA", 354)
        c.send(stuffed(message("control")))
        c.expect(250, "2.0.0")
    [stored] = smtp.inbox(BOB)
    assert b"Subject: control" in stored
    assert b"smuggled" not in stored


def test_bdat_content_with_smuggling_forms_is_refused(smtp: SmtpServer) -> None:
    raw = b"Subject: chunked\r\n\r\nbody\n.\n" + SMUGGLED
    with smtp.raw() as c:
        c.greet()
        transaction(c, "a@other.test", BOB)
        c.send(f"BDAT {len(raw)} LAST\r\n".encode() + raw)
        c.expect(550, "5.6.0")
        c.command("NOOP", 250)
    assert smtp.inbox(BOB) == []


# -- size -------------------------------------------------------------------------------------


def test_size_counts_the_message_not_its_dot_stuffing() -> None:
    body = b".\r\n" * 2500  # 7500 octets, 10000 on the wire
    received, _ = read_all(stuffed(body), max_size=7500)
    assert (received.refusal, received.size, received.message) == (None, 7500, body)
    received, _ = read_all(stuffed(body), max_size=7499)
    assert received.refusal is SMTP_552_TOO_BIG


def test_an_oversized_message_is_read_to_its_end_in_bounded_memory() -> None:
    reader = DataReader(1000, long_lines_ok=False)
    chunk = b"x" * 70 + b"\r\n"
    for _ in range(100_000):  # 7 MB
        assert reader.feed(chunk) is None
    done = reader.feed(b".\r\nNOOP\r\n")
    assert done is not None
    received, rest = done
    assert received.refusal is SMTP_552_TOO_BIG
    assert received.size == 7_200_000
    assert rest == b"NOOP\r\n"


def test_a_declared_end_in_an_oversized_message_still_ends_it() -> None:
    received, rest = read_all(b"y" * 50 + b"\r\n", b"\r\n.", b"\r\nRSET\r\n", max_size=10)
    assert received.refusal is SMTP_552_TOO_BIG
    assert rest == b"RSET\r\n"


# -- content checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "refusal"),
    [
        (b"a\r\nb\r\n", None),
        (b"", None),
        (b"a\x00b\r\n", SMTP_550_NUL),
        (b"a\nb\r\n", SMTP_550_BARE_NEWLINE),
        (b"a\rb\r\n", SMTP_550_BARE_NEWLINE),
        (b"a\r\r\n", SMTP_550_BARE_NEWLINE),
        (b"a\r\n\n", SMTP_550_BARE_NEWLINE),
        (b"x" * 998 + b"\r\n", None),
        (b"x" * 999 + b"\r\n", SMTP_550_LINE_TOO_LONG),
        (b"a\r\n" + b"x" * 999, SMTP_550_LINE_TOO_LONG),
        (b"\xff\xfe 8-bit\r\n", None),
    ],
)
def test_check_content(content: bytes, refusal: object) -> None:
    assert check_content(content, long_lines_ok=False) is refusal


def test_long_lines_may_be_accepted() -> None:
    assert check_content(b"x" * 5000 + b"\r\n", long_lines_ok=True) is None
    received, _ = read_all(b"x" * 5000 + b"\r\n.\r\n", long_lines_ok=True)
    assert received.refusal is None


def test_the_line_limit_does_not_count_a_stuffed_dot() -> None:
    received, _ = read_all(b"." + b"." * 998 + b"\r\n.\r\n")
    assert (received.refusal, len(received.message)) == (None, 1000)


def test_chunks_are_joined_and_checked() -> None:
    collector = ChunkCollector(100, long_lines_ok=False, binary=False)
    for part in (b"Subject: a\r", b"\n\r\nbo", b"dy\r\n"):
        collector.add(part)
    assert collector.finish() == Received(b"Subject: a\r\n\r\nbody\r\n", None, 20)


def test_binary_chunks_are_not_checked_as_text() -> None:
    content = b"\x00\n\r" * 10
    text = ChunkCollector(100, long_lines_ok=False, binary=False)
    binary = ChunkCollector(100, long_lines_ok=False, binary=True)
    text.add(content)
    binary.add(content)
    assert text.finish().refusal is SMTP_550_NUL
    assert binary.finish() == Received(content, None, 30)


def test_oversized_chunks_are_counted_not_kept() -> None:
    collector = ChunkCollector(10, long_lines_ok=False, binary=False)
    collector.add(b"x" * 10)
    assert collector.finish().refusal is None
    collector = ChunkCollector(10, long_lines_ok=False, binary=False)
    collector.add(b"x" * 8)
    collector.add(b"x" * 8)
    assert collector.too_big
    assert collector.finish() == Received(b"", SMTP_552_TOO_BIG, 16)
