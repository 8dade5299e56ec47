"""The listener layer every protocol front-end plugs into.

A front-end provides a `SessionHandler` factory and registers it under its listener name
(`server.default_registry`).  This module does the rest, once for all protocols: binding
(IPv4, IPv6, port 0, unix sockets), implicit TLS, connection limits with a protocol-specific
refusal, a session id and open/close log lines per connection, and graceful shutdown that
lets in-flight sessions finish within a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from postoffice.config import LISTENER_NAMES, ListenerConfig, TcpAddress, UnixAddress
from postoffice.context import Context
from postoffice.log import BoundLogger, new_session_id

BACKLOG = 1024
CLOSE_TIMEOUT = 5.0  # seconds to wait for a TLS close_notify before dropping the transport


class ListenError(Exception):
    """A listener could not be bound; str() names the listener and the address."""


@dataclass(slots=True, eq=False)
class Connection:
    """One accepted client, as a protocol session sees it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    listener: ListenerConfig
    session_id: str
    peer: str  # client IP address; "" on a unix socket
    log: BoundLogger  # already carries session, listener and peer
    # Set when the server is shutting down: a session should end at its next command
    # boundary (IMAP IDLE answers BYE, SMTP finishes the transaction and sends 421).
    stopping: asyncio.Event

    @property
    def tls(self) -> bool:
        return self.writer.get_extra_info("ssl_object") is not None


def discard_buffered(reader: asyncio.StreamReader) -> None:
    """Drop what the StreamReader has buffered but not yet handed out (before STARTTLS).

    asyncio offers no public way to do this; without it, cleartext that arrived just before
    the TLS handshake would be read as the first input after it (CVE-2011-0411).
    """
    buffered = getattr(reader, "_buffer", None)
    if isinstance(buffered, bytearray):
        buffered.clear()


class SessionHandler(Protocol):
    """A protocol front-end: one instance per listener, one `handle` call per connection."""

    async def handle(self, conn: Connection) -> None:
        """Run the whole session; the connection is closed (and logged) after it returns."""
        ...

    def refusal(self, reason: str) -> bytes:
        """Bytes sent to a client refused by a connection limit before it is disconnected,
        e.g. `421 4.7.0 <reason>` for SMTP or `* BYE <reason>` for IMAP."""
        ...


HandlerFactory = Callable[[Context, ListenerConfig], SessionHandler]


class ProtocolRegistry:
    """Listener name → handler factory; a listener without one is "not built yet"."""

    def __init__(self) -> None:
        self._factories: dict[str, HandlerFactory] = {}

    def register(self, name: str, factory: HandlerFactory) -> None:
        if name not in LISTENER_NAMES:
            raise ValueError(f"unknown listener {name!r} (known: {', '.join(LISTENER_NAMES)})")
        if name in self._factories:
            raise ValueError(f"listener {name!r} already has a handler")
        self._factories[name] = factory

    def get(self, name: str) -> HandlerFactory | None:
        return self._factories.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._factories


@dataclass(slots=True, eq=False)
class BoundListener:
    """The listening sockets of one listener, bound before any worker starts."""

    listener: ListenerConfig
    sockets: list[socket.socket]
    unix_path: Path | None = None  # removed by close()

    def addresses(self) -> list[str]:
        """The addresses actually bound (with the port the kernel picked for port 0)."""
        return [_format_sockname(s) for s in self.sockets]

    def close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    def close(self) -> None:
        self.close_sockets()
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)


def bind(listener: ListenerConfig, data_dir: Path) -> BoundListener:
    """Bind and listen; raises ListenError (address in use, no such host, ...)."""
    address = listener.address
    try:
        if isinstance(address, UnixAddress):
            path = data_dir / address.path
            return BoundListener(listener, [_bind_unix(path)], path)
        return BoundListener(listener, _bind_tcp(address))
    except OSError as e:
        reason = e.strerror or str(e)
        raise ListenError(f"cannot listen on {address} for {listener.name}: {reason}") from None


def _bind_tcp(address: TcpAddress) -> list[socket.socket]:
    # host "" means every interface: getaddrinfo then yields both 0.0.0.0 and ::.
    infos = socket.getaddrinfo(
        address.host or None,
        address.port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # Without it the :: socket would also claim IPv4 and collide with 0.0.0.0.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_unix(path: Path) -> socket.socket:
    if path.is_socket():
        # A socket file left by a server that died; refuse only if someone still answers.
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()
            else:
                raise OSError(f"{path} is in use by another server")
    elif path.exists():
        mode = stat.filemode(path.stat().st_mode)
        raise OSError(f"{path} exists and is not a socket ({mode})")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _format_sockname(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    return str(TcpAddress(name[0], name[1]))


@dataclass(slots=True, eq=False)
class _Listening:
    bound: BoundListener
    handler: SessionHandler
    servers: list[asyncio.Server] = field(default_factory=list)


class ListenerGroup:
    """The running listeners of one process, with its connection limits and sessions."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._log = ctx.logger("listeners")
        self._listening: list[_Listening] = []
        self._sessions: set[asyncio.Task[None]] = set()
        self._per_ip: dict[str, int] = {}
        self._open = 0
        self.stopping = asyncio.Event()

    @property
    def open_connections(self) -> int:
        return self._open

    async def start(self, listeners: Sequence[tuple[BoundListener, SessionHandler]]) -> None:
        for bound, handler in listeners:
            entry = _Listening(bound, handler)
            self._listening.append(entry)
            tls = self._ctx.tls if bound.listener.implicit_tls else None
            timeout = self._ctx.config.limits.tls_handshake_seconds if tls else None
            for sock in bound.sockets:
                server = await asyncio.start_server(
                    functools.partial(self._session, entry),
                    sock=sock,
                    ssl=tls,
                    ssl_handshake_timeout=timeout,
                    backlog=BACKLOG,
                )
                entry.servers.append(server)

    async def stop(self, grace: float, force: asyncio.Event | None = None) -> None:
        """Stop accepting, give sessions `grace` seconds (or until `force` is set) to end,
        then cancel the rest."""
        self.stopping.set()
        for entry in self._listening:
            for server in entry.servers:
                server.close()
        # Let connections accepted just before the close reach _session and be counted.
        await asyncio.sleep(0)
        if self._sessions:
            self._log.info("waiting for %d sessions to finish", len(self._sessions))
            drained = asyncio.ensure_future(self._drain())
            waiters: set[asyncio.Future[Any]] = {drained}
            if force is not None:
                waiters.add(asyncio.ensure_future(force.wait()))
            await asyncio.wait(waiters, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        if self._sessions:
            self._log.warning("cutting %d sessions after the grace period", len(self._sessions))
            for task in self._sessions:
                task.cancel()
            await asyncio.gather(*self._sessions, return_exceptions=True)

    async def _drain(self) -> None:
        while self._sessions:
            await asyncio.wait(set(self._sessions))

    async def _session(
        self, entry: _Listening, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # start_server runs each callback in a task of its own
        self._sessions.add(task)
        try:
            await self._serve(entry, reader, writer)
        finally:
            self._sessions.discard(task)

    async def _serve(
        self, entry: _Listening, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        listener = entry.bound.listener
        peer = _peer_ip(writer)
        refused = self._limit_reason(peer)
        if refused is not None:
            self._log.info(
                "connection refused: %s", refused, extra={"listener": listener.name, "peer": peer}
            )
            self._ctx.metrics.connections_refused[listener.name] += 1
            with contextlib.suppress(OSError):
                writer.write(entry.handler.refusal(refused))
            await _close(writer)
            return
        self._open += 1
        self._ctx.metrics.connection_opened(listener.name)
        self._per_ip[peer] = self._per_ip.get(peer, 0) + 1
        session_id = new_session_id()
        log = self._ctx.logger(listener.name, session=session_id, peer=peer or "unix")
        conn = Connection(reader, writer, listener, session_id, peer, log, self.stopping)
        loop = asyncio.get_running_loop()
        started = loop.time()
        log.info("connection open", extra={"tls": conn.tls})
        outcome = "closed"
        try:
            await entry.handler.handle(conn)
        except (OSError, asyncio.IncompleteReadError) as e:
            # The client went away or timed out (ssl errors are OSErrors too).
            outcome = f"lost ({type(e).__name__})"
        except asyncio.CancelledError:
            outcome = "cut at shutdown"
            raise
        except Exception:
            outcome = "failed"
            log.exception("session failed")
        finally:
            self._open -= 1
            self._ctx.metrics.connection_closed(listener.name)
            if self._per_ip[peer] == 1:
                del self._per_ip[peer]
            else:
                self._per_ip[peer] -= 1
            await _close(writer)
            duration_ms = round((loop.time() - started) * 1000)
            log.info("connection %s", outcome, extra={"duration_ms": duration_ms})

    def _limit_reason(self, peer: str) -> str | None:
        limits = self._ctx.config.limits
        if self.stopping.is_set():
            return "server shutting down"
        if self._open >= limits.max_connections:
            return "too many connections"
        # Unix sockets (peer "") are local hand-overs, never one client among many.
        if peer and self._per_ip.get(peer, 0) >= limits.max_connections_per_ip:
            return f"too many connections from {peer}"
        return None


def _peer_ip(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    # A vanished peer or one that never answers TLS close_notify must not hold us up.
    with contextlib.suppress(OSError):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)
