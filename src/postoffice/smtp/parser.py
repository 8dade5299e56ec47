"""SMTP and LMTP command lines → typed arguments (DESIGN §2, §9): pure, no I/O.

`parse_command(line)` takes one command line without its CRLF and returns a frozen
`<Verb>Args`, or raises `BadSyntax` (or `UserError` for a verb we know but do not offer)
carrying the reply to send.  Addresses are parsed by RFC 5321 §4.1.2 with the RFC 6531 §3.3
UTF-8 extensions; what is odd but well-formed (source routes, `%` and `!` in local parts,
quoted local parts, IP literals, a trailing dot) is kept visible so that delivery's relay
policy can refuse it by name instead of the parser guessing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, Literal

from postoffice.smtp.replies import (
    SMTP_500_NOT_UTF8,
    SMTP_500_UNKNOWN_COMMAND,
    SMTP_501_BAD_RECIPIENT,
    SMTP_501_BAD_SENDER,
    SMTP_501_PATH_TOO_LONG,
    SMTP_501_SYNTAX,
    SMTP_502_NOT_IMPLEMENTED,
    SMTP_555_UNKNOWN_PARAMETER,
    BadSyntax,
    Reply,
    UserError,
)

Body = Literal["7BIT", "8BITMIME", "BINARYMIME"]
Ret = Literal["FULL", "HDRS"]

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including its CRLF.
COMMAND_LINE_MAX: Final = 512
# RFC 5321 §4.5.3.1.4: "SMTP extensions may be used to increase this limit"; the ones we
# offer do so for the commands that carry their parameters.
_EXTRA_LINE_LENGTH: Final = {
    # SIZE (RFC 1870 §3: 26), SMTPUTF8 (RFC 6531 §3.1: 10), BODY=BINARYMIME (16),
    # ENVID + RET (RFC 3461 §4.4: ENVID up to 100), AUTH= (RFC 4954 §5: 500).
    b"MAIL": 26 + 10 + 16 + 100 + 10 + 500,
    # NOTIFY + ORCPT (RFC 3461 §4.2: ORCPT up to 500).
    b"RCPT": 30 + 500,
}
# RFC 4954 §4: 12288 octets is "a sufficient line length limit" for SASL exchanges.
AUTH_LINE_MAX: Final = 12288
# RFC 5321 §4.5.3.1.3: a reverse- or forward-path is at most 256 octets.
PATH_MAX: Final = 256
DOMAIN_MAX: Final = 255  # RFC 5321 §4.5.3.1.2
ENVID_MAX: Final = 100  # RFC 3461 §4.4
ORCPT_MAX: Final = 500  # RFC 3461 §4.2
SIZE_DIGITS_MAX: Final = 20  # RFC 1870 §3: size-value ::= 1*20DIGIT


def line_limit(verb: bytes, base: int = COMMAND_LINE_MAX) -> int:
    """The longest line (CRLF included) accepted for `verb` (upper case), given the plain
    command limit `base`; AUTH gets RFC 4954's SASL allowance for its initial response."""
    if verb == b"AUTH":
        return max(base, AUTH_LINE_MAX)
    return base + _EXTRA_LINE_LENGTH.get(verb, 0)


# -- the arguments of each command ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpPath:
    """A reverse- or forward-path without its angle brackets.

    `address` is "" for the null path `<>`, "Postmaster" for RFC 5321's bare `<Postmaster>`,
    otherwise `local@domain` with the local part exactly as sent (quotes included) and the
    domain lower-cased; a source route stays in front (`@a,@b:user@c`), so nothing that
    looks at the address can mistake a routed path for a plain one.
    """

    address: str
    route: tuple[str, ...] = ()  # RFC 5321 §4.1.2 A-d-l: the "@a,@b:" domains, in order
    utf8: bool = False  # non-ASCII characters present (RFC 6531 needs SMTPUTF8 for them)


NULL_PATH: Final = SmtpPath("")


@dataclass(frozen=True, slots=True)
class HeloArgs:
    verb: Literal["HELO", "EHLO", "LHLO"]
    domain: str


@dataclass(frozen=True, slots=True)
class MailArgs:
    path: SmtpPath
    size: int | None = None  # RFC 1870
    body: Body | None = None  # RFC 6152, RFC 3030
    smtputf8: bool = False  # RFC 6531
    ret: Ret | None = None  # RFC 3461 §4.3
    envid: str | None = None  # RFC 3461 §4.4, xtext-decoded
    auth: str | None = None  # RFC 4954 §5, xtext-decoded; "<>" when the client sent that
    has_parameters: bool = False


@dataclass(frozen=True, slots=True)
class RcptArgs:
    path: SmtpPath
    notify: tuple[str, ...] | None = None  # RFC 3461 §4.1: ("NEVER",) or SUCCESS/FAILURE/DELAY
    orcpt: str | None = None  # RFC 3461 §4.2: "addr-type;address", xtext-decoded
    has_parameters: bool = False


@dataclass(frozen=True, slots=True)
class DataArgs:
    pass


@dataclass(frozen=True, slots=True)
class BdatArgs:
    size: int
    last: bool


@dataclass(frozen=True, slots=True)
class RsetArgs:
    pass


@dataclass(frozen=True, slots=True)
class NoopArgs:
    pass


@dataclass(frozen=True, slots=True)
class QuitArgs:
    pass


@dataclass(frozen=True, slots=True)
class VrfyArgs:
    text: str


@dataclass(frozen=True, slots=True)
class HelpArgs:
    topic: str


@dataclass(frozen=True, slots=True)
class StarttlsArgs:
    pass


@dataclass(frozen=True, slots=True)
class AuthArgs:
    mechanism: str  # upper-cased
    initial_response: bytes | None  # as sent (base64 or "="), None when absent


Command = (
    HeloArgs
    | MailArgs
    | RcptArgs
    | DataArgs
    | BdatArgs
    | RsetArgs
    | NoopArgs
    | QuitArgs
    | VrfyArgs
    | HelpArgs
    | StarttlsArgs
    | AuthArgs
)

# RFC 5321 §4.1 and older: verbs a client may try that we deliberately do not offer.
_NOT_IMPLEMENTED: Final = frozenset({"EXPN", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML"})


def verb_of(line: bytes) -> bytes:
    """The command word, upper-cased, for choosing a line limit before parsing."""
    return line.split(b" ", 1)[0][:8].upper()


def parse_command(line: bytes) -> Command:
    """Parse one command line (without CRLF)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadSyntax(SMTP_500_NOT_UTF8) from None
    verb, _, rest = text.partition(" ")
    verb = verb.upper()
    match verb:
        case "EHLO" | "HELO" | "LHLO":
            return HeloArgs(verb, _helo_domain(rest))
        case "MAIL":
            return _parse_mail(rest)
        case "RCPT":
            return _parse_rcpt(rest)
        case "DATA":
            _no_arguments(rest)
            return DataArgs()
        case "BDAT":
            return _parse_bdat(rest)
        case "RSET":
            _no_arguments(rest)
            return RsetArgs()
        case "NOOP":
            # RFC 5321 §4.1.1.9: an argument is allowed and ignored.
            return NoopArgs()
        case "QUIT":
            _no_arguments(rest)
            return QuitArgs()
        case "VRFY":
            if not rest.strip():
                raise BadSyntax(SMTP_501_SYNTAX.with_text("VRFY needs an argument"))
            return VrfyArgs(rest.strip())
        case "HELP":
            return HelpArgs(rest.strip())
        case "STARTTLS":
            _no_arguments(rest)
            return StarttlsArgs()
        case "AUTH":
            return _parse_auth(rest)
    if verb in _NOT_IMPLEMENTED:
        raise UserError(SMTP_502_NOT_IMPLEMENTED)
    raise BadSyntax(SMTP_500_UNKNOWN_COMMAND)


def _bad(reply: Reply, why: str) -> BadSyntax:
    return BadSyntax(reply.with_text(f"{reply.text}: {why}"))


def _no_arguments(rest: str) -> None:
    if rest.strip():
        raise _bad(SMTP_501_SYNTAX, "no arguments allowed")


def _printable(text: str) -> bool:
    # Control characters (NUL, ESC, DEL, ...) never belong in an argument; they would end up
    # in logs and trace headers.
    return all(ch >= " " and ch != "\x7f" for ch in text)


def _helo_domain(rest: str) -> str:
    # RFC 5321 §4.1.1.1 wants a domain or address literal; clients send all sorts of names,
    # and §4.1.4 forbids refusing a message over a wrong one, so any printable word will do.
    words = rest.split()
    if not words or not _printable(words[0]):
        raise _bad(SMTP_501_SYNTAX, "a domain name is required")
    return words[0]


def _parse_bdat(rest: str) -> BdatArgs:
    # RFC 3030 §2: bdat-cmd ::= "BDAT" SP chunk-size [ SP end-marker ] CR LF
    words = rest.split(" ")
    if not 1 <= len(words) <= 2 or not _digits(words[0], SIZE_DIGITS_MAX):
        raise _bad(SMTP_501_SYNTAX, "BDAT chunk-size [LAST]")
    if len(words) == 2 and words[1].upper() != "LAST":
        raise _bad(SMTP_501_SYNTAX, "BDAT chunk-size [LAST]")
    return BdatArgs(int(words[0]), len(words) == 2)


def _digits(text: str, most: int) -> bool:
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def _parse_auth(rest: str) -> AuthArgs:
    # RFC 4954 §4: "AUTH" SP sasl-mech [SP initial-response]
    words = rest.split(" ")
    mechanism = words[0].upper()
    if (
        len(words) > 2
        or not 0 < len(mechanism) <= 20
        or not all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in mechanism)
    ):
        raise _bad(SMTP_501_SYNTAX, "AUTH mechanism [initial-response]")
    initial = words[1].encode("ascii", "replace") if len(words) == 2 else None
    return AuthArgs(mechanism, initial)


# -- MAIL and RCPT ---------------------------------------------------------------------------


def _parse_mail(rest: str) -> MailArgs:
    # RFC 5321 §4.1.1.2: "MAIL FROM:" Reverse-path [SP Mail-parameters]
    text = _after_keyword(rest, "FROM:", SMTP_501_BAD_SENDER)
    path, end = _parse_path(text, 0, SMTP_501_BAD_SENDER, null_ok=True)
    params = _parameters(text[end:])
    size: int | None = None
    body: Body | None = None
    smtputf8 = False
    ret: Ret | None = None
    envid: str | None = None
    auth: str | None = None
    for keyword, value in params:
        match keyword:
            case "SIZE":
                # RFC 1870 §3: size-value ::= 1*20DIGIT
                if value is None or not _digits(value, SIZE_DIGITS_MAX):
                    raise _bad(SMTP_501_SYNTAX, "SIZE=<octets>")
                size = int(value)
            case "BODY":
                body = _body(value)
            case "SMTPUTF8":
                # RFC 6531 §3.4: the parameter takes no value.
                if value is not None:
                    raise _bad(SMTP_501_SYNTAX, "SMTPUTF8 takes no value")
                smtputf8 = True
            case "RET":
                ret = _ret(value)
            case "ENVID":
                if value is None:
                    raise _bad(SMTP_501_SYNTAX, "ENVID=<xtext>")
                envid = decode_xtext(value)
                if len(envid) > ENVID_MAX:
                    raise _bad(SMTP_501_SYNTAX, "ENVID is longer than 100 characters")
            case "AUTH":
                # RFC 4954 §5: AUTH=<> or AUTH=xtext; only kept, never trusted (we relay
                # no one else's mail) and so never changes what the session does.
                if value is None:
                    raise _bad(SMTP_501_SYNTAX, "AUTH=<mailbox> or AUTH=<>")
                auth = value if value == "<>" else decode_xtext(value)
            case _:
                raise _unknown_parameter(keyword)
    return MailArgs(path, size, body, smtputf8, ret, envid, auth, bool(params))


def _parse_rcpt(rest: str) -> RcptArgs:
    # RFC 5321 §4.1.1.3: "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
    # Forward-path ) [SP Rcpt-parameters]
    text = _after_keyword(rest, "TO:", SMTP_501_BAD_RECIPIENT)
    path, end = _parse_path(text, 0, SMTP_501_BAD_RECIPIENT, postmaster_ok=True)
    params = _parameters(text[end:])
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    for keyword, value in params:
        match keyword:
            case "NOTIFY":
                notify = _notify(value)
            case "ORCPT":
                orcpt = _orcpt(value)
            case _:
                raise _unknown_parameter(keyword)
    return RcptArgs(path, notify, orcpt, bool(params))


def _after_keyword(rest: str, keyword: str, reply: Reply) -> str:
    if rest[: len(keyword)].upper() != keyword:
        raise _bad(reply, f"expected {keyword}<address>")
    # RFC 5321 has no space after the colon; enough clients send one that refusing it would
    # only lose mail, and it cannot change what the path means.
    return rest[len(keyword) :].lstrip(" ")


def _unknown_parameter(keyword: str) -> UserError:
    # RFC 5321 §4.1.1.11: 555 for a parameter that is not recognised or not implemented.
    return UserError(SMTP_555_UNKNOWN_PARAMETER.with_text(f"Parameter {keyword} not recognized"))


def _parameters(text: str) -> list[tuple[str, str | None]]:
    """RFC 5321 §4.1.2 Mail-parameters / Rcpt-parameters after the path: upper-cased
    keywords with their values, each keyword at most once."""
    if not text:
        return []
    if text[0] != " ":
        raise _bad(SMTP_501_SYNTAX, "parameters must follow the address after a space")
    params: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for word in text.split():
        keyword, eq, value = word.partition("=")
        keyword = keyword.upper()
        # esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        if not keyword or not keyword.isascii() or not keyword[0].isalnum():
            raise _bad(SMTP_501_SYNTAX, f"bad parameter {word!r}")
        if not all(ch.isalnum() or ch == "-" for ch in keyword):
            raise _bad(SMTP_501_SYNTAX, f"bad parameter {word!r}")
        # esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 by RFC 6531 §3.3
        if eq and (not value or "=" in value or not _printable(value)):
            raise _bad(SMTP_501_SYNTAX, f"bad value for {keyword}")
        if keyword in seen:
            raise _bad(SMTP_501_SYNTAX, f"{keyword} given twice")
        seen.add(keyword)
        params.append((keyword, value if eq else None))
    return params


def _body(value: str | None) -> Body:
    match (value or "").upper():
        case "7BIT":
            return "7BIT"
        case "8BITMIME":
            return "8BITMIME"
        case "BINARYMIME":
            return "BINARYMIME"
    raise _bad(SMTP_501_SYNTAX, "BODY=7BIT, 8BITMIME or BINARYMIME")


def _ret(value: str | None) -> Ret:
    match (value or "").upper():
        case "FULL":
            return "FULL"
        case "HDRS":
            return "HDRS"
    raise _bad(SMTP_501_SYNTAX, "RET=FULL or RET=HDRS")


_NOTIFY_EVENTS: Final = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def _notify(value: str | None) -> tuple[str, ...]:
    # RFC 3461 §4.1: "NEVER" alone, or a comma-separated list of SUCCESS, FAILURE, DELAY.
    items = tuple((value or "").upper().split(","))
    if items == ("NEVER",):
        return items
    if not items or not all(i in _NOTIFY_EVENTS for i in items) or len(set(items)) < len(items):
        raise _bad(SMTP_501_SYNTAX, "NOTIFY=NEVER or a list of SUCCESS, FAILURE, DELAY")
    return items


def _orcpt(value: str | None) -> str:
    # RFC 3461 §4.2: orcpt-parameter = "ORCPT=" addr-type ";" xtext
    addr_type, semicolon, address = (value or "").partition(";")
    if not semicolon or not addr_type or not address or not addr_type.isascii():
        raise _bad(SMTP_501_SYNTAX, "ORCPT=addr-type;address")
    if not all(ch.isalnum() or ch in "-_" for ch in addr_type) or len(value or "") > ORCPT_MAX:
        raise _bad(SMTP_501_SYNTAX, "ORCPT=addr-type;address")
    return f"{addr_type};{decode_xtext(address)}"


def decode_xtext(value: str) -> str:
    """RFC 3461 §4: xtext = *( xchar / hexchar ), hexchar = "+" 2HEXDIG."""
    out = bytearray()
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "+":
            pair = value[i + 1 : i + 3]
            if len(pair) != 2 or not all(c in "0123456789ABCDEFabcdef" for c in pair):
                raise _bad(SMTP_501_SYNTAX, "bad xtext escape")
            out.append(int(pair, 16))
            i += 3
            continue
        # xchar: "!" to "~" except "+" and "="
        if not "!" <= ch <= "~" or ch == "=":
            raise _bad(SMTP_501_SYNTAX, "bad character in xtext")
        out.append(ord(ch))
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(SMTP_501_SYNTAX, "xtext is not UTF-8") from None


# -- paths -------------------------------------------------------------------------------------

# RFC 5321 §4.1.2 atext (RFC 5322 §3.2.3), extended to UTF-8 by RFC 6531 §3.3.
_ATOM: Final = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+")
# RFC 5321 §4.1.2: sub-domain = Let-dig [Ldh-str], or a U-label (RFC 6531 §3.3).
_LABEL: Final = re.compile(
    r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
)


def _parse_path(
    text: str, pos: int, reply: Reply, *, null_ok: bool = False, postmaster_ok: bool = False
) -> tuple[SmtpPath, int]:
    """Parse `<...>` at `pos`; the path and the index after `>`."""
    if text[pos : pos + 1] != "<":
        raise _bad(reply, "the address must be enclosed in <>")
    pos += 1
    if text[pos : pos + 1] == ">":
        if not null_ok:
            raise _bad(reply, "empty address")
        return NULL_PATH, pos + 1
    start = pos
    route: list[str] = []
    if text[pos : pos + 1] == "@":
        # RFC 5321 §4.1.2: A-d-l = At-domain *( "," At-domain ) ":"
        while True:
            domain, pos = _parse_domain(text, pos + 1, reply)
            route.append(domain)
            if text[pos : pos + 2] == ",@":
                pos += 1
                continue
            if text[pos : pos + 1] != ":":
                raise _bad(reply, "bad source route")
            pos += 1
            break
    local_start = pos
    pos = _parse_local_part(text, pos, reply)
    local = text[local_start:pos]
    # RFC 5321 §4.1.1.3: <Postmaster> without a domain must be accepted.
    if text[pos : pos + 1] == ">" and postmaster_ok and not route and local.lower() == "postmaster":
        return SmtpPath("Postmaster"), pos + 1
    if text[pos : pos + 1] != "@":
        raise _bad(reply, "the address needs a domain")
    domain, pos = _parse_domain(text, pos + 1, reply, literal_ok=True)
    if text[pos : pos + 1] != ">":
        raise _bad(reply, "unexpected character in the address")
    routed = text[start:local_start].lower()
    address = f"{routed}{local}@{domain}"
    if len(address.encode("utf-8")) > PATH_MAX - 2:
        raise BadSyntax(SMTP_501_PATH_TOO_LONG)
    return SmtpPath(address, tuple(route), not address.isascii()), pos + 1


def _parse_local_part(text: str, pos: int, reply: Reply) -> int:
    """RFC 5321 §4.1.2: Local-part = Dot-string / Quoted-string; the index after it."""
    if text[pos : pos + 1] == '"':
        pos += 1
        while True:
            ch = text[pos : pos + 1]
            if ch == '"':
                return pos + 1
            if ch == "\\":
                # quoted-pairSMTP = %d92 %d32-126
                escaped = text[pos + 1 : pos + 2]
                if not escaped or not " " <= escaped <= "~":
                    raise _bad(reply, "bad escape in quoted local part")
                pos += 2
                continue
            # qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8 (RFC 6531 §3.3)
            if not ch or (ord(ch) < 0x20 or ch == "\x7f"):
                raise _bad(reply, "unterminated or bad quoted local part")
            pos += 1
    # Dot-string = Atom *("." Atom): no empty atoms, so no leading, trailing or double dot.
    start = pos
    while True:
        atom = _ATOM.match(text, pos)
        if atom is None:
            raise _bad(reply, "bad local part" if pos > start else "empty local part")
        pos = atom.end()
        if text[pos : pos + 1] != ".":
            return pos
        pos += 1


def _parse_domain(
    text: str, pos: int, reply: Reply, *, literal_ok: bool = False
) -> tuple[str, int]:
    """A Domain (lower-cased) or, where allowed, an address literal; the index after it."""
    if text[pos : pos + 1] == "[":
        if not literal_ok:
            raise _bad(reply, "address literal in a source route")
        end = text.find("]", pos)
        if end < 0 or not _address_literal(text[pos + 1 : end]):
            raise _bad(reply, "bad address literal")
        return text[pos : end + 1].lower(), end + 1
    start = pos
    while True:
        label = _LABEL.match(text, pos)
        if label is None:
            raise _bad(reply, "bad domain")
        pos = label.end()
        if text[pos : pos + 1] != ".":
            break
        pos += 1
        if _LABEL.match(text, pos) is None:
            # A trailing dot ("user@example.test.") is kept: it names the same domain to DNS,
            # and delivery refuses it as a relay attempt rather than we as bad syntax.
            break
    domain = text[start:pos]
    if len(domain.encode("utf-8")) > DOMAIN_MAX:
        raise _bad(reply, "domain too long")
    return domain.lower(), pos


def _address_literal(inner: str) -> bool:
    # RFC 5321 §4.1.3: IPv4-address-literal / IPv6-address-literal / General-address-literal
    if inner[:5].upper() == "IPV6:":
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    tag, colon, content = inner.partition(":")
    if colon:
        # General-address-literal = Standardized-tag ":" 1*dcontent
        return (
            bool(tag)
            and all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in tag)
            and bool(content)
            and all("!" <= ch <= "Z" or "^" <= ch <= "~" for ch in content)
        )
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True
