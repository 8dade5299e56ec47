"""The SMTP client side of outbound delivery: one connection, several transactions.

Hand-written over asyncio streams rather than on aiosmtplib: aiosmtplib (5.1) reads one reply
per command it writes and drops data that arrives while no command is pending, so it cannot
pipeline (RFC 2920), and its `sendmail` takes one option list for every recipient, where
DSN needs NOTIFY and ORCPT per recipient (RFC 3461 §4).  What is needed here is small:
EHLO, opportunistic STARTTLS, AUTH PLAIN for a smarthost, MAIL/RCPT pipelined, DATA.

Results are per recipient (`Reply`), never exceptions: a connection that breaks mid-way
gives every recipient still open a temporary failure, which the worker retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from postoffice.store.model import Envelope, Recipient

_MAX_REPLY_LINES = 100


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str  # the lines joined by spaces, enhanced code included when the server sent one

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def status(self) -> str:
        """The RFC 3463 enhanced code: the server's own when it gave one."""
        first = self.text.split(" ", 1)[0]
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] in "245":
            return first
        return f"{self.code // 100}.0.0"

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


class SmtpFailure(Exception):
    """The connection cannot go on; `reply` is what to record for recipients still open."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def local_failure(code: int, text: str) -> Reply:
    """A reply we make up ourselves (timeouts, refused connections, policy)."""
    return Reply(code, text)


def opportunistic_tls() -> ssl.SSLContext:
    """TLS that encrypts without checking the certificate, as Postfix's `may` level: MX
    hosts rarely have certificates for the names that point to them (RFC 7435 §1)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def encode_xtext(value: str) -> str:
    # RFC 3461 §4: "+" "=" and anything outside printable ASCII become +HH.
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode())
        for c in value
    )


def needs_smtputf8(envelope: Envelope, recipients: Sequence[Recipient]) -> bool:
    return (
        envelope.smtputf8
        or not envelope.sender.isascii()
        or not all(r.address.isascii() for r in recipients)
    )


class SmtpClient:
    """One open connection to a mail server, after its greeting and EHLO."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        reply_timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host  # for reports: Remote-MTA
        self.timeout = reply_timeout
        self.extensions: dict[str, str] = {}
        self.tls = False

    @classmethod
    async def connect(
        cls,
        address: str,
        port: int,
        *,
        host: str,
        helo: str,
        connect_timeout: float,
        reply_timeout: float,
        implicit_tls: ssl.SSLContext | None = None,
    ) -> SmtpClient:
        """Connect, read the greeting, say EHLO; raises SmtpFailure."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    address,
                    port,
                    ssl=implicit_tls,
                    server_hostname=host if implicit_tls is not None else None,
                ),
                connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            failure = local_failure(451, f"4.4.1 cannot connect to {host}: {exc}")
            raise SmtpFailure(failure) from None
        client = cls(reader, writer, host, reply_timeout)
        client.tls = implicit_tls is not None
        try:
            greeting = await client._reply(connect_timeout)
            if not greeting.ok:
                raise SmtpFailure(greeting)
            await client.ehlo(helo)
        except SmtpFailure:
            client.close()
            raise
        return client

    async def ehlo(self, helo: str) -> None:
        reply, lines = await self._command_lines(f"EHLO {helo}")
        if reply.code == 250:
            self.extensions = {}
            for line in lines[1:]:
                keyword, _, value = line.partition(" ")
                self.extensions[keyword.upper()] = value
            return
        # RFC 5321 §3.2: a server that does not know EHLO gets HELO.
        reply = await self._command(f"HELO {helo}")
        if not reply.ok:
            raise SmtpFailure(reply)
        self.extensions = {}

    async def starttls(self, context: ssl.SSLContext, helo: str) -> None:
        """RFC 3207: switch to TLS and say EHLO again; raises SmtpFailure."""
        reply = await self._command("STARTTLS")
        if reply.code != 220:
            raise SmtpFailure(reply)
        try:
            await asyncio.wait_for(
                self.writer.start_tls(context, server_hostname=self.host), self.timeout
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            failure = local_failure(451, f"4.7.0 TLS with {self.host} failed: {exc}")
            raise SmtpFailure(failure) from None
        self.tls = True
        await self.ehlo(helo)  # RFC 3207 §4.2: forget what was said before TLS

    async def login(self, username: str, password: str) -> None:
        """AUTH PLAIN (RFC 4616) to a smarthost; raises SmtpFailure."""
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
        reply = await self._command(f"AUTH PLAIN {token}")
        if reply.code != 235:
            raise SmtpFailure(reply)

    def offers(self, extension: str) -> bool:
        return extension in self.extensions

    async def send(
        self,
        envelope: Envelope,
        recipients: Sequence[Recipient],
        content: bytes,
    ) -> list[Reply]:
        """One transaction for `recipients` (one destination); one reply per recipient:
        the DATA reply for those whose RCPT was accepted, else their RCPT (or MAIL) reply.
        Raises SmtpFailure when the connection cannot be used any more."""
        refusal = self._refusal(envelope, recipients, content)
        if refusal is not None:
            return [refusal] * len(recipients)
        mail = f"MAIL FROM:<{envelope.sender}>" + self._mail_parameters(
            envelope, needs_smtputf8(envelope, recipients), content
        )
        rcpts = [f"RCPT TO:<{r.address}>" + self._rcpt_parameters(r) for r in recipients]
        if self.offers("PIPELINING"):
            # RFC 2920 §3.1: MAIL and every RCPT in one write, the replies read in order.
            self._write("".join(f"{line}\r\n" for line in [mail, *rcpts]).encode())
            mail_reply = await self._reply()
            rcpt_replies = [await self._reply() for _ in rcpts]
        else:
            mail_reply = await self._command(mail)
            rcpt_replies = []
            if mail_reply.ok:
                rcpt_replies = [await self._command(line) for line in rcpts]
        if not mail_reply.ok:
            await self._reset()
            return [mail_reply] * len(recipients)
        if not any(r.ok for r in rcpt_replies):
            await self._reset()
            return rcpt_replies
        data = await self._command("DATA")
        if data.code != 354:
            await self._reset()
            return [data if r.ok else r for r in rcpt_replies]
        self._write(_dot_stuffed(content))
        # RFC 5321 §4.5.3.2.6: up to 10 minutes for the reply to the final dot.  Between
        # the server's 250 and our commit lies the one window for a duplicate.
        final = await self._reply(self.timeout * 2)
        return [final if r.ok else r for r in rcpt_replies]

    async def quit(self) -> None:
        with contextlib.suppress(SmtpFailure):
            await self._command("QUIT")
        self.close()

    def close(self) -> None:
        self.writer.close()

    # -- what the server offers -----------------------------------------------------------

    def _refusal(
        self, envelope: Envelope, recipients: Sequence[Recipient], content: bytes
    ) -> Reply | None:
        limit = self.extensions.get("SIZE", "")
        if limit.isdigit() and int(limit) and len(content) > int(limit):
            # RFC 1870 §6.2: larger than the server's declared maximum: permanent.
            return local_failure(552, f"5.3.4 message size exceeds {self.host}'s limit {limit}")
        if needs_smtputf8(envelope, recipients) and not self.offers("SMTPUTF8"):
            # RFC 6531 §3.4: no downgrade; the sender must hear why.
            return local_failure(
                553, f"5.6.7 {self.host} does not support SMTPUTF8, which this message needs"
            )
        if envelope.body == "BINARYMIME":
            # RFC 3030 §3: binary content needs BDAT, which this client does not send.
            return local_failure(554, "5.6.3 binary MIME content cannot be relayed")
        if not self.offers("8BITMIME") and not content.isascii():
            # RFC 6152 §3: no 8BITMIME, and we do not convert to 7 bit.
            return local_failure(
                554, f"5.6.3 {self.host} does not accept 8-bit content (no 8BITMIME)"
            )
        return None

    def _mail_parameters(self, envelope: Envelope, smtputf8: bool, content: bytes) -> str:
        parameters = []
        if self.offers("SIZE"):
            parameters.append(f"SIZE={len(content)}")
        if self.offers("8BITMIME") and (envelope.body == "8BITMIME" or not content.isascii()):
            parameters.append("BODY=8BITMIME")
        if smtputf8:  # _refusal made sure the server offers it
            parameters.append("SMTPUTF8")
        if self.offers("DSN"):
            if envelope.ret:
                parameters.append(f"RET={envelope.ret}")
            if envelope.envid:
                parameters.append(f"ENVID={encode_xtext(envelope.envid)}")
        return "".join(f" {p}" for p in parameters)

    def _rcpt_parameters(self, recipient: Recipient) -> str:
        if not self.offers("DSN"):
            return ""
        parameters = []
        if recipient.notify:
            parameters.append("NOTIFY=" + ",".join(recipient.notify))
        if recipient.orcpt:
            kind, _, address = recipient.orcpt.partition(";")
            parameters.append(f"ORCPT={kind};{encode_xtext(address)}")
        return "".join(f" {p}" for p in parameters)

    # -- the wire -------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise SmtpFailure(local_failure(451, f"4.4.2 connection to {self.host} lost"))
        self.writer.write(data)

    async def _reset(self) -> None:
        """RSET after a failed transaction.  Its own failure must not replace the replies
        already collected, so it only closes the connection: the next send sees that."""
        try:
            reply = await self._command("RSET")
        except SmtpFailure:
            return
        if not reply.ok:
            self.close()

    async def _command(self, line: str) -> Reply:
        reply, _ = await self._command_lines(line)
        return reply

    async def _command_lines(self, line: str) -> tuple[Reply, list[str]]:
        self._write(f"{line}\r\n".encode())
        return await self._reply_lines(self.timeout)

    async def _reply(self, seconds: float | None = None) -> Reply:
        reply, _ = await self._reply_lines(self.timeout if seconds is None else seconds)
        return reply

    async def _reply_lines(self, seconds: float) -> tuple[Reply, list[str]]:
        lines: list[str] = []
        code = 0
        try:
            async with asyncio.timeout(seconds):
                await self.writer.drain()
                while len(lines) < _MAX_REPLY_LINES:
                    raw = await self.reader.readline()
                    if not raw.endswith(b"\n"):
                        raise SmtpFailure(
                            local_failure(451, f"4.4.2 connection to {self.host} lost")
                        )
                    text = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if len(text) < 3 or not text[:3].isdigit():
                        raise SmtpFailure(
                            local_failure(451, f"4.5.0 {self.host} sent a malformed reply")
                        )
                    code = int(text[:3])
                    lines.append(text[4:])
                    if text[3:4] != "-":
                        return Reply(code, " ".join(" ".join(lines).split())), lines
        except TimeoutError:
            self.close()
            raise SmtpFailure(
                local_failure(451, f"4.4.2 timeout waiting for {self.host}")
            ) from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            raise SmtpFailure(
                local_failure(451, f"4.4.2 connection to {self.host} failed: {exc}")
            ) from None
        raise SmtpFailure(local_failure(451, f"4.5.0 {self.host} sent an endless reply"))


def _dot_stuffed(content: bytes) -> bytes:
    # RFC 5321 §4.5.2: a line starting with "." gets one more; the data ends with CRLF.CRLF.
    body = content if content.endswith(b"\r\n") else content + b"\r\n"
    if body.startswith(b"."):
        body = b"." + body
    return body.replace(b"\r\n.", b"\r\n..") + b".\r\n"
