"""SMTP, submission, submissions and LMTP sessions over real sockets.

The server runs in-process on port 0 (the real listener layer, handler registry, delivery
and store, on a uvloop loop in a thread of its own) so each test can pick its config; the
clients are smtplib, scramp and raw sockets.  Delivery is checked through the store.  The
fixtures here are also used by test_smtp_data.py and test_smtp_swaks.py.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import dataclasses
import ipaddress
import shutil
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import scramp
import uvloop

from postoffice.auth.passwords import hash_password, scram_sha256_record
from postoffice.config import (
    CONFIG_FILE,
    AuthConfig,
    Config,
    LimitsConfig,
    ListenerConfig,
    ServerConfig,
    SmtpConfig,
    TcpAddress,
    UnixAddress,
    write_default_config,
)
from postoffice.context import Context, open_context
from postoffice.delivery.model import ACCEPTED, Envelope, Origin, Recipient, Verdict
from postoffice.listeners import BoundListener, ListenerGroup, bind
from postoffice.server import default_registry
from postoffice.smtp import SMTP_LISTENERS, SmtpHandler
from postoffice.smtp.session import DeliveryPort
from postoffice.store import open_store
from postoffice.store.api import QueuedMessage
from postoffice.store.model import AppendTarget
from postoffice.tls import generate_self_signed

T = TypeVar("T")

DOMAIN = "example.test"
HOSTNAME = "mail.example.test"
PASSWORD = "correct horse battery"
BOB = "bob@example.test"
ALICE = "alice@example.test"
FULL = "full@example.test"  # already over its quota
SMALL = "small@example.test"  # a quota of 2000 octets, empty
JOSE = "josé@example.test"
TIMEOUT = 15.0

MESSAGE = (
    b"From: Alice <alice@other.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <hello-1@other.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
    b".A line that starts with a dot.\r\n"
    b"..and one with two.\r\n"
)


def message(subject: str, body: str = "Hello.", sender: str = "alice@other.test") -> bytes:
    return (
        f"From: {sender}\r\nTo: bob@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@other.test>\r\n\r\n{body}\r\n"
    ).encode()


def filler(size: int) -> str:
    """About `size` octets of body text in lines of a normal length."""
    return ("f" * 78 + "\r\n") * (size // 80) + "end"


def stuffed(raw: bytes) -> bytes:
    """`raw` as DATA sends it: dot-stuffed, with the end-of-data line."""
    lines = raw.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


# -- the data folder ----------------------------------------------------------------------------


async def _populate(data: Path) -> None:
    store = await open_store(data)
    try:
        await store.add_domain(DOMAIN)
        hashed, scram = hash_password(PASSWORD), scram_sha256_record(PASSWORD)
        for address in (BOB, ALICE, FULL, SMALL, JOSE, "postmaster@example.test"):
            await store.add_account(address, hashed, scram)
        await store.add_alias("sales@example.test", [BOB, ALICE])
        full = await store.get_account(FULL)
        assert full is not None
        inbox = await store.get_mailbox(full.id, "INBOX")
        assert inbox is not None
        await store.append(message("filler", "x" * 500), [AppendTarget(inbox.id)])
        await store.set_quota(FULL, 100, None)
        await store.set_quota(SMALL, 2000, None)
    finally:
        await store.close()


def make_data_dir(data: Path) -> None:
    """What `postoffice init --domain example.test` makes, plus the test accounts."""
    data.mkdir(mode=0o700, parents=True)
    cert, key = Config().tls.paths(data)
    generate_self_signed(HOSTNAME, cert, key)
    asyncio.run(_populate(data))
    write_default_config(data / CONFIG_FILE, DOMAIN, HOSTNAME)


@pytest.fixture(scope="session")
def _smtp_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("smtp-template") / "data"
    make_data_dir(data)
    return data


@pytest.fixture
def smtp_data(tmp_path: Path, _smtp_template: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(_smtp_template, data)
    return data


def smtp_config(**sections: Any) -> Config:
    """The test config: no cleartext logins from anywhere (not even loopback), no login
    delays, `sections` replacing whole sections."""
    base = Config(
        server=ServerConfig(hostname=HOSTNAME, shutdown_grace_seconds=10.0),
        auth=AuthConfig(plaintext_networks=(), delay_base_seconds=0.0, delay_max_seconds=0.0),
    )
    return dataclasses.replace(base, **sections)


def tcp_listeners() -> list[ListenerConfig]:
    return [ListenerConfig(name, TcpAddress("127.0.0.1", 0)) for name in SMTP_LISTENERS]


# -- the server ----------------------------------------------------------------------------------


class SmtpServer:
    """The SMTP listeners on their own event loop thread, with the context they share."""

    def __init__(
        self,
        data: Path,
        config: Config,
        listeners: Sequence[ListenerConfig],
        delivery: DeliveryPort | None = None,
    ) -> None:
        """`delivery` replaces the real one (only to make it fail on purpose)."""
        self.data = data
        self.config = config
        self._listeners = listeners
        self._delivery = delivery
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._addresses: dict[str, str] = {}
        self._loop = uvloop.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ctx: Context | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise AssertionError("the SMTP server did not start")
        if self._failure is not None:
            raise self._failure

    @property
    def ctx(self) -> Context:
        assert self._ctx is not None
        return self._ctx

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as e:
            self._failure = e
            self._ready.set()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._ctx = await open_context(self.data, self.config)
        bound: list[BoundListener] = []
        try:
            registry = default_registry()
            handlers = []
            for listener in self._listeners:
                bound.append(bind(listener, self.data))
                factory = registry.get(listener.name)
                assert factory is not None
                handler = (
                    factory(self._ctx, listener)
                    if self._delivery is None
                    else SmtpHandler(self._ctx, listener, self._delivery)
                )
                handlers.append((bound[-1], handler))
                self._addresses[listener.name] = bound[-1].addresses()[0]
            group = ListenerGroup(self._ctx)
            await group.start(handlers)
            self._ready.set()
            await self._stop.wait()
            await group.stop(self.config.server.shutdown_grace_seconds)
        finally:
            for b in bound:
                b.close()
            await self._ctx.close()

    def request_stop(self) -> None:
        """Begin a graceful shutdown (as SIGTERM does) without waiting for it."""
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    def stop(self) -> None:
        self.request_stop()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the SMTP server did not stop"

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the server's loop (the store lives there) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    def address(self, name: str = "smtp") -> tuple[str, int]:
        host, _, port = self._addresses[name].rpartition(":")
        return host, int(port)

    def unix_path(self, name: str = "lmtp") -> str:
        return self._addresses[name].removeprefix("unix:")

    def smtp(self, name: str = "smtp") -> smtplib.SMTP:
        host, port = self.address(name)
        return smtplib.SMTP(host, port, local_hostname="client.test", timeout=TIMEOUT)

    def smtp_ssl(self) -> smtplib.SMTP_SSL:
        host, port = self.address("submissions")
        return smtplib.SMTP_SSL(
            host, port, local_hostname="client.test", timeout=TIMEOUT, context=client_tls(self)
        )

    def raw(self, name: str = "smtp") -> RawClient:
        return RawClient(self.address(name))

    def inbox(self, address: str) -> list[bytes]:
        """Every message in the account's INBOX, in UID order."""
        return self.call(self._inbox(address))

    async def _inbox(self, address: str) -> list[bytes]:
        store = self.ctx.store
        account = await store.get_account(address)
        assert account is not None
        mailbox = await store.get_mailbox(account.id, "INBOX")
        assert mailbox is not None
        out: list[bytes] = []
        for uid in await store.uids(mailbox.id):
            raw = await store.read_message(mailbox.id, uid)
            assert raw is not None
            out.append(raw)
        return out

    def queued(self) -> list[QueuedMessage]:
        return self.call(self.ctx.store.outbound.list(state=None))


class StartSmtp(Protocol):
    def __call__(
        self, config: Config | None = None, listeners: Sequence[ListenerConfig] | None = None
    ) -> SmtpServer: ...


@pytest.fixture
def start_smtp(smtp_data: Path) -> Iterator[StartSmtp]:
    started: list[SmtpServer] = []

    def start(
        config: Config | None = None, listeners: Sequence[ListenerConfig] | None = None
    ) -> SmtpServer:
        server = SmtpServer(smtp_data, config or smtp_config(), listeners or tcp_listeners())
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def smtp(start_smtp: StartSmtp) -> SmtpServer:
    return start_smtp()


def client_tls(server: SmtpServer) -> ssl.SSLContext:
    """Trusts the server's self-signed certificate; clients connect by IP, so the name in
    it is not checked."""
    cert, _ = server.config.tls.paths(server.data)
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return context


# -- a raw client -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    code: int
    lines: list[str]  # the text after "250-" / "250 " of each line

    @property
    def status(self) -> str:
        return self.lines[0].split(" ", 1)[0]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class RawClient:
    """Bytes in, replies out: for what smtplib will not send."""

    def __init__(self, address: tuple[str, int] | str) -> None:
        if isinstance(address, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(TIMEOUT)
            self.sock.connect(address)
        else:
            self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self._buf = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; unread: {self._buf!r}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def reply(self) -> Answer:
        lines: list[str] = []
        while True:
            line = self._line().decode()
            lines.append(line[4:])
            if line[3:4] != "-":
                return Answer(int(line[:3]), lines)

    def expect(self, code: int, status: str | None = None) -> Answer:
        answer = self.reply()
        assert answer.code == code, answer
        if status is not None:
            assert answer.status == status, answer
        return answer

    def command(self, line: str | bytes, code: int, status: str | None = None) -> Answer:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.expect(code, status)

    def greet(self, verb: str = "EHLO") -> Answer:
        self.expect(220)
        return self.command(f"{verb} client.test", 250)

    def closed(self) -> bool:
        """True once the server has closed the connection (nothing else pending)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def starttls(self, server: SmtpServer) -> None:
        self.command("STARTTLS", 220, "2.0.0")
        assert not self._buf, "the server spoke before the handshake"
        self.sock = client_tls(server).wrap_socket(self.sock, server_hostname=HOSTNAME)


def transaction(client: RawClient, sender: str, *recipients: str) -> None:
    client.command(f"MAIL FROM:<{sender}>", 250, "2.1.0")
    for recipient in recipients:
        client.command(f"RCPT TO:<{recipient}>", 250, "2.1.5")


# -- greeting, EHLO and the simple commands ------------------------------------------------------


def test_greeting_and_ehlo_on_the_mx(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        greeting = c.expect(220)
        assert greeting.lines == [f"{HOSTNAME} ESMTP postoffice ready"]
        ehlo = c.command("EHLO client.test", 250)
        assert ehlo.lines[0] == f"{HOSTNAME} Hello client.test"
        assert ehlo.lines[1:] == [
            "PIPELINING",
            f"SIZE {LimitsConfig().message_size}",
            "8BITMIME",
            "BINARYMIME",
            "CHUNKING",
            "SMTPUTF8",
            "DSN",
            "ENHANCEDSTATUSCODES",
            "STARTTLS",
        ]
        c.command("QUIT", 221, "2.0.0")
        assert c.closed()


def test_size_is_advertised_from_config(start_smtp: StartSmtp) -> None:
    server = start_smtp(smtp_config(limits=LimitsConfig(message_size=123456)))
    with server.smtp() as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "123456"


def test_helo_offers_no_extensions_and_refuses_parameters(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        helo = c.greet("HELO")
        assert helo.lines == [f"{HOSTNAME} Hello client.test"]
        c.command("MAIL FROM:<a@other.test> SIZE=10", 555, "5.5.4")
        c.command("MAIL FROM:<a@other.test>", 250, "2.1.0")


def test_simple_commands(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        c.command("NOOP", 250, "2.0.0")
        c.command("NOOP whatever", 250, "2.0.0")
        c.command("VRFY bob", 252, "2.5.0")
        assert "MAIL" in c.command("HELP", 214, "2.0.0").text
        c.command("RSET", 250, "2.0.0")
        c.command("WHAT", 500, "5.5.1")
        c.command("EXPN staff", 502, "5.5.1")
        c.command("QUIT", 221, "2.0.0")


# DESIGN §9: a table-driven check that every command is refused in the wrong state.
WRONG_STATE: list[tuple[str, list[str], str, int, str]] = [
    ("smtp", [], "MAIL FROM:<a@other.test>", 503, "5.5.1"),
    ("smtp", [], "RCPT TO:<bob@example.test>", 503, "5.5.1"),
    ("smtp", [], "DATA", 503, "5.5.1"),
    ("smtp", [], "STARTTLS", 503, "5.5.1"),
    ("smtp", ["EHLO c"], "RCPT TO:<bob@example.test>", 503, "5.5.1"),
    ("smtp", ["EHLO c"], "DATA", 503, "5.5.1"),
    ("smtp", ["EHLO c"], "AUTH PLAIN", 502, "5.5.1"),
    ("smtp", ["EHLO c", "MAIL FROM:<a@other.test>"], "MAIL FROM:<a@other.test>", 503, "5.5.1"),
    ("smtp", ["EHLO c", "MAIL FROM:<a@other.test>"], "STARTTLS", 503, "5.5.1"),
    ("smtp", ["EHLO c", "MAIL FROM:<a@other.test>"], "DATA", 554, "5.5.1"),
    ("smtp", ["EHLO c"], "LHLO c", 500, "5.5.1"),
    ("submission", ["EHLO c"], "MAIL FROM:<bob@example.test>", 530, "5.7.0"),
    ("submission", ["EHLO c"], "AUTH PLAIN", 538, "5.7.11"),
    ("submissions", ["EHLO c"], "STARTTLS", 503, "5.5.1"),
    ("lmtp", [], "EHLO c", 500, "5.5.1"),
    ("lmtp", [], "HELO c", 500, "5.5.1"),
    ("lmtp", ["LHLO c"], "AUTH PLAIN", 502, "5.5.1"),
    ("lmtp", ["LHLO c"], "RCPT TO:<bob@example.test>", 503, "5.5.1"),
]


@pytest.mark.parametrize(
    ("listener", "before", "command", "code", "status"),
    WRONG_STATE,
    ids=[f"{row[0]}-{row[2].split()[0]}-{len(row[1])}" for row in WRONG_STATE],
)
def test_command_refused_in_the_wrong_state(
    smtp: SmtpServer, listener: str, before: list[str], command: str, code: int, status: str
) -> None:
    with smtp.raw(listener) as c:
        if listener == "submissions":
            c.sock = client_tls(smtp).wrap_socket(c.sock, server_hostname=HOSTNAME)
        c.expect(220)
        for line in before:
            c.command(line, 250)
        c.command(command, code, status)
        c.command("NOOP", 250, "2.0.0")


# -- delivery and the MX policy ------------------------------------------------------------------


def test_delivers_through_the_store_with_trace_headers(smtp: SmtpServer) -> None:
    with smtp.smtp() as client:
        refused = client.sendmail("alice@other.test", [BOB], MESSAGE)
    assert refused == {}
    [stored] = smtp.inbox(BOB)
    head, _, body = stored.partition(b"\r\n\r\n")
    assert body == MESSAGE.partition(b"\r\n\r\n")[2]
    assert head.startswith(b"Delivered-To: bob@example.test\r\nReturn-Path: <alice@other.test>\r\n")
    assert b"Received: from client.test" in head
    assert b"with ESMTP" in head
    assert head.endswith(MESSAGE.partition(b"\r\n\r\n")[0])


def test_null_sender_is_accepted(smtp: SmtpServer) -> None:
    with smtp.smtp() as client:
        assert client.sendmail("", [BOB], message("bounce")) == {}
    assert b"Return-Path: <>" in smtp.inbox(BOB)[0]


def test_unknown_local_user_550_5_1_1_at_rcpt(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        c.command("MAIL FROM:<a@other.test>", 250)
        c.command("RCPT TO:<nobody@example.test>", 550, "5.1.1")


RELAY_FORMS = [
    "someone@other.test",
    "someone@OTHER.Test",
    "bob%other.test@example.test",
    "other.test!bob@example.test",
    "@other.test:bob@example.test",
    "@a.test,@b.test:bob@example.test",
    '"bob@other.test"@example.test',
    '"bob%other.test"@example.test',
    "bob@[127.0.0.1]",
    "bob@[IPv6:::1]",
    "bob@example.test.",
    "bob@Example.TEST.",
]


@pytest.mark.parametrize("recipient", RELAY_FORMS)
def test_relay_forms_are_denied_550_5_7_1(smtp: SmtpServer, recipient: str) -> None:
    with smtp.raw() as c:
        c.greet()
        c.command("MAIL FROM:<a@other.test>", 250)
        c.command(f"RCPT TO:<{recipient}>", 550, "5.7.1")
    assert smtp.inbox(BOB) == []


@pytest.mark.parametrize(
    ("recipient", "account"),
    [
        ("Bob@EXAMPLE.TEST", BOB),
        ("bob@example.test", BOB),
        ("bob+lists@example.test", BOB),
        ('"bob"@example.test', BOB),
        ("sales@example.test", ALICE),
        ("Postmaster", "postmaster@example.test"),
    ],
)
def test_local_forms_are_accepted(smtp: SmtpServer, recipient: str, account: str) -> None:
    with smtp.raw() as c:
        c.greet()
        transaction(c, "a@other.test", recipient)
        c.command("DATA", 354)
        c.send(stuffed(message("local forms")))
        c.expect(250, "2.0.0")
    assert len(smtp.inbox(account)) == 1


def test_forged_local_sender_on_the_mx_550_5_7_1(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        c.command("MAIL FROM:<bob@example.test>", 550, "5.7.1")
        c.command("MAIL FROM:<bob@EXAMPLE.test.>", 550, "5.7.1")


def test_8bit_message_is_stored_as_sent(smtp: SmtpServer) -> None:
    raw = "From: a@other.test\r\nSubject: café\r\n\r\nSchöne Grüße — ✓\r\n".encode()
    with smtp.smtp() as client:
        client.sendmail("a@other.test", [BOB], raw, mail_options=["BODY=8BITMIME"])
    assert smtp.inbox(BOB)[0].endswith(raw)


def test_smtputf8_addresses(smtp: SmtpServer) -> None:
    raw = "From: 用户@例子.测试\r\nTo: josé@example.test\r\nSubject: ✓\r\n\r\nHi\r\n".encode()
    with smtp.smtp() as client:
        refused = client.sendmail("用户@例子.测试", [JOSE], raw, mail_options=["SMTPUTF8"])
    assert refused == {}
    [stored] = smtp.inbox(JOSE)
    assert stored.endswith(raw)
    assert "Return-Path: <用户@例子.测试>".encode() in stored
    assert b"with UTF8SMTP" in stored


def test_utf8_address_without_smtputf8_553_5_6_7(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        c.command("MAIL FROM:<用户@例子.测试>", 553, "5.6.7")
        c.command("MAIL FROM:<a@other.test>", 250)
        c.command("RCPT TO:<josé@example.test>", 553, "5.6.7")


# -- pipelining and chunking ---------------------------------------------------------------------


def test_pipelined_session(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.expect(220)
        c.send(
            "EHLO client.test\r\nMAIL FROM:<a@other.test>\r\nRCPT TO:<bob@example.test>\r\n"
            "RCPT TO:<nobody@example.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        )
        assert c.expect(250).lines[1] == "PIPELINING"
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(550, "5.1.1")
        c.expect(250, "2.1.5")
        c.expect(354)
        c.send(
            stuffed(message("one"))
            + b"MAIL FROM:<a@other.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        )
        c.expect(250, "2.0.0")
        c.expect(250, "2.1.0")
        c.expect(250, "2.1.5")
        c.expect(354)
        c.send(stuffed(message("two")) + b"QUIT\r\n")
        c.expect(250, "2.0.0")
        c.expect(221, "2.0.0")
        assert c.closed()
    assert [b"Subject: one" in m for m in smtp.inbox(BOB)] == [True, False]
    assert [b"Subject: two" in m for m in smtp.inbox(BOB)] == [False, True]
    assert len(smtp.inbox(ALICE)) == 1


def test_bdat_in_several_chunks(smtp: SmtpServer) -> None:
    # No dot-stuffing and no end marker: text that would end or split DATA is just content.
    raw = message("chunks", "line one\r\n.\r\nQUIT\r\nMAIL FROM:<x@other.test>\r\nlast")
    chunks = [raw[:7], raw[7:50], raw[50:51], raw[51:]]
    with smtp.raw() as c:
        c.greet()
        transaction(c, "a@other.test", BOB)
        pipelined = b"".join(
            f"BDAT {len(chunk)}{' LAST' if i == len(chunks) - 1 else ''}\r\n".encode() + chunk
            for i, chunk in enumerate(chunks)
        )
        c.send(pipelined)
        for chunk in chunks[:-1]:
            assert c.expect(250, "2.0.0").text.endswith(f"{len(chunk)} octets received")
        c.expect(250, "2.0.0")
        c.command("NOOP", 250)
    [stored] = smtp.inbox(BOB)
    assert stored.endswith(raw)


def test_bdat_zero_last_ends_the_message(smtp: SmtpServer) -> None:
    raw = message("zero")
    with smtp.raw() as c:
        c.greet()
        transaction(c, "a@other.test", BOB)
        c.send(f"BDAT {len(raw)}\r\n".encode() + raw)
        c.expect(250)
        c.command("BDAT 0 LAST", 250, "2.0.0")
    assert smtp.inbox(BOB)[0].endswith(raw)


def test_a_refused_bdat_chunk_is_still_read(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        # Before MAIL: refused, but the six octets are chunk content, never a QUIT.
        c.send("BDAT 6\r\nQUIT\r\nNOOP\r\n")
        c.expect(503, "5.5.1")
        c.expect(250, "2.0.0")
        c.command("MAIL FROM:<a@other.test>", 250)
        c.send("BDAT 6 LAST\r\nQUIT\r\n")
        c.expect(554, "5.5.1")
        c.command("NOOP", 250)


def test_bdat_after_a_failed_chunk_is_discarded(start_smtp: StartSmtp) -> None:
    server = start_smtp(smtp_config(limits=LimitsConfig(message_size=1000)))
    with server.raw() as c:
        c.greet()
        transaction(c, "a@other.test", BOB)
        c.send(b"BDAT 600\r\n" + b"a" * 600 + b"BDAT 600\r\n" + b"b" * 600)
        c.expect(250, "2.0.0")
        c.expect(552, "5.3.4")
        c.send(b"BDAT 10 LAST\r\n" + b"c" * 10)
        c.expect(503, "5.5.1")
        # The transaction is over and the session in step: a new one works.
        transaction(c, "a@other.test", BOB)
        raw = message("after")
        c.send(f"BDAT {len(raw)} LAST\r\n".encode() + raw)
        c.expect(250, "2.0.0")
    assert len(server.inbox(BOB)) == 1


def test_data_cannot_follow_bdat(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        transaction(c, "a@other.test", BOB)
        c.send("BDAT 4\r\nabcd")
        c.expect(250)
        c.command("DATA", 503, "5.5.1")
        c.command("RSET", 250)
        c.command("NOOP", 250)
    assert smtp.inbox(BOB) == []


def test_binarymime_needs_bdat_and_keeps_every_octet(smtp: SmtpServer) -> None:
    raw = b"Subject: binary\r\nContent-Type: application/octet-stream\r\n\r\n\x00\n\r.\r\n\xff"
    with smtp.raw() as c:
        c.greet()
        c.command("MAIL FROM:<a@other.test> BODY=BINARYMIME", 250)
        c.command("RCPT TO:<bob@example.test>", 250)
        c.command("DATA", 503, "5.5.1")
        c.send(f"BDAT {len(raw)} LAST\r\n".encode() + raw)
        c.expect(250, "2.0.0")
    assert smtp.inbox(BOB)[0].endswith(raw)


# -- AUTH, STARTTLS, submission ------------------------------------------------------------------


def test_submission_offers_auth_only_after_starttls(smtp: SmtpServer) -> None:
    with smtp.raw("submission") as c:
        ehlo = c.greet()
        assert "STARTTLS" in ehlo.lines
        assert not any(line.startswith("AUTH") for line in ehlo.lines)
        c.starttls(smtp)
        ehlo = c.command("EHLO client.test", 250)
        assert "STARTTLS" not in ehlo.lines
        assert "AUTH SCRAM-SHA-256 PLAIN LOGIN" in ehlo.lines


def test_mx_never_offers_auth(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        c.starttls(smtp)
        ehlo = c.command("EHLO client.test", 250)
        assert not any(line.startswith("AUTH") for line in ehlo.lines)
        c.command("AUTH PLAIN", 502, "5.5.1")


def test_auth_refused_in_cleartext_538_5_7_11(smtp: SmtpServer) -> None:
    plain = base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode()
    with smtp.raw("submission") as c:
        c.greet()
        c.command(f"AUTH PLAIN {plain}", 538, "5.7.11")
        c.command("MAIL FROM:<bob@example.test>", 530, "5.7.0")


def test_cleartext_auth_from_an_allowed_network(start_smtp: StartSmtp) -> None:
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    config = smtp_config(auth=AuthConfig(plaintext_networks=loopback))
    server = start_smtp(config)
    with server.smtp("submission") as client:
        client.ehlo()
        assert "PLAIN" in client.esmtp_features["auth"]
        client.login(BOB, PASSWORD)
        assert client.sendmail(BOB, [ALICE], message("cleartext", sender=BOB)) == {}


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_over_starttls_then_send(smtp: SmtpServer, mechanism: str) -> None:
    with smtp.smtp("submission") as client:
        client.starttls(context=client_tls(smtp))
        client.ehlo()
        client.user, client.password = BOB, PASSWORD
        authenticator = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, _ = client.auth(mechanism, authenticator, initial_response_ok=mechanism == "PLAIN")
        assert code == 235
        refused = client.sendmail(BOB, [ALICE, "carol@remote.test"], message("sub", sender=BOB))
    assert refused == {}
    [stored] = smtp.inbox(ALICE)
    assert b"with ESMTPSA" in stored
    [queued] = smtp.queued()
    assert [r.recipient.address for r in queued.recipients] == ["carol@remote.test"]


def _scram_exchange(c: RawClient, username: str, password: str) -> Answer:
    client = scramp.ScramClient(["SCRAM-SHA-256"], username, password)
    first = base64.b64encode(client.get_client_first().encode()).decode()
    challenge = c.command(f"AUTH SCRAM-SHA-256 {first}", 334)
    client.set_server_first(base64.b64decode(challenge.lines[0]).decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    answer = c.command(final, 334)
    client.set_server_final(base64.b64decode(answer.lines[0]).decode())
    # RFC 4954 §4: the client answers the last challenge with an empty line.
    c.send("\r\n")
    return c.reply()


def test_auth_scram_sha_256_over_starttls(smtp: SmtpServer) -> None:
    with smtp.raw("submission") as c:
        c.greet()
        c.starttls(smtp)
        c.command("EHLO client.test", 250)
        answer = _scram_exchange(c, BOB, PASSWORD)
        assert (answer.code, answer.status) == (235, "2.7.0")
        c.command("MAIL FROM:<bob@example.test>", 250)
        c.command("RCPT TO:<alice@example.test>", 250)
        c.command("AUTH PLAIN", 503, "5.5.1")


def test_auth_failures(smtp: SmtpServer) -> None:
    wrong = base64.b64encode(f"\0{BOB}\0wrong".encode()).decode()
    with smtp.raw("submission") as c:
        c.greet()
        c.starttls(smtp)
        c.command("EHLO client.test", 250)
        c.command(f"AUTH PLAIN {wrong}", 535, "5.7.8")
        c.command("AUTH PLAIN", 334)
        c.command("*", 501, "5.0.0")
        c.command("AUTH PLAIN !!!", 501, "5.5.2")
        c.command("AUTH CRAM-MD5", 504, "5.5.4")
        c.command("AUTH LOGIN", 334)
        c.send(b"A" * 13000 + b"\r\n")
        c.expect(500, "5.5.6")
        c.command("MAIL FROM:<bob@example.test>", 530, "5.7.0")


def test_submissions_is_tls_from_the_start(smtp: SmtpServer) -> None:
    with smtp.smtp_ssl() as client:
        client.ehlo()
        assert "starttls" not in client.esmtp_features
        client.login(BOB, PASSWORD)
        assert client.sendmail(BOB, [ALICE], message("implicit", sender=BOB)) == {}
    assert b"with ESMTPSA" in smtp.inbox(ALICE)[0]


def test_sender_spoofing_553_5_7_1(smtp: SmtpServer) -> None:
    with smtp.smtp_ssl() as client:
        client.login(BOB, PASSWORD)
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail(ALICE, [ALICE], message("spoof", sender=ALICE))
        assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (553, b"5.7.1")
        client.rset()
        # An envelope sender of the user's own, but someone else's From: header.
        with pytest.raises(smtplib.SMTPDataError) as data_refused:
            client.sendmail(BOB, [ALICE], message("spoof", sender=ALICE))
        assert (data_refused.value.smtp_code, data_refused.value.smtp_error[:5]) == (553, b"5.7.1")
    assert smtp.inbox(ALICE) == []


def test_starttls_command_injection_is_defeated(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        # CVE-2011-0411: commands pipelined behind STARTTLS in cleartext must be dropped.
        c.send("STARTTLS\r\nMAIL FROM:<a@other.test>\r\nRCPT TO:<bob@example.test>\r\n")
        c.expect(220, "2.0.0")
        c.sock = client_tls(smtp).wrap_socket(c.sock, server_hostname=HOSTNAME)
        # Had MAIL been kept, RCPT would now work and EHLO would answer a MAIL.
        c.command("RCPT TO:<bob@example.test>", 503, "5.5.1")
        c.command("EHLO client.test", 250)
        c.command("RCPT TO:<bob@example.test>", 503, "5.5.1")


# -- limits -----------------------------------------------------------------------------------


def test_quota_full_452_at_rcpt_and_exceeded_552_at_data(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        c.command("MAIL FROM:<a@other.test>", 250)
        c.command(f"RCPT TO:<{FULL}>", 452, "4.2.2")
        c.command(f"RCPT TO:<{SMALL}>", 250)
        c.command("DATA", 354)
        c.send(stuffed(message("big", filler(3000))))
        c.expect(552, "5.2.2")
        transaction(c, "a@other.test", SMALL)
        c.command("DATA", 354)
        c.send(stuffed(message("small")))
        c.expect(250)
    assert len(smtp.inbox(SMALL)) == 1


def test_size_limits_552_5_3_4(start_smtp: StartSmtp) -> None:
    server = start_smtp(smtp_config(limits=LimitsConfig(message_size=2000)))
    with server.raw() as c:
        c.greet()
        c.command("MAIL FROM:<a@other.test> SIZE=2001", 552, "5.3.4")
        transaction(c, "a@other.test", BOB)
        c.command("DATA", 354)
        # Refused only at the end, after reading it all: then the session is in step.
        c.send(stuffed(message("huge", filler(5000))) + b"NOOP\r\n")
        c.expect(552, "5.3.4")
        c.expect(250, "2.0.0")
        transaction(c, "a@other.test", BOB)
        c.command("DATA", 354)
        c.send(stuffed(message("fits", filler(1500))))
        c.expect(250)
    assert len(server.inbox(BOB)) == 1


def test_too_many_recipients_452_4_5_3(start_smtp: StartSmtp) -> None:
    server = start_smtp(smtp_config(smtp=SmtpConfig(max_recipients=2)))
    with server.raw() as c:
        c.greet()
        transaction(c, "a@other.test", BOB, ALICE)
        c.command(f"RCPT TO:<{SMALL}>", 452, "4.5.3")
        c.command("DATA", 354)
        c.send(stuffed(message("two only")))
        c.expect(250)
    assert len(server.inbox(BOB)) == len(server.inbox(ALICE)) == 1
    assert server.inbox(SMALL) == []


def test_command_line_too_long_500_5_5_2(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        c.command("NOOP " + "x" * 505, 250)  # 512 octets with the CRLF
        c.command("NOOP " + "x" * 506, 500, "5.5.2")
        c.send(b"NOOP " + b"x" * 20000 + b"\r\n")
        c.expect(500, "5.5.2")
        c.command("NOOP", 250)
        # MAIL and RCPT may be longer by what their parameters add (RFC 3461, RFC 4954).
        envid = "e" * 100
        c.command(f"MAIL FROM:<a@other.test> ENVID={envid} RET=HDRS AUTH=<>", 250)
        orcpt = "rfc822;" + "o" * 400 + "@example.test"
        c.command(f"RCPT TO:<bob@example.test> NOTIFY=FAILURE ORCPT={orcpt}", 250)


def test_configured_command_line_length_is_used(start_smtp: StartSmtp) -> None:
    server = start_smtp(smtp_config(smtp=SmtpConfig(max_command_line=2048)))
    with server.raw() as c:
        c.greet()
        c.command("NOOP " + "x" * 1500, 250)
        c.command("NOOP " + "x" * 2100, 500, "5.5.2")


def test_bare_newlines_in_command_lines_500_5_5_2(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        c.send("NOOP\n")
        c.expect(500, "5.5.2")
        c.send("NOOP\rRSET\r\n")
        c.expect(500, "5.5.2")
        c.command("NOOP", 250)


def test_nul_is_refused(smtp: SmtpServer) -> None:
    with smtp.raw() as c:
        c.greet()
        c.command(b"MAIL FROM:<a\0b@other.test>", 501, "5.1.7")
        transaction(c, "a@other.test", BOB)
        c.command("DATA", 354)
        c.send(b"Subject: nul\r\n\r\nbefore\0after\r\n.\r\n")
        c.expect(550, "5.6.0")
        c.command("NOOP", 250)
    assert smtp.inbox(BOB) == []


@pytest.mark.parametrize("policy", ["reject", "accept"])
def test_long_text_lines_per_config(start_smtp: StartSmtp, policy: str) -> None:
    server = start_smtp(smtp_config(smtp=SmtpConfig(long_lines=policy)))
    with server.raw() as c:
        c.greet()
        transaction(c, "a@other.test", BOB)
        c.command("DATA", 354)
        c.send(stuffed(message("998", "w" * 998)))
        c.expect(250)
        transaction(c, "a@other.test", BOB)
        c.command("DATA", 354)
        c.send(stuffed(message("999", "w" * 999)))
        if policy == "reject":
            c.expect(550, "5.6.0")
        else:
            c.expect(250)
    assert len(server.inbox(BOB)) == (1 if policy == "reject" else 2)


def test_too_many_errors_421_4_7_0_and_close(start_smtp: StartSmtp) -> None:
    server = start_smtp(smtp_config(smtp=SmtpConfig(max_errors=3)))
    with server.raw() as c:
        c.greet()
        c.command("BOGUS", 500)
        c.command("MAIL FROM:<a@other.test>", 250)
        c.command("RCPT TO:<nobody@example.test>", 550)
        c.command("RCPT TO:<bob@example.test>", 250)  # successes do not reset the count
        c.send("ALSO BOGUS\r\n")
        c.expect(500, "5.5.1")
        c.expect(421, "4.7.0")
        assert c.closed()


def test_idle_timeout_421_4_4_2(start_smtp: StartSmtp) -> None:
    server = start_smtp(smtp_config(limits=LimitsConfig(smtp_idle_seconds=0.3)))
    with server.raw() as c:
        c.greet()
        c.expect(421, "4.4.2")
        assert c.closed()


def test_shutdown_ends_idle_sessions_and_lets_transactions_finish(smtp: SmtpServer) -> None:
    with smtp.raw() as idle, smtp.raw() as busy:
        idle.greet()
        busy.greet()
        transaction(busy, "a@other.test", BOB)
        started = time.monotonic()
        smtp.request_stop()
        # The idle client hears at once, not after its idle timeout.
        idle.expect(421, "4.3.2")
        assert idle.closed()
        assert time.monotonic() - started < 5
        busy.command("DATA", 354)
        busy.send(stuffed(message("during shutdown")))
        busy.expect(250, "2.0.0")
        busy.command("NOOP", 421, "4.3.2")
        assert busy.closed()
    smtp.stop()
    data = smtp.data
    server = SmtpServer(data, smtp.config, tcp_listeners())
    try:
        assert len(server.inbox(BOB)) == 1
    finally:
        server.stop()


def test_connection_limit_refusal_is_421(start_smtp: StartSmtp) -> None:
    server = start_smtp(smtp_config(limits=LimitsConfig(max_connections_per_ip=1)))
    with server.raw() as first, server.raw() as second:
        first.expect(220)
        answer = second.expect(421, "4.7.0")
        assert "too many connections" in answer.text
        assert second.closed()


# -- LMTP -------------------------------------------------------------------------------------


def test_lmtp_answers_once_per_recipient(smtp: SmtpServer) -> None:
    with smtp.raw("lmtp") as c:
        c.expect(220)
        ehlo = c.command("LHLO mta.test", 250)
        assert "STARTTLS" in ehlo.lines and "PIPELINING" in ehlo.lines
        # LMTP is a trusted hand-over: a sender in our own domain is fine.
        transaction(c, BOB, ALICE, SMALL, BOB)
        c.command("RCPT TO:<nobody@example.test>", 550, "5.1.1")
        c.command("DATA", 354)
        c.send(stuffed(message("lmtp", filler(3000))))
        c.expect(250, "2.0.0")
        c.expect(552, "5.2.2")
        c.expect(250, "2.0.0")
        transaction(c, "a@other.test", ALICE, SMALL)
        raw = message("lmtp bdat")
        c.send(b"BDAT 10\r\n" + raw[:10] + f"BDAT {len(raw) - 10} LAST\r\n".encode())
        c.send(raw[10:])
        c.expect(250)
        c.expect(250, "2.0.0")
        c.expect(250, "2.0.0")
        # A refused message is refused once per recipient too.
        transaction(c, "a@other.test", ALICE, BOB)
        c.command("DATA", 354)
        c.send(b"Subject: bare\r\n\r\nbare\nLF\r\n.\r\n")
        c.expect(550, "5.6.0")
        c.expect(550, "5.6.0")
    assert len(smtp.inbox(ALICE)) == 2
    assert len(smtp.inbox(BOB)) == 1
    assert len(smtp.inbox(SMALL)) == 1
    assert b"with LMTP" in smtp.inbox(BOB)[0]


def test_lmtp_over_a_unix_socket(start_smtp: StartSmtp) -> None:
    server = start_smtp(listeners=[ListenerConfig("lmtp", UnixAddress(Path("lmtp.sock")))])
    with RawClient(server.unix_path()) as c:
        c.expect(220)
        ehlo = c.command("LHLO mta.test", 250)
        assert "STARTTLS" not in ehlo.lines
        transaction(c, "a@other.test", BOB)
        c.command("DATA", 354)
        c.send(stuffed(message("unix")))
        c.expect(250, "2.0.0")
    assert len(server.inbox(BOB)) == 1


# -- DSN --------------------------------------------------------------------------------------


def test_dsn_parameters_are_kept_with_queued_mail(smtp: SmtpServer) -> None:
    with smtp.raw("submission") as c:
        c.greet()
        c.starttls(smtp)
        c.command("EHLO client.test", 250)
        plain = base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode()
        c.command(f"AUTH PLAIN {plain}", 235, "2.7.0")
        c.command("MAIL FROM:<bob@example.test> RET=HDRS ENVID=QQ+2B314", 250)
        c.command("RCPT TO:<carol@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+40r.test", 250)
        c.command("RCPT TO:<alice@example.test> NOTIFY=NEVER", 250)
        c.command("DATA", 354)
        c.send(stuffed(message("dsn", sender=BOB)))
        c.expect(250, "2.0.0")
    [queued] = smtp.queued()
    assert (queued.envelope.ret, queued.envelope.envid) == ("HDRS", "QQ+314")
    [recipient] = queued.recipients
    assert recipient.recipient.address == "carol@remote.test"
    assert recipient.recipient.notify == ("SUCCESS", "FAILURE")
    assert recipient.recipient.orcpt == "rfc822;c@r.test"
    assert len(smtp.inbox(ALICE)) == 1


def test_many_concurrent_sessions(smtp: SmtpServer) -> None:
    def send(n: int) -> None:
        with smtp.smtp() as client:
            for i in range(5):
                client.sendmail("a@other.test", [BOB], message(f"c{n}-{i}"))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(send, range(8)))
    assert len(smtp.inbox(BOB)) == 40


# -- the server's own failures -------------------------------------------------------------------


class BrokenDelivery:
    """Accepts every address, then fails to deliver (a store outage, a bug)."""

    async def check_connect(self, origin: Origin) -> Verdict:
        return ACCEPTED

    async def check_sender(self, sender: str, origin: Origin) -> Verdict:
        return ACCEPTED

    async def check_recipient(
        self, recipient: Recipient, origin: Origin, *, sender: str
    ) -> Verdict:
        if recipient.address.startswith("crash"):
            raise RuntimeError("routing exploded")
        return ACCEPTED

    async def deliver(self, envelope: Envelope, raw: bytes, origin: Origin) -> list[Verdict]:
        raise RuntimeError("the disk is on fire")


def test_internal_failures_are_451_and_lmtp_stays_in_step(smtp_data: Path) -> None:
    server = SmtpServer(smtp_data, smtp_config(), tcp_listeners(), BrokenDelivery())
    try:
        with server.raw("lmtp") as c:
            c.expect(220)
            c.command("LHLO mta.test", 250)
            transaction(c, "a@other.test", BOB, ALICE)
            c.command("RCPT TO:<crash@example.test>", 451, "4.3.0")
            c.command("DATA", 354)
            c.send(stuffed(message("lost")))
            c.expect(451, "4.3.0")
            c.expect(451, "4.3.0")
            c.command("NOOP", 250)
        with server.raw() as c:
            c.greet()
            transaction(c, "a@other.test", BOB, ALICE)
            c.command("DATA", 354)
            c.send(stuffed(message("lost")))
            c.expect(451, "4.3.0")
            c.command("NOOP", 250)
    finally:
        server.stop()
