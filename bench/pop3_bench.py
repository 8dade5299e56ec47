"""POP3 benchmark: how fast mailboxes drain (msgs/s, MB/s) with 1 and 16 users at once.

    .venv/bin/python bench/pop3_bench.py [--quick] [--json FILE]

Fills a fresh data folder through the store API (the server is not running yet): 17 users,
each INBOX holding the same number of ~16 KB text messages.  Then starts `postoffice serve`
with only the POP3 listener and drains, over loopback, one user alone and then 16 users at
once, each the way fetchmail does it: USER/PASS, UIDL, then RETR and DELE for every message
(pipelined 16 commands at a time, as PIPELINING allows), and QUIT, which deletes them in one
transaction.  Reports messages and megabytes per second over the whole drain, QUIT included.
Numbers only, no pass/fail.

The client is hand-written on asyncio streams: it only needs to count responses and bytes,
and poplib's line-by-line parsing would put its own cost into the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from postoffice.store import open_store
from postoffice.store.model import AppendTarget
from serving import start_server, stop_server

DOMAIN = "bench.test"
PASSWORD = "bench-password-1"
USERS = 17  # user0 drains alone, user1..user16 together
SIZE = 16 * 1024
PIPELINE = 16
LINE = "All work and no play makes Jack a dull boy; the quick brown fox jumps over it.\r\n"


@dataclass
class Result:
    name: str
    value: float
    unit: str


def user(n: int) -> str:
    return f"user{n}@{DOMAIN}"


def make_message(n: int) -> bytes:
    head = (
        f"From: Sender <sender@other.test>\r\nTo: {DOMAIN}\r\nSubject: bench {n}\r\n"
        f"Message-ID: <{n}.{time.time_ns()}@other.test>\r\n\r\n"
    )
    # One line in eight starts with a dot, so RETR has stuffing to do.
    lines = [("." if i % 8 == 0 else "") + LINE for i in range(SIZE // len(LINE))]
    return (head + "".join(lines)).encode()


async def fill(data: Path, per_user: int, concurrency: int = 64) -> None:
    store = await open_store(data)
    try:
        pending: list[tuple[int, int]] = []
        for n in range(USERS):
            account = await store.get_account(user(n))
            assert account is not None
            inbox = await store.get_mailbox(account.id, "INBOX")
            assert inbox is not None
            pending += [(inbox.id, m) for m in range(per_user)]

        async def worker() -> None:
            while pending:
                inbox_id, m = pending.pop()
                await store.append(make_message(m), [AppendTarget(inbox_id)])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await store.close()


# -- the server -------------------------------------------------------------------------------


def prepare(data: Path) -> None:
    exe = [sys.executable, "-m", "postoffice", "--data", str(data)]
    subprocess.run([*exe, "init", "--domain", DOMAIN], check=True, capture_output=True)
    for n in range(USERS):
        subprocess.run(
            [*exe, "user", "add", user(n), "--password", PASSWORD], check=True, capture_output=True
        )


# -- the client -------------------------------------------------------------------------------


async def status(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    if not line.startswith(b"+OK"):
        raise RuntimeError(f"unexpected reply {line!r}")
    return line


async def drain(port: int, address: str) -> tuple[int, int]:
    """Download and delete every message of `address`; (messages, octets received)."""
    # A whole message is read with one readuntil: the limit must exceed the largest.
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=16 << 20)
    try:
        await status(reader)
        writer.write(f"USER {address}\r\nPASS {PASSWORD}\r\nUIDL\r\n".encode())
        await status(reader)
        await status(reader)
        await status(reader)
        count = (await reader.readuntil(b".\r\n")).count(b"\r\n") - 1
        received = 0
        for start in range(1, count + 1, PIPELINE):
            numbers = range(start, min(start + PIPELINE, count + 1))
            writer.write(b"".join(b"RETR %d\r\nDELE %d\r\n" % (n, n) for n in numbers))
            for _ in numbers:
                await status(reader)
                received += len(await reader.readuntil(b"\r\n.\r\n"))
                await status(reader)
        writer.write(b"QUIT\r\n")
        if not (await status(reader)).startswith(b"+OK Bye, %d messages" % count):
            raise RuntimeError("QUIT did not delete every message")
        return count, received
    finally:
        writer.close()


async def measure(port: int, users: list[str]) -> list[Result]:
    started = time.perf_counter()
    drained = await asyncio.gather(*(drain(port, address) for address in users))
    elapsed = time.perf_counter() - started
    messages = sum(count for count, _ in drained)
    octets = sum(size for _, size in drained)
    label = f"drain {len(users)} user{'s' if len(users) > 1 else ''} ({messages} msgs)"
    return [
        Result(label, messages / elapsed, "msgs/s"),
        Result(label, octets / elapsed / 1e6, "MB/s"),
    ]


async def run(per_user: int) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="postoffice-pop3-bench-") as tmp:
        data = Path(tmp) / "data"
        prepare(data)
        await fill(data, per_user)
        process, port = start_server(data, "pop3")
        try:
            results = await measure(port, [user(0)])
            results += await measure(port, [user(n) for n in range(1, USERS)])
        finally:
            stop_server(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(run(20 if args.quick else 1000))
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.name:<{width}}  {r.value:>12.1f} {r.unit}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    sys.exit(0 if all(r.value > 0 for r in results) else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
