"""SQLite on threads of its own, with group commit (DESIGN §4).

The event loop never runs SQL.  Writes are queued to one writer thread, which takes every
write waiting at that moment, runs each in its own SAVEPOINT inside one transaction and
commits once: one WAL fsync (synchronous=FULL) makes the whole group durable.  A write that
fails rolls back only its own savepoint.  Reads run on a small pool with one connection per
thread; WAL lets them proceed while the writer commits.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from postoffice.store.events import Event

T = TypeVar("T")
Emit = Callable[[int, Event], None]
WriteOp = Callable[[sqlite3.Connection, Emit], T]
ReadOp = Callable[[sqlite3.Connection], T]

SCHEMA_VERSION = "1"


def _connect(path: Path, setup: Callable[[sqlite3.Connection], None]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA foreign_keys = ON")
    setup(conn)
    return conn


@dataclass(slots=True)
class _Pending:
    op: Callable[[sqlite3.Connection, Emit], Any]
    future: asyncio.Future[Any]
    events: list[tuple[int, Event]] = field(default_factory=list)
    result: Any = None
    error: BaseException | None = None

    def emit(self, account_id: int, event: Event) -> None:
        self.events.append((account_id, event))


class Database:
    def __init__(
        self,
        path: Path,
        *,
        publish: Emit,
        setup: Callable[[sqlite3.Connection], None] = lambda conn: None,
        readers: int = 2,
        group_commit_max: int = 256,
    ) -> None:
        self.path = path
        self._publish = publish
        self._setup = setup
        self._group_commit_max = group_commit_max
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: threading.Thread | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="store-read")

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._writer = threading.Thread(
            target=self._run_writer, args=(ready,), name="store-write", daemon=True
        )
        self._writer.start()
        await ready

    async def close(self) -> None:
        if self._writer is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    # -- writes ----------------------------------------------------------------------------
    async def write(self, op: WriteOp[T]) -> T:
        assert self._loop is not None, "Database.start() not awaited"
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Pending(op, future))
        return await future

    def _run_writer(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = _connect(self.path, self._setup)
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: the WAL is fsync'd at every commit, which is what makes "250 OK" true.
            conn.execute("PRAGMA synchronous = FULL")
            schema = resources.files("postoffice.store").joinpath("schema.sql").read_text()
            conn.executescript(schema)
            _add_missing_columns(conn)
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
        except BaseException as exc:  # reported to start(), which re-raises it
            loop.call_soon_threadsafe(ready.set_exception, exc)
            return
        loop.call_soon_threadsafe(ready.set_result, None)
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < self._group_commit_max:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._commit_group(conn, batch)
                loop.call_soon_threadsafe(self._complete, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        try:
            self._run_group(conn, batch)
        except BaseException as exc:
            # Whatever went wrong (disk full, I/O error), nothing of this group is committed:
            # every item fails, and the writer stays alive for the next group.
            if conn.in_transaction:
                conn.rollback()
            for item in batch:
                item.error = exc
                item.events.clear()

    @staticmethod
    def _run_group(conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for item in batch:
            conn.execute("SAVEPOINT op")
            try:
                item.result = item.op(conn, item.emit)
            except Exception as exc:
                if not conn.in_transaction:
                    # SQLite ended the whole transaction itself (SQLITE_FULL, SQLITE_IOERR
                    # ...): the items before this one are undone too.
                    raise
                conn.execute("ROLLBACK TO op")
                item.error = exc
                item.events.clear()
            conn.execute("RELEASE op")
        conn.execute("COMMIT")

    def _complete(self, batch: list[_Pending]) -> None:
        # Events first, in commit order, so a session woken by its own reply already has
        # every earlier change queued.
        for item in batch:
            for account, event in item.events:
                self._publish(account, event)
        for item in batch:
            if item.future.cancelled():
                continue
            if item.error is not None:
                item.future.set_exception(item.error)
            else:
                item.future.set_result(item.result)

    # -- reads -----------------------------------------------------------------------------
    async def read(self, op: ReadOp[T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, op)

    def _run_read(self, op: ReadOp[T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, self._setup)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        # One snapshot per read operation, even when it runs several statements.
        conn.execute("BEGIN")
        try:
            return op(conn)
        finally:
            conn.execute("COMMIT")


# Columns added after a release: (table, column, definition).  CREATE TABLE IF NOT EXISTS
# leaves an older table as it was, so each is added here when missing.
_ADDED_COLUMNS = (
    ("mailboxes", "recent_uid", "INTEGER NOT NULL DEFAULT 0"),
    ("accounts", "pop_enabled", "INTEGER NOT NULL DEFAULT 1"),
    ("accounts", "pop_login_delay", "INTEGER NOT NULL DEFAULT 0"),
    ("accounts", "pop_expire_days", "INTEGER"),
    ("accounts", "pop_apop_secret", "TEXT"),
    ("accounts", "pop_last_login", "INTEGER"),
    ("entries", "pop_retrieved", "INTEGER"),
    ("queue_recipients", "warned", "INTEGER NOT NULL DEFAULT 0"),
)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    for table, column, definition in _ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
