"""IMAP benchmark: FETCH / SEARCH on big mailboxes and IDLE at thousands of connections.

    .venv/bin/python bench/imap_bench.py [--quick] [--json FILE]

Fills a fresh data folder through the store API (the server is not running yet): one INBOX of
100,000 realistic small messages, and one of 10,000 copied from it (a COPY shares the blobs,
so it costs one transaction).  Then starts `postoffice serve` with only the IMAP listener and
measures over loopback, on both mailboxes: `UID FETCH 1:* (FLAGS ENVELOPE)`, `UID FETCH 1:*
BODY.PEEK[HEADER]`, `FETCH 1:1000 BODY.PEEK[]` and p50 of `UID SEARCH` TEXT / FROM / SINCE.
Last, it holds 1,000, 5,000 and 10,000 connections in IDLE (LOGIN, SELECT INBOX, IDLE),
reports the server's extra RSS per connection and, after one APPEND from another connection,
how long each idler waited for its `* n EXISTS`.  Numbers only, no pass/fail.

The client is hand-written on asyncio streams: it only needs to count responses and bytes,
and a full IMAP client library would put its own parsing cost into the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from postoffice.store import SqliteStore, open_store
from postoffice.store.model import AppendTarget, UidSet
from serving import start_server, stop_server

DOMAIN = "bench.test"
PASSWORD = "bench-password-1"
BIG_USER = f"big@{DOMAIN}"
SMALL_USER = f"small@{DOMAIN}"
IDLE_USER = f"idle@{DOMAIN}"
LITERAL_RE = re.compile(rb"\{(\d+)\+?\}\r\n$")
WAKE_TIMEOUT = 60.0

_WORDS = (
    "account agenda answer april archive balance board budget cabinet calendar campaign "
    "contract copper customer deadline delivery design draft estimate figures forecast garden "
    "harbour holiday invoice journey kitchen ladder language lantern meeting migration minutes "
    "network office orchard package parcel planning policy printer project quarterly question "
    "receipt release report request review river schedule server shipment signature summary "
    "supplier survey ticket timetable travel update vacation venue warehouse weather window "
    "workshop"
)
_FIRST_NAMES = (
    "alice bruno carla dmitri elena farid greta hiro ines jonas kofi lena marco nadia oscar "
    "priya quentin rosa sven tara umar vera wim xenia yusuf zoe"
)
WORDS = _WORDS.split()
FIRST_NAMES = _FIRST_NAMES.split()
SENDER_DOMAINS = ("example.com", "example.org", "mail.example.net", "corp.example")
RARE_WORDS = ("zeppelin", "marmalade", "obsidian", "tambourine", "quokka", "saffron")
SEARCH_WORD = "zeppelin"  # one of RARE_WORDS: in roughly one message in twenty
SEARCH_FROM = "priya"  # one of FIRST_NAMES: one message in 26
SINCE_DAYS = 30  # dates spread over two years: about 4% of messages


@dataclass
class Result:
    name: str
    value: float
    unit: str


# -- the mail ---------------------------------------------------------------------------------


def make_message(rng: random.Random, n: int, when: dt.datetime) -> bytes:
    first = rng.choice(FIRST_NAMES)
    sender = f"{first.title()} {rng.choice(WORDS).title()}"
    address = f"{first}.{n % 97}@{rng.choice(SENDER_DOMAINS)}"
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).capitalize()
    lines = []
    for _ in range(rng.randint(4, 30)):
        # One word in 500 is rare, so that a body search matches a few percent of the mail.
        words = [
            rng.choice(RARE_WORDS) if rng.random() < 0.002 else rng.choice(WORDS)
            for _ in range(rng.randint(6, 12))
        ]
        lines.append(" ".join(words).capitalize() + ".")
    body = "\r\n".join(lines)
    head = (
        f"From: {sender} <{address}>\r\n"
        f"To: Bench <{BIG_USER}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {when.strftime('%a, %d %b %Y %H:%M:%S %z')}\r\n"
        f"Message-ID: <{n}.{rng.getrandbits(40):x}@{DOMAIN}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    return (head + body + "\r\n").encode()


async def fill(data: Path, big: int, small: int, concurrency: int = 64) -> float:
    """Fill big@'s INBOX with `big` messages and copy `small` of them to small@; msgs/s."""
    store = await open_store(data)
    try:
        big_id = await _inbox_id(store, BIG_USER)
        small_id = await _inbox_id(store, SMALL_USER)
        now = dt.datetime.now(dt.UTC)
        rng = random.Random(1)
        # Oldest first, as mail arrives, so UID order is date order.
        ages = sorted((rng.uniform(0, 730 * 86400) for _ in range(big)), reverse=True)
        pending = list(enumerate(ages))[::-1]

        async def worker() -> None:
            while pending:
                n, age = pending.pop()
                when = now - dt.timedelta(seconds=age)
                await store.append(
                    make_message(random.Random(n), n, when), [AppendTarget(big_id)], when
                )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        rate = big / (time.perf_counter() - started)
        # Every (big/small)-th message: the small mailbox spans the same two years.
        await store.copy(big_id, UidSet.of(range(1, big + 1, big // small)[:small]), small_id)
        return rate
    finally:
        await store.close()


async def _inbox_id(store: SqliteStore, user: str) -> int:
    account = await store.get_account(user)
    assert account is not None
    inbox = await store.get_mailbox(account.id, "INBOX")
    assert inbox is not None
    return inbox.id


# -- the server -------------------------------------------------------------------------------


def prepare(data: Path, max_connections: int) -> None:
    exe = [sys.executable, "-m", "postoffice", "--data", str(data)]
    subprocess.run([*exe, "init", "--domain", DOMAIN], check=True, capture_output=True)
    for user in (BIG_USER, SMALL_USER, IDLE_USER):
        subprocess.run(
            [*exe, "user", "add", user, "--password", PASSWORD], check=True, capture_output=True
        )
    config = data / "postoffice.toml"
    text = config.read_text()
    for old, new in (
        ("max_connections = 10000", f"max_connections = {max_connections}"),
        ("max_connections_per_ip = 50", f"max_connections_per_ip = {max_connections}"),
    ):
        if old not in text:
            raise RuntimeError(f"{config} has no line {old!r}: the default config changed")
        text = text.replace(old, new)
    config.write_text(text)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# -- the client -------------------------------------------------------------------------------


@dataclass
class Reply:
    untagged: int  # untagged responses (a response with literals counts once)
    literal_bytes: int
    last: bytes  # the last untagged response's first line


class Client:
    """Just enough IMAP to send a command and read to its tagged reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.count = 0

    @classmethod
    async def login(cls, port: int, user: str) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        client = cls(reader, writer)
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting {greeting!r}")
        await client.command(f"LOGIN {user} {PASSWORD}")
        return client

    async def command(self, text: str, literal: bytes | None = None) -> Reply:
        self.count += 1
        tag = b"t%d" % self.count
        data = tag + b" " + text.encode()
        if literal is not None:
            # RFC 7888: LITERAL+ sends the literal without waiting for a continuation.
            data += b" {%d+}\r\n%b" % (len(literal), literal)
        self.writer.write(data + b"\r\n")
        reply = Reply(0, 0, b"")
        while True:
            line = await self.line()
            if line.startswith(tag + b" "):
                if line[len(tag) + 1 :].startswith(b"OK"):
                    return reply
                raise RuntimeError(f"{text[:60]!r} failed: {line!r}")
            if line.startswith(b"* "):
                reply.untagged += 1
                reply.last = line
            while found := LITERAL_RE.search(line):
                size = int(found[1])
                await self.reader.readexactly(size)
                reply.literal_bytes += size
                line = await self.line()

    async def line(self) -> bytes:
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        return line

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# -- FETCH and SEARCH -------------------------------------------------------------------------


async def timed(client: Client, text: str) -> tuple[float, Reply]:
    started = time.perf_counter()
    reply = await client.command(text)
    return time.perf_counter() - started, reply


async def mailbox_results(port: int, user: str, size: int, runs: int) -> list[Result]:
    client = await Client.login(port, user)
    try:
        await client.command("SELECT INBOX")
        label = f"{size} msgs:"
        results: list[Result] = []
        for items in ("(FLAGS ENVELOPE)", "BODY.PEEK[HEADER]"):
            elapsed, reply = await timed(client, f"UID FETCH 1:* {items}")
            if reply.untagged != size:
                raise RuntimeError(f"UID FETCH 1:* {items}: {reply.untagged} of {size} responses")
            results.append(Result(f"{label} UID FETCH 1:* {items}", elapsed * 1000, "ms"))
            results.append(Result(f"{label} UID FETCH 1:* {items}", size / elapsed, "msgs/s"))
        bodies = min(1000, size)
        elapsed, reply = await timed(client, f"FETCH 1:{bodies} BODY.PEEK[]")
        results.append(Result(f"{label} FETCH 1:{bodies} BODY.PEEK[]", bodies / elapsed, "msgs/s"))
        results.append(
            Result(
                f"{label} FETCH 1:{bodies} BODY.PEEK[]", reply.literal_bytes / elapsed / 1e6, "MB/s"
            )
        )
        since = (dt.date.today() - dt.timedelta(days=SINCE_DAYS)).strftime("%d-%b-%Y")
        for key in (f"TEXT {SEARCH_WORD}", f"FROM {SEARCH_FROM}", f"SINCE {since}"):
            times = []
            for _ in range(runs):
                elapsed, reply = await timed(client, f"UID SEARCH {key}")
                times.append(elapsed)
            hits = len(reply.last.split()) - 2
            if hits <= 0:
                raise RuntimeError(f"UID SEARCH {key} found nothing")
            name = f"{label} UID SEARCH {key.split()[0]} ({hits} hits), p50 of {runs}"
            results.append(Result(name, statistics.median(times) * 1000, "ms"))
        await client.command("LOGOUT")
        return results
    finally:
        await client.close()


# -- IDLE -------------------------------------------------------------------------------------


class Idlers:
    """Connections of idle@ sitting in IDLE on its INBOX, and when each saw the last EXISTS."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tasks: list[asyncio.Task[None]] = []
        self.woken: list[float] = []
        self.all_woken = asyncio.Event()

    async def grow(self, total: int, concurrency: int = 100) -> float:
        """Open connections until `total` are idling; returns connections set up per second."""
        gate = asyncio.Semaphore(concurrency)
        started = time.perf_counter()
        ready: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        for _ in range(total - len(self.tasks)):
            future: asyncio.Future[None] = loop.create_future()
            ready.append(future)
            self.tasks.append(asyncio.create_task(self._idle(gate, future)))
        await asyncio.gather(*ready)
        return len(ready) / (time.perf_counter() - started)

    async def _idle(self, gate: asyncio.Semaphore, ready: asyncio.Future[None]) -> None:
        try:
            async with gate:
                client = await Client.login(self.port, IDLE_USER)
                await client.command("SELECT INBOX")
                client.writer.write(b"i IDLE\r\n")
                if not (await client.line()).startswith(b"+ "):
                    raise RuntimeError("IDLE refused")
        except BaseException as e:
            ready.set_exception(e)
            raise
        ready.set_result(None)
        try:
            while True:
                line = await client.line()
                if line.endswith(b" EXISTS\r\n"):
                    self.woken.append(time.monotonic())
                    if len(self.woken) == len(self.tasks):
                        self.all_woken.set()
        finally:
            await client.close()

    async def wake(self, appender: Client, message: bytes) -> list[float]:
        """Deliver one message; seconds from sending the APPEND to each idler's EXISTS."""
        self.woken.clear()
        self.all_woken.clear()
        started = time.monotonic()
        await appender.command("APPEND INBOX", message)
        try:
            await asyncio.wait_for(self.all_woken.wait(), WAKE_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(
                f"only {len(self.woken)} of {len(self.tasks)} idlers saw EXISTS "
                f"within {WAKE_TIMEOUT:.0f} s"
            ) from None
        return [when - started for when in self.woken]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def idle_results(port: int, pid: int, levels: Sequence[int]) -> list[Result]:
    # A few logins first: argon2's 19 MiB per verify and the thread pool's arenas would
    # otherwise land in the first level's per-connection figure.
    warm = await asyncio.gather(*(Client.login(port, IDLE_USER) for _ in range(16)))
    for client in warm:
        await client.close()
    await asyncio.sleep(1)
    before = rss_bytes(pid)
    results = [Result("IDLE: server RSS before any idler", before / 2**20, "MiB")]
    appender = await Client.login(port, IDLE_USER)
    idlers = Idlers(port)
    rng = random.Random(2)
    try:
        for n, level in enumerate(levels):
            rate = await idlers.grow(level)
            await asyncio.sleep(1)
            after = rss_bytes(pid)
            message = make_message(rng, n, dt.datetime.now(dt.UTC))
            wake = sorted(await idlers.wake(appender, message))
            label = f"IDLE {level} conns:"
            results += [
                Result(f"{label} LOGIN+SELECT+IDLE set-up rate", rate, "conns/s"),
                Result(f"{label} server RSS per connection", (after - before) / level, "bytes"),
                Result(f"{label} wake latency p50", statistics.median(wake) * 1000, "ms"),
                Result(f"{label} wake latency p99", percentile(wake, 0.99) * 1000, "ms"),
                Result(f"{label} wake latency max", wake[-1] * 1000, "ms"),
            ]
            print(f"  {label} done", file=sys.stderr, flush=True)
    finally:
        await idlers.close()
        await appender.close()
    return results


# -- main -------------------------------------------------------------------------------------


def raise_fd_limit(needed: int) -> None:
    """Soft limit up to the hard one; the server inherits it from this process."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"ulimit -Hn is {hard}; {needed} connections need more file descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(quick: bool) -> list[Result]:
    big, small = (500, 100) if quick else (100_000, 10_000)
    levels = (25, 50, 100) if quick else (1000, 5000, 10_000)
    runs = 3 if quick else 5
    raise_fd_limit(levels[-1] + 200)
    with tempfile.TemporaryDirectory(prefix="postoffice-imap-bench-") as tmp:
        data = Path(tmp) / "data"
        prepare(data, levels[-1] + 100)
        started = time.perf_counter()
        rate = asyncio.run(fill(data, big, small))
        results = [Result(f"fill {big} msgs via the store API, 64 concurrent", rate, "msgs/s")]
        print(f"  filled in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        # One server for FETCH / SEARCH and a fresh one for IDLE, so that memory freed after
        # the big FETCHes cannot be reused by the idlers and flatter their RSS figure.
        process, port = start_server(data, "imap")
        try:
            for user, size in ((SMALL_USER, small), (BIG_USER, big)):
                results += asyncio.run(mailbox_results(port, user, size, runs))
        finally:
            stop_server(process)
        process, port = start_server(data, "imap")
        try:
            results += asyncio.run(idle_results(port, process.pid, levels))
        finally:
            stop_server(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = run(args.quick)
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.name:<{width}}  {r.value:>12.1f} {r.unit}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    sys.exit(0 if all(r.value > 0 for r in results) else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
