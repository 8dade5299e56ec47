"""`postoffice serve`: bind every listener, run the worker process(es), shut down cleanly.

Sockets are bound once, in the first process, before any worker exists: bind errors surface
as one CLI error, port 0 resolves to one port that every worker shares, and `--workers N`
forks N identical processes that inherit the listening sockets and accept from them (the
kernel hands each connection to one of them).  The parent then only supervises: it forwards
SIGTERM/SIGINT, and if a worker dies unexpectedly it stops the others and exits non-zero so
the service manager restarts the whole server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postoffice.config import Config
from postoffice.context import open_context, server_tls_context
from postoffice.imap.handler import IMAP_LISTENERS, imap_handlers
from postoffice.listeners import BoundListener, ListenerGroup, ProtocolRegistry, bind
from postoffice.log import BoundLogger, get_logger
from postoffice.managesieve import SIEVE_LISTENERS, SieveHandler
from postoffice.pop3 import POP3_LISTENERS, Pop3Handler
from postoffice.queue.worker import serve_queue
from postoffice.smtp import SMTP_LISTENERS, smtp_handler
from postoffice.web import HttpHandler

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Blocked while workers are forked and unblocked once each process has its handlers, so a
# signal arriving in between waits instead of killing a process half set up.
HANDLED_SIGNALS = frozenset({*STOP_SIGNALS, signal.SIGCHLD})


def default_registry() -> ProtocolRegistry:
    """Every protocol front-end built so far.  A new front-end registers its factory here,
    e.g. `registry.register("smtp", SmtpHandler)`."""
    registry = ProtocolRegistry()
    for name in SMTP_LISTENERS:
        registry.register(name, smtp_handler)
    imap = imap_handlers()
    for name in IMAP_LISTENERS:
        registry.register(name, imap)
    for name in POP3_LISTENERS:
        registry.register(name, Pop3Handler)
    for name in SIEVE_LISTENERS:
        registry.register(name, SieveHandler)
    registry.register("http", HttpHandler)
    return registry


def serve(data_dir: Path, config: Config, registry: ProtocolRegistry) -> int:
    """Run until SIGTERM/SIGINT; the exit code (0 after a clean shutdown).

    Raises TlsConfigError or ListenError before anything is running.
    """
    log = get_logger("server")
    tls = server_tls_context(data_dir, config)
    bound: list[BoundListener] = []
    try:
        for listener in config.enabled_listeners():
            if listener.name not in registry:
                log.info("listener %s %s: protocol not built yet", listener.name, listener.address)
                continue
            bound.append(bind(listener, data_dir))
            mode = " (implicit TLS)" if listener.implicit_tls else ""
            for address in bound[-1].addresses():
                log.info("listener %s %s: listening%s", listener.name, address, mode)
        worker = _Worker(data_dir, config, registry, bound, tls)
        if config.server.workers == 1:
            return worker.run(log)
        return _supervise(worker, config.server.workers, log)
    finally:
        for b in bound:
            b.close()


@dataclass(slots=True)
class _Worker:
    data_dir: Path
    config: Config
    registry: ProtocolRegistry
    bound: list[BoundListener]
    tls: ssl.SSLContext

    def run(self, log: BoundLogger, ready_fd: int | None = None) -> int:
        """Serve in this process; with `ready_fd` (a forked worker) report readiness on it
        instead of logging the `ready` line."""
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(self._main(log, ready_fd))

    async def _main(self, log: BoundLogger, ready_fd: int | None) -> int:
        loop = asyncio.get_running_loop()
        stop, force = asyncio.Event(), asyncio.Event()

        def on_signal() -> None:
            # The first signal stops gracefully; a second one (an impatient Ctrl-C) cuts
            # the grace period short.
            (force if stop.is_set() else stop).set()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        ctx = await open_context(self.data_dir, self.config, tls=self.tls)
        try:
            group = ListenerGroup(ctx)
            handlers = []
            for b in self.bound:
                factory = self.registry.get(b.listener.name)
                assert factory is not None  # serve() bound only registered listeners
                handlers.append((b, factory(ctx, b.listener)))
            await group.start(handlers)
            # Outbound delivery runs in whichever serving process holds the queue lock.
            queue = asyncio.create_task(serve_queue(ctx, stop))
            if ready_fd is None:
                log.info("ready")
            else:
                log.info("worker ready")
                os.write(ready_fd, b"1")
                os.close(ready_fd)
            await stop.wait()
            log.info("stopping")
            await group.stop(self.config.server.shutdown_grace_seconds, force)
            await queue
        finally:
            await ctx.close()
        log.info("stopped")
        return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (not built for every platform)
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _supervise(worker: _Worker, count: int, log: BoundLogger) -> int:
    children: dict[int, int] = {}  # pid → worker number
    ready_fds: list[int] = []
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    for number in range(1, count + 1):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for fd in [read_fd, *ready_fds]:
                    os.close(fd)
                code = _child(worker, log.bind(worker=number, pid=os.getpid()), write_fd)
            finally:
                # Never return into the parent's code path, whatever happened.
                os._exit(code)
        os.close(write_fd)
        children[pid] = number
        ready_fds.append(read_fd)
    # The workers hold the listening sockets now; a copy left open here would keep
    # accepting connections into the backlog after every worker has stopped.
    for b in worker.bound:
        b.close_sockets()
    return asyncio.run(_Supervisor(children, log).run(ready_fds))


def _child(worker: _Worker, log: BoundLogger, ready_fd: int) -> int:
    try:
        return worker.run(log, ready_fd)
    except Exception:
        log.exception("worker failed")
        return 1
    finally:
        sys.stderr.flush()


class _Supervisor:
    def __init__(self, children: dict[int, int], log: BoundLogger) -> None:
        self._children = children
        self._log = log
        self._stopping = False
        self._failed = False
        self._all_exited = asyncio.Event()

    async def run(self, ready_fds: list[int]) -> int:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._forward, sig)
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self._reap()  # a worker may have exited before the handler was installed
        readiness = asyncio.gather(*(_read_ready(loop, fd) for fd in ready_fds))
        exited = asyncio.ensure_future(self._all_exited.wait())
        waiters: set[asyncio.Future[Any]] = {readiness, exited}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if readiness.done() and all(readiness.result()) and not self._stopping:
            self._log.info("ready", extra={"workers": len(ready_fds)})
        await exited
        readiness.cancel()
        self._log.info("stopped")
        return 1 if self._failed else 0

    def _forward(self, sig: signal.Signals) -> None:
        self._stopping = True
        for pid in self._children:
            os.kill(pid, sig)

    def _reap(self) -> None:
        while self._children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            number = self._children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if code != 0 or not self._stopping:
                self._log.error("worker %s (pid %d) exited with code %d", number, pid, code)
                self._failed = True
                if not self._stopping:
                    self._forward(signal.SIGTERM)
        if not self._children:
            self._all_exited.set()


async def _read_ready(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    """True once the worker wrote its ready byte; False if it died first (EOF)."""
    readable: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await readable
        return os.read(fd, 1) == b"1"
    finally:
        loop.remove_reader(fd)
        os.close(fd)
