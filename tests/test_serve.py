"""`postoffice serve` and the listener layer under it.

The subprocess tests run the real console script.  The listener-layer tests register the echo
handler from conftest and talk to it over real sockets: TCP, implicit TLS, IPv6, a unix socket,
connection limits and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trustme

from conftest import (
    SERVE_TIMEOUT,
    EchoHandler,
    ServeProcess,
    StartServe,
    assert_one_error_line,
    clean_env,
    postoffice_command,
)
from postoffice.config import (
    LISTENER_NAMES,
    Config,
    LimitsConfig,
    ListenAddress,
    ListenerConfig,
    TcpAddress,
    UnixAddress,
)
from postoffice.context import Context, open_context
from postoffice.listeners import (
    BoundListener,
    ListenerGroup,
    ListenError,
    ProtocolRegistry,
    bind,
)
from postoffice.server import default_registry

# -- serve as a subprocess ----------------------------------------------------------------------


def test_serve_logs_each_unbuilt_listener_once_then_ready(server: ServeProcess) -> None:
    built = default_registry()
    not_built = [name for name in LISTENER_NAMES if name not in built]
    for name in not_built:
        line = server.wait_for(f"listener {name} 127.0.0.1:0: protocol not built yet")
        assert sum(line in other for other in server.lines) == 1
    for name in LISTENER_NAMES:
        if name in built:
            server.wait_for(rf"listener {name} 127\.0\.0\.1:[1-9][0-9]*: listening")
    ready = [i for i, line in enumerate(server.lines) if " INFO server ready" in line]
    assert len(ready) == 1
    unbuilt = [i for i, line in enumerate(server.lines) if "not built yet" in line]
    assert len(unbuilt) == len(not_built)
    assert max(unbuilt, default=-1) < ready[0]


def test_sigterm_exits_0_within_seconds(start_serve: StartServe) -> None:
    process = start_serve()
    started = time.monotonic()
    assert process.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    assert "stopped" in process.lines[-1]


def test_sigint_also_stops_cleanly(start_serve: StartServe) -> None:
    process = start_serve()
    assert process.stop(signal.SIGINT) == 0


def test_listen_off_disables_a_listener(start_serve: StartServe) -> None:
    process = start_serve("--listen", "smtp=off", "--listen", "lmtp=off")
    assert process.stop() == 0
    assert not any("listener smtp" in line or "listener lmtp" in line for line in process.lines)
    assert any("listener imap " in line for line in process.lines)


def test_json_log_format(start_serve: StartServe) -> None:
    process = start_serve("--log-format", "json")
    assert process.stop() == 0
    entries = [json.loads(line) for line in process.lines]
    assert {"time", "level", "component", "msg"} <= set(entries[0])
    assert [e["msg"] for e in entries].count("ready") == 1


def test_two_workers_start_and_both_exit_on_sigterm(start_serve: StartServe) -> None:
    process = start_serve("--workers", "2")
    workers = [line for line in process.lines if "worker ready" in line]
    pids = {int(line.rpartition("pid=")[2].split()[0]) for line in workers}
    assert len(pids) == 2
    assert process.proc.pid not in pids
    for pid in pids:
        os.kill(pid, 0)  # alive
    assert process.stop() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert sum("stopped" in line for line in process.lines) == 3  # two workers and the parent


def test_a_worker_dying_stops_the_server_with_an_error(start_serve: StartServe) -> None:
    process = start_serve("--workers", "2")
    line = next(line for line in process.lines if "worker ready" in line)
    os.kill(int(line.rpartition("pid=")[2].split()[0]), signal.SIGKILL)
    assert process.proc.wait(SERVE_TIMEOUT) == 1
    process.wait_for(r"worker \d \(pid \d+\) exited with code -9")


def test_serve_refuses_unknown_listener_names(data_dir: Path) -> None:
    result = _run_serve(data_dir, "--listen", "smtps=127.0.0.1:0")
    assert "unknown listener 'smtps'" in assert_one_error_line(result)


def test_serve_refuses_a_bad_listen_address(data_dir: Path) -> None:
    result = _run_serve(data_dir, "--listen", "imap=127.0.0.1")
    assert "--listen imap=127.0.0.1: invalid listen address" in assert_one_error_line(result)


def test_serve_reports_a_missing_tls_key(data_dir: Path) -> None:
    (data_dir / "tls" / "key.pem").unlink()
    result = _run_serve(data_dir)
    assert "key.pem: file not found" in assert_one_error_line(result)


def test_serve_reports_a_config_error_with_its_line(data_dir: Path) -> None:
    config = data_dir / "postoffice.toml"
    lines = config.read_text().splitlines()
    index = lines.index("workers = 1")
    lines[index] = "workers = 0"
    config.write_text("\n".join(lines) + "\n")
    message = assert_one_error_line(_run_serve(data_dir))
    assert f"postoffice.toml, line {index + 1}: server.workers: must be between" in message


def _run_serve(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*postoffice_command(), "--data", str(data_dir), "serve", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SERVE_TIMEOUT,
        env=clean_env(),
        check=False,
    )


# -- serve with workers and a registered protocol, in a subprocess ------------------------------

ECHO_SERVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    sys.path.insert(0, sys.argv[2])
    from conftest import EchoHandler
    from postoffice import server
    from postoffice.config import TcpAddress, load_config
    from postoffice.listeners import ProtocolRegistry
    from postoffice.log import configure_logging

    data = Path(sys.argv[1])
    config = load_config(data).with_listeners(
        {name: None for name in ("smtp", "submission", "submissions", "lmtp", "pop3", "pop3s",
                                 "sieve", "http")}
        | {"imap": TcpAddress("127.0.0.1", 0), "imaps": TcpAddress("127.0.0.1", 0)}
    )
    registry = ProtocolRegistry()  # the echo protocol only, whatever is built for real
    registry.register("imap", EchoHandler)
    registry.register("imaps", EchoHandler)
    configure_logging("text", "info")
    sys.exit(server.serve(data, config, registry))
    """
)


@pytest.fixture
def echo_workers(data_dir: Path) -> Iterator[ServeProcess]:
    """Two workers serving the echo protocol on imap and imaps (real fork, real signals)."""
    config = data_dir / "postoffice.toml"
    config.write_text(config.read_text().replace("workers = 1", "workers = 2"))
    tests = str(Path(__file__).parent)
    process = ServeProcess([sys.executable, "-c", ECHO_SERVER, str(data_dir), tests])
    try:
        process.wait_ready()
        yield process
    finally:
        process.kill()


def test_workers_share_the_listening_sockets(echo_workers: ServeProcess) -> None:
    host, port = echo_workers.address("imap")
    assert port != 0
    worker_pids = {
        int(line.rpartition("pid=")[2].split()[0])
        for line in echo_workers.lines
        if "worker ready" in line
    }
    for _ in range(6):
        with socket.create_connection((host, port), timeout=10) as sock:
            greeting = sock.makefile("rb").readline().split()
            assert greeting[0] == b"hello"
            assert int(greeting[2]) in worker_pids
            assert greeting[3] == b"plain"
    assert echo_workers.stop() == 0


def test_workers_serve_implicit_tls(echo_workers: ServeProcess, data_dir: Path) -> None:
    client = ssl.create_default_context(cafile=data_dir / "tls" / "cert.pem")
    client.check_hostname = False  # the self-signed certificate names mail.example.test
    with (
        socket.create_connection(echo_workers.address("imaps"), timeout=10) as raw,
        client.wrap_socket(raw) as sock,
    ):
        assert sock.makefile("rb").readline().split()[3] == b"tls"
    assert echo_workers.stop() == 0


def test_sigterm_lets_an_in_flight_session_finish(echo_workers: ServeProcess) -> None:
    sock = socket.create_connection(echo_workers.address("imap"), timeout=10)
    with sock, sock.makefile("rb") as reader:
        reader.readline()
        echo_workers.proc.send_signal(signal.SIGTERM)
        echo_workers.wait_for("waiting for 1 sessions to finish")
        sock.sendall(b"still here\r\n")
        assert reader.readline() == b"still here\r\n"
        assert echo_workers.proc.poll() is None
    assert echo_workers.proc.wait(SERVE_TIMEOUT) == 0
    assert any("connection closed" in line for line in echo_workers.lines)


# -- the listener layer, in process -------------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(context)
    return context


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def only(listeners: dict[str, ListenAddress], **limits: int) -> Config:
    """A config with just `listeners` enabled and some [limits] changed."""
    off: dict[str, ListenAddress | None] = dict.fromkeys(LISTENER_NAMES, None)
    config = Config().with_listeners(off | listeners)
    return dataclasses.replace(config, limits=dataclasses.replace(LimitsConfig(), **limits))


class Running:
    """A ListenerGroup serving the echo handler, with the addresses it bound."""

    def __init__(self, ctx: Context, group: ListenerGroup, bound: list[BoundListener]) -> None:
        self.ctx = ctx
        self.group = group
        self.bound = bound

    def address(self, name: str) -> tuple[str, int]:
        for b in self.bound:
            if b.listener.name == name:
                host, _, port = b.addresses()[0].rpartition(":")
                return host.strip("[]"), int(port)
        raise KeyError(name)


StartGroup = Callable[[Config], Awaitable[Running]]


@pytest.fixture
async def start_group(tmp_path: Path, server_tls: ssl.SSLContext) -> AsyncIterator[StartGroup]:
    """Start a ListenerGroup serving the echo handler on every listener `config` enables."""
    running: list[Running] = []

    async def start(config: Config) -> Running:
        ctx = await open_context(tmp_path, config, tls=server_tls)
        registry = ProtocolRegistry()
        for name in LISTENER_NAMES:
            registry.register(name, EchoHandler)
        bound = [bind(listener, tmp_path) for listener in config.enabled_listeners()]
        group = ListenerGroup(ctx)
        handlers = []
        for b in bound:
            factory = registry.get(b.listener.name)
            assert factory is not None
            handlers.append((b, factory(ctx, b.listener)))
        await group.start(handlers)
        running.append(Running(ctx, group, bound))
        return running[-1]

    yield start
    for r in running:
        await r.group.stop(grace=0)
        for b in r.bound:
            b.close()
        await r.ctx.close()


LOCAL = TcpAddress("127.0.0.1", 0)


async def greet(
    host: str, port: int, tls: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]]:
    reader, writer = await asyncio.open_connection(
        host, port, ssl=tls, server_hostname="localhost" if tls else None
    )
    return reader, writer, (await reader.readline()).split()


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def test_echo_over_tcp(start_group: StartGroup) -> None:
    running = await start_group(only({"imap": LOCAL}))
    reader, writer, greeting = await greet(*running.address("imap"))
    assert greeting[0] == b"hello"
    assert greeting[3] == b"plain"
    writer.write(b"ping\r\n")
    assert await reader.readline() == b"ping\r\n"
    await close(writer)


async def test_echo_over_implicit_tls(start_group: StartGroup, client_tls: ssl.SSLContext) -> None:
    running = await start_group(only({"imaps": LOCAL, "imap": LOCAL}))
    reader, writer, greeting = await greet(*running.address("imaps"), tls=client_tls)
    assert greeting[3] == b"tls"
    writer.write(b"secret\r\n")
    assert await reader.readline() == b"secret\r\n"
    await close(writer)
    # The plain listener next to it stays plain.
    _, writer, greeting = await greet(*running.address("imap"))
    assert greeting[3] == b"plain"
    await close(writer)


async def test_ipv6(start_group: StartGroup) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    running = await start_group(only({"imap": TcpAddress("::1", 0)}))
    assert running.bound[0].addresses()[0].startswith("[::1]:")
    _reader, writer, greeting = await greet(*running.address("imap"))
    assert greeting[0] == b"hello"
    await close(writer)


async def test_lmtp_on_a_unix_socket(start_group: StartGroup, tmp_path: Path) -> None:
    running = await start_group(only({"lmtp": UnixAddress(Path("lmtp.sock"))}))
    path = tmp_path / "lmtp.sock"
    assert running.bound[0].addresses() == [f"unix:{path}"]
    reader, writer = await asyncio.open_unix_connection(path)
    assert (await reader.readline()).startswith(b"hello ")
    writer.write(b"LHLO x\r\n")
    assert await reader.readline() == b"LHLO x\r\n"
    await close(writer)
    await running.group.stop(grace=1)
    running.bound[0].close()
    assert not path.exists()


def test_a_stale_unix_socket_is_replaced_but_a_live_one_is_not(tmp_path: Path) -> None:
    listener = ListenerConfig("lmtp", UnixAddress(Path("lmtp.sock")))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "lmtp.sock"))
    stale.close()  # the file stays, nobody listens: what a killed server leaves behind
    first = bind(listener, tmp_path)
    try:
        with pytest.raises(ListenError, match="in use by another server"):
            bind(listener, tmp_path)
    finally:
        first.close()


def test_binding_a_busy_port_names_the_listener(tmp_path: Path) -> None:
    first = bind(ListenerConfig("imap", LOCAL), tmp_path)
    host, _, port = first.addresses()[0].rpartition(":")
    try:
        with pytest.raises(ListenError, match=f"cannot listen on {host}:{port} for pop3: "):
            bind(ListenerConfig("pop3", TcpAddress(host, int(port))), tmp_path)
    finally:
        first.close()


async def test_per_ip_limit_refuses_cleanly(start_group: StartGroup) -> None:
    running = await start_group(only({"imap": LOCAL}, max_connections_per_ip=2))
    address = running.address("imap")
    _, first, _ = await greet(*address)
    _, second, _ = await greet(*address)
    reader, third, refusal = await greet(*address)
    assert refusal == [b"busy", b"too", b"many", b"connections", b"from", b"127.0.0.1"]
    assert await reader.read() == b""
    await close(third)
    await close(first)
    await _until(lambda: running.group.open_connections == 1)
    _, fourth, greeting = await greet(*address)
    assert greeting[0] == b"hello"
    await close(second)
    await close(fourth)


async def test_total_limit_spans_listeners(start_group: StartGroup) -> None:
    running = await start_group(only({"imap": LOCAL, "pop3": LOCAL}, max_connections=1))
    _, first, _ = await greet(*running.address("imap"))
    _, second, refusal = await greet(*running.address("pop3"))
    assert refusal == [b"busy", b"too", b"many", b"connections"]
    await close(first)
    await close(second)


async def test_stop_finishes_in_flight_sessions_and_refuses_new_ones(
    start_group: StartGroup,
) -> None:
    running = await start_group(only({"imap": LOCAL}))
    address = running.address("imap")
    reader, writer, _ = await greet(*address)
    stopping = asyncio.ensure_future(running.group.stop(grace=30))
    await running.group.stopping.wait()
    with pytest.raises(OSError, match=r"refused|Connect call failed"):
        await asyncio.open_connection(*address)
    writer.write(b"one more\r\n")
    assert await reader.readline() == b"one more\r\n"
    assert not stopping.done()
    await close(writer)
    await asyncio.wait_for(stopping, 5)


async def test_grace_period_cuts_idle_sessions(start_group: StartGroup) -> None:
    running = await start_group(only({"imap": LOCAL}))
    reader, writer, _ = await greet(*running.address("imap"))
    started = time.monotonic()
    await running.group.stop(grace=0.2)
    assert 0.2 <= time.monotonic() - started < 5
    assert await reader.read() == b""
    assert running.group.open_connections == 0
    await close(writer)


async def test_force_ends_the_grace_period_early(start_group: StartGroup) -> None:
    running = await start_group(only({"imap": LOCAL}))
    reader, writer, _ = await greet(*running.address("imap"))
    force = asyncio.Event()
    stopping = asyncio.ensure_future(running.group.stop(grace=60, force=force))
    await running.group.stopping.wait()
    force.set()
    await asyncio.wait_for(stopping, 5)
    assert await reader.read() == b""
    await close(writer)


async def test_each_connection_logs_open_and_close_with_its_session(
    start_group: StartGroup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="postoffice")
    running = await start_group(only({"imap": LOCAL}))
    _, writer, greeting = await greet(*running.address("imap"))
    session = greeting[1].decode()
    await close(writer)
    await _until(lambda: any(r.getMessage() == "connection closed" for r in caplog.records))
    mine = [r for r in caplog.records if getattr(r, "fields", {}).get("session") == session]
    assert [r.getMessage() for r in mine] == ["connection open", "connection closed"]
    assert mine[0].name == "postoffice.imap"
    assert getattr(mine[0], "fields")["peer"] == "127.0.0.1"  # noqa: B009
    assert isinstance(getattr(mine[1], "fields")["duration_ms"], int)  # noqa: B009


async def test_a_crashing_session_is_logged_and_closed(
    start_group: StartGroup, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash(self: EchoHandler, conn: object) -> None:
        raise RuntimeError("bug in a protocol")

    monkeypatch.setattr(EchoHandler, "handle", crash)
    caplog.set_level(logging.INFO, logger="postoffice")
    running = await start_group(only({"imap": LOCAL}))
    reader, writer = await asyncio.open_connection(*running.address("imap"))
    assert await reader.read() == b""
    await close(writer)
    await _until(lambda: any(r.getMessage() == "connection failed" for r in caplog.records))
    assert any(r.getMessage() == "session failed" and r.exc_info for r in caplog.records)
    assert running.group.open_connections == 0


def test_registry_refuses_unknown_and_duplicate_names() -> None:
    registry = ProtocolRegistry()
    registry.register("imap", EchoHandler)
    assert "imap" in registry
    assert registry.get("imap") is EchoHandler
    with pytest.raises(ValueError, match="already has a handler"):
        registry.register("imap", EchoHandler)
    with pytest.raises(ValueError, match="unknown listener 'gopher'"):
        registry.register("gopher", EchoHandler)


async def _until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (state the server changes on its own) for up to five seconds."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")
