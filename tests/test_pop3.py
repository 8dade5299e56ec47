"""The POP3 listeners end to end: Python's poplib (and a raw line client for what poplib
cannot send) against a real `postoffice serve`, mail delivered over SMTP.

Covers every command and response code, CAPA, STLS and pop3s, AUTH PLAIN / SCRAM-SHA-256,
APOP, the maildrop lock, the snapshot and UPDATE semantics, LOGIN-DELAY and EXPIRE, and a
POP3 deletion reaching an IMAP IDLE session.  The store side of EXPIRE (days counted from
the first RETR) is tested in-process with a chosen clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import poplib
import re
import smtplib
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import scramp

from conftest import Cli, ServeProcess, StartServe
from postoffice.locks import maildrop_lock
from postoffice.store import open_store
from postoffice.store.events import Expunged
from postoffice.store.model import (
    AppendTarget,
    Flag,
    PopAccountPolicy,
    PopLoginTooSoon,
    PopMaildrop,
    StoreMode,
    UidSet,
)
from test_imap_clients import RawImap, edit_config, unverified_tls

BOB = "bob@example.test"
CAROL = "carol@example.test"
PASSWORD = "correct-horse-7"
APOP_SECRET = "tanstaaf-secret"
TIMEOUT = 5.0
POP_ACCOUNT_COLUMNS = ("enabled", "login_delay", "expire_days", "apop_secret", "last_login")


class RawPop:
    """One POP3 connection at the level of lines; nothing is interpreted."""

    def __init__(self, address: tuple[str, int], *, tls: bool = False) -> None:
        sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock: socket.socket = unverified_tls().wrap_socket(sock) if tls else sock
        self._buf = b""
        self.greeting = self.line()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"server closed the connection; unread: {self._buf!r}")
            self._buf += data
        line, self._buf = self._buf[: end + 2], self._buf[end + 2 :]
        return line

    def command(self, text: str) -> bytes:
        self.send(text + "\r\n")
        return self.line()

    def multiline(self) -> list[bytes]:
        lines: list[bytes] = []
        while (line := self.line()) != b".\r\n":
            lines.append(line)
        return lines

    def closed(self) -> bool:
        """True when the server has closed the connection (after anything still unread)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def starttls(self) -> None:
        assert self.command("STLS").startswith(b"+OK")
        self.sock = unverified_tls().wrap_socket(self.sock)

    def close(self) -> None:
        self.sock.close()


class PopServer:
    def __init__(self, serve: ServeProcess, cli: Cli, cleanup: contextlib.ExitStack) -> None:
        self.serve = serve
        self.cli = cli
        self._cleanup = cleanup

    def address(self, listener: str = "pop3") -> tuple[str, int]:
        return self.serve.address(listener)

    def client(self, user: str = BOB, *, login: bool = True) -> poplib.POP3:
        client = poplib.POP3(*self.address(), timeout=TIMEOUT)
        self._cleanup.callback(client.close)
        if login:
            client.user(user)
            client.pass_(PASSWORD)
        return client

    def raw(self, listener: str = "pop3") -> RawPop:
        raw = RawPop(self.address(listener), tls=listener == "pop3s")
        self._cleanup.callback(raw.close)
        return raw

    def deliver(self, raw: bytes, to: str = BOB) -> None:
        with smtplib.SMTP(*self.address("smtp"), timeout=TIMEOUT) as smtp:
            assert smtp.sendmail("alice@other.test", [to], raw) == {}

    def deliver_numbered(self, count: int, to: str = BOB) -> None:
        for n in range(1, count + 1):
            self.deliver(message(f"message {n}", f"Body of message {n}.\r\n"), to)


def message(subject: str, body: str = "Hello.\r\n") -> bytes:
    return (
        f"From: Alice <alice@other.test>\r\nTo: {BOB}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 02 Jan 2024 09:00:00 +0000\r\n\r\n{body}"
    ).encode()


@pytest.fixture
def pop(cli: Cli, start_serve: StartServe) -> Iterator[PopServer]:
    cli.ok("user", "add", BOB, "--password", PASSWORD)
    cli.ok("user", "add", CAROL, "--password", PASSWORD)
    serve = start_serve()
    with contextlib.ExitStack() as cleanup:
        yield PopServer(serve, cli, cleanup)
    assert serve.stop() == 0, "\n".join(serve.lines)


def logged_in(pop: PopServer, user: str = BOB, listener: str = "pop3") -> RawPop:
    raw = pop.raw(listener)
    assert raw.command(f"USER {user}").startswith(b"+OK")
    reply = raw.command(f"PASS {PASSWORD}")
    assert reply.startswith(b"+OK"), reply
    return raw


def login_when_free(pop: PopServer) -> poplib.POP3:
    """Log Bob in as soon as the server has noticed his previous connection is gone."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        client = pop.client(login=False)
        client.user(BOB)
        try:
            client.pass_(PASSWORD)
        except poplib.error_proto as e:
            if b"[IN-USE]" not in e.args[0] or time.monotonic() > deadline:
                raise
            client.close()
            time.sleep(0.05)
        else:
            return client


def subjects(client: poplib.POP3) -> list[str]:
    found = []
    for n in range(1, len(client.list()[1]) + 1):
        lines = client.top(n, 0)[1]
        found += [x.decode()[9:] for x in lines if x.startswith(b"Subject: ")]
    return found


# -- greeting and CAPA ---------------------------------------------------------------------------


def test_greeting_and_capabilities_before_login(pop: PopServer) -> None:
    client = pop.client(login=False)
    assert re.match(rb"\+OK .*<\d+\.[0-9a-f]+@[^>]+>$", client.getwelcome())
    caps = client.capa()
    assert caps["SASL"] == ["SCRAM-SHA-256", "PLAIN", "LOGIN"]
    for name in ("TOP", "USER", "RESP-CODES", "PIPELINING", "UIDL", "AUTH-RESP-CODE", "STLS"):
        assert name in caps, name
    assert caps["EXPIRE"] == ["NEVER"]
    assert caps["LOGIN-DELAY"] == ["0"]
    assert caps["IMPLEMENTATION"][0].startswith("postoffice-")


def test_capabilities_per_user_policy(pop: PopServer) -> None:
    pop.cli.ok("user", "pop", CAROL, "--expire", "30", "--login-delay", "60")
    client = pop.client(login=False)
    caps = client.capa()
    # RFC 2449 §6.5/§6.7: the strictest value of any account, with USER.
    assert caps["EXPIRE"] == ["30", "USER"]
    assert caps["LOGIN-DELAY"] == ["60", "USER"]
    client.user(BOB)
    client.pass_(PASSWORD)
    caps = client.capa()
    assert caps["EXPIRE"] == ["NEVER"] and caps["LOGIN-DELAY"] == ["0"]
    assert "USER" not in caps and "SASL" not in caps and "STLS" not in caps
    carol = pop.client(CAROL)
    assert carol.capa()["EXPIRE"] == ["30"]
    assert carol.capa()["LOGIN-DELAY"] == ["60"]


# -- the transaction commands ----------------------------------------------------------------


def test_stat_list_uidl_retr_top(pop: PopServer) -> None:
    pop.deliver_numbered(3)
    client = pop.client()
    count, size = client.stat()
    assert count == 3
    _, listing, _ = client.list()
    sizes = [int(line.split()[1]) for line in listing]
    assert [int(line.split()[0]) for line in listing] == [1, 2, 3]
    assert sum(sizes) == size
    one: object = client.list(2)  # typeshed knows only the multi-line form
    assert one == f"+OK 2 {sizes[1]}".encode()
    for n in (1, 2, 3):
        reply, lines, octets = client.retr(n)
        assert reply == f"+OK {sizes[n - 1]} octets".encode()
        assert octets == sizes[n - 1]
        assert f"Subject: message {n}".encode() in lines
        assert lines[-1] == f"Body of message {n}.".encode()
    _, top, _ = client.top(1, 0)
    assert top[-1] == b"" and b"Subject: message 1" in top
    assert client.top(1, 1)[1][-1] == b"Body of message 1."
    _, uidls, _ = client.uidl()
    ids = [line.split()[1] for line in uidls]
    assert len(set(ids)) == 3 and all(re.fullmatch(rb"[0-9a-f]{16}", i) for i in ids)
    assert client.uidl(3) == b"+OK 3 " + ids[2]
    assert client.noop() == b"+OK Done"


def test_octet_counts_exact_for_dot_stuffed_lines(pop: PopServer) -> None:
    body = ".leading dot\r\n..two dots\r\n.\r\nnot the end\r\n. \r\n"
    pop.deliver(message("dots", body))
    client = pop.client()
    _, size = client.stat()
    reply, lines, octets = client.retr(1)
    assert octets == size == int(reply.split()[1])
    # poplib removes the stuffing; the content is what was stored.
    assert lines[-5:] == [b".leading dot", b"..two dots", b".", b"not the end", b". "]
    raw = logged_in(pop, CAROL)  # Carol's empty drop: LIST of nothing is a bare "."
    assert raw.command("LIST") == b"+OK 0 messages\r\n" and raw.multiline() == []


def test_large_message_streams_intact(pop: PopServer) -> None:
    line = b"." + b"x" * 900 + b"\r\n"
    body = line * 6000  # about 5.4 MB, every line dot-stuffed on the wire
    pop.deliver(message("large").replace(b"Hello.\r\n", b"") + body)
    client = pop.client()
    _, size = client.stat()
    _, lines, octets = client.retr(1)
    assert octets == size
    assert lines[-6000:] == [line[:-2]] * 6000


def test_deletions_happen_only_at_quit(pop: PopServer) -> None:
    pop.deliver_numbered(3)
    client = pop.client()
    assert client.dele(2) == b"+OK Message 2 deleted"
    for attempt in (lambda: client.retr(2), lambda: client.dele(2), lambda: client.list(2)):
        with pytest.raises(poplib.error_proto, match="Message 2 is deleted"):
            attempt()
    assert client.stat()[0] == 2
    assert [line.split()[0] for line in client.list()[1]] == [b"1", b"3"]
    # Message numbers do not shift (RFC 1939 §6): 3 is still 3.
    assert b"Subject: message 3" in client.retr(3)[1]
    assert client.rset().startswith(b"+OK 3 messages")
    assert client.stat()[0] == 3
    client.dele(1)
    client.dele(3)
    assert client.quit() == b"+OK Bye, 2 messages deleted"
    again = pop.client()
    assert subjects(again) == ["message 2"]


def test_dropped_connection_deletes_nothing(pop: PopServer) -> None:
    pop.deliver_numbered(2)
    raw = logged_in(pop)
    assert raw.command("DELE 1").startswith(b"+OK")
    assert raw.command("DELE 2").startswith(b"+OK")
    raw.close()
    # The lock is released with the connection: the next login is not IN-USE.
    client = login_when_free(pop)
    assert client.stat()[0] == 2


def test_uidl_stable_across_sessions(pop: PopServer) -> None:
    pop.deliver_numbered(3)
    first = pop.client()
    before = [line.split()[1] for line in first.uidl()[1]]
    first.dele(1)
    first.quit()
    pop.deliver_numbered(1)
    second = pop.client()
    after = [line.split()[1] for line in second.uidl()[1]]
    assert after[:2] == before[1:]
    assert len(set(after)) == 3 and before[0] not in after


def test_message_numbers_and_arguments_refused(pop: PopServer) -> None:
    pop.deliver_numbered(1)
    raw = logged_in(pop)
    for command, expected in [
        ("RETR 2", b"-ERR No message 2\r\n"),
        ("RETR 0", b"-ERR Message numbers start at 1\r\n"),
        ("RETR -1", b"-ERR Invalid number '-1'\r\n"),
        ("RETR", b"-ERR Wrong number of arguments for RETR\r\n"),
        ("TOP 1", b"-ERR Wrong number of arguments for TOP\r\n"),
        ("TOP 1 x", b"-ERR Invalid number 'x'\r\n"),
        ("LIST 1  ", b"-ERR Arguments must be separated by single spaces\r\n"),
        ("STAT now", b"-ERR STAT takes no arguments\r\n"),
        ("UIDL 9", b"-ERR No message 9\r\n"),
        ("DELE 7", b"-ERR No message 7\r\n"),
        ("XTND XMIT", b"-ERR Unknown command\r\n"),
        ("USER bob", b"-ERR USER is not allowed in this state\r\n"),
        ("STLS", b"-ERR STLS is not allowed in this state\r\n"),
    ]:
        assert raw.command(command) == expected, command
    assert raw.command("stat").startswith(b"+OK 1 ")  # keywords are case-insensitive


@pytest.mark.parametrize(
    "command", ["STAT", "LIST", "UIDL", "RETR 1", "TOP 1 1", "DELE 1", "RSET", "NOOP"]
)
def test_transaction_commands_refused_before_login(pop: PopServer, command: str) -> None:
    raw = pop.raw()
    verb = command.split()[0]
    assert raw.command(command) == f"-ERR {verb} is not allowed in this state\r\n".encode()


def test_long_line_refused_and_bad_commands_end_session(pop: PopServer) -> None:
    raw = pop.raw()
    # RFC 2449 §4: 255 octets with the CRLF; one more is refused, the session goes on.
    assert raw.command("NOOP " + "x" * 249).startswith(b"-ERR")  # 256 octets
    assert raw.command("USER " + "x" * 500) == b"-ERR Command line too long\r\n"
    assert raw.command("CAPA").startswith(b"+OK")
    raw.multiline()
    raw.send(b"BOGUS\r\n" * 20)  # limits.bad_commands in a row
    lines = [raw.line() for _ in range(21)]
    assert lines[:20] == [b"-ERR Unknown command\r\n"] * 20
    assert lines[20] == b"-ERR Too many invalid commands\r\n"
    assert raw.closed()


def test_pipelined_commands_answered_in_order(pop: PopServer) -> None:
    pop.deliver_numbered(2)
    raw = pop.raw()
    raw.send(f"USER {BOB}\r\nPASS {PASSWORD}\r\nSTAT\r\nDELE 1\r\nLIST\r\nQUIT\r\n")
    assert raw.line().startswith(b"+OK")
    assert raw.line().startswith(b"+OK Logged in, 2 messages")
    assert raw.line().startswith(b"+OK 2 ")
    assert raw.line() == b"+OK Message 1 deleted\r\n"
    assert raw.line() == b"+OK 1 messages\r\n"
    assert [x.split()[0] for x in raw.multiline()] == [b"2"]
    assert raw.line() == b"+OK Bye, 1 messages deleted\r\n"


def test_idle_timeout(cli: Cli, data_dir: Path, start_serve: StartServe) -> None:
    edit_config(data_dir, "pop3_idle_seconds", "0.5")
    cli.ok("user", "add", BOB, "--password", PASSWORD)
    serve = start_serve()
    raw = RawPop(serve.address("pop3"))
    assert raw.line() == b"-ERR Disconnected for inactivity\r\n"
    assert raw.closed()
    raw.close()
    assert serve.stop() == 0


# -- authentication ------------------------------------------------------------------------------


def test_wrong_password_and_pass_without_user(pop: PopServer) -> None:
    raw = pop.raw()
    assert raw.command("PASS secret") == b"-ERR USER first\r\n"
    raw.command(f"USER {BOB}")
    assert raw.command("PASS wrong-password") == b"-ERR [AUTH] Invalid credentials\r\n"
    # After a failed PASS the USER is forgotten (RFC 1939 §7).
    assert raw.command(f"PASS {PASSWORD}") == b"-ERR USER first\r\n"
    raw.command(f"USER {BOB}")
    assert raw.command(f"PASS {PASSWORD}").startswith(b"+OK Logged in")


def test_pop_disabled_for_account(pop: PopServer) -> None:
    pop.cli.ok("user", "pop", BOB, "--disable")
    raw = pop.raw()
    raw.command(f"USER {BOB}")
    assert raw.command(f"PASS {PASSWORD}") == (
        b"-ERR [AUTH] POP3 access is disabled for this account\r\n"
    )
    pop.cli.ok("user", "pop", BOB, "--enable")
    pop.client()


def test_plaintext_refused_outside_plaintext_networks(
    cli: Cli, data_dir: Path, start_serve: StartServe
) -> None:
    edit_config(data_dir, "plaintext_networks", "[]")
    cli.ok("user", "add", BOB, "--password", PASSWORD)
    serve = start_serve()
    client = poplib.POP3(*serve.address("pop3"), timeout=TIMEOUT)
    caps = client.capa()
    assert "USER" not in caps and "SASL" not in caps and "STLS" in caps
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] Plaintext"):
        client.user(BOB)
    client.stls(unverified_tls())
    caps = client.capa()
    assert "USER" in caps and "STLS" not in caps
    client.user(BOB)
    client.pass_(PASSWORD)
    assert client.stat() == (0, 0)
    client.quit()
    assert serve.stop() == 0


def test_stls_discards_pipelined_cleartext(pop: PopServer) -> None:
    raw = pop.raw()
    raw.send(f"STLS\r\nUSER {BOB}\r\n")
    assert raw.line() == b"+OK Begin TLS negotiation\r\n"
    raw.sock = unverified_tls().wrap_socket(raw.sock)
    # RFC 2595 §4: the USER sent before the handshake is gone.
    assert raw.command(f"PASS {PASSWORD}") == b"-ERR USER first\r\n"
    assert raw.command("STLS") == b"-ERR STLS is not available now\r\n"


def test_pop3s_implicit_tls(pop: PopServer) -> None:
    pop.deliver_numbered(1)
    client = poplib.POP3_SSL(*pop.address("pop3s"), context=unverified_tls(), timeout=TIMEOUT)
    assert "STLS" not in client.capa()
    client.user(BOB)
    client.pass_(PASSWORD)
    assert client.stat()[0] == 1
    client.quit()


def test_auth_plain_initial_response_and_continuation(pop: PopServer) -> None:
    token = base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode()
    raw = pop.raw()
    assert raw.command(f"AUTH PLAIN {token}").startswith(b"+OK Logged in")
    raw.command("QUIT")
    raw = pop.raw()
    assert raw.command("AUTH PLAIN") == b"+ \r\n"
    assert raw.command(token).startswith(b"+OK Logged in")
    raw.command("QUIT")
    raw = pop.raw()
    assert raw.command("AUTH PLAIN") == b"+ \r\n"
    assert raw.command("*") == b"-ERR Authentication cancelled\r\n"
    bad = base64.b64encode(f"\0{BOB}\0nope".encode()).decode()
    assert raw.command(f"AUTH PLAIN {bad}") == b"-ERR [AUTH] Invalid credentials\r\n"
    assert raw.command("AUTH PLAIN !!!") == b"-ERR Invalid base64 in SASL response\r\n"
    assert raw.command("AUTH KERBEROS_V4") == b"-ERR Unsupported authentication mechanism\r\n"
    assert raw.command("AUTH") == b"+OK Supported mechanisms follow\r\n"
    assert raw.multiline() == [b"SCRAM-SHA-256\r\n", b"PLAIN\r\n", b"LOGIN\r\n"]


def test_auth_scram_sha_256(pop: PopServer) -> None:
    client = scramp.ScramClient(["SCRAM-SHA-256"], BOB, PASSWORD)
    raw = pop.raw()
    first = base64.b64encode(client.get_client_first().encode()).decode()
    challenge = raw.command(f"AUTH SCRAM-SHA-256 {first}")
    assert challenge.startswith(b"+ "), challenge
    client.set_server_first(base64.b64decode(challenge[2:]).decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    verifier = raw.command(final)
    assert verifier.startswith(b"+ "), verifier
    client.set_server_final(base64.b64decode(verifier[2:]).decode())
    assert raw.command("").startswith(b"+OK Logged in")


def test_apop_only_for_enabled_accounts(pop: PopServer) -> None:
    pop.cli.ok("user", "pop", BOB, "--apop-secret-stdin", stdin=APOP_SECRET + "\n")
    client = pop.client(login=False)
    assert client.apop(BOB, APOP_SECRET).startswith(b"+OK Logged in")
    client.quit()
    client = pop.client(login=False)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.apop(BOB, "wrong secret")
    # Carol has no APOP secret: her password does not work as one.
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.apop(CAROL, PASSWORD)
    pop.cli.ok("user", "pop", BOB, "--no-apop")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        client.apop(BOB, APOP_SECRET)


def test_apop_digest_is_of_this_greeting(pop: PopServer) -> None:
    pop.cli.ok("user", "pop", BOB, "--apop-secret-stdin", stdin=APOP_SECRET + "\n")
    first, second = pop.raw(), pop.raw()
    stamp = re.search(rb"<[^>]+>", first.greeting)
    assert stamp is not None and stamp[0] not in second.greeting
    digest = hashlib.md5(stamp[0] + APOP_SECRET.encode()).hexdigest()  # noqa: S324 (RFC 1939)
    assert second.command(f"APOP {BOB} {digest}") == b"-ERR [AUTH] Invalid credentials\r\n"
    assert first.command(f"APOP {BOB} {digest}").startswith(b"+OK Logged in")


# -- the maildrop lock, LOGIN-DELAY, EXPIRE -------------------------------------------------------


def test_second_session_gets_in_use(pop: PopServer) -> None:
    first = logged_in(pop)
    second = pop.raw()
    second.command(f"USER {BOB}")
    assert second.command(f"PASS {PASSWORD}") == (
        b"-ERR [IN-USE] Maildrop is in use by another session\r\n"
    )
    assert first.command("QUIT").startswith(b"+OK")
    assert first.closed()
    second.command(f"USER {BOB}")
    assert second.command(f"PASS {PASSWORD}").startswith(b"+OK Logged in")


def test_lock_holds_across_processes(pop: PopServer, data_dir: Path) -> None:
    account_id = 1  # Bob, the first account added
    lock = maildrop_lock(data_dir, account_id)
    assert lock is not None
    try:
        raw = pop.raw()
        raw.command(f"USER {BOB}")
        assert raw.command(f"PASS {PASSWORD}").startswith(b"-ERR [IN-USE]")
    finally:
        lock.release()
    assert raw.command(f"USER {BOB}").startswith(b"+OK")
    assert raw.command(f"PASS {PASSWORD}").startswith(b"+OK")
    assert maildrop_lock(data_dir, account_id) is None


def test_login_delay(pop: PopServer) -> None:
    pop.cli.ok("user", "pop", BOB, "--login-delay", "3600")
    client = pop.client()
    client.quit()
    raw = pop.raw()
    raw.command(f"USER {BOB}")
    reply = raw.command(f"PASS {PASSWORD}")
    assert re.fullmatch(rb"-ERR \[LOGIN-DELAY\] .* in 3[56]\d\d seconds\r\n", reply), reply
    pop.client(CAROL)  # another account is not delayed


def test_expire_zero_deletes_what_was_retrieved(pop: PopServer) -> None:
    pop.cli.ok("user", "pop", BOB, "--expire", "0")
    pop.deliver_numbered(3)
    client = pop.client()
    assert client.capa()["EXPIRE"] == ["0"]
    client.retr(1)
    client.top(2, 0)  # TOP is not a download
    assert client.quit() == b"+OK Bye, 1 messages deleted"
    assert subjects(pop.client()) == ["message 2", "message 3"]


def test_pop_deletion_reaches_imap_idle(pop: PopServer) -> None:
    pop.deliver_numbered(2)
    imap = RawImap(pop.address("imap"))
    imap.login()
    imap.ok("s", "SELECT INBOX")
    imap.send(b"i IDLE\r\n")
    assert imap.response().startswith(b"+ ")
    client = pop.client()
    client.dele(1)
    client.quit()
    assert imap.response() == b"* 1 EXPUNGE\r\n"
    imap.send(b"DONE\r\n")
    _, done = imap.until("i")
    assert done.startswith(b"i OK")
    imap.close()


def test_expire_days_count_from_first_retrieval(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await open_store(tmp_path)
        try:
            await store.add_domain("example.test")
            account = await store.add_account(BOB, "x", None)
            inbox = await store.get_mailbox(account.id, "INBOX")
            assert inbox is not None
            for n in range(3):
                await store.append(message(f"m{n}"), [AppendTarget(inbox.id)])
            await store.set_pop_policy(
                BOB, enabled=True, login_delay=0, expire_days=2, apop_secret=None
            )
            day0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
            opened = await store.pop_open(account.id, day0)
            assert isinstance(opened, PopMaildrop) and len(opened.messages) == 3
            first, second, third = (uid for uid, _ in opened.messages)
            await store.pop_update(inbox.id, UidSet.of([]), UidSet.of([first]), day0)
            later = day0 + dt.timedelta(days=1)
            await store.pop_update(inbox.id, UidSet.of([]), UidSet.of([first, second]), later)
            # The first retrieval counts, not the last: `first` is due on day 2.
            opened = await store.pop_open(account.id, day0 + dt.timedelta(days=2))
            assert isinstance(opened, PopMaildrop)
            assert [uid for uid, _ in opened.messages] == [second, third]
            assert opened.expired == 1
            assert (await store.get_account(BOB)).used_messages == 2  # type: ignore[union-attr]
            opened = await store.pop_open(account.id, day0 + dt.timedelta(days=30))
            assert isinstance(opened, PopMaildrop)
            assert [uid for uid, _ in opened.messages] == [third]  # never retrieved: kept
            await store.set_pop_policy(
                BOB, enabled=True, login_delay=60, expire_days=None, apop_secret=None
            )
            now = day0 + dt.timedelta(days=31)
            assert isinstance(await store.pop_open(account.id, now), PopMaildrop)
            too_soon = await store.pop_open(account.id, now + dt.timedelta(seconds=15))
            assert too_soon == PopLoginTooSoon(45)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_user_pop_command(cli: Cli, data_dir: Path) -> None:
    cli.ok("user", "add", BOB, "--password", PASSWORD)
    assert cli.ok("user", "pop", BOB) == (
        f"pop3 of {BOB}: enabled  login-delay=0s  expire=never  apop=off\n"
    )
    out = cli.ok(
        "user", "pop", BOB, "--disable", "--login-delay", "300", "--expire", "14",
        "--apop-secret-stdin", stdin="s3cret\n",
    )  # fmt: skip
    assert out == f"pop3 of {BOB}: disabled  login-delay=300s  expire=14d  apop=on\n"
    out = cli.ok("user", "pop", BOB, "--expire", "never", "--no-apop", "--enable")
    assert out == f"pop3 of {BOB}: enabled  login-delay=300s  expire=never  apop=off\n"
    assert "no such user" in cli.fails("user", "pop", CAROL)
    assert "--expire" in cli.fails("user", "pop", BOB, "--expire", "soon")
    assert "no password" in cli.fails("user", "pop", BOB, "--apop-secret-stdin", stdin="\n")


def test_pop_update_removes_exactly_the_given_uids(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await open_store(tmp_path)
        try:
            await store.add_domain("example.test")
            account = await store.add_account(BOB, "x", None)
            inbox = await store.get_mailbox(account.id, "INBOX")
            assert inbox is not None
            for n in range(4):
                await store.append(message(f"m{n}"), [AppendTarget(inbox.id)])
            # \Deleted set by IMAP on a message POP does not delete: it stays.
            await store.store_flags(inbox.id, UidSet.of([4]), StoreMode.ADD, Flag.DELETED)
            watcher = store.events.subscribe(account.id, inbox.id)
            before = await store.get_mailbox(account.id, "INBOX")
            assert before is not None
            mark = before.highestmodseq
            now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
            removed = await store.pop_update(inbox.id, UidSet.of([1, 3, 9]), UidSet.of([2]), now)
            assert removed == [1, 3]
            assert list(await store.uids(inbox.id)) == [2, 4]
            [event] = watcher.pending()
            assert isinstance(event, Expunged) and event.uids == (1, 3)
            assert await store.vanished_since(inbox.id, mark) == [1, 3]
            used = await store.get_account(BOB)
            assert used is not None and used.used_messages == 2
            assert await store.pop_update(inbox.id, UidSet.of([1]), UidSet.of([]), now) == []
        finally:
            await store.close()

    asyncio.run(scenario())


def test_pop_columns_added_to_an_older_database(tmp_path: Path) -> None:
    async def create() -> None:
        store = await open_store(tmp_path)
        await store.add_domain("example.test")
        await store.add_account(BOB, "x", None)
        await store.close()

    async def reopen() -> PopAccountPolicy | None:
        store = await open_store(tmp_path)
        try:
            return await store.get_pop_policy(BOB)
        finally:
            await store.close()

    asyncio.run(create())
    with contextlib.closing(sqlite3.connect(tmp_path / "store" / "meta.sqlite3")) as conn:
        for table, column in [
            *(("accounts", f"pop_{name}") for name in POP_ACCOUNT_COLUMNS),
            ("entries", "pop_retrieved"),
        ]:
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.commit()
    policy = asyncio.run(reopen())
    assert policy == PopAccountPolicy(1, BOB)
