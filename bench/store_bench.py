"""Store benchmark: append throughput, cached-envelope fetch, on-disk overhead per message.

    .venv/bin/python bench/store_bench.py [--quick] [--messages N] [--json FILE]

Numbers only, no pass/fail: `docs/performance.md` keeps the latest table.  The machine's
ceiling (fsync'd 4 KB writes per second) is measured in the same run, since group commit is
what lets appends/s exceed it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from postoffice.store import SqliteStore, open_store
from postoffice.store.model import AppendTarget, FetchWhat, UidSet

BODY_LINE = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\r\n"


def make_message(n: int, size: int) -> bytes:
    header = (
        f"From: Sender {n} <sender{n}@example.test>\r\n"
        f"To: Bench <bench@example.test>\r\n"
        f"Subject: benchmark message {n}\r\n"
        f"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <bench-{n}-{time.time_ns()}@example.test>\r\n\r\n"
    ).encode()
    lines = max(1, (size - len(header)) // len(BODY_LINE))
    return header + BODY_LINE * lines


@dataclass
class Result:
    name: str
    value: float
    unit: str


def fsync_ceiling(directory: Path, seconds: float) -> float:
    """fsync'd 4 KB writes per second on this disk: what one-fsync-per-message allows."""
    path = directory / "fsync-probe"
    block = os.urandom(4096)
    count = 0
    deadline = time.perf_counter() + seconds
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            os.write(fd, block)
            os.fsync(fd)
            count += 1
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        path.unlink()
    return count / elapsed


async def append_rate(
    store: SqliteStore,
    mailboxes: list[int],
    recipients: int,
    concurrency: int,
    total: int,
    size: int,
) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(total):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            targets = [AppendTarget(mailboxes[(n + i) % len(mailboxes)]) for i in range(recipients)]
            await store.append(make_message(n, size), targets)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


async def run(quick: bool, big_mailbox: int) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="postoffice-bench-") as tmp:
        root = Path(tmp)
        results.append(
            Result(
                "fsync'd 4 KB writes/s (disk ceiling)",
                fsync_ceiling(root, 0.5 if quick else 2.0),
                "writes/s",
            )
        )
        store = await open_store(root)
        try:
            await store.add_domain("example.test")
            mailboxes = []
            for i in range(10):
                account = await store.add_account(f"user{i}@example.test", "x", None)
                inbox = await store.get_mailbox(account.id, "INBOX")
                assert inbox is not None
                mailboxes.append(inbox.id)
            per_run = 50 if quick else 2000
            for recipients in (1, 10):
                for concurrency in (1, 16):
                    rate = await append_rate(
                        store, mailboxes, recipients, concurrency, per_run, 4096
                    )
                    results.append(
                        Result(
                            f"append 4 KB, {recipients} recipient(s), {concurrency} concurrent",
                            rate,
                            "msgs/s",
                        )
                    )

            account = await store.add_account("big@example.test", "x", None)
            big = await store.get_mailbox(account.id, "INBOX")
            assert big is not None
            before = await store.counts()
            count = big_mailbox
            start = time.perf_counter()
            await append_rate(store, [big.id], 1, 32, count, 2048)
            fill = time.perf_counter() - start
            results.append(Result(f"fill {count} x 2 KB, 32 concurrent", count / fill, "msgs/s"))
            after = await store.counts()
            start = time.perf_counter()
            entries = await store.fetch(big.id, UidSet.span(1, 2**32 - 1), FetchWhat(envelope=True))
            elapsed = time.perf_counter() - start
            assert len(entries) == count
            results.append(Result(f"fetch {count} cached envelopes", elapsed * 1000, "ms"))
            results.append(Result("fetch cached envelopes", count / elapsed, "msgs/s"))
            # Small messages live inside the database: their bytes are the blob, not overhead.
            overhead = (
                after["db_bytes"]
                - before["db_bytes"]
                - (after["inline_bytes"] - before["inline_bytes"])
            ) / count
            results.append(
                Result("metadata on disk per message (beyond the blob)", overhead, "bytes")
            )
        finally:
            await store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (CI)")
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="size of the big mailbox (default 100000, quick 500)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    count = args.messages or (500 if args.quick else 100_000)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = asyncio.run(run(args.quick, count))
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.name:<{width}}  {r.value:>12.1f} {r.unit}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    sys.exit(0 if all(r.value > 0 for r in results) else 1)


if __name__ == "__main__":
    main()
