"""The ManageSieve listener end to end (RFC 5804): Debian's sieve-connect, sievelib's client
and a raw line client against a real `postoffice serve`.

Covers the capability list (and its re-issue after STARTTLS), SASL PLAIN with an initial
response and through a continuation, SCRAM-SHA-256 with its `OK (SASL ...)`, every script
command and its response codes, the [sieve] limits, and what the server does with bad input.
"""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import scramp
from sievelib.managesieve import Client

from conftest import Cli, ServeProcess, StartServe, set_config
from postoffice.filters.sieve import SIEVE_EXTENSIONS
from test_imap_clients import unverified_tls

BOB = "bob@example.test"
CAROL = "carol@example.test"
PASSWORD = "correct-horse-7"
TIMEOUT = 10.0
SCRIPT = (
    'require "fileinto";\r\n'
    'if header :contains "subject" "[list]" {\r\n  fileinto "Lists";\r\n}\r\n'
)


class RawSieve:
    """One ManageSieve connection: lines and server literals, nothing interpreted."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock: socket.socket = socket.create_connection(address, timeout=TIMEOUT)
        self._buf = b""
        self.greeting = self.response()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self) -> bytes:
        while (end := self._buf.find(b"\r\n")) < 0:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"server closed the connection; unread: {self._buf!r}")
            self._buf += data
        line, self._buf = self._buf[: end + 2], self._buf[end + 2 :]
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self._buf) < size:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection inside a literal")
            self._buf += data
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def line(self) -> bytes:
        """One response line with any literal it ends in read inline."""
        line = self._line()
        if line.endswith(b"}\r\n") and b"{" in line:
            size = int(line[line.rindex(b"{") + 1 : -3])
            line += self._exactly(size) + self._line()
        return line

    def response(self) -> list[bytes]:
        """Lines up to and including the one that starts with OK, NO or BYE."""
        lines: list[bytes] = []
        while True:
            line = self.line()
            lines.append(line)
            if line.split(b" ", 1)[0].rstrip(b"\r\n") in (b"OK", b"NO", b"BYE"):
                return lines

    def command(self, text: bytes | str) -> list[bytes]:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.response()

    def last(self, text: bytes | str) -> bytes:
        """The status line of a command."""
        return self.command(text)[-1]

    def login(self, user: str = BOB, password: str = PASSWORD) -> None:
        plain = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        assert self.last(f'AUTHENTICATE "PLAIN" "{plain}"').startswith(b"OK")

    def starttls(self) -> list[bytes]:
        assert self.last("STARTTLS").startswith(b"OK")
        self.sock = unverified_tls().wrap_socket(self.sock)
        return self.response()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()


class SieveServer:
    def __init__(self, serve: ServeProcess, cli: Cli, cleanup: contextlib.ExitStack) -> None:
        self.serve = serve
        self.cli = cli
        self._cleanup = cleanup

    @property
    def address(self) -> tuple[str, int]:
        return self.serve.address("sieve")

    def raw(self) -> RawSieve:
        raw = RawSieve(self.address)
        self._cleanup.callback(raw.close)
        return raw

    def client(self, user: str = BOB) -> Client:
        client = Client(*self.address)
        # Loopback is a plaintext network: sievelib logs in without TLS and says so.
        with pytest.warns(UserWarning, match="unencrypted"):
            assert client.connect(user, PASSWORD, authmech="PLAIN")
        self._cleanup.callback(client.logout)
        return client


def capabilities(lines: list[bytes]) -> dict[str, str | None]:
    caps: dict[str, str | None] = {}
    for line in lines[:-1]:
        name, _, value = line.rstrip(b"\r\n").partition(b" ")
        caps[name.strip(b'"').decode()] = value.strip(b'"').decode() if value else None
    return caps


@pytest.fixture
def sieve(cli: Cli, data_dir: Path, start_serve: StartServe) -> Iterator[SieveServer]:
    cli.ok("user", "add", BOB, "--password", PASSWORD)
    cli.ok("user", "add", CAROL, "--password", PASSWORD)
    serve = start_serve()
    with contextlib.ExitStack() as cleanup:
        yield SieveServer(serve, cli, cleanup)
    assert serve.stop() == 0, "\n".join(serve.lines)


# -- sieve-connect -----------------------------------------------------------------------------


def sieve_connect(sieve: SieveServer, *args: str) -> subprocess.CompletedProcess[str]:
    host, port = sieve.address
    return subprocess.run(
        [
            "sieve-connect",
            "--nosrv",
            "--server",
            host,
            "--port",
            str(port),
            "--user",
            BOB,
            # Everything up to the newline before EOF is the password.
            "--passwordfd",
            "0",
            "--notlsverify",
            *args,
        ],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(shutil.which("sieve-connect") is None, reason="sieve-connect not installed")
def test_sieve_connect_upload_list_activate_download_delete(
    sieve: SieveServer, tmp_path: Path
) -> None:
    local = tmp_path / "lists.sieve"
    local.write_bytes(SCRIPT.encode())

    def ok(*args: str) -> str:
        result = sieve_connect(sieve, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    ok("--upload", "--localsieve", str(local), "--remotesieve", "lists")
    # The CLI's stdout is read as text: CRLF comes back as LF.
    assert sieve.cli.ok("sieve", "get", BOB, "lists") == SCRIPT.replace("\r\n", "\n")
    ok("--activate", "--remotesieve", "lists")
    assert ok("--list") == '"lists" ACTIVE\n'
    assert sieve.cli.ok("sieve", "list", BOB) == "lists  active\n"

    downloaded = tmp_path / "copy.sieve"
    ok("--download", "--remotesieve", "lists", "--localsieve", str(downloaded))
    assert downloaded.read_bytes() == SCRIPT.encode()

    ok("--deactivate")
    ok("--delete", "--remotesieve", "lists")
    assert sieve.cli.ok("sieve", "list", BOB) == ""


# -- sievelib ----------------------------------------------------------------------------------


def test_sievelib_every_command(sieve: SieveServer) -> None:
    client = sieve.client()
    assert client.get_implementation() == "postoffice"
    assert client.get_sieve_capabilities() == list(SIEVE_EXTENSIONS)

    assert client.checkscript(SCRIPT)
    assert not client.checkscript("frobnicate;\r\n")
    assert b"line 1" in client.errmsg

    assert client.havespace("lists", len(SCRIPT))
    assert client.putscript("lists", SCRIPT)
    assert client.putscript("other", "keep;\r\n")
    assert client.listscripts() == (None, ["lists", "other"])
    # sievelib hands scripts back with LF line ends and no final one.
    assert client.getscript("lists") == SCRIPT.replace("\r\n", "\n").rstrip("\n")

    assert client.setactive("lists")
    assert client.listscripts() == ("lists", ["other"])
    assert not client.deletescript("lists")
    assert client.errcode == b"ACTIVE"

    assert client.renamescript("lists", "mailing-lists")
    assert client.listscripts() == ("mailing-lists", ["other"])
    assert not client.renamescript("other", "mailing-lists")
    assert client.errcode == b"ALREADYEXISTS"
    assert not client.getscript("lists")
    assert client.errcode == b"NONEXISTENT"

    assert client.setactive("")
    assert client.deletescript("mailing-lists")
    assert client.listscripts() == (None, ["other"])


def test_scripts_are_per_account(sieve: SieveServer) -> None:
    bob = sieve.client()
    assert bob.putscript("mine", "keep;\r\n")
    carol = sieve.client(CAROL)
    assert carol.listscripts() == (None, [])
    assert not carol.getscript("mine")


# -- raw protocol ------------------------------------------------------------------------------


def test_greeting_capabilities(sieve: SieveServer) -> None:
    raw = sieve.raw()
    caps = capabilities(raw.greeting)
    assert raw.greeting[-1].startswith(b"OK")
    assert caps["IMPLEMENTATION"] == "postoffice"
    assert caps["VERSION"] == "1.0"
    assert caps["SIEVE"] == " ".join(SIEVE_EXTENSIONS)
    assert caps["MAXREDIRECTS"] == "4"
    assert caps["SASL"] == "SCRAM-SHA-256 PLAIN LOGIN"
    assert "STARTTLS" in caps
    assert "OWNER" not in caps
    assert capabilities(raw.command("CAPABILITY")) == caps
    raw.login()
    after = capabilities(raw.command("CAPABILITY"))
    assert after["OWNER"] == BOB
    assert "SASL" not in after and "STARTTLS" not in after


def test_starttls_reissues_capabilities(sieve: SieveServer) -> None:
    raw = sieve.raw()
    caps = capabilities(raw.starttls())
    assert "STARTTLS" not in caps
    assert caps["SASL"] == "SCRAM-SHA-256 PLAIN LOGIN"
    raw.login()
    assert raw.last("LISTSCRIPTS").startswith(b"OK")
    assert raw.last("STARTTLS") == b'NO "STARTTLS is not available now"\r\n'


def test_starttls_drops_pipelined_cleartext(sieve: SieveServer) -> None:
    raw = sieve.raw()
    raw.send("STARTTLS\r\nLISTSCRIPTS\r\n")
    assert raw.response()[-1].startswith(b"OK")
    raw.sock = unverified_tls().wrap_socket(raw.sock)
    assert raw.response()[-1].startswith(b"OK")
    # The LISTSCRIPTS sent in cleartext was never run (it would have answered NO).
    assert raw.last("NOOP").startswith(b'OK "Done"')


def test_plain_through_a_continuation_and_cancel(sieve: SieveServer) -> None:
    raw = sieve.raw()
    raw.send('AUTHENTICATE "PLAIN"\r\n')
    # RFC 5804 §2.1: PLAIN's first challenge is empty.
    assert raw.line() == b'""\r\n'
    raw.send('"' + base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode() + '"\r\n')
    assert raw.response()[-1] == b'OK "Logged in"\r\n'

    other = sieve.raw()
    other.send('AUTHENTICATE "PLAIN"\r\n')
    assert other.line() == b'""\r\n'
    assert other.last('"*"') == b'NO "Authentication cancelled"\r\n'
    assert other.last("LISTSCRIPTS").startswith(b"NO")


def test_plain_continuation_as_a_literal(sieve: SieveServer) -> None:
    raw = sieve.raw()
    raw.send('AUTHENTICATE "PLAIN"\r\n')
    assert raw.line() == b'""\r\n'
    response = base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode())
    raw.send(b"{%d+}\r\n" % len(response) + response + b"\r\n")
    assert raw.response()[-1] == b'OK "Logged in"\r\n'


def test_wrong_password(sieve: SieveServer) -> None:
    raw = sieve.raw()
    plain = base64.b64encode(f"\0{BOB}\0wrong".encode()).decode()
    assert raw.last(f'AUTHENTICATE "PLAIN" "{plain}"') == b'NO "Authentication failed"\r\n'
    assert raw.last('AUTHENTICATE "CRAM-MD5"').startswith(b"NO")


def test_scram_sha_256_ends_with_sasl_response_code(sieve: SieveServer) -> None:
    client = scramp.ScramClient(["SCRAM-SHA-256"], BOB, PASSWORD)
    raw = sieve.raw()
    first = base64.b64encode(client.get_client_first().encode()).decode()
    raw.send(f'AUTHENTICATE "SCRAM-SHA-256" "{first}"\r\n')
    challenge = raw.line()
    client.set_server_first(base64.b64decode(challenge.strip(b'"\r\n')).decode())
    final = base64.b64encode(client.get_client_final().encode()).decode()
    done = raw.last(f'"{final}"')
    assert done.startswith(b'OK (SASL "'), done
    client.set_server_final(base64.b64decode(done.split(b'"')[1]).decode())
    assert raw.last("LISTSCRIPTS") == b'OK "Listscripts completed"\r\n'


def test_commands_before_login_are_refused(sieve: SieveServer) -> None:
    raw = sieve.raw()
    for command in ("LISTSCRIPTS", 'GETSCRIPT "x"', 'PUTSCRIPT "x" "keep;"', "UNAUTHENTICATE"):
        assert raw.last(command) == b'NO "Authenticate first"\r\n'
    assert raw.last('NOOP "t1"') == b'OK (TAG "t1") "Done"\r\n'


def test_putscript_literals_and_listscripts(sieve: SieveServer) -> None:
    raw = sieve.raw()
    raw.login()
    body = SCRIPT.encode()
    for marker in (b"{%d+}", b"{%d}"):
        reply = raw.last(b'PUTSCRIPT "lists" ' + marker % len(body) + b"\r\n" + body)
        assert reply == b'OK "Script stored"\r\n'
    assert raw.last('PUTSCRIPT "quoted" "keep;"') == b'OK "Script stored"\r\n'
    assert raw.last('SETACTIVE "lists"') == b'OK "Script activated"\r\n'
    assert raw.command("LISTSCRIPTS") == [
        b'"lists" ACTIVE\r\n',
        b'"quoted"\r\n',
        b'OK "Listscripts completed"\r\n',
    ]
    assert raw.command('GETSCRIPT "lists"') == [
        b"{%d}\r\n" % len(body) + body + b"\r\n",
        b'OK "Getscript completed"\r\n',
    ]


def test_response_codes(sieve: SieveServer) -> None:
    raw = sieve.raw()
    raw.login()
    raw.last('PUTSCRIPT "a" "keep;"')
    raw.last('PUTSCRIPT "b" "keep;"')
    raw.last('SETACTIVE "a"')
    assert raw.last('DELETESCRIPT "a"').startswith(b"NO (ACTIVE)")
    assert raw.last('DELETESCRIPT "zz"').startswith(b"NO (NONEXISTENT)")
    assert raw.last('SETACTIVE "zz"').startswith(b"NO (NONEXISTENT)")
    assert raw.last('RENAMESCRIPT "zz" "c"').startswith(b"NO (NONEXISTENT)")
    assert raw.last('RENAMESCRIPT "a" "b"').startswith(b"NO (ALREADYEXISTS)")
    assert raw.last('GETSCRIPT "zz"').startswith(b"NO (NONEXISTENT)")
    assert raw.last('PUTSCRIPT "bad\\\\name\x01" "keep;"').startswith(b"NO")
    reply = raw.last('PUTSCRIPT "broken" "if true {"')
    assert reply.startswith(b'NO "line 1'), reply
    assert raw.last('CHECKSCRIPT "keep;"') == b'OK "Script is valid"\r\n'
    assert raw.last('PUTSCRIPT "latin1" "caf\xe9"'.encode("latin-1")).startswith(b"NO")
    assert raw.last("UNAUTHENTICATE") == b'OK "Logged out"\r\n'
    assert raw.last("LISTSCRIPTS") == b'NO "Authenticate first"\r\n'


def test_limits(sieve: SieveServer, data_dir: Path, start_serve: StartServe) -> None:
    assert sieve.serve.stop() == 0
    set_config(data_dir, "sieve", "max_scripts", "2")
    set_config(data_dir, "sieve", "max_script_size", '"100"')
    sieve.serve = start_serve()
    raw = sieve.raw()
    raw.login()
    assert raw.last('HAVESPACE "a" 100') == b'OK "Putscript would succeed"\r\n'
    assert raw.last('HAVESPACE "a" 101').startswith(b"NO (QUOTA/MAXSIZE)")
    raw.last('PUTSCRIPT "a" "keep;"')
    raw.last('PUTSCRIPT "b" "keep;"')
    assert raw.last('HAVESPACE "c" 10').startswith(b"NO (QUOTA/MAXSCRIPTS)")
    assert raw.last('PUTSCRIPT "c" "keep;"').startswith(b"NO (QUOTA/MAXSCRIPTS)")
    assert raw.last('HAVESPACE "b" 10').startswith(b"OK")
    big = b"#" * 200 + b"\r\nkeep;\r\n"
    reply = raw.last(b'PUTSCRIPT "b" {%d+}\r\n' % len(big) + big)
    assert reply.startswith(b"NO (QUOTA/MAXSIZE)"), reply
    # The oversized literal was read and dropped: the session goes on.
    assert raw.last('GETSCRIPT "b"') == b'OK "Getscript completed"\r\n'
    # Other commands' literals get a script and a command line's worth.
    name = b"n" * 70_000
    assert raw.last(b"GETSCRIPT {%d+}\r\n" % len(name) + name) == b'NO "Literal too large"\r\n'


def test_bad_input(sieve: SieveServer) -> None:
    raw = sieve.raw()
    assert raw.last("FROBNICATE") == b'NO "Unknown command FROBNICATE"\r\n'
    assert raw.last('GETSCRIPT "unterminated').startswith(b"NO")
    assert raw.last("HAVESPACE").startswith(b"NO")
    assert raw.last("X" * 70_000) == b'NO "Command line too long"\r\n'
    # A refused command's literal is skipped, not run as the next command.
    assert raw.last(b"PUTSCRIPT bare {8+}\r\nLOGOUT\r\n").startswith(b"NO")
    assert raw.last("NOOP") == b'OK "Done"\r\n'


def test_too_many_bad_commands_end_the_session(sieve: SieveServer) -> None:
    raw = sieve.raw()
    for _ in range(20):
        assert raw.last("BOGUS").startswith(b"NO")
    assert raw.response() == [b'BYE "Too many invalid commands"\r\n']
    assert raw.closed()


def test_logout(sieve: SieveServer) -> None:
    raw = sieve.raw()
    assert raw.last("LOGOUT") == b'OK "Bye"\r\n'
    assert raw.closed()


def test_encrypt_needed_outside_plaintext_networks(
    cli: Cli, data_dir: Path, start_serve: StartServe
) -> None:
    cli.ok("user", "add", BOB, "--password", PASSWORD)
    set_config(data_dir, "auth", "plaintext_networks", "[]")
    serve = start_serve()
    with contextlib.ExitStack() as cleanup:
        server = SieveServer(serve, cli, cleanup)
        raw = server.raw()
        assert capabilities(raw.greeting)["SASL"] == ""
        plain = base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode()
        assert raw.last(f'AUTHENTICATE "PLAIN" "{plain}"').startswith(b"NO (ENCRYPT-NEEDED)")
        raw.starttls()
        raw.login()
    assert serve.stop() == 0
