"""Every reply the SMTP, submission and LMTP server sends, named, and the one place that
turns them into bytes (DESIGN §9).

A constant's name spells its code (`SMTP_550_NO_SUCH_USER` is a 550); a test checks that
each name matches its reply.  RFC 2034 §3: every 2xx, 4xx and 5xx reply carries an RFC 3463
enhanced status code, except the greeting and the answer to HELO/EHLO/LHLO; 3xx replies
(354, 334) carry none either.

Delivery reports typed `Outcome`s; `for_mail`, `for_rcpt` and `for_data` map them to the
reply each stage of a transaction sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from postoffice.delivery.model import Outcome, Verdict


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    status: str | None  # RFC 3463 enhanced status code, "5.1.1"; None where RFC 2034 has none
    text: str
    more: tuple[str, ...] = ()  # further lines of a multi-line reply (EHLO keywords)
    # Serialised once: most replies are constants sent over and over.
    _wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_wire", self._serialise())

    def with_text(self, text: str) -> Reply:
        return replace(self, text=text)

    def wire(self) -> bytes:
        return self._wire

    def _serialise(self) -> bytes:
        lines = (self.text, *self.more)
        prefix = f"{self.status} " if self.status else ""
        last = len(lines) - 1
        # RFC 5321 §4.2.1: "250-" on every line but the last, "250 " on the last.
        out = "".join(
            f"{self.code}{' ' if i == last else '-'}{prefix}{line}\r\n"
            for i, line in enumerate(lines)
        )
        # RFC 6531 §3.7.4: replies may be UTF-8 (an address echoed back); nothing else is.
        return out.encode("utf-8")

    @property
    def positive(self) -> bool:
        return self.code < 400


# -- session ---------------------------------------------------------------------------------
SMTP_214_HELP = Reply(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
)
SMTP_220_READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
SMTP_221_BYE = Reply(221, "2.0.0", "Bye")
SMTP_250_OK = Reply(250, "2.0.0", "OK")
SMTP_250_RESET = Reply(250, "2.0.0", "Reset")
SMTP_250_SENDER_OK = Reply(250, "2.1.0", "Sender OK")
SMTP_250_RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
SMTP_250_QUEUED = Reply(250, "2.0.0", "Message accepted")
SMTP_250_CHUNK_OK = Reply(250, "2.0.0", "Chunk received")
# RFC 5321 §3.5.3: VRFY may decline to confirm while promising to try delivery.
SMTP_252_CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message")
SMTP_354_START_INPUT = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
SMTP_421_TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
SMTP_421_IDLE_TIMEOUT = Reply(421, "4.4.2", "Idle for too long, closing connection")
SMTP_421_SHUTTING_DOWN = Reply(421, "4.3.2", "Server shutting down, try again later")
SMTP_451_LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
SMTP_452_TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
SMTP_500_LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
SMTP_500_BARE_NEWLINE = Reply(500, "5.5.2", "Command lines must end with <CR><LF>")
SMTP_500_UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command unrecognized")
SMTP_500_USE_LHLO = Reply(500, "5.5.1", "This is an LMTP server: use LHLO")
SMTP_500_NOT_UTF8 = Reply(500, "5.5.2", "Command is not valid UTF-8")
SMTP_501_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
SMTP_501_BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
SMTP_501_BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
SMTP_501_PATH_TOO_LONG = Reply(501, "5.1.3", "Path too long")
SMTP_501_AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
SMTP_501_AUTH_MALFORMED = Reply(501, "5.5.2", "Cannot decode the authentication response")
SMTP_502_NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
SMTP_503_BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
SMTP_503_NEED_HELO = Reply(503, "5.5.1", "Send EHLO first")
SMTP_503_NEED_MAIL = Reply(503, "5.5.1", "Send MAIL first")
SMTP_503_NESTED_MAIL = Reply(503, "5.5.1", "Sender already given")
SMTP_503_ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
SMTP_503_TLS_ACTIVE = Reply(503, "5.5.1", "TLS already active")
SMTP_503_DATA_AFTER_BDAT = Reply(503, "5.5.1", "DATA cannot follow BDAT in one transaction")
SMTP_503_BINARYMIME_NEEDS_BDAT = Reply(503, "5.5.1", "BODY=BINARYMIME requires BDAT")
SMTP_503_BDAT_AFTER_FAILURE = Reply(503, "5.5.1", "Earlier BDAT failed; chunk discarded")
SMTP_504_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
SMTP_530_AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
SMTP_535_AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
SMTP_538_ENCRYPTION_REQUIRED = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
SMTP_454_AUTH_THROTTLED = Reply(454, "4.7.0", "Too many failed logins, try again later")
SMTP_500_AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
SMTP_235_AUTHENTICATED = Reply(235, "2.7.0", "Authentication successful")
SMTP_550_BARE_NEWLINE = Reply(
    550, "5.6.0", "Message contains a bare <CR> or <LF>; lines must end with <CR><LF>"
)
SMTP_550_NUL = Reply(550, "5.6.0", "Message contains NUL bytes")
SMTP_550_LINE_TOO_LONG = Reply(550, "5.6.0", "Message has lines longer than 998 octets")
SMTP_552_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
SMTP_553_NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
SMTP_554_NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
SMTP_555_UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Parameter not recognized")

# -- verdicts --------------------------------------------------------------------------------
SMTP_550_NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
SMTP_550_RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
SMTP_501_ADDRESS_REFUSED = Reply(501, "5.1.3", "Address not accepted")
SMTP_553_SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by you")
SMTP_550_SENDER_FORGED = Reply(550, "5.7.1", "Sender address rejected: use submission")
SMTP_452_MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")
SMTP_552_QUOTA_EXCEEDED = Reply(552, "5.2.2", "Message would exceed the mailbox quota")
SMTP_550_REJECTED = Reply(550, "5.7.1", "Message rejected by policy")
SMTP_554_BLOCKED = Reply(554, "5.7.1", "Client host blocked")
SMTP_451_GREYLISTED = Reply(451, "4.7.1", "Greylisted, please try again in a few minutes")
SMTP_451_RATE_LIMITED = Reply(451, "4.7.0", "Rate limit exceeded, try again later")


def _table(accepted: Reply) -> Mapping[Outcome, Reply]:
    return MappingProxyType(
        {
            Outcome.ACCEPTED: accepted,
            Outcome.UNKNOWN_USER: SMTP_550_NO_SUCH_USER,
            Outcome.RELAY_DENIED: SMTP_550_RELAY_DENIED,
            Outcome.BAD_ADDRESS: SMTP_501_ADDRESS_REFUSED,
            Outcome.SENDER_NOT_OWNED: SMTP_553_SENDER_NOT_OWNED,
            Outcome.SENDER_FORGED: SMTP_550_SENDER_FORGED,
            Outcome.QUOTA_FULL: SMTP_452_MAILBOX_FULL,
            Outcome.QUOTA_EXCEEDED: SMTP_552_QUOTA_EXCEEDED,
            Outcome.TEMPORARY_FAILURE: SMTP_451_LOCAL_ERROR,
            Outcome.REJECTED: SMTP_550_REJECTED,
            Outcome.BLOCKED: SMTP_554_BLOCKED,
            Outcome.GREYLISTED: SMTP_451_GREYLISTED,
            Outcome.RATE_LIMITED: SMTP_451_RATE_LIMITED,
        }
    )


MAIL_REPLIES = _table(SMTP_250_SENDER_OK)
RCPT_REPLIES = _table(SMTP_250_RECIPIENT_OK)
DATA_REPLIES = _table(SMTP_250_QUEUED)


def _reply(table: Mapping[Outcome, Reply], verdict: Verdict) -> Reply:
    reply = table[verdict.outcome]
    if not verdict.detail:
        return reply
    # Delivery's detail is written to be shown to the client and says more than the default;
    # a line break in it would end the reply early and desynchronise the client.
    return reply.with_text(" ".join(verdict.detail.split()))


def for_mail(verdict: Verdict) -> Reply:
    return _reply(MAIL_REPLIES, verdict)


def for_rcpt(verdict: Verdict) -> Reply:
    return _reply(RCPT_REPLIES, verdict)


def for_data(verdict: Verdict) -> Reply:
    return _reply(DATA_REPLIES, verdict)


# -- typed errors (DESIGN §9), caught once by the session -----------------------------------------
# The third kind, the server's own fault, is any other exception: the session logs its
# traceback and answers 451 4.3.0 so the client tries again later.


class SmtpError(Exception):
    """A command ends with `reply` instead of its success reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class BadSyntax(SmtpError):
    """The client sent something malformed (5xx syntax replies)."""


class UserError(SmtpError):
    """Well-formed but refused: wrong state, policy, limits."""
