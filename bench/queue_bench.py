"""Outbound queue benchmark: messages/s delivered to a loopback sink, DKIM signing cost.

    .venv/bin/python bench/queue_bench.py [--quick] [--json FILE]

Queues N one-recipient ~4 KB messages in a fresh store, then times one queue run
(`QueueWorker.run_once`: read, group by domain, MX lookup, SMTP with pipelining, record
each result in its own transaction) delivering them to an SMTP sink on loopback, with all
recipients in 1 domain and spread over 10 domains (the default 4 connections per domain, so
10 domains get up to 40 connections).  The sink and the loopback DNS server are the tests'
own (tests/outbound_helpers.py) and run on the worker's event loop, so their cost is in the
numbers: a lower bound on what the worker alone does.  Then DKIM: milliseconds to sign one
message with RSA-2048 and with Ed25519 (dkimpy, relaxed/relaxed).  Numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from outbound_helpers import DnsServer, Sink
from postoffice.auth.throttle import LoginThrottle
from postoffice.config import Config, QueueConfig
from postoffice.context import Context, SystemClock, throttle_config
from postoffice.delivery.model import Envelope, Recipient
from postoffice.queue.dkim import find_key, generate_key
from postoffice.queue.worker import QueueWorker
from postoffice.store import open_store

LINE = "All work and no play makes Jack a dull boy; the quick brown fox jumps over it.\r\n"


@dataclass
class Result:
    name: str
    value: float
    unit: str


def make_message(n: int) -> bytes:
    head = (
        f"From: Bench <bench@example.test>\r\nTo: <user{n}@remote.test>\r\n"
        f"Subject: bench {n}\r\nMessage-ID: <{n}.{time.time_ns()}@example.test>\r\n"
        "Date: Tue, 01 Dec 2026 00:00:00 +0000\r\n\r\n"
    )
    return (head + LINE * 50).encode()


async def deliver(count: int, domains: int) -> Result:
    dns = await DnsServer().start()
    for d in range(domains):
        dns.mail_domain(f"remote{d}.test")
    sink = await Sink(starttls=False).start()
    with tempfile.TemporaryDirectory(prefix="postoffice-queue-bench-") as tmp:
        store = await open_store(Path(tmp))
        config = Config(queue=QueueConfig(resolver=dns.address, smtp_port=sink.port))
        clock = SystemClock()
        ctx = Context(
            config,
            Path(tmp),
            store,
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
            LoginThrottle(throttle_config(config.auth), clock.monotonic),
            clock,
        )
        try:
            envelope = Envelope("bench@example.test", ())
            for n in range(count):
                recipient = Recipient(f"user{n}@remote{n % domains}.test")
                await store.outbound.enqueue(make_message(n), envelope, [recipient], "bench")
            started = time.perf_counter()
            await QueueWorker(ctx).run_once()
            elapsed = time.perf_counter() - started
            if len(sink.received) != count:
                raise RuntimeError(f"{len(sink.received)} of {count} messages delivered")
        finally:
            await ctx.close()
            await sink.close()
            dns.close()
    plural = "s" if domains > 1 else ""
    return Result(f"deliver {count} msgs to {domains} domain{plural}", count / elapsed, "msgs/s")


def signing(count: int) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="postoffice-dkim-bench-") as tmp:
        for algorithm in ("rsa", "ed25519"):
            domain = f"{algorithm}.test"
            generate_key(Path(tmp), domain, "bench", "rsa" if algorithm == "rsa" else "ed25519")
            key = find_key(Path(tmp), domain)
            assert key is not None
            raw = make_message(0)
            started = time.perf_counter()
            for _ in range(count):
                key.sign(raw)
            per_message = (time.perf_counter() - started) / count * 1000
            name = "RSA-2048" if algorithm == "rsa" else "Ed25519"
            results.append(Result(f"DKIM sign ({name})", per_message, "ms/msg"))
    return results


async def run(count: int) -> list[Result]:
    return [await deliver(count, 1), await deliver(count, 10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(run(50 if args.quick else 2000))
    results += signing(10 if args.quick else 200)
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.name:<{width}}  {r.value:>12.1f} {r.unit}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    sys.exit(0 if all(r.value > 0 for r in results) else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
