"""SMTP accept benchmark: msgs/s and per-message latency against a real `postoffice serve`.

    .venv/bin/python bench/smtp_bench.py [--quick] [--json FILE]

Starts `postoffice serve` on a fresh data folder (MX listener on a loopback port), then for
4 KB and 100 KB messages at 1, 16 and 64 connections sends messages to a local user, each
connection one EHLO and then MAIL/RCPT/DATA per message (PIPELINING), and reports accepted
messages per second and p50/p99 latency from MAIL to the final 250 (which the server sends
only after the message is durable).  Numbers only, no pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import serving

LINE = b"All work and no play makes Jack a dull boy; the quick brown fox jumps over it.\r\n"


@dataclass
class Row:
    size: str
    connections: int
    messages: int
    msgs_per_s: float
    p50_ms: float
    p99_ms: float


def message(n: int, size: int) -> bytes:
    head = (
        f"From: bench@sender.test\r\nTo: user@bench.test\r\nSubject: bench {n}\r\n"
        f"Message-ID: <{n}.{time.time_ns()}@sender.test>\r\n\r\n"
    ).encode()
    return head + LINE * max(1, (size - len(head)) // len(LINE))


async def read_reply(reader: asyncio.StreamReader) -> int:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return int(line[:3])


async def client(port: int, count: int, size: int, latencies: list[float], base: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await read_reply(reader) == 220
        writer.write(b"EHLO bench.client\r\n")
        assert await read_reply(reader) == 250
        for i in range(count):
            body = message(base + i, size)
            started = time.perf_counter()
            # RFC 2920: MAIL, RCPT and DATA go together; the data follows the 354.
            writer.write(b"MAIL FROM:<bench@sender.test>\r\nRCPT TO:<user@bench.test>\r\nDATA\r\n")
            codes = [await read_reply(reader) for _ in range(3)]
            if codes != [250, 250, 354]:
                raise RuntimeError(f"unexpected replies {codes}")
            writer.write(body + b".\r\n")
            await writer.drain()
            if await read_reply(reader) != 250:
                raise RuntimeError("message refused")
            latencies.append(time.perf_counter() - started)
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
    finally:
        writer.close()


async def measure(port: int, size: int, connections: int, total: int) -> Row:
    latencies: list[float] = []
    per_client = max(1, total // connections)
    started = time.perf_counter()
    await asyncio.gather(
        *(client(port, per_client, size, latencies, c * per_client) for c in range(connections))
    )
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return Row(
        size=f"{size // 1024} KB",
        connections=connections,
        messages=len(latencies),
        msgs_per_s=len(latencies) / elapsed,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


def start_server(data: Path) -> tuple[subprocess.Popen[str], int]:
    exe = [sys.executable, "-m", "postoffice", "--data", str(data)]
    subprocess.run([*exe, "init", "--domain", "bench.test"], check=True, capture_output=True)
    subprocess.run(
        [*exe, "user", "add", "user@bench.test", "--password", "bench-password-1"],
        check=True,
        capture_output=True,
    )
    config = data / "postoffice.toml"
    text = config.read_text().replace("max_connections_per_ip = 50", "max_connections_per_ip = 500")
    config.write_text(text)
    return serving.start_server(data, "smtp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="postoffice-smtp-bench-") as tmp:
        process, port = start_server(Path(tmp) / "data")
        try:
            for size in (4 * 1024, 100 * 1024):
                for connections in (1, 16, 64):
                    total = (
                        (64 if args.quick else 2000)
                        if size < 65536
                        else (64 if args.quick else 500)
                    )
                    rows.append(asyncio.run(measure(port, size, connections, total)))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    print(f"{'size':>7} {'conns':>5} {'msgs':>6} {'msgs/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in rows:
        print(
            f"{r.size:>7} {r.connections:>5} {r.messages:>6} {r.msgs_per_s:>9.1f} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    sys.exit(0 if all(r.msgs_per_s > 0 for r in rows) else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
