"""One SMTP, submission or LMTP session: a state machine with one `cmd_<verb>` per command.

Hand-written, not aiosmtpd: that lacks BDAT, DSN and enhanced status codes (see the package
docstring).

The session owns the input buffer: command lines, DATA content and BDAT chunks are all cut
from it, so pipelined input (RFC 2920) is answered in batches (replies are queued and
written only when no complete command is left in the buffer, or before a wait) and nothing
a client sends can be read twice or skipped.  Whether a command is allowed now is decided
by one table (`_NEEDS`), not by each handler.  Handlers raise the typed errors of
`replies.py`; `_execute` catches them once, counts client errors and closes the session
after too many.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from postoffice.auth.authenticator import (
    AuthCancelled,
    Authenticator,
    AuthFailure,
    AuthMalformed,
    AuthSuccess,
    AuthThrottled,
    AuthUnsupported,
)
from postoffice.auth.sasl import mechanisms_offered
from postoffice.config import Network
from postoffice.context import Clock
from postoffice.delivery.model import Envelope, Origin, Outcome, Recipient, Verdict
from postoffice.listeners import Connection, discard_buffered
from postoffice.smtp import replies as r
from postoffice.smtp.data import ChunkCollector, DataReader, Received
from postoffice.smtp.parser import (
    AUTH_LINE_MAX,
    AuthArgs,
    BdatArgs,
    Command,
    DataArgs,
    HeloArgs,
    HelpArgs,
    MailArgs,
    NoopArgs,
    QuitArgs,
    RcptArgs,
    RsetArgs,
    StarttlsArgs,
    VrfyArgs,
    line_limit,
    parse_command,
    verb_of,
)
from postoffice.smtp.replies import BadSyntax, Reply, SmtpError, UserError

READ_SIZE: Final = 256 * 1024


class DeliveryPort(Protocol):
    """What the session needs of `postoffice.delivery.pipeline.Delivery`."""

    async def check_sender(self, sender: str, origin: Origin) -> Verdict: ...
    async def check_connect(self, origin: Origin) -> Verdict: ...
    async def check_recipient(
        self, recipient: Recipient, origin: Origin, *, sender: str
    ) -> Verdict: ...
    async def deliver(self, envelope: Envelope, raw: bytes, origin: Origin) -> list[Verdict]: ...


@dataclass(frozen=True, slots=True)
class Policy:
    """What one listener offers and allows; built once per listener by the handler."""

    listener: str  # "smtp", "submission", "submissions", "lmtp"
    hostname: str
    lmtp: bool
    auth: bool  # AUTH offered, and required before MAIL
    starttls: bool  # STARTTLS offered while the connection is in cleartext
    max_size: int
    max_recipients: int
    max_errors: int
    idle_seconds: float
    tls_handshake_seconds: float
    line_max: int  # plain command lines, CRLF included
    long_lines_ok: bool
    plaintext_networks: tuple[Network, ...]


# -- state ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Connected:
    """Before HELO/EHLO/LHLO (and again right after STARTTLS)."""


@dataclass(slots=True)
class Greeted:
    helo: str
    esmtp: bool  # EHLO or LHLO: extensions and their parameters may be used


@dataclass(slots=True)
class Transaction:
    """Between MAIL and the end of the message (or RSET)."""

    greeted: Greeted
    mail: MailArgs
    origin: Origin  # as at MAIL; the end of data takes a fresh one for its time stamp
    recipients: list[Recipient] = field(default_factory=list)
    chunks: ChunkCollector | None = None  # BDAT has begun
    bdat_failed: bool = False  # RFC 3030 §2: later chunks are read and discarded


State = Connected | Greeted | Transaction


@dataclass(frozen=True, slots=True)
class Needs:
    """What a command requires; `_allowed` turns a missing one into the reply."""

    helo: bool = False
    transaction: bool = False
    no_transaction: bool = False
    authenticated: bool = False  # on listeners that require AUTH
    starttls_offered: bool = False
    auth_offered: bool = False


_ANYTIME: Final = Needs()
# DESIGN §9: the table, not each handler, says when a command may run.  BDAT is absent on
# purpose: its chunk must be read whatever the answer, so cmd_bdat checks for itself.
_NEEDS: Final[dict[type, Needs]] = {
    MailArgs: Needs(helo=True, no_transaction=True, authenticated=True),
    RcptArgs: Needs(helo=True, transaction=True),
    DataArgs: Needs(helo=True, transaction=True),
    StarttlsArgs: Needs(helo=True, no_transaction=True, starttls_offered=True),
    AuthArgs: Needs(helo=True, no_transaction=True, auth_offered=True),
}


class _SessionEnd(Exception):
    """Raised out of any command to end the session."""


class _Hangup(_SessionEnd):
    """The client closed the connection."""


class _Idle(_SessionEnd):
    """No input within the idle timeout."""


class _Stopping(_SessionEnd):
    """The server is shutting down and the session is between transactions."""


class _AuthLineTooLong(Exception):
    """A SASL response longer than RFC 4954's buffer; it has been skipped."""


class SmtpSession:
    def __init__(
        self,
        conn: Connection,
        policy: Policy,
        delivery: DeliveryPort,
        authenticator: Authenticator | None,
        tls: ssl.SSLContext,
        clock: Clock,
    ) -> None:
        self.conn = conn
        self.tls = tls
        self.policy = policy
        self.delivery = delivery
        self.authenticator = authenticator
        self.clock = clock
        self.state: State = Connected()
        self.auth: AuthSuccess | None = None
        self.errors = 0
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._closing = False
        # Set while waiting for a command between transactions, so a shutdown can end the
        # wait at once instead of after the idle timeout.
        self._idle_timer: asyncio.Timeout | None = None

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        watcher = asyncio.ensure_future(self._watch_stopping())
        try:
            await self._serve()
        finally:
            watcher.cancel()

    async def _serve(self) -> None:
        kind = "LMTP" if self.policy.lmtp else "ESMTP"
        refusal = await self._connect_refusal()
        if refusal is not None:
            self.reply(refusal)
            await self._flush()
            return
        # RFC 2034 §3: no enhanced status code in the greeting.
        self.reply(Reply(220, None, f"{self.policy.hostname} {kind} postoffice ready"))
        try:
            while not self._closing:
                between = not isinstance(self.state, Transaction)
                line = await self._next_line(idle=between)
                if line is None:
                    continue  # an overlong or malformed line, already answered
                if between and self.conn.stopping.is_set():
                    raise _Stopping
                await self._execute(line)
        except _Hangup:
            return
        except _Idle:
            # RFC 5321 §4.5.3.2: the server may close after its timeout, with a 421.
            self.reply(r.SMTP_421_IDLE_TIMEOUT)
        except _Stopping:
            self.reply(r.SMTP_421_SHUTTING_DOWN)
        await self._flush()

    async def _connect_refusal(self) -> Reply | None:
        """The greeting that turns the client away (rate limits), or None to let it in."""
        origin = Origin(
            listener=self.policy.listener,
            protocol="SMTP",
            helo="",
            peer_ip=self.conn.peer,
            session_id=self.conn.session_id,
            tls=self._tls_description(),
            received_at=self.clock.now(),
        )
        verdict = await self.delivery.check_connect(origin)
        if verdict.accepted:
            return None
        text = " ".join(verdict.detail.split()) or "Service not available"
        # RFC 5321 §3.1: 554 instead of the greeting refuses the client; 421 says "later".
        # Either way the server closes at once rather than wait for a QUIT (§3.8).
        permanent = verdict.outcome in (Outcome.BLOCKED, Outcome.REJECTED)
        return Reply(554 if permanent else 421, None, f"{self.policy.hostname} {text}")

    async def _watch_stopping(self) -> None:
        await self.conn.stopping.wait()
        timer = self._idle_timer
        if timer is not None and not timer.expired():
            timer.reschedule(asyncio.get_running_loop().time())

    async def _execute(self, line: bytes) -> None:
        try:
            command = parse_command(line)
            self._allowed(command)
            await self._dispatch(command)
        except SmtpError as e:
            self.failed(e.reply)
        except (_SessionEnd, OSError):
            # The session is over (or the connection is gone): nothing to answer.
            raise
        except Exception:
            self.conn.log.exception("command failed")
            self.failed(r.SMTP_451_LOCAL_ERROR)

    async def _dispatch(self, command: Command) -> None:
        match command:
            case HeloArgs():
                await self.cmd_helo(command)
            case MailArgs():
                await self.cmd_mail(command)
            case RcptArgs():
                await self.cmd_rcpt(command)
            case DataArgs():
                await self.cmd_data(command)
            case BdatArgs():
                await self.cmd_bdat(command)
            case RsetArgs():
                await self.cmd_rset(command)
            case NoopArgs():
                await self.cmd_noop(command)
            case QuitArgs():
                await self.cmd_quit(command)
            case VrfyArgs():
                await self.cmd_vrfy(command)
            case HelpArgs():
                await self.cmd_help(command)
            case StarttlsArgs():
                await self.cmd_starttls(command)
            case AuthArgs():
                await self.cmd_auth(command)

    def _allowed(self, command: Command) -> None:
        needs = _NEEDS.get(type(command), _ANYTIME)
        state = self.state
        if needs.starttls_offered and not self._starttls_offered():
            raise UserError(r.SMTP_503_TLS_ACTIVE if self.conn.tls else r.SMTP_502_NOT_IMPLEMENTED)
        if needs.auth_offered and not self.policy.auth:
            raise UserError(r.SMTP_502_NOT_IMPLEMENTED)
        if needs.helo and isinstance(state, Connected):
            raise UserError(r.SMTP_503_NEED_HELO)
        if needs.transaction and not isinstance(state, Transaction):
            raise UserError(r.SMTP_503_NEED_MAIL)
        if needs.no_transaction and isinstance(state, Transaction):
            nested = isinstance(command, MailArgs)
            raise UserError(r.SMTP_503_NESTED_MAIL if nested else r.SMTP_503_BAD_SEQUENCE)
        if needs.authenticated and self.policy.auth and self.auth is None:
            raise UserError(r.SMTP_530_AUTH_REQUIRED)

    # -- replies ---------------------------------------------------------------------------------

    def reply(self, reply: Reply) -> None:
        """Queue a reply; it is written before the next wait for input (RFC 2920 §3.1)."""
        self._out.append(reply.wire())

    def failed(self, reply: Reply) -> None:
        """Queue a refusal of a command; 5xx ones count towards the error limit."""
        self.reply(reply)
        if reply.code >= 500:
            self.errors += 1
            if self.errors >= self.policy.max_errors:
                self.reply(r.SMTP_421_TOO_MANY_ERRORS)
                self._closing = True

    async def _flush(self) -> None:
        if not self._out:
            return
        writer = self.conn.writer
        writer.write(b"".join(self._out))
        self._out.clear()
        if not writer.transport.get_write_buffer_size():
            await writer.drain()  # all sent; only reports a lost connection
            return
        # A client that never reads our replies must not hold the session forever.
        async with asyncio.timeout(self.policy.idle_seconds):
            await writer.drain()

    # -- input -----------------------------------------------------------------------------------

    async def _read(self, *, idle: bool = False) -> bytes:
        """More input from the socket, after writing every queued reply."""
        await self._flush()
        try:
            async with asyncio.timeout(self.policy.idle_seconds) as timer:
                if idle:
                    if self.conn.stopping.is_set():
                        raise _Stopping
                    self._idle_timer = timer
                data = await self.conn.reader.read(READ_SIZE)
        except TimeoutError:
            raise _Stopping if self.conn.stopping.is_set() and idle else _Idle from None
        finally:
            self._idle_timer = None
        if not data:
            raise _Hangup
        return data

    async def _next_line(self, *, idle: bool) -> bytes | None:
        """The next command line without CRLF; None when it was refused (too long, bare LF)."""
        cap = max(AUTH_LINE_MAX, self.policy.line_max)
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                break
            if len(self._buf) > cap:
                await self._skip_line()
                self.failed(r.SMTP_500_LINE_TOO_LONG)
                return None
            self._buf += await self._read(idle=idle and not self._buf)
        line = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        # RFC 5321 §2.3.8: a line ends with CRLF and holds no other CR or LF.  Refusing the
        # rest closes the command-level variant of smuggling (a bare LF splitting one line
        # into two commands at a server in front of us).
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            self.failed(r.SMTP_500_BARE_NEWLINE)
            return None
        # RFC 5321 §4.5.3.1.4: 512 octets, more for commands whose extensions allow it.
        if len(line) > line_limit(verb_of(line), self.policy.line_max):
            self.failed(r.SMTP_500_LINE_TOO_LONG)
            return None
        return line[:-2]

    async def _skip_line(self) -> None:
        """Discard input up to and including the next LF."""
        while (end := self._buf.find(b"\n")) < 0:
            self._buf.clear()
            self._buf += await self._read()
        del self._buf[: end + 1]

    async def _read_exactly(self, size: int, sink: ChunkCollector | None) -> None:
        """Consume `size` octets (a BDAT chunk), handing them to `sink` if there is one."""
        while size:
            if not self._buf:
                self._buf += await self._read()
            piece = bytes(self._buf[:size])
            del self._buf[:size]
            size -= len(piece)
            if sink is not None:
                sink.add(piece)

    async def _receive_sasl_line(self) -> bytes:
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > AUTH_LINE_MAX:
                await self._skip_line()
                raise _AuthLineTooLong
            self._buf += await self._read()
        line = bytes(self._buf[: end + 1])
        del self._buf[: end + 1]
        if len(line) > AUTH_LINE_MAX:
            raise _AuthLineTooLong
        return line.rstrip(b"\r\n")

    async def _send_challenge(self, challenge: bytes) -> None:
        # RFC 4954 §4: "334" SP [base64] CRLF, no enhanced status code.
        self._out.append(b"334 " + challenge + b"\r\n")
        await self._flush()

    # -- facts about the connection --------------------------------------------------------------

    def _starttls_offered(self) -> bool:
        return self.policy.starttls and not self.conn.tls

    def _plaintext_allowed(self) -> bool:
        if not self.conn.peer:
            return False
        address = ipaddress.ip_address(self.conn.peer)
        return any(address in network for network in self.policy.plaintext_networks)

    def _auth_usable(self) -> bool:
        return self.policy.auth and (self.conn.tls or self._plaintext_allowed())

    def _tls_description(self) -> str | None:
        ssl_object = self.conn.writer.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        cipher = ssl_object.cipher()
        return f"{ssl_object.version()} {cipher[0]}" if cipher else str(ssl_object.version())

    def _origin(self, greeted: Greeted, smtputf8: bool = False) -> Origin:
        return Origin(
            listener=self.policy.listener,
            protocol=self._protocol(greeted, smtputf8),
            helo=greeted.helo,
            peer_ip=self.conn.peer,
            session_id=self.conn.session_id,
            tls=self._tls_description(),
            account_id=self.auth.account_id if self.auth else None,
            auth_address=self.auth.address if self.auth else None,
            received_at=self.clock.now(),
        )

    def _protocol(self, greeted: Greeted, smtputf8: bool) -> str:
        # RFC 3848 and RFC 6531 §3.7.3: the "with" keyword of the Received header.
        if not greeted.esmtp:
            return "SMTP"
        base = "LMTP" if self.policy.lmtp else "SMTP"
        prefix = "UTF8" if smtputf8 else ("" if self.policy.lmtp else "E")
        return f"{prefix}{base}{'S' if self.conn.tls else ''}{'A' if self.auth else ''}"

    # -- commands --------------------------------------------------------------------------------

    async def cmd_helo(self, args: HeloArgs) -> None:
        # RFC 2033 §4.1: LMTP has LHLO instead of HELO and EHLO, and SMTP has no LHLO.
        if self.policy.lmtp != (args.verb == "LHLO"):
            raise UserError(r.SMTP_500_USE_LHLO if self.policy.lmtp else r.SMTP_500_UNKNOWN_COMMAND)
        # RFC 5321 §4.1.4: a repeated EHLO resets any transaction in progress.
        self.state = Greeted(args.domain, esmtp=args.verb != "HELO")
        greeting = f"{self.policy.hostname} Hello {args.domain}"
        if args.verb == "HELO":
            self.reply(Reply(250, None, greeting))
            return
        # RFC 2034 §3: the EHLO reply carries no enhanced status code.
        self.reply(Reply(250, None, greeting, self._extensions()))

    def _extensions(self) -> tuple[str, ...]:
        keywords = [
            "PIPELINING",  # RFC 2920
            f"SIZE {self.policy.max_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "BINARYMIME",  # RFC 3030
            "CHUNKING",  # RFC 3030
            "SMTPUTF8",  # RFC 6531
            "DSN",  # RFC 3461
            "ENHANCEDSTATUSCODES",  # RFC 2034
        ]
        if self._starttls_offered():
            keywords.append("STARTTLS")  # RFC 3207
        if self._auth_usable():
            # RFC 4954 §3 and DESIGN §7: offered only where it may be used.
            keywords.append("AUTH " + " ".join(self._mechanisms()))
        return tuple(keywords)

    def _mechanisms(self) -> Sequence[str]:
        return mechanisms_offered(self.conn.tls, self._plaintext_allowed())

    async def cmd_mail(self, args: MailArgs) -> None:
        greeted = self._greeted()
        # RFC 5321 §4.1.1.11 / RFC 1869: parameters exist only after EHLO.
        if args.has_parameters and not greeted.esmtp:
            raise UserError(r.SMTP_555_UNKNOWN_PARAMETER.with_text("Parameters require EHLO"))
        # RFC 6531 §3.4: a non-ASCII address needs SMTPUTF8 on MAIL.
        if args.path.utf8 and not args.smtputf8:
            raise UserError(r.SMTP_553_NEEDS_SMTPUTF8)
        # RFC 1870 §6.1: a declared size over the limit is refused at once.
        if args.size is not None and args.size > self.policy.max_size:
            raise UserError(r.SMTP_552_TOO_BIG)
        origin = self._origin(greeted, args.smtputf8)
        verdict = await self.delivery.check_sender(args.path.address, origin)
        reply = r.for_mail(verdict)
        if not verdict.accepted:
            self.failed(reply)
            return
        self.state = Transaction(greeted, args, origin)
        self.reply(reply)

    async def cmd_rcpt(self, args: RcptArgs) -> None:
        tx = self._transaction()
        if args.has_parameters and not tx.greeted.esmtp:
            raise UserError(r.SMTP_555_UNKNOWN_PARAMETER.with_text("Parameters require EHLO"))
        if args.path.utf8 and not tx.mail.smtputf8:
            raise UserError(r.SMTP_553_NEEDS_SMTPUTF8)
        # RFC 5321 §4.5.3.1.10: too many recipients is a 452, which the client retries.
        if len(tx.recipients) >= self.policy.max_recipients:
            self.reply(r.SMTP_452_TOO_MANY_RECIPIENTS)
            return
        recipient = Recipient(args.path.address, args.notify, args.orcpt)
        verdict = await self.delivery.check_recipient(
            recipient, tx.origin, sender=tx.mail.path.address
        )
        reply = r.for_rcpt(verdict)
        if not verdict.accepted:
            self.failed(reply)
            return
        tx.recipients.append(recipient)
        self.reply(reply)

    async def cmd_data(self, args: DataArgs) -> None:
        tx = self._transaction()
        # RFC 3030 §3: DATA cannot join a BDAT transaction, nor carry BINARYMIME.
        if tx.chunks is not None:
            raise UserError(r.SMTP_503_DATA_AFTER_BDAT)
        if tx.mail.body == "BINARYMIME":
            raise UserError(r.SMTP_503_BINARYMIME_NEEDS_BDAT)
        # RFC 5321 §3.3: no accepted recipient, no data.
        if not tx.recipients:
            raise UserError(r.SMTP_554_NO_VALID_RECIPIENTS)
        self.reply(r.SMTP_354_START_INPUT)
        reader = DataReader(self.policy.max_size, long_lines_ok=self.policy.long_lines_ok)
        # A client may send the content without waiting for the 354.
        pending, self._buf = self._buf, bytearray()
        done = reader.feed(pending) if pending else None
        while done is None:
            done = reader.feed(await self._read())
        received, rest = done
        self._buf += rest
        await self._end_of_message(tx, received)

    async def cmd_bdat(self, args: BdatArgs) -> None:
        # RFC 3030 §2: the chunk follows the command at once and is read whatever we answer,
        # or its content would be taken for commands.
        refusal = self._bdat_refusal()
        tx = self.state if isinstance(self.state, Transaction) else None
        if refusal is not None or tx is None:
            await self._read_exactly(args.size, None)
            if tx is not None and args.last:
                self.state = tx.greeted
            self.failed(refusal or r.SMTP_503_NEED_MAIL)
            return
        if tx.chunks is None:
            binary = tx.mail.body == "BINARYMIME"
            tx.chunks = ChunkCollector(
                self.policy.max_size, long_lines_ok=self.policy.long_lines_ok, binary=binary
            )
        await self._read_exactly(args.size, tx.chunks)
        if tx.chunks.too_big:
            tx.bdat_failed = True
        if args.last:
            await self._end_of_message(tx, tx.chunks.finish())
        elif tx.bdat_failed:
            self.reply(r.SMTP_552_TOO_BIG)
        else:
            self.reply(r.SMTP_250_CHUNK_OK.with_text(f"{args.size} octets received"))

    def _bdat_refusal(self) -> Reply | None:
        match self.state:
            case Connected():
                return r.SMTP_503_NEED_HELO
            case Greeted():
                return r.SMTP_503_NEED_MAIL
            case Transaction(recipients=[]):
                return r.SMTP_554_NO_VALID_RECIPIENTS
            case Transaction(bdat_failed=True):
                return r.SMTP_503_BDAT_AFTER_FAILURE
        return None

    async def _end_of_message(self, tx: Transaction, received: Received) -> None:
        """Deliver (or refuse) a complete message and answer: once, or per recipient (LMTP)."""
        self.state = tx.greeted
        count = len(tx.recipients)
        if received.refusal is not None:
            self.conn.log.info(
                "message refused: %s", received.refusal.text, extra={"size": received.size}
            )
            self._answer_message([received.refusal] * count)
            return
        envelope = Envelope(
            sender=tx.mail.path.address,
            recipients=tuple(tx.recipients),
            body=tx.mail.body,
            smtputf8=tx.mail.smtputf8,
            ret=tx.mail.ret,
            envid=tx.mail.envid,
        )
        origin = self._origin(tx.greeted, tx.mail.smtputf8)
        try:
            # The 250 goes out only after this returns, i.e. after the durable commit
            # (DESIGN §4).
            verdicts = await self.delivery.deliver(envelope, received.message, origin)
            if len(verdicts) != count:
                raise ValueError(f"{len(verdicts)} verdicts for {count} recipients")
        except Exception:
            # Answered here rather than by _execute: LMTP owes one reply per recipient.
            self.conn.log.exception("delivery failed")
            self._answer_message([r.SMTP_451_LOCAL_ERROR] * count)
            return
        accepted = sum(v.accepted for v in verdicts)
        self.conn.log.info(
            "message received",
            extra={"size": received.size, "recipients": count, "accepted": accepted},
        )
        self._answer_message([r.for_data(v) for v in verdicts])

    def _answer_message(self, per_recipient: list[Reply]) -> None:
        if self.policy.lmtp:
            # RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
            for reply in per_recipient:
                self.reply(reply)
            return
        # Delivery reports the failed part of a partly delivered message by a bounce and
        # answers accepted for all, so SMTP's one reply is all-or-nothing here.
        accepted = [reply for reply in per_recipient if reply.positive]
        self.reply(accepted[0] if accepted else per_recipient[0])

    async def cmd_rset(self, args: RsetArgs) -> None:
        # RFC 5321 §4.1.1.5: abort the transaction, keep the greeting (and the login).
        if isinstance(self.state, Transaction):
            self.state = self.state.greeted
        self.reply(r.SMTP_250_RESET)

    async def cmd_noop(self, args: NoopArgs) -> None:
        self.reply(r.SMTP_250_OK)

    async def cmd_quit(self, args: QuitArgs) -> None:
        self.reply(r.SMTP_221_BYE)
        self._closing = True

    async def cmd_vrfy(self, args: VrfyArgs) -> None:
        # RFC 5321 §3.5.3: answering 252 reveals nothing about which users exist.
        self.reply(r.SMTP_252_CANNOT_VRFY)

    async def cmd_help(self, args: HelpArgs) -> None:
        self.reply(r.SMTP_214_HELP)

    async def cmd_starttls(self, args: StarttlsArgs) -> None:
        self.reply(r.SMTP_220_READY_FOR_TLS)
        await self._flush()
        # RFC 3207 §4.2 / CVE-2011-0411: input pipelined after STARTTLS came in cleartext
        # and must not be executed as if it had arrived over TLS.
        self._buf.clear()
        discard_buffered(self.conn.reader)
        await self.conn.writer.start_tls(
            self.tls, ssl_handshake_timeout=self.policy.tls_handshake_seconds
        )
        # RFC 3207 §4.2: forget everything the client said before TLS; it must EHLO again.
        self.state = Connected()
        self.auth = None

    async def cmd_auth(self, args: AuthArgs) -> None:
        if self.auth is not None:
            raise UserError(r.SMTP_503_ALREADY_AUTHENTICATED)
        # DESIGN §7, RFC 4954 §4: no AUTH in cleartext except from the allowed networks.
        if not (self.conn.tls or self._plaintext_allowed()):
            raise UserError(r.SMTP_538_ENCRYPTION_REQUIRED)
        assert self.authenticator is not None  # policy.auth implies one
        try:
            result = await self.authenticator.run_sasl(
                args.mechanism,
                args.initial_response,
                ip=self.conn.peer,
                tls_active=self.conn.tls,
                plaintext_allowed=self._plaintext_allowed(),
                send_challenge=self._send_challenge,
                receive_response=self._receive_sasl_line,
            )
        except _AuthLineTooLong:
            # RFC 4954 §4: a response longer than our buffer fails AUTH with 500 5.5.6.
            raise BadSyntax(r.SMTP_500_AUTH_LINE_TOO_LONG) from None
        match result:
            case AuthSuccess():
                self.auth = result
                self.conn.log.info("authenticated", extra={"user": result.address})
                self.reply(r.SMTP_235_AUTHENTICATED)
            case AuthFailure():
                self.failed(r.SMTP_535_AUTH_FAILED)
            case AuthThrottled():
                self.reply(r.SMTP_454_AUTH_THROTTLED)
            case AuthCancelled():
                self.failed(r.SMTP_501_AUTH_CANCELLED)
            case AuthMalformed():
                self.failed(r.SMTP_501_AUTH_MALFORMED)
            case AuthUnsupported():
                self.failed(r.SMTP_504_UNKNOWN_MECHANISM)

    # -- helpers ---------------------------------------------------------------------------------

    def _greeted(self) -> Greeted:
        assert isinstance(self.state, Greeted)  # the command table guarantees it
        return self.state

    def _transaction(self) -> Transaction:
        assert isinstance(self.state, Transaction)  # the command table guarantees it
        return self.state
