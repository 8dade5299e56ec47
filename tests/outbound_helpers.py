"""Loopback peers for the outbound queue tests: a DNS server and scriptable SMTP sinks.

The DNS server answers MX/A/AAAA/TXT for test domains from a dict (dnspython builds the
wire answers); every other name is NXDOMAIN.  The SMTP sink is a few dozen lines of asyncio
rather than aiosmtpd, because the tests need misbehaviour aiosmtpd has no hooks for:
dropping the connection in the middle of DATA, tempfailing the first N messages, stalling.
Nothing here ever talks to anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import email
import email.message
import email.policy
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trustme

from postoffice.auth.throttle import LoginThrottle
from postoffice.config import Config, QueueConfig, RelayConfig, ServerConfig
from postoffice.context import Context, throttle_config
from postoffice.delivery.model import Envelope, Recipient
from postoffice.queue.worker import QueueWorker
from postoffice.store import SqliteStore, open_store
from postoffice.store.api import QueuedMessage


class DnsServer(asyncio.DatagramProtocol):
    """UDP DNS on 127.0.0.1: `records[(name, type)] = [rdata text, ...]`."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.queries: list[tuple[str, str]] = []

    async def start(self) -> DnsServer:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self.port = transport.get_extra_info("sockname")[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, name: str, rdtype: str, *values: str) -> None:
        self.records.setdefault((name.lower().rstrip("."), rdtype), []).extend(values)

    def mail_domain(self, domain: str, address: str = "127.0.0.1") -> None:
        """`domain` with one MX host, mx.<domain>, at `address`."""
        self.add(domain, "MX", f"10 mx.{domain}.")
        self.add(f"mx.{domain}", "A", address)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport is no DatagramTransport subclass (3.11).
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        values = self.records.get((name, rdtype))
        if values:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, rdtype, values)
            )
        elif not any(known == name for known, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def txt_value(record: str) -> str:
    """A TXT rdata in zone-file form, split into 255-octet strings."""
    return " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))


@dataclass
class Received:
    sender: str
    mail_parameters: list[str]
    recipients: list[str]
    rcpt_parameters: list[list[str]]
    data: bytes
    tls: bool


@dataclass
class Sink:
    """An SMTP server on 127.0.0.1 whose replies the test scripts.

    Local parts steer RCPT: `tempfail@` gets 450, `permfail@` gets 550 5.1.1.  The first
    `tempfail_data` messages get 451 after the final dot, the first `drop_data` connections
    are closed in the middle of DATA, every reply waits `delay` seconds.
    """

    extensions: list[str] = field(
        default_factory=lambda: ["PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 10485760", "DSN"]
    )
    starttls: bool = True
    tempfail_data: int = 0
    drop_data: int = 0
    delay: float = 0.0
    auth: tuple[str, str] | None = None  # require AUTH PLAIN with these credentials
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    auth_seen: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tls: ssl.SSLContext | None = None

    async def start(self) -> Sink:
        if self.starttls:
            ca = trustme.CA()
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("mx.remote.test").configure_cert(self._tls)
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def delivered_to(self) -> list[str]:
        return [r for message in self.received for r in message.recipients]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.open_now -= 1
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, *lines: str) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        text = "".join(
            f"{line[:3]}{'-' if i < len(lines) - 1 else ' '}{line[4:]}\r\n"
            for i, line in enumerate(lines)
        )
        writer.write(text.encode())
        await writer.drain()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tls = False
        authed = self.auth is None
        await self._reply(writer, "220 sink.test ESMTP")
        sender, mail_parameters = "", []
        recipients: list[str] = []
        rcpt_parameters: list[list[str]] = []
        while True:
            line = (await reader.readline()).decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                return
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                offered = list(self.extensions)
                if self.starttls and not tls:
                    offered.append("STARTTLS")
                if self.auth is not None:
                    offered.append("AUTH PLAIN")
                await self._reply(writer, "250 sink.test", *(f"250 {e}" for e in offered))
            elif verb == "STARTTLS" and self._tls is not None and not tls:
                await self._reply(writer, "220 go ahead")
                await writer.start_tls(self._tls)
                tls = True
            elif verb == "AUTH":
                self.auth_seen.append(line)
                token = base64.b64decode(line.split()[2]).split(b"\0")
                assert self.auth is not None
                authed = [t.decode() for t in token[1:]] == list(self.auth)
                await self._reply(writer, "235 ok" if authed else "535 5.7.8 bad credentials")
            elif verb == "MAIL":
                if not authed:
                    await self._reply(writer, "530 5.7.0 authentication required")
                    continue
                head, _, rest = line[10:].partition(">")
                sender, mail_parameters = head.lstrip("<"), rest.split()
                recipients, rcpt_parameters = [], []
                await self._reply(writer, "250 2.1.0 ok")
            elif verb == "RCPT":
                head, _, rest = line[8:].partition(">")
                address = head.lstrip("<")
                local = address.split("@")[0]
                if local == "tempfail":
                    await self._reply(writer, "450 4.2.1 mailbox busy, try later")
                elif local == "permfail":
                    await self._reply(writer, "550 5.1.1 no such user here")
                else:
                    recipients.append(address)
                    rcpt_parameters.append(rest.split())
                    await self._reply(writer, "250 2.1.5 ok")
            elif verb == "DATA":
                if not recipients:
                    await self._reply(writer, "554 5.5.1 no valid recipients")
                    continue
                await self._reply(writer, "354 go ahead")
                if self.drop_data:
                    self.drop_data -= 1
                    await reader.readline()
                    return  # mid-DATA: the connection just goes away
                data = b""
                while True:
                    chunk = await reader.readline()
                    if chunk == b".\r\n":
                        break
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                if self.tempfail_data:
                    self.tempfail_data -= 1
                    await self._reply(writer, "451 4.3.0 try again later")
                    continue
                self.received.append(
                    Received(sender, mail_parameters, recipients, rcpt_parameters, data, tls)
                )
                await self._reply(writer, "250 2.0.0 queued")
            elif verb == "RSET":
                await self._reply(writer, "250 ok")
            elif verb == "QUIT":
                await self._reply(writer, "221 bye")
                return
            else:
                await self._reply(writer, "502 5.5.2 not implemented")


class FakeClock:
    """A wall clock the test moves; monotonic time stays real (timeouts still work)."""

    def __init__(self, now: dt.datetime) -> None:
        self.current = now

    def now(self) -> dt.datetime:
        return self.current

    def monotonic(self) -> float:
        return time.monotonic()

    def advance(self, seconds: float) -> None:
        self.current += dt.timedelta(seconds=seconds)


# -- a store, a context and a worker wired to the loopback peers -----------------------

HOSTNAME = "mail.example.test"
START = dt.datetime(2026, 11, 30, 12, 0, 0, tzinfo=dt.UTC)
LOCAL = "bob@example.test"


def message(sender: str = LOCAL, subject: str = "hello", body: str = "hi there") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <friend@remote.test>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.test>\r\nDate: Mon, 30 Nov 2026 12:00:00 +0000\r\n"
        f"\r\n{body}\r\n"
    ).encode()


@dataclass
class World:
    store: SqliteStore
    ctx: Context
    clock: FakeClock
    dns: DnsServer
    sink: Sink
    worker: QueueWorker

    async def enqueue(
        self,
        *recipients: str | Recipient,
        sender: str = LOCAL,
        raw: bytes | None = None,
        **envelope: object,
    ) -> int:
        rcpts = [r if isinstance(r, Recipient) else Recipient(r) for r in recipients]
        env = Envelope(sender, (), **envelope)  # type: ignore[arg-type]
        return await self.store.outbound.enqueue(
            raw if raw is not None else message(sender), env, rcpts, "test", self.clock.now()
        )

    async def queued(self, message_id: int) -> QueuedMessage | None:
        return await self.store.outbound.get(message_id)

    async def inbox(self, address: str = LOCAL) -> list[email.message.EmailMessage]:
        account = await self.store.get_account(address)
        assert account is not None
        mailbox = await self.store.get_mailbox(account.id, "INBOX")
        assert mailbox is not None
        found = []
        for uid in await self.store.uids(mailbox.id):
            raw = await self.store.read_message(mailbox.id, uid)
            assert raw is not None
            found.append(parse(raw))
        return found


def parse(raw: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


async def make_world(
    tmp_path: Path,
    sink: Sink,
    *,
    queue: dict[str, object] | None = None,
    relay: RelayConfig | None = None,
) -> World:
    dns = await DnsServer().start()
    for domain in ("remote.test", "other.test"):
        dns.mail_domain(domain)
    await sink.start()
    settings: dict[str, object] = {
        "resolver": dns.address,
        "smtp_port": sink.port,
        "connect_timeout_seconds": 5.0,
        "command_timeout_seconds": 5.0,
        **(queue or {}),
    }
    config = Config(
        server=ServerConfig(hostname=HOSTNAME),
        queue=QueueConfig(**settings),  # type: ignore[arg-type]
        relay=relay or RelayConfig(),
    )
    store = await open_store(tmp_path)
    await store.add_domain("example.test")
    for user in (LOCAL, "alice@example.test"):
        await store.add_account(user, "hash", None)
    clock = FakeClock(START)
    ctx = Context(
        config,
        tmp_path,
        store,
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        LoginThrottle(throttle_config(config.auth), clock.monotonic),
        clock,
    )
    return World(store, ctx, clock, dns, sink, QueueWorker(ctx))


async def close(w: World) -> None:
    await w.sink.close()
    w.dns.close()
    await w.ctx.close()


def report_parts(bounce: email.message.EmailMessage) -> list[email.message.Message[str, str]]:
    """The per-recipient field groups of an RFC 3464 report, checked for shape on the way."""
    assert bounce.get_content_type() == "multipart/report"
    assert bounce.get_param("report-type") == "delivery-status"
    parts = list(bounce.iter_parts())
    assert [p.get_content_type() for p in parts[:2]] == ["text/plain", "message/delivery-status"]
    status = parts[1].get_payload()
    assert isinstance(status, list)
    groups = [g for g in status if isinstance(g, email.message.Message)]
    assert groups[0]["Reporting-MTA"] == f"dns; {HOSTNAME}"
    return groups[1:]
