"""The queue worker's store operations: attempt results, hold / release / retry / remove."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postoffice.delivery.model import Envelope, Recipient
from postoffice.store import SqliteStore, open_store
from postoffice.store.api import AttemptResult, QueueState

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
RAW = b"From: <bob@example.test>\r\nSubject: s\r\n\r\nbody\r\n"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await open_store(tmp_path)
    yield s
    await s.close()


async def enqueue(store: SqliteStore, *addresses: str) -> int:
    return await store.outbound.enqueue(
        RAW, Envelope("bob@example.test", ()), [Recipient(a) for a in addresses], "s", T0
    )


async def test_enqueue_at_a_given_time(store: SqliteStore) -> None:
    message_id = await enqueue(store, "a@remote.test")
    message = await store.outbound.get(message_id)
    assert message is not None
    assert message.created == T0
    assert message.recipients[0].next_attempt == T0
    assert await store.outbound.list(due_before=T0 - dt.timedelta(seconds=1)) == []
    assert [m.id for m in await store.outbound.list(due_before=T0)] == [message_id]


async def test_record_moves_each_recipient_and_logs(store: SqliteStore) -> None:
    message_id = await enqueue(store, "a@remote.test", "b@remote.test")
    message = await store.outbound.get(message_id)
    assert message is not None
    a, b = message.recipients
    later = T0 + dt.timedelta(minutes=1)
    await store.outbound.record(
        message_id,
        [
            AttemptResult(a.id, QueueState.DELIVERED, "250 2.0.0 ok"),
            AttemptResult(b.id, QueueState.PENDING, "451 4.3.0 later", later),
        ],
        T0,
    )
    message = await store.outbound.get(message_id)
    assert message is not None
    a, b = message.recipients
    assert (a.state, a.attempts, a.last_error) == (QueueState.DELIVERED, 1, None)
    assert a.log == ("2026-11-30T12:00:00Z delivered: 250 2.0.0 ok",)
    assert (b.state, b.attempts, b.next_attempt) == (QueueState.PENDING, 1, later)
    assert b.last_error == "451 4.3.0 later"
    # The last open recipient failing removes the message in the same transaction.
    await store.outbound.record(
        message_id, [AttemptResult(b.id, QueueState.FAILED, "550 5.1.1 no")], later
    )
    assert await store.outbound.get(message_id) is None


async def test_hold_release_retry_remove(store: SqliteStore) -> None:
    first = await enqueue(store, "a@remote.test", "b@remote.test")
    second = await enqueue(store, "c@remote.test")
    assert await store.outbound.hold(first) == 2
    assert await store.outbound.hold(first) == 0
    assert [m.id for m in await store.outbound.list(due_before=T0)] == [second]
    assert [m.id for m in await store.outbound.list(state=QueueState.HELD)] == [first]
    later = T0 + dt.timedelta(hours=1)
    assert await store.outbound.release(first, later) == 2
    message = await store.outbound.get(first)
    assert message is not None
    assert {r.next_attempt for r in message.recipients} == {later}
    assert await store.outbound.retry_now(first, T0) == 2
    assert await store.outbound.retry_now(None, T0) == 3
    assert await store.outbound.remove(first)
    assert not await store.outbound.remove(first)
    assert [m.id for m in await store.outbound.list(state=None)] == [second]


async def test_mark_warned(store: SqliteStore) -> None:
    message_id = await enqueue(store, "a@remote.test")
    message = await store.outbound.get(message_id)
    assert message is not None
    assert not message.recipients[0].warned
    await store.outbound.mark_warned([message.recipients[0].id])
    message = await store.outbound.get(message_id)
    assert message is not None
    assert message.recipients[0].warned


async def test_an_older_database_gets_the_warned_column(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.close()
    conn = sqlite3.connect(tmp_path / "store" / "meta.sqlite3")
    conn.execute("ALTER TABLE queue_recipients DROP COLUMN warned")
    conn.commit()
    conn.close()
    store = await open_store(tmp_path)
    try:
        message_id = await enqueue(store, "a@remote.test")
        message = await store.outbound.get(message_id)
        assert message is not None
        assert not message.recipients[0].warned
    finally:
        await store.close()
