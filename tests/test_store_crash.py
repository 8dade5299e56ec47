"""Crash tests: SIGKILL a process appending to the store, reopen, and check (DESIGN §4, §8).

A child (tests/crash_child.py) appends in a loop and prints each append's UIDs and content
hash only after `append` returned: that line is the "250 OK".  The parent kills it at chosen
moments, reopens the store here and checks that every acknowledged message is there with
exactly its bytes, exactly once; that the append in flight at the kill is either wholly there
or wholly absent; that nothing half-written is visible (blobs match their hashes, SQLite's
integrity check passes, quota counters equal the real sums); and that the store still takes
appends.  Every round continues on the same data folder, so damage from an early kill shows
up later too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from postoffice.store import SqliteStore, open_store
from postoffice.store.model import AppendTarget

pytestmark = pytest.mark.slow

CHILD = Path(__file__).with_name("crash_child.py")
DOMAIN = "example.org"
ADDRESSES = [f"{name}@{DOMAIN}" for name in ("alice", "bob", "carol")]
LINE_TIMEOUT = 30.0  # seconds without output before the child is taken for hung
SEED = int.from_bytes(os.urandom(4), "big")
# Between the child's small messages and its 100 KB ones, so both storage paths are crashed
# into: content in the message row (one WAL fsync) and content in a blob file.
INLINE_MAX = 32 * 1024

MailboxSha = tuple[int, str]


@dataclass
class Intent:
    seq: int
    large: bool
    targets: list[MailboxSha]
    acked: bool = False
    failed: bool = False


@dataclass
class ChildRun:
    """What one child reported before it died."""

    intents: list[Intent] = field(default_factory=list)
    acks: list[tuple[int, int, str]] = field(default_factory=list)  # (mailbox, uid, sha256)
    sweeps: int = 0
    sweeping: bool = False  # a sweep() had started and not returned
    sweep_errors: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    ready: bool = False
    stderr: str = ""

    def feed(self, line: str) -> None:
        words = line.split()
        if words == ["ready"]:
            self.ready = True
        elif words[0] == "intent":
            targets = [(int(m), sha) for m, _, sha in (w.partition(":") for w in words[3:])]
            self.intents.append(Intent(int(words[1]), words[2] == "large", targets))
        elif words[0] == "error":
            assert self.intents[-1].seq == int(words[1])
            self.intents[-1].failed = True
            self.errors[words[2]] += 1
        elif words[0] == "sweep":
            self.sweeps += 1
            self.sweeping = True
        elif words[0] == "swept":
            self.sweeping = False
        elif words[0] == "sweep-error":
            self.sweeping = False
            self.sweep_errors[words[1]] += 1
        else:
            uid, mailbox, sha = words
            self.acks.append((int(mailbox), int(uid), sha))
            self.intents[-1].acked = True

    @property
    def acked_appends(self) -> int:
        return sum(intent.acked for intent in self.intents)

    @property
    def in_flight(self) -> Intent | None:
        """The append that had started but neither returned nor failed when the kill came."""
        if self.intents and not (self.intents[-1].acked or self.intents[-1].failed):
            return self.intents[-1]
        return None


@dataclass
class Ledger:
    """What must be in the store: every acknowledged (or since verified) entry."""

    entries: dict[tuple[int, int], str] = field(default_factory=dict)  # (mailbox, uid) -> sha
    inboxes: set[int] = field(default_factory=set)
    messages_in_files: int = 0  # the most referenced messages seen in blob files at once


def _reader(stream: IO[bytes], lines: queue.Queue[str | None]) -> None:
    pending = b""
    while chunk := os.read(stream.fileno(), 65536):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            lines.put(line.decode())
    # A trailing piece without its newline was cut by the kill: it never counted.
    lines.put(None)


def run_child(
    data_dir: Path, mode: str, tag: str, kill_when: str, arg: float, rng: random.Random
) -> ChildRun:
    """Run the child until `kill_when` happens, SIGKILL it and return what it had reported.

    kill_when: "start" (right after spawning), "acks" (after `arg` acknowledged appends),
    "large" (as soon as a large append is announced, after `arg` seconds), "sweep" (after
    `arg` seconds into the `sweep()` call that follows at least 5 acknowledged appends).
    """
    run = ChildRun()
    err_path = data_dir / f"child-{tag}.stderr"
    with err_path.open("wb") as err:
        args = [str(data_dir), mode, str(rng.random()), tag, str(INLINE_MAX), *ADDRESSES]
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args], stdout=subprocess.PIPE, stderr=err
        )
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True)
    reader.start()
    ended = False  # the reader saw the end of the child's output
    try:
        while kill_when != "start":
            try:
                line = lines.get(timeout=LINE_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"child silent for {LINE_TIMEOUT} s (kill at {kill_when} {arg})")
            if line is None:
                ended = True
                break  # it died on its own: reported below
            run.feed(line)
            if kill_when == "acks" and run.acked_appends >= arg:
                break
            if kill_when == "large" and run.in_flight is not None and run.in_flight.large:
                time.sleep(arg)
                break
            if kill_when == "sweep" and run.acked_appends >= 5 and line == "sweep":
                time.sleep(arg)
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
        proc.stdout.close()
    # Whatever the child wrote before dying was acknowledged too: take it all.
    while not ended and (line := lines.get_nowait()) is not None:
        run.feed(line)
    run.stderr = err_path.read_text(errors="replace")
    assert proc.returncode == -signal.SIGKILL, f"child ended by itself:\n{run.stderr}"
    return run


async def _setup(data_dir: Path) -> None:
    store = await open_store(data_dir)
    try:
        await store.add_domain(DOMAIN)
        for address in ADDRESSES:
            account = await store.add_account(address, "hash", None)
            if address == ADDRESSES[0]:
                await store.create_mailbox(account.id, "Scratch")
    finally:
        await store.close()


async def _verify(data_dir: Path, ledger: Ledger, run: ChildRun, context: str) -> None:
    store = await open_store(data_dir, inline_max=INLINE_MAX)
    try:
        await _verify_open(store, ledger, run, context)
        await _append_after_crash(store, ledger, context)
    finally:
        await store.close()


async def _verify_open(store: SqliteStore, ledger: Ledger, run: ChildRun, context: str) -> None:
    ledger.inboxes = set()
    for address in ADDRESSES:
        account = await store.get_account(address)
        assert account is not None
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        ledger.inboxes.add(inbox.id)

    # Acknowledged UIDs are distinct: a UID handed out twice would be a lost message.
    acked = [(mailbox, uid) for mailbox, uid, _ in run.acks]
    assert len(acked) == len(set(acked)), f"{context}: a UID was acknowledged twice"
    assert not set(acked) & set(ledger.entries), f"{context}: a UID from an earlier run reused"
    expected = dict(ledger.entries)
    expected.update({(mailbox, uid): sha for mailbox, uid, sha in run.acks})

    # Every acknowledged append is there, with exactly the acknowledged bytes.
    for (mailbox, uid), sha in sorted(expected.items()):
        content = await store.read_message(mailbox, uid)
        assert content is not None, f"{context}: acknowledged {mailbox}/{uid} lost"
        assert hashlib.sha256(content).hexdigest() == sha, f"{context}: {mailbox}/{uid} changed"

    rows = await store.db.read(_dump)
    found: dict[tuple[int, int], str] = {}
    for mailbox in sorted(ledger.inboxes):
        for uid in await store.uids(mailbox):
            content = await store.read_message(mailbox, uid)
            assert content is not None, f"{context}: {mailbox}/{uid} listed but unreadable"
            found[(mailbox, uid)] = hashlib.sha256(content).hexdigest()

    # Nothing else, except the append in flight at the kill: wholly there or wholly absent.
    extra = Counter((m, sha) for (m, u), sha in found.items() if (m, u) not in expected)
    in_flight = run.in_flight
    allowed: list[Counter[MailboxSha]] = [Counter()]
    if in_flight is not None:
        allowed.append(Counter(in_flight.targets))
    assert extra in allowed, (
        f"{context}: unacknowledged entries {dict(extra)}; in flight: {in_flight}; "
        f"failed appends: {dict(run.errors)}"
    )

    # Nothing half-written: SQLite is sound, every referenced message is whole, inline in
    # its row or in its blob file.
    with sqlite3.connect(store.db.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], context
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == [], context
    in_files = 0
    for sha, size, inline in rows.referenced_messages:
        if inline is None:
            in_files += 1
            data = await asyncio.to_thread(_read_blob, store, sha)
            assert data is not None, f"{context}: blob file of referenced message {sha} missing"
        else:
            data = inline
        assert len(data) == size, f"{context}: message {sha} is {len(data)} bytes, not {size}"
        assert hashlib.sha256(data).hexdigest() == sha, f"{context}: message {sha} corrupt"
    for mailbox, uid, expected_size, prefix_len, message_size in rows.sizes:
        assert expected_size == prefix_len + message_size, f"{context}: size of {mailbox}/{uid}"
    for account_id, used_bytes, used_messages, real_bytes, real_messages in rows.quota:
        assert (used_bytes, used_messages) == (real_bytes, real_messages), (
            f"{context}: quota counters of account {account_id} drifted"
        )
    for mailbox_id, uidnext, highestmodseq, max_uid, max_modseq, max_tomb in rows.mailboxes:
        assert uidnext > max(max_uid, max_tomb), f"{context}: uidnext of {mailbox_id} behind"
        assert highestmodseq >= max_modseq, f"{context}: highestmodseq of {mailbox_id} behind"

    # What is there now is what later runs must keep.
    ledger.entries = found
    ledger.messages_in_files = max(ledger.messages_in_files, in_files)


async def _append_after_crash(store: SqliteStore, ledger: Ledger, context: str) -> None:
    raw = f"Subject: after {context}\r\nMessage-ID: <{time.time_ns()}@x>\r\n\r\nstill here\r\n"
    targets = [AppendTarget(mailbox) for mailbox in sorted(ledger.inboxes)]
    results = await store.append(raw.encode(), targets)
    for result in results:
        assert all(
            result.uid > uid for mailbox, uid in ledger.entries if mailbox == result.mailbox_id
        ), f"{context}: UID {result.uid} not above the UIDs already in {result.mailbox_id}"
        assert await store.read_message(result.mailbox_id, result.uid) == raw.encode()
        ledger.entries[(result.mailbox_id, result.uid)] = hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class _Rows:
    referenced_messages: list[tuple[str, int, bytes | None]]  # sha256, size, inline content
    sizes: list[tuple[int, int, int, int, int]]
    quota: list[tuple[int, int, int, int, int]]
    mailboxes: list[tuple[int, int, int, int, int, int]]


def _read_blob(store: SqliteStore, sha: str) -> bytes | None:
    try:
        return store.blobs.get(sha)
    except FileNotFoundError:
        return None


def _dump(conn: sqlite3.Connection) -> _Rows:
    return _Rows(
        referenced_messages=conn.execute(
            "SELECT sha256, size, content FROM messages "
            "WHERE id IN (SELECT message_id FROM entries)"
        ).fetchall(),
        sizes=conn.execute(
            "SELECT e.mailbox_id, e.uid, e.size, length(coalesce(e.prefix, x'')), m.size "
            "FROM entries e JOIN messages m ON m.id = e.message_id"
        ).fetchall(),
        quota=conn.execute(
            "SELECT a.id, a.used_bytes, a.used_messages, "
            "(SELECT coalesce(sum(e.size), 0) FROM entries e JOIN mailboxes b "
            " ON b.id = e.mailbox_id WHERE b.account_id = a.id), "
            "(SELECT count(*) FROM entries e JOIN mailboxes b "
            " ON b.id = e.mailbox_id WHERE b.account_id = a.id) FROM accounts a"
        ).fetchall(),
        mailboxes=conn.execute(
            "SELECT b.id, b.uidnext, b.highestmodseq, "
            "(SELECT coalesce(max(uid), 0) FROM entries e WHERE e.mailbox_id = b.id), "
            "(SELECT coalesce(max(modseq), 0) FROM entries e WHERE e.mailbox_id = b.id), "
            "(SELECT coalesce(max(uid), 0) FROM tombstones t WHERE t.mailbox_id = b.id) "
            "FROM mailboxes b"
        ).fetchall(),
    )


class CrashSeries:
    """Rounds of run, kill, reopen and verify, all on one data folder."""

    def __init__(self, data_dir: Path, mode: str, rng: random.Random) -> None:
        self.data_dir = data_dir
        self.mode = mode
        self.rng = rng
        self.ledger = Ledger()
        self.runs: list[ChildRun] = []
        asyncio.run(_setup(data_dir))

    def round(self, kill_when: str, arg: float) -> ChildRun:
        index = len(self.runs)
        context = f"seed {SEED}, {self.mode} round {index} (kill at {kill_when} {arg})"
        run = run_child(self.data_dir, self.mode, f"r{index}", kill_when, arg, self.rng)
        if kill_when == "acks":
            assert run.acked_appends >= arg, f"{context}: child stopped early\n{run.stderr}"
        asyncio.run(_verify(self.data_dir, self.ledger, run, context))
        self.runs.append(run)
        return run

    def finish(self) -> None:
        assert self.ledger.messages_in_files > 0, "no large message reached a blob file"
        assert len(self.ledger.entries) > 50, "hardly anything appended"


# A round aimed at a moment the child may already have passed when the kill lands (the
# append or the sweep finished first) is tried again, up to this many times.
AIMED_TRIES = 8


def test_kill_during_appends_loses_no_acknowledged_message(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    series = CrashSeries(tmp_path, "append", rng)
    series.round("start", 0.0)
    series.round("acks", 1)
    series.round("acks", rng.randint(2, 15))
    series.round("acks", rng.randint(16, 60))
    assert any(
        (run := series.round("large", rng.uniform(0.0, 0.002))).in_flight is not None
        and run.in_flight.large
        for _ in range(AIMED_TRIES)
    ), "no kill landed while a large append was in flight"
    series.round("acks", rng.randint(1, 30))
    series.finish()
    assert not any(run.errors for run in series.runs), [r.stderr for r in series.runs if r.errors]


def test_kill_during_sweep_with_deduplicated_appends(tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    series = CrashSeries(tmp_path, "sweep", rng)
    series.round("acks", rng.randint(5, 40))
    assert any(
        series.round("sweep", rng.uniform(0.0, 0.001)).sweeping for _ in range(AIMED_TRIES)
    ), "no kill landed inside a sweep()"
    series.round("start", 0.0)
    series.round("sweep", rng.uniform(0.0, 0.005))
    series.round("acks", rng.randint(40, 80))
    series.finish()
    assert sum(run.sweeps for run in series.runs) >= 3, "the sweeper never ran"
    # The appends shared their content: one message row per distinct content at most
    # (4 in the pool, plus one written after each round).
    counts = asyncio.run(_counts(tmp_path))
    assert counts["messages"] <= 4 + len(series.runs)
    assert counts["entries"] > counts["messages"]


async def _counts(data_dir: Path) -> dict[str, int]:
    store = await open_store(data_dir)
    try:
        return await store.counts()
    finally:
        await store.close()
