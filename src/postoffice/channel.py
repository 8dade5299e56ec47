"""The byte stream under a line-based protocol session (IMAP, POP3): input buffer, queued
output, timeouts and optional DEFLATE, kept apart from each protocol's state machine.

The session owns its input buffer rather than reading lines off the StreamReader: literals,
STARTTLS and COMPRESS=DEFLATE (RFC 4978) all need to know exactly which bytes have been
consumed.  Output is queued and written before each wait for input, so pipelined commands
are answered in one write.  A protocol turns the typed ends below into its own goodbye.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import weakref
import zlib
from collections.abc import Sequence
from typing import Final, Protocol

from postoffice.config import Network
from postoffice.listeners import Connection, discard_buffered

READ_SIZE: Final = 64 * 1024
HEAD: Final = 64  # bytes of an overlong line kept for the error reply


class Hangup(Exception):
    """The client closed the connection."""


class IdleTimeout(Exception):
    """No input for the protocol's idle time (the autologout timer)."""


class ServerStopping(Exception):
    """The server is shutting down and the session was waiting between commands."""


class LineTooLong(Exception):
    """A line over the limit; it has been read and thrown away up to its LF.  `head` is its
    start, so that the protocol can still name the command (an IMAP tag) in its answer."""

    def __init__(self, head: bytes) -> None:
        super().__init__(head)
        self.head = head


class BadCompressedData(Exception):
    """The client's DEFLATE stream is corrupt."""


class Channel:
    def __init__(self, conn: Connection, idle_seconds: float) -> None:
        self.conn = conn
        self.idle_seconds = idle_seconds
        self.buf = bytearray()
        self._out: list[bytes] = []
        self._out_size = 0
        self._timer: asyncio.Timeout | None = None
        self._inflate: zlib._Decompress | None = None
        self._deflate: zlib._Compress | None = None

    # -- output --------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    @property
    def queued(self) -> int:
        return self._out_size

    def write_now(self) -> None:
        """Hand queued output to the transport without waiting (from a synchronous callback)."""
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.conn.writer.write(data)

    async def flush(self) -> None:
        self.write_now()
        writer = self.conn.writer
        if not writer.transport.get_write_buffer_size():
            return
        # A client that never reads our output must not hold the session forever.
        async with asyncio.timeout(self.idle_seconds):
            await writer.drain()

    # -- input ---------------------------------------------------------------------------------

    async def fill(self, *, idle: bool) -> None:
        """Read more input into `buf`, writing queued output first.  `idle`: waiting between
        commands, where a server shutdown ends the wait at once (see `wake`)."""
        await self.flush()
        try:
            async with asyncio.timeout(self.idle_seconds) as timer:
                if idle:
                    if self.conn.stopping.is_set():
                        raise ServerStopping
                    self._timer = timer
                data = await self.conn.reader.read(READ_SIZE)
        except TimeoutError:
            raise ServerStopping if self.conn.stopping.is_set() and idle else IdleTimeout from None
        finally:
            self._timer = None
        if not data:
            raise Hangup
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error:
                raise BadCompressedData from None
        self.buf += data

    async def line(self, *, idle: bool, limit: int) -> bytes:
        """The next line with its LF; LineTooLong (after skipping it) when over `limit`."""
        while (end := self.buf.find(b"\n")) < 0:
            if len(self.buf) > limit:
                head = bytes(self.buf[:HEAD])
                while (end := self.buf.find(b"\n")) < 0:
                    self.buf.clear()
                    await self.fill(idle=False)
                del self.buf[: end + 1]
                raise LineTooLong(head)
            await self.fill(idle=idle and not self.buf)
        line = bytes(self.buf[: end + 1])
        del self.buf[: end + 1]
        if len(line) > limit:
            raise LineTooLong(line[:HEAD])
        return line

    async def exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            await self.fill(idle=False)
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    async def discard(self, size: int) -> None:
        while size > 0:
            if not self.buf:
                await self.fill(idle=False)
            taken = min(size, len(self.buf))
            del self.buf[:taken]
            size -= taken

    def wake(self) -> None:
        """The server is stopping: end a wait for the next command now."""
        timer = self._timer
        if timer is not None and not timer.expired():
            timer.reschedule(asyncio.get_running_loop().time())

    # -- transport changes ---------------------------------------------------------------------

    async def start_tls(self, context: ssl.SSLContext, handshake_seconds: float) -> None:
        """STARTTLS/STLS after the OK has been queued: input pipelined behind the command came
        in cleartext and is dropped (CVE-2011-0411)."""
        await self.flush()
        self.buf.clear()
        discard_buffered(self.conn.reader)
        await self.conn.writer.start_tls(
            context,
            ssl_handshake_timeout=handshake_seconds,
        )

    @property
    def compressed(self) -> bool:
        return self._deflate is not None

    async def start_deflate(self) -> None:
        """RFC 4978 §3: raw DEFLATE both ways from the next octet after the queued reply."""
        await self.flush()
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflate = zlib.decompressobj(-15)
        if self.buf:
            pending = bytes(self.buf)
            self.buf.clear()
            self.buf += self._inflate.decompress(pending)


class Wakeable(Protocol):
    def wake(self) -> None: ...


class LiveSessions:
    """A handler's running sessions, so that one task (not one per session) ends every
    wait for the next command when the server begins to stop."""

    def __init__(self) -> None:
        self._sessions: weakref.WeakSet[Wakeable] = weakref.WeakSet()
        self._watcher: asyncio.Task[None] | None = None

    def add(self, session: Wakeable, stopping: asyncio.Event) -> None:
        if self._watcher is None:
            self._watcher = asyncio.ensure_future(self._wake_on_stop(stopping))
        self._sessions.add(session)

    async def _wake_on_stop(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        for session in list(self._sessions):
            session.wake()


def plaintext_allowed(conn: Connection, networks: Sequence[Network]) -> bool:
    """DESIGN §7: may this client send a password over a connection without TLS?"""
    if not conn.peer:
        return False
    address = ipaddress.ip_address(conn.peer)
    return any(address in network for network in networks)
