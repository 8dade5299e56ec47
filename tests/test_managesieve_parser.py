"""The ManageSieve wire format (managesieve/parser.py): segments, commands and replies."""

from __future__ import annotations

import pytest

from postoffice.managesieve import parser as p


def command(*segments: bytes, literals: tuple[bytes, ...] = ()) -> p.Command:
    """Parse a command the way the session reads it: segment, literal, segment, ..."""
    words: list[p.Word] = []
    pending = list(literals)
    for index, segment in enumerate(segments):
        more, literal = p.scan(segment, first=index == 0)
        words += more
        if literal is not None:
            data = pending.pop(0)
            assert len(data) == literal
            words.append(p.String(data))
    assert not pending
    return p.parse_command(words)


def test_command_names_are_case_insensitive() -> None:
    assert command(b"capability\r\n") == p.Capability()
    assert command(b"LogOut\n") == p.Logout()


def test_quoted_strings_with_escapes_and_utf8() -> None:
    assert command(b'GETSCRIPT "a \\"b\\" \\\\ c"\r\n') == p.GetScript('a "b" \\ c')
    assert command('SETACTIVE "Grüße"\r\n'.encode()) == p.SetActive("Grüße")
    assert command(b'SETACTIVE ""\r\n') == p.SetActive("")


@pytest.mark.parametrize("marker", [b"{9+}", b"{9}"])
def test_putscript_with_a_literal(marker: bytes) -> None:
    assert command(
        b'PUTSCRIPT "main" ' + marker + b"\r\n", b"\r\n", literals=(b"keep;\r\n\r\n",)
    ) == p.PutScript("main", b"keep;\r\n\r\n")


def test_every_argument_may_be_a_literal() -> None:
    assert command(
        b"RENAMESCRIPT {3+}\r\n", b" {3+}\r\n", b"\r\n", literals=(b"old", b"new")
    ) == p.RenameScript("old", "new")


def test_havespace_takes_a_number() -> None:
    assert command(b'HAVESPACE "x" 4096\r\n') == p.HaveSpace("x", 4096)
    with pytest.raises(p.BadSyntax, match="number"):
        command(b'HAVESPACE "x" "4096"\r\n')
    with pytest.raises(p.BadSyntax, match="too large"):
        command(b'HAVESPACE "x" 4294967296\r\n')


def test_authenticate_with_and_without_initial_response() -> None:
    assert command(b'AUTHENTICATE "PLAIN" "AGEAYg=="\r\n') == p.Authenticate("PLAIN", b"AGEAYg==")
    assert command(b'AUTHENTICATE "SCRAM-SHA-256"\r\n') == p.Authenticate("SCRAM-SHA-256", None)


def test_noop_tag() -> None:
    assert command(b"NOOP\r\n") == p.Noop(None)
    assert command(b'NOOP "t1"\r\n') == p.Noop("t1")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"FROB\r\n", "Unknown command FROB"),
        (b"\r\n", "command name"),
        (b'GETSCRIPT "open\r\n', "Unterminated"),
        (b"GETSCRIPT bare\r\n", "string or a number"),
        (b'GETSCRIPT  "two spaces"\r\n', "string or a number"),
        (b'GETSCRIPT"x"\r\n', "space"),
        (b'GETSCRIPT "a" "b"\r\n', "Wrong number"),
        (b"GETSCRIPT\r\n", "Wrong number"),
        (b'LISTSCRIPTS "x"\r\n', "Wrong number"),
        (b'GETSCRIPT "\\n"\r\n', "escaped"),
        (b'PUTSCRIPT "a" {3+} trailing\r\n', "literal must end"),
        (b'GETSCRIPT "\xff"\r\n', "UTF-8"),
        (b'GETSCRIPT "' + b"x" * 1025 + b'"\r\n', "1024"),
    ],
)
def test_bad_syntax(line: bytes, message: str) -> None:
    with pytest.raises(p.BadSyntax, match=message):
        command(line)


def test_huge_numbers_are_refused() -> None:
    with pytest.raises(p.BadSyntax, match="too large"):
        command(b'HAVESPACE "x" ' + b"9" * 5000 + b"\r\n")
    with pytest.raises(p.BadSyntax, match="too large"):
        command(b'PUTSCRIPT "x" {' + b"9" * 5000 + b"+}\r\n")


def test_a_refused_segment_still_announces_its_literal() -> None:
    # So that the session can skip the literal's octets instead of running them.
    assert p.trailing_literal(b"PUTSCRIPT bare {12+}\r\n") == 12
    assert p.trailing_literal(b'GETSCRIPT "x {3}"\r\n') is None
    assert p.trailing_literal(b"PUTSCRIPT bare\r\n") is None


def test_sasl_responses_are_one_string() -> None:
    assert p.client_string(p.scan(b' "abc="\r\n', first=False)[0]) == b"abc="
    with pytest.raises(p.BadSyntax):
        p.client_string(p.scan(b' "a" "b"\r\n', first=False)[0])


def test_replies() -> None:
    assert p.ok("Done") == b'OK "Done"\r\n'
    assert p.no("No such script", "NONEXISTENT") == b'NO (NONEXISTENT) "No such script"\r\n'
    assert p.bye() == b"BYE\r\n"
    assert p.string('say "hi" \\') == b'"say \\"hi\\" \\\\"'
    assert p.string("two\r\nlines") == b"{10}\r\ntwo\r\nlines"
    assert p.string("x" * 1025) == b"{1025}\r\n" + b"x" * 1025
