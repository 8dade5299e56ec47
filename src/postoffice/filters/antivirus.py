"""The message stage "antivirus": every message is scanned by ClamAV's clamd (issue 8).

The message goes to clamd with its INSTREAM command (clamd(8)): "zINSTREAM\\0", then chunks
each led by its length as a 4-byte big-endian number, then a zero length; clamd answers one
NUL-ended line, "stream: OK", "stream: NAME FOUND" or "... ERROR".  Hand-written rather than
with aioclamd: aioclamd connects by TCP only (clamd's usual socket is a unix one), hops to a
thread for every 1 KiB chunk and has no type hints, while the protocol is the framing above.

An infected message is refused at DATA (action "reject"), or kept whole under
DATA/quarantine/ and announced to the postmaster (action "quarantine"): the client then gets
250 and no recipient gets the message.  The notice goes to postmaster@ the first local
domain, through the router (so its aliases apply) and straight into the store, or into the
outbound queue for an alias that leads elsewhere.  clamd down, slow or answering with an
error raises StageUnavailable, and the stage's on_failure decides (DESIGN §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email.utils
import re
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from postoffice.config import AntivirusConfig, TcpAddress, parse_listen_address
from postoffice.context import Clock, Context
from postoffice.delivery import trace
from postoffice.delivery.model import Envelope, Outcome, Recipient, Verdict
from postoffice.delivery.routing import Router
from postoffice.files import write_atomic
from postoffice.filters.api import (
    Findings,
    Message,
    OnFailure,
    StageUnavailable,
    on_failure,
    rejected,
)
from postoffice.log import BoundLogger
from postoffice.store.api import Store
from postoffice.store.model import AppendTarget

_CHUNK: Final = 1 << 20
# clamd's replies are one short line; a peer sending more than this is not clamd.
_MAX_REPLY: Final = 4096
_REPLY: Final = re.compile(r"stream: (?:(?P<ok>OK)|(?P<virus>.+) FOUND)")
# Virus names end up in an SMTP reply and in header fields: one line of printable ASCII.
_UNPRINTABLE: Final = re.compile(r"[^\x21-\x7e]+")
QUARANTINE_DIR: Final = "quarantine"


def _printable(text: str, limit: int = 200) -> str:
    return _UNPRINTABLE.sub(" ", text[:limit]).strip() or "?"


@dataclass(frozen=True, slots=True)
class Clamd:
    """Where clamd listens: a unix socket path, or a TCP address."""

    address: Path | TcpAddress
    timeout: float

    @classmethod
    def from_setting(cls, setting: str, data_dir: Path, timeout: float) -> Clamd:
        if setting.startswith("unix:"):
            # Like a listener's unix: path, a relative one is taken from the data folder.
            return cls(data_dir / setting[5:], timeout)
        tcp = parse_listen_address(setting, allow_unix=False)
        assert isinstance(tcp, TcpAddress)  # the config validated "HOST:PORT"
        return cls(tcp, timeout)

    async def instream(self, data: bytes) -> str | None:
        """The virus clamd finds in `data`, or None when it finds none."""
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._exchange(data)
        except TimeoutError:
            raise StageUnavailable(f"clamd gave no answer within {self.timeout:g}s") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise StageUnavailable(f"clamd: {exc!r}") from exc
        match = _REPLY.fullmatch(reply)
        if match is None:
            # "INSTREAM size limit exceeded. ERROR" (StreamMaxLength below max_scan_size),
            # "... ERROR" from a broken database, or not clamd at all.
            raise StageUnavailable(f"clamd answered {_printable(reply)!r}")
        return None if match["ok"] else _printable(match["virus"])

    async def _exchange(self, data: bytes) -> str:
        if isinstance(self.address, Path):
            reader, writer = await asyncio.open_unix_connection(self.address, limit=_MAX_REPLY)
        else:
            # ":PORT" names this host, as it does for a listener.
            host = self.address.host or "localhost"
            reader, writer = await asyncio.open_connection(
                host, self.address.port, limit=_MAX_REPLY
            )
        try:
            writer.write(b"zINSTREAM\0")
            view = memoryview(data)
            for start in range(0, len(view), _CHUNK):
                chunk = view[start : start + _CHUNK]
                writer.write(struct.pack("!L", len(chunk)))
                writer.write(chunk)
                await writer.drain()
            writer.write(struct.pack("!L", 0))
            await writer.drain()
            reply = await reader.readuntil(b"\0")
        finally:
            writer.close()
            # Closing can itself fail on a peer that already hung up; the reply is all we need.
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return reply[:-1].decode("utf-8", "replace").strip()


def _quarantined_copy(message: Message, virus: str) -> bytes:
    """The message as received, led by the envelope it came with, for the admin to judge or
    send on."""
    envelope = message.envelope
    recipients = ", ".join(f"<{_printable(r.address, 320)}>" for r in envelope.recipients)
    head = (
        f"X-Quarantine-Reason: virus {virus}\r\n"
        f"X-Envelope-To: {recipients}\r\n"
        f"X-Quarantine-Session: {_printable(message.origin.session_id, 64)}\r\n"
    ).encode()
    return trace.return_path(envelope.sender) + head + message.raw


def _notice(hostname: str, postmaster: str, virus: str, message: Message, path: Path) -> bytes:
    """The short message telling the postmaster a message was quarantined."""
    envelope, origin = message.envelope, message.origin
    subject = message.headers.get("Subject", "")
    lines = [
        f"clamd found {virus} in a message; it was kept instead of delivered.",
        "",
        f"Sender:     <{_printable(envelope.sender, 320) if envelope.sender else ''}>",
        *(f"Recipient:  <{_printable(r.address, 320)}>" for r in envelope.recipients),
        f"Client:     {_printable(origin.helo, 255)} [{origin.peer_ip or 'local'}]",
        f"Session:    {_printable(origin.session_id, 64)}",
        f"Subject:    {_printable(str(subject), 200) if subject else ''}",
        f"Size:       {len(message.raw)} bytes",
        f"Kept in:    {path}",
    ]
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{postmaster}>",
        f"Subject: Quarantined: {virus}",
        f"Date: {email.utils.format_datetime(message.origin.received_at)}",
        f"Message-ID: {email.utils.make_msgid(domain=hostname)}",
        "Auto-Submitted: auto-generated",  # RFC 3834 §5: no auto-reply to this
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()


class Antivirus:
    name = "antivirus"

    def __init__(
        self,
        config: AntivirusConfig,
        clamd: Clamd,
        data_dir: Path,
        store: Store,
        router: Router,
        hostname: str,
        clock: Clock,
        log: BoundLogger,
    ) -> None:
        self.config = config
        self.on_failure: OnFailure = on_failure(config.on_failure)
        self.clamd = clamd
        self.quarantine_dir = data_dir / QUARANTINE_DIR
        self.store = store
        self.router = router
        self.hostname = hostname
        self.clock = clock
        self.log = log

    async def scan(self, message: Message, findings: Findings) -> None:
        if len(message.raw) > self.config.max_scan_size:
            findings.add_header(
                "X-Virus-Status",
                f"not scanned (over the {self.config.max_scan_size} byte scan limit)",
            )
            findings.results["virus"] = "unscanned"
            return
        virus = await self.clamd.instream(message.raw)
        if virus is None:
            findings.add_header("X-Virus-Scanned", "ClamAV")
            findings.results["virus"] = "clean"
            return
        findings.results["virus"] = "infected"
        self.log.warning(
            "virus found",
            extra={
                "session": message.origin.session_id,
                "virus": virus,
                "action": self.config.action,
            },
        )
        if self.config.action == "quarantine":
            await self._quarantine(message, virus, findings)
        else:
            findings.refuse(rejected(f"virus found: {virus}"))

    async def _quarantine(self, message: Message, virus: str, findings: Findings) -> None:
        stamp = self.clock.now().astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        path = self.quarantine_dir / f"{stamp}-{secrets.token_hex(8)}.eml"
        try:
            await asyncio.to_thread(write_atomic, path, _quarantined_copy(message, virus), 0o600)
        except OSError as exc:
            self.log.error(
                "quarantine not written",
                extra={"session": message.origin.session_id, "file": str(path)},
                exc_info=exc,
            )
            # Not on_failure's call: with "accept" it would deliver a known virus.  The
            # client keeps the message and tries again, when the quarantine may be back.
            findings.refuse(Verdict(Outcome.TEMPORARY_FAILURE, "virus found, try again later"))
            return
        findings.quarantined = True
        try:
            await self._tell_postmaster(message, virus, path)
        except Exception as exc:
            # The message is safe on disk and the log names it; refusing it now would only
            # make the client send it again into a second quarantine file.
            self.log.error(
                "quarantine notice not delivered",
                extra={"session": message.origin.session_id, "file": str(path)},
                exc_info=exc,
            )

    async def _tell_postmaster(self, message: Message, virus: str, path: Path) -> None:
        domains = await self.store.list_domains()
        if not domains:
            self.log.warning("no local domain, so no postmaster to tell of a quarantine")
            return
        postmaster = f"postmaster@{domains[0]}"
        # As the system: the postmaster's aliases expand as for any mail to it.
        system = dataclasses.replace(message.origin, account_id=None, auth_address=None)
        route = await self.router.route(postmaster, system)
        if not route.verdict.accepted:
            self.log.warning(
                "no postmaster to tell of a quarantine",
                extra={"address": postmaster, "reason": route.verdict.detail},
            )
            return
        notice = _notice(self.hostname, postmaster, virus, message, path)
        targets: list[AppendTarget] = []
        for destination in route.local:
            inbox = await self.store.get_mailbox(destination.account.id, "INBOX")
            if inbox is not None:
                prefix = trace.delivered_to(destination.delivered_to)
                targets.append(AppendTarget(inbox.id, prefix=prefix))
        if targets:
            await self.store.append(notice, targets, message.origin.received_at)
        if route.remote:
            await self._send_away(notice, route.remote, message.origin.session_id)

    async def _send_away(self, notice: bytes, addresses: Sequence[str], session: str) -> None:
        recipients = tuple(Recipient(address) for address in addresses)
        # The null sender (RFC 5321 §4.5.5): a notice that cannot be delivered is dropped.
        await self.store.outbound.enqueue(notice, Envelope("", recipients), recipients, session)


def build(ctx: Context) -> Antivirus | None:
    config = ctx.config.antivirus
    if not config.clamd:
        return None
    return Antivirus(
        config,
        Clamd.from_setting(config.clamd, ctx.data_dir, config.timeout_seconds),
        ctx.data_dir,
        ctx.store,
        Router(ctx.store, ctx.config),
        ctx.config.server.hostname,
        ctx.clock,
        ctx.logger("antivirus"),
    )
