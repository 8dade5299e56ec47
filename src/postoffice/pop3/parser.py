"""POP3 command lines → typed commands (RFC 1939, RFC 2449, RFC 2595, RFC 5034); pure.

One line in (CRLF included or not), one frozen dataclass out, or `BadSyntax` whose message
is the text of the `-ERR` to send.  Keywords are case-insensitive; arguments are separated
by single spaces (RFC 1939 §3), except PASS, whose argument is the rest of the line so that
passwords may contain spaces (as most servers allow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# RFC 2449 §4: a command line is at most 255 octets including its CRLF.
MAX_LINE: Final = 255
# Message numbers above this cannot exist in a snapshot and would only cost a big int.
_MAX_NUMBER_DIGITS: Final = 10


class BadSyntax(Exception):
    """The line is not a valid command; str() is the reply text."""


@dataclass(frozen=True, slots=True)
class User:
    name: str


@dataclass(frozen=True, slots=True)
class Pass:
    password: str


@dataclass(frozen=True, slots=True)
class Apop:
    name: str
    digest: str  # lowercase hex MD5


@dataclass(frozen=True, slots=True)
class Auth:
    mechanism: str | None  # None: list the mechanisms
    initial: bytes | None  # the initial response as sent (base64 or "="), RFC 5034 §4


@dataclass(frozen=True, slots=True)
class Stls:
    pass


@dataclass(frozen=True, slots=True)
class Capa:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Stat:
    pass


@dataclass(frozen=True, slots=True)
class ListMessages:
    msg: int | None


@dataclass(frozen=True, slots=True)
class Retr:
    msg: int


@dataclass(frozen=True, slots=True)
class Dele:
    msg: int


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Top:
    msg: int
    lines: int


@dataclass(frozen=True, slots=True)
class Uidl:
    msg: int | None


Command = (
    User
    | Pass
    | Apop
    | Auth
    | Stls
    | Capa
    | Quit
    | Stat
    | ListMessages
    | Retr
    | Dele
    | Noop
    | Rset
    | Top
    | Uidl
)

_NO_ARGUMENTS: Final[dict[str, Command]] = {
    "STLS": Stls(),
    "CAPA": Capa(),
    "QUIT": Quit(),
    "STAT": Stat(),
    "NOOP": Noop(),
    "RSET": Rset(),
}


def parse_command(line: bytes) -> Command:
    """The command on `line`; raises BadSyntax."""
    if len(line) > MAX_LINE:
        raise BadSyntax("Command line too long")
    body = line.removesuffix(b"\n").removesuffix(b"\r")
    if b"\r" in body or b"\n" in body or b"\0" in body:
        raise BadSyntax("Invalid characters in command")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadSyntax("Command is not valid UTF-8") from None
    verb, _, rest = text.partition(" ")
    keyword = verb.upper()
    if keyword == "PASS":
        # RFC 1939 §7: the password is the rest of the line, spaces included.
        if not rest:
            raise BadSyntax("PASS needs a password")
        return Pass(rest)
    args = rest.split(" ") if rest else []
    if any(not arg for arg in args):
        raise BadSyntax("Arguments must be separated by single spaces")
    if keyword in _NO_ARGUMENTS:
        _arity(keyword, args, 0, 0)
        return _NO_ARGUMENTS[keyword]
    match keyword:
        case "USER":
            _arity(keyword, args, 1, 1)
            return User(args[0])
        case "APOP":
            _arity(keyword, args, 2, 2)
            digest = args[1].lower()
            if len(digest) != 32 or any(ch not in "0123456789abcdef" for ch in digest):
                raise BadSyntax("APOP digest must be 32 hexadecimal digits")
            return Apop(args[0], digest)
        case "AUTH":
            _arity(keyword, args, 0, 2)
            if not args:
                return Auth(None, None)
            initial = args[1].encode("ascii", "replace") if len(args) == 2 else None
            return Auth(args[0].upper(), initial)
        case "LIST":
            _arity(keyword, args, 0, 1)
            return ListMessages(_number(args[0]) if args else None)
        case "UIDL":
            _arity(keyword, args, 0, 1)
            return Uidl(_number(args[0]) if args else None)
        case "RETR":
            _arity(keyword, args, 1, 1)
            return Retr(_number(args[0]))
        case "DELE":
            _arity(keyword, args, 1, 1)
            return Dele(_number(args[0]))
        case "TOP":
            _arity(keyword, args, 2, 2)
            return Top(_number(args[0]), _number(args[1], zero=True))
        case "":
            raise BadSyntax("Empty command")
        case _:
            raise BadSyntax("Unknown command")


def _arity(keyword: str, args: list[str], least: int, most: int) -> None:
    if not least <= len(args) <= most:
        if most == 0:
            raise BadSyntax(f"{keyword} takes no arguments")
        raise BadSyntax(f"Wrong number of arguments for {keyword}")


def _number(text: str, *, zero: bool = False) -> int:
    """A message number (RFC 1939 §3: 1 and up) or, with `zero`, a line count."""
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_NUMBER_DIGITS:
        raise BadSyntax(f"Invalid number {text[:20]!r}")
    value = int(text)
    if value == 0 and not zero:
        raise BadSyntax("Message numbers start at 1")
    return value
