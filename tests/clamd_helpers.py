"""A real clamd for the antivirus tests, knowing one signature: the EICAR test file.

Debian's clamd runs in the foreground as the current user, with a generated clamd.conf, a
unix socket and a database folder in a temporary directory, and no freshclam: the only
signature is an MD5 one (.hdb) for EICAR, so it loads in about a second and needs no
network.  clamd still decodes MIME, so EICAR in a base64 attachment is found.

Two loopback TCP peers complete it: a pass-through to that clamd (clamd's TCP socket needs a
fixed port, tests use port 0 only) and a fake that answers what a healthy clamd never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CLAMD: Final = "/usr/sbin/clamd"
# The EICAR anti-virus test file (eicar.org): harmless, and detected by every scanner.
EICAR: Final = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE: Final = "Eicar-Test-Signature"
# How long clamd may take to load before the fixture gives up (loading takes ~1 s).
START_TIMEOUT: Final = 60.0


@dataclass(frozen=True, slots=True)
class RunningClamd:
    socket_path: Path
    log: Path

    @property
    def setting(self) -> str:
        """The `[antivirus] clamd` value that names it."""
        return f"unix:{self.socket_path}"


def clamd_available() -> bool:
    return shutil.which(CLAMD) is not None


def _answers_ping(path: Path) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(b"zPING\0")
        return sock.recv(16) == b"PONG\0"
    return False


@contextlib.contextmanager
def running_clamd(directory: Path) -> Iterator[RunningClamd]:
    """Start clamd in `directory` and stop it on exit."""
    database = directory / "db"
    database.mkdir(parents=True)
    (database / "test.hdb").write_text(
        f"{hashlib.md5(EICAR, usedforsecurity=False).hexdigest()}:{len(EICAR)}:{SIGNATURE}\n"
    )
    # A short path: a unix socket path is limited to ~107 bytes.
    socket_path = directory / "clamd.sock"
    log = directory / "clamd.log"
    config = directory / "clamd.conf"
    config.write_text(
        "Foreground yes\n"
        f"LocalSocket {socket_path}\n"
        f"DatabaseDirectory {database}\n"
        f"TemporaryDirectory {directory}\n"
        f"LogFile {log}\n"
    )
    process = subprocess.Popen(
        [CLAMD, "--config-file", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(socket_path):
            if process.poll() is not None or time.monotonic() > deadline:
                detail = log.read_text() if log.exists() else "(no log)"
                raise RuntimeError(f"clamd did not start:\n{detail}")
            time.sleep(0.1)
        yield RunningClamd(socket_path, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class FakeClamd:
    """A TCP peer on 127.0.0.1 that takes a whole INSTREAM, then sends `reply` and hangs up
    (or, with None, says nothing): for the answers a healthy clamd never gives."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.server: asyncio.Server | None = None

    async def start(self) -> FakeClamd:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def setting(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = b""
        # The test messages hold no four NULs, so these end the stream (the zero-length chunk).
        while not received.endswith(b"\0\0\0\0"):
            chunk = await reader.read(65536)
            if not chunk:
                break
            received += chunk
        if self.reply is None:
            await reader.read()  # until the client gives up waiting
        else:
            writer.write(self.reply)
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


class TcpToUnix:
    """127.0.0.1:PORT passed through to a unix socket: the real clamd reached over TCP."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server: asyncio.Server | None = None

    async def start(self) -> TcpToUnix:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def setting(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        clamd_reader, clamd_writer = await asyncio.open_unix_connection(self.path)
        await asyncio.gather(_pipe(reader, clamd_writer), _pipe(clamd_reader, writer))

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except OSError:
        pass  # the other side hung up; the exchange is over either way
    finally:
        writer.close()
