"""The IMAP listeners end to end: Python's imaplib and imapclient against a real `postoffice
serve`, doing what a mail client does (log in, list, append, fetch, search, flag, move, idle).

What neither library can send (SASL-IR, COMPRESS=DEFLATE, QRESYNC SELECT, deliberately broken
commands) goes through `RawImap`, a small hand-written line client: it only frames lines and
literals, so a test sees the server's exact bytes.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import re
import signal
import smtplib
import socket
import ssl
import time
import zlib
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import imapclient
import pytest
import scramp

from conftest import Cli, ServeProcess, StartServe

BOB = "bob@example.test"
CAROL = "carol@example.test"  # has a quota
PASSWORD = "correct-horse-7"
TIMEOUT = 5.0  # seconds for any one network read
IDLE_LATENCY = 1.0  # seconds within which an idling client must hear of a change
UTC = dt.UTC


def unverified_tls() -> ssl.SSLContext:
    """The server's certificate is self-signed at `init`: encrypt, do not verify."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class RawImap:
    """One IMAP connection at the level of lines: literals are read inline, nothing is parsed."""

    def __init__(self, address: tuple[str, int], *, tls: bool = False) -> None:
        sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock = unverified_tls().wrap_socket(sock) if tls else sock
        self._buf = b""
        self._inflate: zlib._Decompress | None = None
        self._deflate: zlib._Compress | None = None
        self.greeting = self.response()

    def send(self, data: bytes) -> None:
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"server closed the connection; unread: {self._buf!r}")
        self._buf += data if self._inflate is None else self._inflate.decompress(data)

    def _take_line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            self._more()
        line, self._buf = self._buf[: end + 2], self._buf[end + 2 :]
        return line

    def response(self) -> bytes:
        """The next response line, its literals (`{n}` + n bytes) inline."""
        line = self._take_line()
        while match := re.search(rb"\{(\d+)\}\r\n$", line):
            size = int(match[1])
            while len(self._buf) < size:
                self._more()
            line += self._buf[:size]
            self._buf = self._buf[size:]
            line += self._take_line()
        return line

    def command(self, tag: str, text: bytes | str) -> tuple[list[bytes], bytes]:
        """Send `tag text`; the untagged and continuation lines, then the tagged one."""
        raw = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + raw + b"\r\n")
        return self.until(tag)

    def until(self, tag: str) -> tuple[list[bytes], bytes]:
        lines: list[bytes] = []
        while not (line := self.response()).startswith(tag.encode() + b" "):
            lines.append(line)
        return lines, line

    def ok(self, tag: str, text: bytes | str) -> list[bytes]:
        lines, done = self.command(tag, text)
        assert done.startswith(f"{tag} OK".encode()), (lines, done)
        return lines

    def login(self, user: str = BOB, password: str = PASSWORD) -> None:
        self.ok("L", f'LOGIN "{user}" "{password}"')

    def start_compression(self) -> None:
        # RFC 4978 §3: raw DEFLATE (no zlib header) both ways from the next byte on.
        self._deflate = zlib.compressobj(wbits=-15)
        self._inflate = zlib.decompressobj(wbits=-15)
        self._buf = self._inflate.decompress(self._buf)

    def close(self) -> None:
        self.sock.close()


class MailServer:
    """A running `serve` with Bob (and Carol, 1M quota) as users, and clients that log in."""

    def __init__(self, serve: ServeProcess, cleanup: contextlib.ExitStack) -> None:
        self.serve = serve
        self._cleanup = cleanup

    def address(self, listener: str = "imap") -> tuple[str, int]:
        return self.serve.address(listener)

    def client(
        self, user: str = BOB, *, select: str | None = "INBOX", listener: str = "imap"
    ) -> imapclient.IMAPClient:
        host, port = self.address(listener)
        tls = listener == "imaps"
        client = imapclient.IMAPClient(
            host, port, ssl=tls, ssl_context=unverified_tls() if tls else None, timeout=TIMEOUT
        )
        self._cleanup.callback(client.shutdown)
        client.login(user, PASSWORD)
        if select is not None:
            client.select_folder(select)
        return client

    def raw(self, listener: str = "imap", *, login: bool = True) -> RawImap:
        raw = RawImap(self.address(listener), tls=listener == "imaps")
        self._cleanup.callback(raw.close)
        if login:
            raw.login()
        return raw

    def deliver(self, message: EmailMessage, to: str = BOB) -> None:
        """Hand `message` to the MX listener, as another mail server would."""
        host, port = self.address("smtp")
        with smtplib.SMTP(host, port, timeout=TIMEOUT) as smtp:
            refused = smtp.send_message(message, "alice@other.test", [to])
        assert refused == {}


@pytest.fixture
def mail(cli: Cli, start_serve: StartServe) -> Iterator[MailServer]:
    cli.ok("user", "add", BOB, "--password", PASSWORD)
    cli.ok("user", "add", CAROL, "--password", PASSWORD, "--quota", "1M")
    serve = start_serve()
    with contextlib.ExitStack() as cleanup:
        yield MailServer(serve, cleanup)
    assert serve.stop() == 0, "\n".join(serve.lines)


def text_message(subject: str, body: str = "Hello.\n", **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = headers.pop("sender", "Alice <alice@other.test>")
    message["To"] = BOB
    message["Subject"] = subject
    message["Date"] = headers.pop("date", "Tue, 02 Jan 2024 09:00:00 +0000")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def wire(message: EmailMessage) -> bytes:
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


ATTACHMENT = bytes(range(256))
# RFC 2046 §5.1.1: the CRLF before a boundary belongs to the boundary, not to the part.
TEXT_PART = "Hello Bob,\r\nthe report is attached."


def multipart_message() -> bytes:
    """multipart/mixed: a text part and a base64 attachment, written out by hand so that
    part sizes and line counts are known exactly."""
    encoded = base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n")
    return (
        b"From: Alice Example <alice@other.test>\r\n"
        b"To: Bob <bob@example.test>\r\n"
        b"Subject: Quarterly report\r\n"
        b"Date: Wed, 03 Jan 2024 10:11:12 +0100\r\n"
        b"Message-ID: <report-1@other.test>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="XYZ"\r\n'
        b"\r\n"
        b"--XYZ\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n" + TEXT_PART.encode() + b"\r\n--XYZ\r\n"
        b'Content-Type: application/octet-stream; name="data.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="data.bin"\r\n'
        b"\r\n" + encoded + b"--XYZ--\r\n"
    )


def flag_set(flags: tuple[bytes, ...]) -> set[bytes]:
    """Flags without \\Recent: a session sees the messages it appended as recent (RFC 3501
    §2.3.2; IMAP4rev2 dropped the flag), which is no part of what was stored."""
    return set(flags) - {b"\\Recent"}


def uid_of(response: bytes, code: str) -> list[int]:
    """The UIDs in `[APPENDUID v uid]` / `[COPYUID v from to]` (the last set, expanded)."""
    match = re.search(rb"\[" + code.encode() + rb" \d+ (?:\S+ )?([\d:,]+)\]", response)
    assert match, response
    uids: list[int] = []
    for part in match[1].split(b","):
        first, _, last = part.partition(b":")
        uids.extend(range(int(first), int(last or first) + 1))
    return uids


# -- logging in ------------------------------------------------------------------------------


def test_login_and_capabilities(mail: MailServer) -> None:
    client = mail.client(select=None)
    caps = client.capabilities()
    for wanted in (b"IMAP4REV2", b"IDLE", b"UIDPLUS", b"MOVE", b"CONDSTORE", b"QRESYNC"):
        assert wanted in caps
    assert b"STARTTLS" not in caps, "after login the client has no use for STARTTLS"


def test_authenticate_plain_with_continuation(mail: MailServer) -> None:
    host, port = mail.address()
    client = imapclient.IMAPClient(host, port, ssl=False, timeout=TIMEOUT)
    client.plain_login(BOB, PASSWORD)
    assert client.select_folder("INBOX")[b"EXISTS"] == 0
    client.logout()


def test_authenticate_plain_sasl_ir(mail: MailServer) -> None:
    raw = mail.raw(login=False)
    assert b"SASL-IR" in raw.greeting
    token = base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode()
    # RFC 4959: the initial response rides on the command, so no `+` round trip.
    lines, done = raw.command("a", f"AUTHENTICATE PLAIN {token}")
    assert lines == []
    assert done.startswith(b"a OK [CAPABILITY "), done


def scram_mechanism(user: str, password: str) -> Callable[[bytes], bytes]:
    """An imaplib authobject running SCRAM-SHA-256 (RFC 7677) with scramp."""
    scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    steps = iter(range(3))

    def step(challenge: bytes) -> bytes:
        match next(steps):
            case 0:
                first: str = scram.get_client_first()
                return first.encode()
            case 1:
                scram.set_server_first(challenge.decode())
                final: str = scram.get_client_final()
                return final.encode()
            case _:
                scram.set_server_final(challenge.decode())  # proves the server knew the key
                return b""

    return step


def test_authenticate_scram_sha_256(mail: MailServer) -> None:
    host, port = mail.address()
    client = imapclient.IMAPClient(host, port, ssl=False, timeout=TIMEOUT)
    client.sasl_login("SCRAM-SHA-256", scram_mechanism(BOB, PASSWORD))
    assert b"INBOX" in [name.encode() for _, _, name in client.list_folders()]
    client.logout()


def test_scram_wrong_password(mail: MailServer) -> None:
    host, port = mail.address()
    client = imapclient.IMAPClient(host, port, ssl=False, timeout=TIMEOUT)
    with pytest.raises(imapclient.exceptions.LoginError):
        client.sasl_login("SCRAM-SHA-256", scram_mechanism(BOB, "wrong"))
    client.logout()


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def test_scram_with_authzid_equal_to_the_user(mail: MailServer) -> None:
    # Written out by hand: scramp cannot send an authzid.  RFC 5802 §5.1 allows "a=" and a
    # server should accept the one identity it would derive anyway.
    raw = mail.raw(login=False)
    gs2, first_bare = f"n,a={BOB},", f"n={BOB},r=fyko+d2lbbFgONRv9qkxdawL"
    raw.send(b"a AUTHENTICATE SCRAM-SHA-256 " + b64(gs2 + first_bare) + b"\r\n")
    challenge = raw.response()
    assert challenge.startswith(b"+ "), challenge
    server_first = base64.b64decode(challenge[2:]).decode()
    attrs = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        "sha256", PASSWORD.encode(), base64.b64decode(attrs["s"]), int(attrs["i"])
    )
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    without_proof = f"c={b64(gs2).decode()},r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
    proof = base64.b64encode(bytes(k ^ s for k, s in zip(client_key, signature, strict=True)))
    raw.send(b64(f"{without_proof},p={proof.decode()}") + b"\r\n")
    server_final = raw.response()
    assert server_final.startswith(b"+ "), server_final
    raw.send(b"\r\n")
    assert raw.response().startswith(b"a OK"), "logged in"


def test_starttls_then_login(mail: MailServer) -> None:
    host, port = mail.address("imap")
    client = imapclient.IMAPClient(host, port, ssl=False, timeout=TIMEOUT)
    assert b"STARTTLS" in client.capabilities()
    client.starttls(unverified_tls())
    # RFC 9051 §6.2.1: capabilities are asked again after TLS; STARTTLS is gone.
    assert b"STARTTLS" not in client.capabilities()
    client.login(BOB, PASSWORD)
    client.select_folder("INBOX")
    client.logout()


def test_implicit_tls(mail: MailServer) -> None:
    client = mail.client(listener="imaps")
    sock = client.socket()
    assert isinstance(sock, ssl.SSLSocket)
    assert sock.version() in {"TLSv1.2", "TLSv1.3"}
    assert b"STARTTLS" not in client.capabilities()


def edit_config(data_dir: Path, setting: str, value: str) -> None:
    """Set one `name = value` line of DATA/postoffice.toml (`init` writes every setting)."""
    config = data_dir / "postoffice.toml"
    text, count = re.subn(rf"(?m)^{setting} = .*$", f"{setting} = {value}", config.read_text())
    assert count == 1, setting
    config.write_text(text)


def test_logindisabled_outside_plaintext_networks(
    cli: Cli, data_dir: Path, start_serve: StartServe
) -> None:
    # Loopback is a plaintext network by default; with none, it is treated like the world.
    edit_config(data_dir, "plaintext_networks", "[]")
    cli.ok("user", "add", BOB, "--password", PASSWORD)
    serve = start_serve()
    raw = RawImap(serve.address("imap"))
    assert b"LOGINDISABLED" in raw.greeting
    assert b"AUTH=" not in raw.greeting
    _, done = raw.command("a", f"LOGIN {BOB} {PASSWORD}")
    assert done.startswith(b"a NO [PRIVACYREQUIRED]"), done
    raw.close()
    host, port = serve.address("imap")
    client = imapclient.IMAPClient(host, port, ssl=False, timeout=TIMEOUT)
    client.starttls(unverified_tls())
    assert b"LOGINDISABLED" not in client.capabilities()
    client.login(BOB, PASSWORD)
    client.logout()
    assert serve.stop() == 0


def test_wrong_password(mail: MailServer) -> None:
    raw = mail.raw(login=False)
    _, done = raw.command("a", f'LOGIN {BOB} "not it"')
    assert done.startswith(b"a NO [AUTHENTICATIONFAILED]"), done
    raw.login()  # the connection stays usable


# -- mailboxes -------------------------------------------------------------------------------


def test_list_special_use(mail: MailServer) -> None:
    client = mail.client(select=None)
    roles = {name: set(flags) for flags, _, name in client.list_folders()}
    assert "INBOX" in roles
    for role in (b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk", b"\\Archive"):
        name = client.find_special_folder(role)
        assert name is not None, role
        assert role in roles[name]


def test_create_rename_delete_subscribe(mail: MailServer) -> None:
    client = mail.client(select=None)
    client.create_folder("Projects/2024")
    client.subscribe_folder("Projects/2024")
    assert "Projects/2024" in [name for _, _, name in client.list_sub_folders()]
    client.rename_folder("Projects/2024", "Projects/Done")
    names = [name for _, _, name in client.list_folders()]
    assert "Projects/Done" in names
    assert "Projects/2024" not in names
    flags = {name: flags for flags, _, name in client.list_folders()}
    assert b"\\HasChildren" in flags["Projects"]
    client.unsubscribe_folder("Projects/Done")
    assert "Projects/Done" not in [name for _, _, name in client.list_sub_folders()]
    client.delete_folder("Projects/Done")
    assert not client.folder_exists("Projects/Done")
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="NONEXISTENT"):
        client.select_folder("Projects/Done")


def test_non_ascii_mailbox_name(mail: MailServer) -> None:
    client = mail.client(select=None)
    client.create_folder("Entwürfe")  # imapclient sends modified UTF-7 (RFC 3501 §5.1.3)
    assert "Entwürfe" in [name for _, _, name in client.list_folders()]
    client.append("Entwürfe", wire(text_message("umlaut")))
    assert client.folder_status("Entwürfe", [b"MESSAGES"])[b"MESSAGES"] == 1


# -- messages in, messages out ---------------------------------------------------------------


def test_append_then_fetch_byte_exact(mail: MailServer) -> None:
    client = mail.client()
    body = multipart_message()
    when = dt.datetime(2023, 12, 24, 18, 30, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    response = client.append("INBOX", body, flags=[b"\\Flagged", b"$Work"], msg_time=when)
    [uid] = uid_of(response, "APPENDUID")
    fetched = client.fetch([uid], ["BODY.PEEK[]", "RFC822.SIZE", "INTERNALDATE", "FLAGS"])[uid]
    assert fetched[b"BODY[]"] == body
    assert fetched[b"RFC822.SIZE"] == len(body)
    # imapclient gives INTERNALDATE as naive local time; compare the instant.
    assert fetched[b"INTERNALDATE"].astimezone(UTC) == when.astimezone(UTC)
    # \Recent: this session appended it (RFC 3501 §2.3.2; gone in IMAP4rev2).
    assert flag_set(fetched[b"FLAGS"]) == {b"\\Flagged", b"$Work"}
    assert b"\\Seen" not in client.get_flags([uid])[uid], "PEEK must not set \\Seen"


def test_internaldate_keeps_the_zone(mail: MailServer) -> None:
    client = mail.client(select=None)
    raw = mail.raw()
    when = dt.datetime(2023, 12, 24, 18, 30, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    client.append("INBOX", b"Subject: x\r\n\r\nx\r\n", msg_time=when)
    raw.ok("s", "SELECT INBOX")
    lines = raw.ok("f", "FETCH 1 INTERNALDATE")
    assert lines == [b'* 1 FETCH (INTERNALDATE "24-Dec-2023 18:30:05 -0500")\r\n']


def test_smtp_delivery_appears_in_inbox(mail: MailServer) -> None:
    client = mail.client()
    mail.deliver(text_message("By SMTP", "Delivered over SMTP.\n"))
    client.noop()
    [uid] = client.search(["SUBJECT", "By SMTP"])
    fetched = client.fetch([uid], ["BODY.PEEK[]", "RFC822.SIZE"])[uid]
    stored = fetched[b"BODY[]"]
    assert fetched[b"RFC822.SIZE"] == len(stored)
    assert stored.startswith(
        b"Delivered-To: bob@example.test\r\nReturn-Path: <alice@other.test>\r\n"
    ), stored[:200]
    assert b"\r\nReceived: from " in stored
    assert stored.endswith(b"\r\n\r\nDelivered over SMTP.\r\n")


def appended_multipart(client: imapclient.IMAPClient) -> int:
    [uid] = uid_of(client.append("INBOX", multipart_message()), "APPENDUID")
    return uid


def test_fetch_envelope(mail: MailServer) -> None:
    client = mail.client()
    uid = appended_multipart(client)
    envelope = client.fetch([uid], ["ENVELOPE"])[uid][b"ENVELOPE"]
    assert envelope.subject == b"Quarterly report"
    assert envelope.date.astimezone(UTC) == dt.datetime(2024, 1, 3, 9, 11, 12, tzinfo=UTC)
    [sender] = envelope.from_
    assert (sender.name, sender.mailbox, sender.host) == (b"Alice Example", b"alice", b"other.test")
    assert envelope.sender == envelope.reply_to == envelope.from_  # RFC 9051 §7.5.2 defaults
    [to] = envelope.to
    assert (to.name, to.mailbox, to.host) == (b"Bob", b"bob", b"example.test")
    assert envelope.cc is None
    assert envelope.message_id == b"<report-1@other.test>"


def test_fetch_bodystructure(mail: MailServer) -> None:
    raw = mail.raw()
    mail.client(select=None).append("INBOX", multipart_message())
    raw.ok("s", "SELECT INBOX")
    encoded_size = len(base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n")) - len(b"\r\n")
    text_lines = TEXT_PART.count("\r\n") + 1
    [line] = raw.ok("f", "FETCH 1 BODYSTRUCTURE")
    expected = (
        b"* 1 FETCH (BODYSTRUCTURE ("
        b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" %d %d NIL NIL NIL NIL)'
        b'("APPLICATION" "OCTET-STREAM" ("NAME" "data.bin") NIL NIL "BASE64" %d NIL'
        b' ("ATTACHMENT" ("FILENAME" "data.bin")) NIL NIL)'
        b' "MIXED" ("BOUNDARY" "XYZ") NIL NIL NIL))\r\n'
    ) % (len(TEXT_PART), text_lines, encoded_size)
    assert line.upper() == expected.upper()


def test_fetch_sections_partial_and_header_fields(mail: MailServer) -> None:
    client = mail.client()
    uid = appended_multipart(client)
    fetched = client.fetch(
        [uid],
        [
            "BODY.PEEK[1]",
            "BODY.PEEK[1]<6.3>",
            "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]",
            "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT FROM TO DATE MESSAGE-ID)]",
            "BODY.PEEK[2.MIME]",
        ],
    )[uid]
    assert fetched[b"BODY[1]"] == TEXT_PART.encode()
    assert fetched[b"BODY[1]<6>"] == b"Bob"
    # RFC 9051 §6.4.5: the fields in message order, then the blank line.
    assert fetched[b"BODY[HEADER.FIELDS (SUBJECT FROM)]"] == (
        b"From: Alice Example <alice@other.test>\r\nSubject: Quarterly report\r\n\r\n"
    )
    assert fetched[b"BODY[HEADER.FIELDS.NOT (SUBJECT FROM TO DATE MESSAGE-ID)]"] == (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XYZ"\r\n\r\n'
    )
    assert fetched[b"BODY[2.MIME]"].startswith(b"Content-Type: application/octet-stream;")
    assert fetched[b"BODY[2.MIME]"].endswith(b"\r\n\r\n")


def test_fetch_binary(mail: MailServer) -> None:
    uid = appended_multipart(mail.client())
    # imapclient cannot read the literal8 (`~{n}`) that BINARY answers with.
    raw = mail.raw()
    raw.ok("s", "SELECT INBOX")
    # RFC 3516: the server undoes the base64 transfer encoding.
    [line] = raw.ok("f", f"UID FETCH {uid} (BINARY.SIZE[2] BINARY.PEEK[2] BINARY.PEEK[2]<250.10>)")
    # literal8 is needed for NULs only; the last six bytes may come as a plain literal.
    assert re.fullmatch(
        rb"\* 1 FETCH \(UID %d BINARY.SIZE\[2\] 256 BINARY\[2\] ~\{256\}\r\n%b"
        rb" BINARY\[2\]<250> ~?\{6\}\r\n%b\)\r\n"
        % (uid, re.escape(ATTACHMENT), re.escape(ATTACHMENT[250:])),
        line,
    ), line


def test_fetch_without_peek_sets_seen(mail: MailServer) -> None:
    client = mail.client()
    uid = appended_multipart(client)
    fetched = client.fetch([uid], ["BODY[1]"])[uid]
    assert b"\\Seen" in fetched[b"FLAGS"]  # RFC 9051 §6.4.5: FLAGS come unasked


# -- search, sort, thread --------------------------------------------------------------------


@pytest.fixture
def three(mail: MailServer) -> tuple[imapclient.IMAPClient, list[int]]:
    """Bob's INBOX with three messages (a thread of two, one other) and their UIDs."""
    client = mail.client()
    messages = [
        (
            text_message("Lunch plans", "Pizza on friday?\n", Message_ID="<a@x>"),
            dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC),
        ),
        (
            text_message(
                "Re: Lunch plans",
                "Sure, at noon.\n",
                sender="Carol <carol@elsewhere.test>",
                date="Sat, 02 Mar 2024 08:00:00 +0000",
                Message_ID="<b@x>",
                In_Reply_To="<a@x>",
                References="<a@x>",
            ),
            dt.datetime(2024, 3, 2, 8, 0, tzinfo=UTC),
        ),
        (
            text_message(
                "Annual meeting", "Agenda attached.\n", date="Mon, 01 Jan 2024 08:00 +0000"
            ),
            dt.datetime(2024, 1, 1, 8, 0, tzinfo=UTC),
        ),
    ]
    uids = [
        uid_of(client.append("INBOX", wire(m), msg_time=when), "APPENDUID")[0]
        for m, when in messages
    ]
    client.noop()
    return client, uids


def test_search(three: tuple[imapclient.IMAPClient, list[int]]) -> None:
    client, [lunch, reply, meeting] = three
    assert client.search(["FROM", "carol@elsewhere.test"]) == [reply]
    assert client.search(["SUBJECT", "lunch"]) == [lunch, reply]
    assert client.search(["TEXT", "noon"]) == [reply]
    assert client.search(["BODY", "agenda"]) == [meeting]
    assert client.search(["SINCE", dt.date(2024, 3, 1)]) == [lunch, reply]
    assert client.search(["BEFORE", dt.date(2024, 3, 1)]) == [meeting]
    assert client.search(["SENTBEFORE", dt.date(2024, 3, 2)]) == [lunch, meeting]
    client.add_flags([lunch], [b"\\Seen"])
    assert client.search(["UNSEEN"]) == [reply, meeting]
    assert client.search(["UID", f"{reply}:*"]) == [reply, meeting]
    assert client.search(["UID", f"{lunch},{meeting}", "UNSEEN"]) == [meeting]
    assert client.search(["NOT", "SUBJECT", "lunch", "OR", "SEEN", "FROM", "alice"]) == [meeting]


def test_search_by_sequence_numbers(three: tuple[imapclient.IMAPClient, list[int]]) -> None:
    client, _ = three
    client.use_uid = False
    assert client.search(["2:*"]) == [2, 3]
    assert client.search(["SUBJECT", "lunch"]) == [1, 2]


def test_sort(three: tuple[imapclient.IMAPClient, list[int]]) -> None:
    client, [lunch, reply, meeting] = three
    # RFC 5256 §2.1: the base subject drops "Re:"; ties fall back to sequence order.
    assert client.sort(["SUBJECT"]) == [meeting, lunch, reply]
    assert client.sort(["DATE"]) == [meeting, lunch, reply]
    assert client.sort(["REVERSE", "ARRIVAL"]) == [reply, lunch, meeting]  # INTERNALDATE
    assert client.sort(["FROM"], ["SUBJECT", "lunch"]) == [lunch, reply]


def test_thread(three: tuple[imapclient.IMAPClient, list[int]]) -> None:
    client, [lunch, reply, meeting] = three
    threads = client.thread("REFERENCES")
    assert sorted(threads) == sorted([(lunch, reply), (meeting,)])
    assert sorted(client.thread("ORDEREDSUBJECT")) == sorted([(lunch, reply), (meeting,)])


# -- flags, copy, move, expunge --------------------------------------------------------------


def test_store_flags_and_keywords(
    three: tuple[imapclient.IMAPClient, list[int]], mail: MailServer
) -> None:
    client, [lunch, reply, _] = three
    added = client.add_flags([lunch, reply], [b"\\Answered", b"$Important"])
    assert flag_set(added[lunch]) == flag_set(added[reply]) == {b"\\Answered", b"$Important"}
    client.remove_flags([reply], [b"$Important"])
    client.set_flags([lunch], [b"\\Seen", b"Later"])
    # A new session sees what the first one stored.
    other = mail.client()
    flags = other.get_flags([lunch, reply])
    assert flag_set(flags[lunch]) == {b"\\Seen", b"Later"}
    assert flag_set(flags[reply]) == {b"\\Answered"}
    assert other.search(["KEYWORD", "Later"]) == [lunch]


def test_copy_and_move_report_copyuid(
    three: tuple[imapclient.IMAPClient, list[int]], mail: MailServer
) -> None:
    client, [lunch, reply, meeting] = three
    client.create_folder("Archive/2024")
    # imapclient drops the tagged response's code, so COPYUID is read on a raw connection.
    raw = mail.raw()
    raw.ok("s", "SELECT INBOX")
    _, copied = raw.command("c", f'UID COPY {lunch},{reply} "Archive/2024"')
    assert uid_of(copied, "COPYUID") == [1, 2]
    lines = raw.ok("m", f'UID MOVE {meeting} "Archive/2024"')
    # RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGE.
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ %d 3\].*\r\n" % meeting, lines[0]), lines
    assert lines[1:] == [b"* 3 EXPUNGE\r\n"]
    client.noop()
    assert client.search() == [lunch, reply]
    assert client.folder_status("Archive/2024", [b"MESSAGES"])[b"MESSAGES"] == 3
    _, done = raw.command("c", 'COPY 1 "No such box"')
    assert done.startswith(b"c NO [TRYCREATE]"), done


def test_expunge_and_uid_expunge(three: tuple[imapclient.IMAPClient, list[int]]) -> None:
    client, [lunch, reply, meeting] = three
    client.add_flags([lunch, reply, meeting], [b"\\Deleted"])
    client.uid_expunge([reply])  # RFC 4315 §2.1: only this one, though all are \Deleted
    assert client.search() == [lunch, meeting]
    _, responses = client.expunge()
    # Either order is right ("* 2" then "* 1", or "* 1" twice); replay them to be sure.
    left = [lunch, meeting]
    for seq, what in responses:
        assert what == b"EXPUNGE"
        del left[seq - 1]
    assert left == []
    assert client.search() == []


# -- CONDSTORE / QRESYNC ---------------------------------------------------------------------


def modseq_of(line: bytes, code: str = "HIGHESTMODSEQ") -> int:
    match = re.search(rb"\[" + code.encode() + rb" (\d+)\]", line)
    assert match, line
    return int(match[1])


def test_condstore_changedsince(
    three: tuple[imapclient.IMAPClient, list[int]], mail: MailServer
) -> None:
    client, [_, reply, _] = three
    client.unselect_folder()  # ENABLE is for the authenticated state
    client.enable("CONDSTORE")
    before = client.select_folder("INBOX")[b"HIGHESTMODSEQ"]
    client.add_flags([reply], [b"\\Flagged"])
    changed = client.fetch(three[1], ["FLAGS"], modifiers=[f"CHANGEDSINCE {before}"])
    assert list(changed) == [reply]
    assert changed[reply][b"MODSEQ"][0] > before
    # RFC 7162 §3.1.3: UNCHANGEDSINCE refuses a store that would overwrite a newer change.
    raw = mail.raw()
    raw.ok("s", "SELECT INBOX (CONDSTORE)")
    _, done = raw.command("u", f"UID STORE {reply} (UNCHANGEDSINCE {before}) +FLAGS (\\Seen)")
    assert done.startswith(b"u OK [MODIFIED %d]" % reply), done
    assert b"\\Seen" not in client.get_flags([reply])[reply]
    assert client.search(["MODSEQ", str(before + 1)]) == [reply]


def test_qresync_vanished_earlier(
    three: tuple[imapclient.IMAPClient, list[int]], mail: MailServer
) -> None:
    client, [lunch, reply, _] = three
    raw = mail.raw()
    raw.ok("e", "ENABLE QRESYNC")
    selected = raw.ok("s", "SELECT INBOX")
    validity = modseq_of(b"".join(selected), "UIDVALIDITY")
    modseq = modseq_of(b"".join(selected))
    raw.ok("u", "UNSELECT")
    client.add_flags([reply], [b"\\Deleted"])
    client.add_flags([lunch], [b"\\Seen"])
    client.expunge()
    lines = raw.ok("q", f"SELECT INBOX (QRESYNC ({validity} {modseq}))")
    assert b"* VANISHED (EARLIER) %d\r\n" % reply in lines, lines
    changed = [line for line in lines if b" FETCH " in line]
    assert len(changed) == 1
    assert re.match(rb"\* 1 FETCH \(.*UID %d" % lunch, changed[0]), changed
    assert b"\\Seen" in changed[0]


# -- IDLE ------------------------------------------------------------------------------------


def wait_in_idle(client: imapclient.IMAPClient, wanted: bytes) -> list[Any]:
    """IDLE responses until one whose keyword is `wanted`, for at most 2 x IDLE_LATENCY."""
    seen: list[Any] = []
    deadline = time.monotonic() + 2 * IDLE_LATENCY
    while (left := deadline - time.monotonic()) > 0:
        seen += client.idle_check(timeout=left)
        if any(len(r) > 1 and r[1] == wanted for r in seen):
            return seen
    raise AssertionError(f"no {wanted!r} while idling; got {seen}")


def test_idle_sees_append_from_another_session(mail: MailServer) -> None:
    idler = mail.client()
    other = mail.client(select=None)
    idler.idle()
    start = time.monotonic()
    other.append("INBOX", wire(text_message("ping")))
    seen = wait_in_idle(idler, b"EXISTS")
    elapsed = time.monotonic() - start
    idler.idle_done()
    assert (1, b"EXISTS") in seen
    assert elapsed < IDLE_LATENCY, f"EXISTS took {elapsed:.3f}s"


def test_idle_sees_smtp_delivery(mail: MailServer) -> None:
    idler = mail.client()
    idler.idle()
    start = time.monotonic()
    mail.deliver(text_message("delivered while idling"))
    seen = wait_in_idle(idler, b"EXISTS")
    elapsed = time.monotonic() - start
    idler.idle_done()
    assert (1, b"EXISTS") in seen
    assert elapsed < IDLE_LATENCY, f"EXISTS took {elapsed:.3f}s (including the SMTP session)"


def test_idle_sees_expunge_and_flags(
    three: tuple[imapclient.IMAPClient, list[int]], mail: MailServer
) -> None:
    idler, [_, reply, _] = three
    other = mail.client()
    idler.idle()
    start = time.monotonic()
    other.add_flags([reply], [b"\\Deleted"])
    other.expunge()
    seen = wait_in_idle(idler, b"EXPUNGE")
    elapsed = time.monotonic() - start
    idler.idle_done()
    assert (2, b"EXPUNGE") in seen
    assert elapsed < IDLE_LATENCY, f"EXPUNGE took {elapsed:.3f}s"
    assert any(r[1] == b"FETCH" and r[0] == 2 for r in seen), "the \\Deleted flag change"
    assert idler.search() == [uid for uid in three[1] if uid != reply]


# -- COMPRESS, quota -------------------------------------------------------------------------


def test_compress_deflate(mail: MailServer) -> None:
    mail.client(select=None).append("INBOX", multipart_message())
    raw = mail.raw()
    raw.ok("z", "COMPRESS DEFLATE")
    raw.start_compression()
    lines = raw.ok("s", "SELECT INBOX")
    assert b"* 1 EXISTS\r\n" in lines
    [fetched] = raw.ok("f", "FETCH 1 BODY.PEEK[]")
    assert fetched.endswith(multipart_message() + b")\r\n")
    # RFC 4978 §3: once active, it is not offered or accepted again.
    [caps] = raw.ok("c", "CAPABILITY")
    assert b"COMPRESS=DEFLATE" not in caps
    _, done = raw.command("z2", "COMPRESS DEFLATE")
    assert done.startswith((b"z2 NO [COMPRESSIONACTIVE]", b"z2 BAD")), done


def test_corrupt_compressed_stream_ends_the_session(mail: MailServer) -> None:
    raw = mail.raw()
    raw.ok("z", "COMPRESS DEFLATE")
    raw.start_compression()
    raw.sock.sendall(b"\xff" * 64)  # not a DEFLATE stream: reserved block type 3
    assert raw.response() == b"* BYE Invalid compressed data\r\n"


def test_idle_ends_with_bye_when_the_server_stops(mail: MailServer) -> None:
    raw = mail.raw()
    raw.ok("s", "SELECT INBOX")
    raw.send(b"i IDLE\r\n")
    assert raw.response().startswith(b"+ ")
    mail.serve.proc.send_signal(signal.SIGTERM)
    # The idle wait ends at once, not after the 30-minute autologout.
    assert raw.response() == b"* BYE Server shutting down\r\n"
    # Waited for here: a second SIGTERM from the fixture while the process exits (its
    # handlers gone) would kill it with -15 instead of the clean exit this test expects.
    assert mail.serve.proc.wait(30) == 0


def test_autologout(data_dir: Path, start_serve: StartServe) -> None:
    edit_config(data_dir, "imap_idle_seconds", "0.5")
    raw = RawImap(start_serve().address("imap"))
    # RFC 9051 §5.4: the server may log out an idle client, with a BYE saying why.
    assert raw.response() == b"* BYE Autologout; idle for too long\r\n"
    raw.close()


def test_quota(mail: MailServer) -> None:
    client = mail.client(CAROL, select=None)
    roots, quotas = client.get_quota_root("INBOX")
    assert roots.quota_roots
    storage = {q.resource: q for q in quotas}["STORAGE"]
    assert (storage.usage, storage.limit) == (0, 1024)  # KiB, RFC 9208 §5.1
    client.append("INBOX", b"Subject: big\r\n\r\n" + b"x" * 300_000 + b"\r\n")
    _, quotas = client.get_quota_root("INBOX")
    assert {q.resource: q for q in quotas}["STORAGE"].usage >= 290
    big = b"Subject: too big\r\n\r\n" + b"x" * 800_000 + b"\r\n"
    with pytest.raises(imapclient.exceptions.IMAPClientError, match="OVERQUOTA"):
        client.append("INBOX", big)
    assert client.folder_status("INBOX", [b"MESSAGES"])[b"MESSAGES"] == 1


def test_no_quota_root_without_a_quota(mail: MailServer) -> None:
    roots, quotas = mail.client(select=None).get_quota_root("INBOX")
    assert (roots.quota_roots, quotas) == ([], [])


# -- errors ----------------------------------------------------------------------------------


def test_bad_commands_leave_the_session_usable(mail: MailServer) -> None:
    raw = mail.raw()
    for tag, text in [
        ("a", "FROBNICATE"),
        ("b", "SELECT"),
        ("c", 'SELECT "unterminated'),
        ("d", "FETCH 1 (BODY[)"),
    ]:
        _, done = raw.command(tag, text)
        assert done.startswith(f"{tag} BAD".encode()), done
    raw.ok("e", "SELECT INBOX")
    raw.ok("f", "NOOP")


def test_too_long_line(data_dir: Path, start_serve: StartServe) -> None:
    edit_config(data_dir, "command_line_length", "1024")
    raw = RawImap(start_serve().address("imap"))
    # Just under the limit the line is parsed (and refused for its argument), not cut off.
    _, done = raw.command("a", "NOOP " + "x" * 1000)
    assert done.startswith(b"a BAD") and b"TOOBIG" not in done, done
    _, done = raw.command("b", "NOOP " + "x" * 1100)
    assert done.startswith((b"b BAD [TOOBIG]", b"* BAD [TOOBIG]")), done
    raw.ok("c", "NOOP")
    raw.close()


def test_too_large_literal_refused_before_continuation(mail: MailServer) -> None:
    raw = mail.raw()
    # RFC 7888 §4 / RFC 9051 §7.1: NO [TOOBIG] instead of the `+`, so nothing is sent.
    lines, done = raw.command("a", "APPEND INBOX {60000000}")
    assert lines == []
    assert done.startswith(b"a NO [TOOBIG]"), done
    lines, done = raw.command("b", "LOGIN {5000000}")
    assert (lines, done[:13]) == ([], b"b NO [TOOBIG]"), (lines, done)
    raw.ok("c", "NOOP")


def test_too_large_non_synchronizing_literal_ends_the_session(mail: MailServer) -> None:
    raw = mail.raw()
    size = 2 << 20  # over the 1M default for literals outside APPEND
    raw.send(b"a LOGIN {%d+}\r\n" % size + b"x" * size + b" y\r\nb NOOP\r\n")
    # RFC 7888 §4: the server cannot tell the rest of the command from a new one.
    lines: list[bytes] = []
    with contextlib.suppress(EOFError, ConnectionError):
        while True:
            lines.append(raw.response())
    assert len(lines) == 2, lines
    assert lines[0].startswith(b"a NO [TOOBIG]")
    assert lines[1].startswith(b"* BYE ")


@pytest.mark.parametrize(
    ("state", "command"),
    [
        ("not authenticated", "SELECT INBOX"),
        ("not authenticated", 'LIST "" *'),
        ("not authenticated", "IDLE"),
        ("authenticated", "FETCH 1 FLAGS"),
        ("authenticated", "EXPUNGE"),
        ("authenticated", f"LOGIN {BOB} {PASSWORD}"),
        ("authenticated", "STARTTLS"),
        ("selected", "AUTHENTICATE PLAIN"),
    ],
)
def test_commands_in_the_wrong_state(mail: MailServer, state: str, command: str) -> None:
    raw = mail.raw(login=state != "not authenticated")
    if state == "selected":
        raw.ok("s", "SELECT INBOX")
    _, done = raw.command("a", command)
    assert done.startswith(b"a BAD"), done
    raw.ok("b", "NOOP")
