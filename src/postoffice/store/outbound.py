"""The outbound queue on SQLite + blob files (DESIGN §5): the `OutboundQueue` of api.py.

A queued message is one `queue_messages` row (content inline when small, else a blob file,
exactly as `messages` does) and one `queue_recipients` row per recipient, which the queue
worker moves through pending → delivered | failed (or held).  Enqueueing goes through the
group commit like every other write, so it costs no fsync of its own when small.  Once no
recipient is pending or held the message leaves the queue in the transaction that recorded
its last result; its blob file is then the sweeper's.
"""

from __future__ import annotations

import asyncio
import builtins
import datetime as dt
import functools
import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Final, Literal

from postoffice.store.api import AttemptResult, QueuedMessage, QueuedRecipient, QueueState
from postoffice.store.blobs import FileBlobStore, hash_off_loop
from postoffice.store.database import Database, Emit
from postoffice.store.model import Envelope, Recipient, StoreError

_ENQUEUE_ATTEMPTS: Final = 3
_MESSAGE_COLUMNS: Final = "id, size, sender, envid, ret, body, smtputf8, origin_session, created"
_RECIPIENT_COLUMNS: Final = (
    "id, message_id, address, notify, orcpt, state, next_attempt, attempts, last_error, log, warned"
)

Row = tuple[Any, ...]


class _BlobGone(Exception):
    """The sweeper removed the blob between its write and the transaction: put it again."""


def blob_is_queued(conn: sqlite3.Connection, sha256: str) -> bool:
    """Whether a queued message still needs the blob file `sha256` (for the sweeper)."""
    return (
        conn.execute("SELECT 1 FROM queue_messages WHERE sha256 = ?", (sha256,)).fetchone()
        is not None
    )


def _stamp(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _body(value: str | None) -> Literal["7BIT", "8BITMIME", "BINARYMIME"] | None:
    match value:
        case "7BIT":
            return "7BIT"
        case "8BITMIME":
            return "8BITMIME"
        case "BINARYMIME":
            return "BINARYMIME"
        case _:
            return None


def _ret(value: str | None) -> Literal["FULL", "HDRS"] | None:
    match value:
        case "FULL":
            return "FULL"
        case "HDRS":
            return "HDRS"
        case _:
            return None


def _recipient(row: Row) -> QueuedRecipient:
    notify = row[3]
    return QueuedRecipient(
        id=int(row[0]),
        recipient=Recipient(
            address=str(row[2]),
            notify=tuple(notify.split(",")) if notify is not None else None,
            orcpt=row[4],
        ),
        state=QueueState(row[5]),
        next_attempt=_stamp(int(row[6])),
        attempts=int(row[7]),
        last_error=row[8],
        log=tuple(json.loads(row[9])),
        warned=bool(row[10]),
    )


def _message(row: Row, recipients: Sequence[QueuedRecipient]) -> QueuedMessage:
    envelope = Envelope(
        sender=str(row[2]),
        recipients=tuple(r.recipient for r in recipients),
        body=_body(row[5]),
        smtputf8=bool(row[6]),
        ret=_ret(row[4]),
        envid=row[3],
    )
    return QueuedMessage(
        id=int(row[0]),
        envelope=envelope,
        recipients=tuple(recipients),
        size=int(row[1]),
        created=_stamp(int(row[8])),
        origin_session=str(row[7]),
    )


def _load(conn: sqlite3.Connection, ids: Sequence[int]) -> builtins.list[QueuedMessage]:
    messages: builtins.list[QueuedMessage] = []
    for message_id in ids:
        row = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM queue_messages WHERE id = ?", (message_id,)
        ).fetchone()
        if row is None:
            continue
        recipients = [
            _recipient(r)
            for r in conn.execute(
                f"SELECT {_RECIPIENT_COLUMNS} FROM queue_recipients WHERE message_id = ? "
                "ORDER BY id",
                (message_id,),
            )
        ]
        messages.append(_message(row, recipients))
    return messages


class SqliteOutbound:
    """Created by SqliteStore, sharing its writer thread, readers and blob folder."""

    def __init__(self, db: Database, blobs: FileBlobStore, *, inline_max: int) -> None:
        self.db = db
        self.blobs = blobs
        self.inline_max = inline_max

    async def enqueue(
        self,
        raw: bytes,
        envelope: Envelope,
        recipients: Sequence[Recipient],
        origin_session: str,
        now: dt.datetime | None = None,
    ) -> int:
        if not recipients:
            raise StoreError("a queued message needs at least one recipient")
        sha256 = await hash_off_loop(raw)
        inline = len(raw) <= self.inline_max
        if not inline:
            # DESIGN §3: the file is fsync'd before the transaction naming it commits.
            await asyncio.to_thread(self.blobs.put, raw)
        op = functools.partial(
            self._enqueue_op,
            raw=raw,
            sha256=sha256,
            inline=inline,
            envelope=envelope,
            recipients=tuple(recipients),
            origin_session=origin_session,
            now=int(now.timestamp()) if now is not None else int(time.time()),
        )
        for _attempt in range(_ENQUEUE_ATTEMPTS):
            try:
                return await self.db.write(op)
            except _BlobGone:
                await asyncio.to_thread(self.blobs.put, raw)
        raise StoreError("enqueue kept racing the blob sweeper; try again")

    def _enqueue_op(
        self,
        conn: sqlite3.Connection,
        emit: Emit,
        *,
        raw: bytes,
        sha256: str,
        inline: bool,
        envelope: Envelope,
        recipients: tuple[Recipient, ...],
        origin_session: str,
        now: int,
    ) -> int:
        # The sweeper unlinks files on this same thread: a file seen here stays until
        # this transaction has committed the row that protects it.
        if not inline and not self.blobs.exists(sha256):
            raise _BlobGone
        cursor = conn.execute(
            "INSERT INTO queue_messages(sha256, content, size, sender, envid, ret, body, "
            "smtputf8, origin_session, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sha256,
                raw if inline else None,
                len(raw),
                envelope.sender,
                envelope.envid,
                envelope.ret,
                envelope.body,
                int(envelope.smtputf8),
                origin_session,
                now,
            ),
        )
        message_id = int(cursor.lastrowid or 0)
        conn.executemany(
            "INSERT INTO queue_recipients(message_id, address, domain, notify, orcpt, "
            "next_attempt) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    message_id,
                    r.address,
                    r.address.rpartition("@")[2],
                    ",".join(r.notify) if r.notify is not None else None,
                    r.orcpt,
                    now,
                )
                for r in recipients
            ],
        )
        return message_id

    async def list(
        self,
        *,
        state: QueueState | None = QueueState.PENDING,
        due_before: dt.datetime | None = None,
        limit: int = 100,
    ) -> builtins.list[QueuedMessage]:
        state_value = state.value if state is not None else None
        due = int(due_before.timestamp()) if due_before is not None else None

        def op(conn: sqlite3.Connection) -> builtins.list[QueuedMessage]:
            ids = [
                int(row[0])
                for row in conn.execute(
                    "SELECT DISTINCT message_id FROM queue_recipients "
                    "WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR next_attempt <= ?2) "
                    "ORDER BY message_id LIMIT ?3",
                    (state_value, due, limit),
                )
            ]
            return _load(conn, ids)

        return await self.db.read(op)

    async def get(self, message_id: int) -> QueuedMessage | None:
        found = await self.db.read(lambda conn: _load(conn, [message_id]))
        return found[0] if found else None

    async def read(self, message_id: int) -> bytes | None:
        row = await self.db.read(
            lambda conn: conn.execute(
                "SELECT sha256, content FROM queue_messages WHERE id = ?", (message_id,)
            ).fetchone()
        )
        if row is None:
            return None
        sha256, content = row
        if content is not None:
            return bytes(content)
        return await asyncio.to_thread(self.blobs.get, sha256)

    async def record(
        self, message_id: int, results: Sequence[AttemptResult], now: dt.datetime
    ) -> None:
        when = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            for result in results:
                row = conn.execute(
                    "SELECT log, next_attempt FROM queue_recipients "
                    "WHERE id = ? AND message_id = ?",
                    (result.recipient_id, message_id),
                ).fetchone()
                if row is None:  # removed by the admin while the attempt ran
                    continue
                log = [*json.loads(row[0]), f"{when} {result.state.value}: {result.detail}"]
                due = (
                    int(result.next_attempt.timestamp())
                    if result.next_attempt is not None
                    else int(row[1])
                )
                conn.execute(
                    "UPDATE queue_recipients SET state = ?, next_attempt = ?, "
                    "attempts = attempts + 1, last_error = ?, log = ? WHERE id = ?",
                    (
                        result.state.value,
                        due,
                        None if result.state is QueueState.DELIVERED else result.detail,
                        json.dumps(log),
                        result.recipient_id,
                    ),
                )
            _drop_if_done(conn, message_id)

        await self.db.write(op)

    async def mark_warned(self, recipient_ids: Sequence[int]) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            conn.executemany(
                "UPDATE queue_recipients SET warned = 1 WHERE id = ?",
                [(r,) for r in recipient_ids],
            )

        await self.db.write(op)

    async def hold(self, message_id: int) -> int:
        return await self._set_state(message_id, QueueState.PENDING, QueueState.HELD, None)

    async def release(self, message_id: int, now: dt.datetime) -> int:
        return await self._set_state(message_id, QueueState.HELD, QueueState.PENDING, now)

    async def retry_now(self, message_id: int | None, now: dt.datetime) -> int:
        return await self._set_state(message_id, QueueState.PENDING, QueueState.PENDING, now)

    async def _set_state(
        self,
        message_id: int | None,
        old: QueueState,
        new: QueueState,
        due: dt.datetime | None,
    ) -> int:
        stamp = int(due.timestamp()) if due is not None else None

        def op(conn: sqlite3.Connection, emit: Emit) -> int:
            cursor = conn.execute(
                "UPDATE queue_recipients SET state = ?1, "
                "next_attempt = coalesce(?2, next_attempt) "
                "WHERE state = ?3 AND (?4 IS NULL OR message_id = ?4)",
                (new.value, stamp, old.value, message_id),
            )
            return cursor.rowcount

        return await self.db.write(op)

    async def remove(self, message_id: int) -> bool:
        def op(conn: sqlite3.Connection, emit: Emit) -> bool:
            conn.execute("DELETE FROM queue_recipients WHERE message_id = ?", (message_id,))
            cursor = conn.execute("DELETE FROM queue_messages WHERE id = ?", (message_id,))
            return cursor.rowcount > 0

        return await self.db.write(op)


def _drop_if_done(conn: sqlite3.Connection, message_id: int) -> None:
    """Remove a message none of whose recipients is waiting any more."""
    waiting = conn.execute(
        "SELECT 1 FROM queue_recipients WHERE message_id = ? AND state IN ('pending', 'held') "
        "LIMIT 1",
        (message_id,),
    ).fetchone()
    if waiting is None:
        conn.execute("DELETE FROM queue_recipients WHERE message_id = ?", (message_id,))
        conn.execute("DELETE FROM queue_messages WHERE id = ?", (message_id,))
