"""The `http` listener's handler: HTTP/1.1 with keep-alive, calling the ASGI app per request.

Hand-written on h11 (sans-IO HTTP/1.1 parsing) because the listener layer hands over an
asyncio StreamReader/StreamWriter, and uvicorn only serves sockets it accepts itself (its
protocol classes are asyncio Protocols bound to a transport and its own server state).  A
small loop keeps the listener layer's limits, logs, TLS and graceful shutdown for HTTP too:

- request line + headers are bounded (MAX_HEAD, 431 beyond), the body by the configured
  message size plus room for form fields (413 beyond), malformed requests get 400;
- a connection idle longer than `limits.http_idle_seconds`, between or within requests, is
  closed; at shutdown the current response completes with `Connection: close`;
- the body is read whole before the app runs (bounded as above), so the app never waits
  on a slow client while holding store resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote

import h11
from starlette.types import Message

from postoffice.config import ListenerConfig
from postoffice.context import Context
from postoffice.listeners import Connection
from postoffice.web.app import SECURITY_HEADERS, build_app

MAX_HEAD: Final = 16 * 1024  # request line and headers, bytes
BODY_SLACK: Final = 1 << 20  # form fields around an uploaded message
READ_SIZE: Final = 64 * 1024


class _Closed(Exception):
    """The client went away, stayed idle too long, or the server is stopping."""


class _Refuse(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class HttpHandler:
    """A `listeners.SessionHandler` serving the web app over HTTP/1.1."""

    def __init__(self, ctx: Context, listener: ListenerConfig) -> None:
        self.app = build_app(ctx)
        self.idle_seconds = ctx.config.limits.http_idle_seconds
        self.max_body = ctx.config.limits.message_size + BODY_SLACK

    async def handle(self, conn: Connection) -> None:
        await _HttpSession(self, conn).run()

    def refusal(self, reason: str) -> bytes:
        return plain_response(503, reason)


def plain_response(status: int, text: str) -> bytes:
    """A complete `Connection: close` response, written without h11 (whose state may be
    an error state by then)."""
    body = f"{text}\r\n".encode()
    head = [
        f"HTTP/1.1 {status} {_phrase(status)}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name.decode()}: {value.decode()}" for name, value in SECURITY_HEADERS),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _HttpSession:
    def __init__(self, handler: HttpHandler, conn: Connection) -> None:
        self.handler = handler
        self.conn = conn
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)

    async def run(self) -> None:
        while True:
            try:
                request = await self._next_request()
                if request is None:
                    return
                body = await self._read_body(request)
            except _Closed:
                return
            except h11.RemoteProtocolError as e:
                await self._refuse(e.error_status_hint, str(e))
                return
            except _Refuse as e:
                await self._refuse(e.status, str(e))
                return
            if not await self._respond(request, body):
                return
            if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                return
            self.h11.start_next_cycle()

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self._receive())
            elif event is h11.PAUSED or isinstance(event, h11.Event):
                return event

    async def _receive(self) -> bytes:
        """The next bytes from the client (b"" at EOF); raises _Closed when it stays idle
        for too long or the server begins to stop."""
        read = asyncio.ensure_future(self.conn.reader.read(READ_SIZE))
        stop = asyncio.ensure_future(self.conn.stopping.wait())
        try:
            await asyncio.wait(
                {read, stop},
                timeout=self.handler.idle_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            stop.cancel()
            if not read.done():
                read.cancel()
        if not read.done() or read.cancelled():
            raise _Closed
        return read.result()

    async def _next_request(self) -> h11.Request | None:
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        # In state IDLE h11 yields nothing but a Request or ConnectionClosed.
        assert isinstance(event, h11.Request)
        # h11 bounds only a head still incomplete after a read; one read can bring it whole.
        size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
        if size > MAX_HEAD:
            raise _Refuse(431, f"request head over {MAX_HEAD} bytes")
        return event

    async def _read_body(self, request: h11.Request) -> bytes:
        length = _header(request.headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.handler.max_body:
            raise _Refuse(413, f"request body over {self.handler.max_body} bytes")
        if self.h11.client_is_waiting_for_100_continue:
            await self._write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.handler.max_body:
                    raise _Refuse(413, f"request body over {self.handler.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:  # ConnectionClosed mid-body
                raise _Closed

    async def _respond(self, request: h11.Request, body: bytes) -> bool:
        """Run the app for one request; False when the connection must close now."""
        conn = self.conn
        head_only = request.method == b"HEAD"
        started = False
        finished = asyncio.Event()
        body_taken = False
        status = 0

        async def receive() -> Message:
            nonlocal body_taken
            if not body_taken:
                body_taken = True
                return {"type": "http.request", "body": body, "more_body": False}
            # A streaming response listens for the client leaving; here that is the end.
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", [])]
                if conn.stopping.is_set():
                    headers.append((b"connection", b"close"))
                response = h11.Response(status_code=status, headers=headers, reason=_phrase(status))
                await self._write(self.h11.send(response))
            elif message["type"] == "http.response.body":
                chunk = bytes(message.get("body", b""))
                if chunk and not head_only:
                    await self._write(self.h11.send(h11.Data(data=chunk)))
                if not message.get("more_body", False):
                    await self._write(self.h11.send(h11.EndOfMessage()))
                    finished.set()

        scope = self._scope(request)
        try:
            await self.handler.app(scope, receive, send)
        except (OSError, TimeoutError):
            return False
        except Exception:
            conn.log.exception("request failed", extra={"path": scope["path"]})
            if not started:
                await self._write(plain_response(500, "internal error"))
            return False
        finally:
            finished.set()
        conn.log.info(
            "%s %s %d", scope["method"], scope["path"], status, extra={"bytes_in": len(body)}
        )
        if not started:
            await self._write(plain_response(500, "no response"))
            return False
        return True

    def _scope(self, request: h11.Request) -> dict[str, object]:
        raw_path, _, query = request.target.partition(b"?")
        writer = self.conn.writer
        peer = writer.get_extra_info("peername")
        sockname = writer.get_extra_info("sockname")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.http_version.decode("ascii"),
            "method": request.method.decode("ascii"),
            "scheme": "https" if self.conn.tls else "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": [(name, value) for name, value in request.headers],
            "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
            "server": tuple(sockname[:2]) if isinstance(sockname, tuple) else None,
            "state": {},
        }

    async def _refuse(self, status: int, reason: str) -> None:
        self.conn.log.info("request refused: %d %s", status, reason)
        # The reason may quote the client's bytes: it goes to the log, not back to the client.
        with contextlib.suppress(OSError, TimeoutError):
            await self._write(plain_response(status, _phrase(status)))

    async def _write(self, data: bytes | None) -> None:
        if not data:
            return
        writer = self.conn.writer
        writer.write(data)
        # A client that stops reading must not hold the session forever.
        await asyncio.wait_for(writer.drain(), self.handler.idle_seconds)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:  # a status code Python does not name
        return ""
