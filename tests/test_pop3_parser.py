"""The POP3 parser and the pure wire helpers: tables of (wire bytes, command) and of
refusals, dot-stuffing against an unstuffing reference, TOP."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postoffice.pop3 import parser as p
from postoffice.pop3 import responses as r

DIGEST = "c4c9334bac560ecc979e58001b3e22fb"  # RFC 1939 §7's example


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"USER bob@example.test\r\n", p.User("bob@example.test")),
        (b"user bob\r\n", p.User("bob")),
        (b"PASS secret with spaces \r\n", p.Pass("secret with spaces ")),
        (b"APOP bob C4C9334BAC560ECC979E58001B3E22FB\r\n", p.Apop("bob", DIGEST)),
        (b"AUTH\r\n", p.Auth(None, None)),
        (b"AUTH plain\r\n", p.Auth("PLAIN", None)),
        (b"AUTH PLAIN AGJvYgBwdw==\r\n", p.Auth("PLAIN", b"AGJvYgBwdw==")),
        (b"AUTH PLAIN =\r\n", p.Auth("PLAIN", b"=")),
        (b"STLS\r\n", p.Stls()),
        (b"CAPA\r\n", p.Capa()),
        (b"QUIT\r\n", p.Quit()),
        (b"STAT\r\n", p.Stat()),
        (b"STAT \r\n", p.Stat()),  # a trailing space some clients send
        (b"LIST\r\n", p.ListMessages(None)),
        (b"LIST 12\r\n", p.ListMessages(12)),
        (b"UIDL\r\n", p.Uidl(None)),
        (b"uidl 3\n", p.Uidl(3)),
        (b"RETR 1\r\n", p.Retr(1)),
        (b"DELE 007\r\n", p.Dele(7)),
        (b"NOOP\r\n", p.Noop()),
        (b"RSET\r\n", p.Rset()),
        (b"TOP 2 0\r\n", p.Top(2, 0)),
        (b"TOP 2 15", p.Top(2, 15)),
    ],
)  # fmt: skip
def test_parses(line: bytes, expected: p.Command) -> None:
    assert p.parse_command(line) == expected


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"\r\n", "Empty command"),
        (b"HELO\r\n", "Unknown command"),
        (b"LAST\r\n", "Unknown command"),  # removed by RFC 1725
        (b"PASS\r\n", "PASS needs a password"),
        (b"USER\r\n", "Wrong number of arguments for USER"),
        (b"USER a b\r\n", "Wrong number of arguments for USER"),
        (b"USER  bob\r\n", "Arguments must be separated by single spaces"),
        (b"QUIT now\r\n", "QUIT takes no arguments"),
        (b"APOP bob 123\r\n", "APOP digest must be 32 hexadecimal digits"),
        (b"APOP bob " + b"g" * 32 + b"\r\n", "APOP digest must be 32 hexadecimal digits"),
        (b"AUTH PLAIN x y\r\n", "Wrong number of arguments for AUTH"),
        (b"RETR 0\r\n", "Message numbers start at 1"),
        (b"RETR +1\r\n", "Invalid number '+1'"),
        (b"RETR 1.5\r\n", "Invalid number '1.5'"),
        (b"RETR \xd9\xa3\r\n", "Invalid number '\u0663'"),  # an Arabic-Indic digit
        (b"RETR 12345678901\r\n", "Invalid number '12345678901'"),
        (b"TOP 1 -1\r\n", "Invalid number '-1'"),
        (b"LIST 1 2\r\n", "Wrong number of arguments for LIST"),
        (b"USER b\x00b\r\n", "Invalid characters in command"),
        (b"USER b\rb\r\n", "Invalid characters in command"),
        (b"USER \xff\r\n", "Command is not valid UTF-8"),
        (b"USER " + b"x" * 249 + b"\r\n", "Command line too long"),  # 256 octets
    ],
)
def test_refuses(line: bytes, message: str) -> None:
    with pytest.raises(p.BadSyntax) as refused:
        p.parse_command(line)
    assert str(refused.value) == message


def test_longest_line_accepted() -> None:
    line = b"USER " + b"x" * 248 + b"\r\n"  # RFC 2449 §4: 255 octets with the CRLF
    assert len(line) == p.MAX_LINE
    assert p.parse_command(line) == p.User("x" * 248)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_refuse(line: bytes) -> None:
    with contextlib.suppress(p.BadSyntax):
        p.parse_command(line)


def unstuff(wire: bytes) -> bytes:
    """What a client makes of a multi-line answer (RFC 1939 §3), as poplib does."""
    assert wire.endswith(b"\r\n.\r\n")
    lines = wire[: -len(b".\r\n")].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
    ],
)
def test_dot_stuffed(data: bytes, wire: bytes) -> None:
    assert b"".join(r.dot_stuffed(data)) == wire


@given(
    st.lists(st.sampled_from([b".", b"..", b"a", b"\r\n", b" ", b"x.y"]), max_size=60),
    st.integers(1, 8),
)
def test_dot_stuffing_survives_any_chunking(pieces: list[bytes], chunk: int) -> None:
    data = b"".join(pieces) + b"\r\n"
    wire = b"".join(r.dot_stuffed(data, chunk))
    assert unstuff(wire) == data


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (0, b"Subject: x\r\nFrom: a\r\n\r\n"),
        (1, b"Subject: x\r\nFrom: a\r\n\r\none\r\n"),
        (2, b"Subject: x\r\nFrom: a\r\n\r\none\r\ntwo\r\n"),
        (9, b"Subject: x\r\nFrom: a\r\n\r\none\r\ntwo\r\nthree"),
    ],
)
def test_top(lines: int, expected: bytes) -> None:
    message = b"Subject: x\r\nFrom: a\r\n\r\none\r\ntwo\r\nthree"
    assert r.top(message, lines) == expected


def test_top_without_body_or_header() -> None:
    assert r.top(b"Subject: x\r\n", 3) == b"Subject: x\r\n"
    assert r.top(b"\r\nbody\r\nmore\r\n", 1) == b"\r\nbody\r\n"
    assert r.top(b"Subject: x\n\nbody\n", 0) == b"Subject: x\n\n"


def test_responses() -> None:
    assert r.ok("done") == b"+OK done\r\n"
    assert r.err("busy", "IN-USE") == b"-ERR [IN-USE] busy\r\n"
    assert r.err("no") == b"-ERR no\r\n"
    assert r.multiline(["TOP", ".odd"]) == b"TOP\r\n..odd\r\n.\r\n"
