"""SIGKILL during a delivery run loses nothing (DESIGN §8): every message reaches the sink.

A child process runs the queue worker against a slow loopback sink; the parent kills it
once some messages are through, runs a second child to the end, and checks that every
queued message arrived at least once, that duplicates are limited to the transactions in
flight at the kill (the documented window between the remote 250 and our commit), and that
the queue is empty.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from outbound_helpers import DnsServer, Sink
from postoffice.delivery.model import Envelope, Recipient
from postoffice.store import open_store

pytestmark = pytest.mark.slow

MESSAGES = 40
CONNECTIONS = 2
CHILD = """
import asyncio, ssl, sys
from pathlib import Path
from postoffice.config import Config, QueueConfig
from postoffice.context import open_context
from postoffice.queue.worker import QueueWorker

async def main() -> None:
    config = Config(queue=QueueConfig(
        resolver=sys.argv[2], smtp_port=int(sys.argv[3]), connections_per_domain=2,
        messages_per_connection=5,
    ))
    ctx = await open_context(Path(sys.argv[1]), config, tls=ssl.create_default_context())
    try:
        await QueueWorker(ctx).run_once()
    finally:
        await ctx.close()

asyncio.run(main())
"""


def raw(n: int) -> bytes:
    return (
        f"From: <bob@example.test>\r\nMessage-ID: <crash{n}@example.test>\r\n"
        f"Subject: crash {n}\r\n\r\n" + "x" * 2000 + "\r\n"
    ).encode()


async def child(data: Path, dns: DnsServer, sink: Sink) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(data), dns.address, str(sink.port)
    )


async def test_sigkill_during_delivery_loses_nothing(tmp_path: Path) -> None:
    dns = await DnsServer().start()
    dns.mail_domain("remote.test")
    sink = await Sink(delay=0.01, starttls=False).start()
    try:
        store = await open_store(tmp_path)
        await store.add_domain("example.test")
        for n in range(MESSAGES):
            await store.outbound.enqueue(
                raw(n), Envelope("bob@example.test", ()), [Recipient(f"u{n}@remote.test")], "s"
            )
        await store.close()

        first = await child(tmp_path, dns, sink)
        for _ in range(6000):  # up to 30 s
            if len(sink.received) >= MESSAGES // 4:
                break
            await asyncio.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        assert len(sink.received) < MESSAGES  # the kill did land in the middle

        second = await child(tmp_path, dns, sink)
        assert await asyncio.wait_for(second.wait(), 60) == 0

        arrived = Counter(m.recipients[0] for m in sink.received)
        assert set(arrived) == {f"u{n}@remote.test" for n in range(MESSAGES)}
        duplicates = sum(count - 1 for count in arrived.values())
        assert duplicates <= CONNECTIONS  # at most one per connection in flight at the kill
        store = await open_store(tmp_path)
        try:
            assert await store.outbound.list(state=None) == []
        finally:
            await store.close()
    finally:
        await sink.close()
        dns.close()
