"""ManageSieve wire format (RFC 5804 §4), pure: command lines → typed commands, and replies.

A command arrives as one or more segments: a line that ends in a literal marker (`{n+}` or
`{n}`) is followed by n octets and then the rest of the command, which is another segment.
The session reads the segments and literals; `scan` turns each segment into words and
`parse_command` turns the words of a whole command into a typed command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

QUOTED_MAX: Final = 1024  # RFC 5804 §4: quoted strings are at most 1024 octets
NUMBER_MAX: Final = 4294967295  # RFC 5804 §4: number is 0..4294967295

_ATOM: Final = re.compile(rb"[A-Za-z]+")
_NUMBER: Final = re.compile(rb"[0-9]+")
_LITERAL: Final = re.compile(rb"\{([0-9]+)\+?\}")
_TRAILING_LITERAL: Final = re.compile(rb" \{([0-9]{1,10})\+?\}$")


class BadSyntax(Exception):
    """The command cannot be parsed; the session answers NO."""


@dataclass(frozen=True, slots=True)
class Atom:
    """A command name, upper-cased."""

    name: str


@dataclass(frozen=True, slots=True)
class String:
    """A quoted string or a literal, unescaped."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Number:
    value: int


Word = Atom | String | Number


def scan(segment: bytes, *, first: bool) -> tuple[list[Word], int | None]:
    """The words of one segment, and the size of the literal that follows it (None when the
    command ends here).  `first`: the segment starts the command, with its name."""
    line = segment.removesuffix(b"\n").removesuffix(b"\r")
    words: list[Word] = []
    pos = 0
    if first:
        match = _ATOM.match(line)
        if match is None:
            raise BadSyntax("Expected a command name")
        words.append(Atom(match.group().decode().upper()))
        pos = match.end()
    while pos < len(line):
        if line[pos : pos + 1] != b" ":
            raise BadSyntax("Expected a space between arguments")
        pos += 1
        char = line[pos : pos + 1]
        if char == b'"':
            text, pos = _quoted(line, pos + 1)
            words.append(String(text))
        elif char == b"{":
            match = _LITERAL.match(line, pos)
            if match is None or match.end() != len(line):
                raise BadSyntax("A literal must end the line: {n+} or {n}")
            return words, _number(match.group(1))
        elif (match := _NUMBER.match(line, pos)) is not None:
            words.append(Number(_number(match.group())))
            pos = match.end()
        else:
            raise BadSyntax("Expected a string or a number")
    return words, None


def trailing_literal(segment: bytes) -> int | None:
    """The size of the literal a segment announces, when `scan` refused the segment: its
    octets are still on their way and must be skipped."""
    line = segment.removesuffix(b"\n").removesuffix(b"\r")
    match = _TRAILING_LITERAL.search(line)
    return int(match.group(1)) if match is not None else None


def _quoted(line: bytes, pos: int) -> tuple[bytes, int]:
    """The unescaped content of a quoted string starting after its DQUOTE, and the position
    after its closing DQUOTE."""
    out = bytearray()
    while pos < len(line):
        char = line[pos]
        if char == 0x22:  # "
            if len(out) > QUOTED_MAX:
                raise BadSyntax(f"Quoted strings are at most {QUOTED_MAX} octets; use a literal")
            return bytes(out), pos + 1
        if char == 0x5C:  # \
            escaped = line[pos + 1 : pos + 2]
            if escaped not in (b'"', b"\\"):
                raise BadSyntax('Only \\" and \\\\ may be escaped in a quoted string')
            out += escaped
            pos += 2
            continue
        if char in (0x00, 0x0D, 0x0A):
            raise BadSyntax("A quoted string cannot hold NUL, CR or LF")
        out.append(char)
        pos += 1
    raise BadSyntax("Unterminated quoted string")


def _number(digits: bytes) -> int:
    if len(digits) > len(str(NUMBER_MAX)) or int(digits) > NUMBER_MAX:
        raise BadSyntax("Number too large")
    return int(digits)


# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authenticate:
    mechanism: str
    initial: bytes | None  # base64 as sent


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class Logout:
    pass


@dataclass(frozen=True, slots=True)
class Capability:
    pass


@dataclass(frozen=True, slots=True)
class HaveSpace:
    name: str
    size: int


@dataclass(frozen=True, slots=True)
class PutScript:
    name: str
    content: bytes


@dataclass(frozen=True, slots=True)
class ListScripts:
    pass


@dataclass(frozen=True, slots=True)
class SetActive:
    name: str  # empty: deactivate


@dataclass(frozen=True, slots=True)
class GetScript:
    name: str


@dataclass(frozen=True, slots=True)
class DeleteScript:
    name: str


@dataclass(frozen=True, slots=True)
class RenameScript:
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class CheckScript:
    content: bytes


@dataclass(frozen=True, slots=True)
class Noop:
    tag: str | None


@dataclass(frozen=True, slots=True)
class Unauthenticate:
    pass


Command = (
    Authenticate
    | StartTls
    | Logout
    | Capability
    | HaveSpace
    | PutScript
    | ListScripts
    | SetActive
    | GetScript
    | DeleteScript
    | RenameScript
    | CheckScript
    | Noop
    | Unauthenticate
)

# Argument kinds per command (RFC 5804 §2): "s" a string, "n" a number; "?" makes the rest
# optional.
_SIGNATURES: Final[dict[str, str]] = {
    "AUTHENTICATE": "s?s",
    "STARTTLS": "",
    "LOGOUT": "",
    "CAPABILITY": "",
    "HAVESPACE": "sn",
    "PUTSCRIPT": "ss",
    "LISTSCRIPTS": "",
    "SETACTIVE": "s",
    "GETSCRIPT": "s",
    "DELETESCRIPT": "s",
    "RENAMESCRIPT": "ss",
    "CHECKSCRIPT": "s",
    "NOOP": "?s",
    "UNAUTHENTICATE": "",
}


def parse_command(words: list[Word]) -> Command:
    """The typed command for the words of a whole command (from `scan`)."""
    if not words or not isinstance(words[0], Atom):
        raise BadSyntax("Expected a command name")
    verb = words[0].name
    signature = _SIGNATURES.get(verb)
    if signature is None:
        raise BadSyntax(f"Unknown command {verb}")
    args = _check_arguments(verb, signature, words[1:])
    match verb:
        case "AUTHENTICATE":
            initial = args[1] if len(args) > 1 else None
            return Authenticate(_text(args[0]), _bytes(initial) if initial is not None else None)
        case "STARTTLS":
            return StartTls()
        case "LOGOUT":
            return Logout()
        case "CAPABILITY":
            return Capability()
        case "HAVESPACE":
            return HaveSpace(_text(args[0]), _int(args[1]))
        case "PUTSCRIPT":
            return PutScript(_text(args[0]), _bytes(args[1]))
        case "LISTSCRIPTS":
            return ListScripts()
        case "SETACTIVE":
            return SetActive(_text(args[0]))
        case "GETSCRIPT":
            return GetScript(_text(args[0]))
        case "DELETESCRIPT":
            return DeleteScript(_text(args[0]))
        case "RENAMESCRIPT":
            return RenameScript(_text(args[0]), _text(args[1]))
        case "CHECKSCRIPT":
            return CheckScript(_bytes(args[0]))
        case "NOOP":
            return Noop(_text(args[0]) if args else None)
        case _:
            return Unauthenticate()


def _check_arguments(verb: str, signature: str, args: list[Word]) -> list[Word]:
    required, _, optional = signature.partition("?")
    if not len(required) <= len(args) <= len(required) + len(optional):
        raise BadSyntax(f"Wrong number of arguments for {verb}")
    for kind, arg in zip(required + optional, args, strict=False):
        if kind == "s" and not isinstance(arg, String):
            raise BadSyntax(f"{verb} expects a string")
        if kind == "n" and not isinstance(arg, Number):
            raise BadSyntax(f"{verb} expects a number")
    return args


def _bytes(word: Word) -> bytes:
    assert isinstance(word, String)  # _check_arguments guarantees it
    return word.data


def _text(word: Word) -> str:
    try:
        return _bytes(word).decode()
    except UnicodeDecodeError:
        raise BadSyntax("Strings must be UTF-8") from None


def _int(word: Word) -> int:
    assert isinstance(word, Number)  # _check_arguments guarantees it
    return word.value


def client_string(words: list[Word]) -> bytes:
    """The one string of a SASL response line (RFC 5804 §2.1)."""
    if len(words) != 1 or not isinstance(words[0], String):
        raise BadSyntax("Expected one string as the SASL response")
    return words[0].data


# -- replies -------------------------------------------------------------------------------


def string(data: str | bytes) -> bytes:
    """A string as the server sends it: quoted when that is allowed, else a literal."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) <= QUOTED_MAX and not any(c in raw for c in b"\x00\r\n"):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def response(status: str, text: str | None = None, code: bytes | str | None = None) -> bytes:
    """`OK`, `NO` or `BYE`, an optional response code and an optional human text."""
    out = status.encode()
    if code is not None:
        out += b" (" + (code.encode() if isinstance(code, str) else code) + b")"
    if text is not None:
        out += b" " + string(text)
    return out + b"\r\n"


def ok(text: str | None = None, code: bytes | str | None = None) -> bytes:
    return response("OK", text, code)


def no(text: str | None = None, code: bytes | str | None = None) -> bytes:
    return response("NO", text, code)


def bye(text: str | None = None, code: bytes | str | None = None) -> bytes:
    return response("BYE", text, code)
