"""The outbound queue in the store: enqueue, read back, list, durability, blob files."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postoffice.delivery.model import Envelope, Recipient
from postoffice.store import SqliteStore, open_store
from postoffice.store.api import QueueState
from postoffice.store.blobs import blob_name
from postoffice.store.model import StoreError
from postoffice.store.outbound import blob_is_queued

INLINE_MAX = 1024
MESSAGE = b"From: bob@example.test\r\nTo: friend@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"
ENVELOPE = Envelope(
    sender="bob@example.test",
    recipients=(),
    body="8BITMIME",
    smtputf8=True,
    ret="HDRS",
    envid="env-42",
)
RECIPIENTS = (
    Recipient("friend@remote.test", ("SUCCESS", "FAILURE"), "rfc822;friend@remote.test"),
    Recipient("other@elsewhere.test"),
    Recipient("quiet@remote.test", ("NEVER",)),
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await open_store(tmp_path, inline_max=INLINE_MAX)
    yield s
    await s.close()


async def test_enqueue_and_read_back(store: SqliteStore) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    message_id = await store.outbound.enqueue(MESSAGE, ENVELOPE, RECIPIENTS, "sess-1")
    queued = await store.outbound.get(message_id)
    assert queued is not None
    assert queued.id == message_id
    assert queued.envelope == Envelope(
        sender="bob@example.test",
        recipients=RECIPIENTS,
        body="8BITMIME",
        smtputf8=True,
        ret="HDRS",
        envid="env-42",
    )
    assert [r.recipient for r in queued.recipients] == list(RECIPIENTS)
    assert queued.size == len(MESSAGE)
    assert queued.origin_session == "sess-1"
    assert queued.created >= before
    for recipient in queued.recipients:
        assert recipient.state is QueueState.PENDING
        assert recipient.attempts == 0
        assert recipient.last_error is None
        assert recipient.log == ()
        assert recipient.next_attempt >= before
    assert await store.outbound.read(message_id) == MESSAGE


async def test_null_sender_and_no_dsn_parameters(store: SqliteStore) -> None:
    envelope = Envelope(sender="", recipients=())
    message_id = await store.outbound.enqueue(MESSAGE, envelope, [Recipient("x@remote.test")], "s")
    queued = await store.outbound.get(message_id)
    assert queued is not None
    assert queued.envelope == Envelope("", (Recipient("x@remote.test"),))


async def test_list_by_state_and_due_time(store: SqliteStore) -> None:
    first = await store.outbound.enqueue(MESSAGE, ENVELOPE, RECIPIENTS[:1], "s1")
    second = await store.outbound.enqueue(MESSAGE + b"2", ENVELOPE, RECIPIENTS[1:], "s2")
    now = dt.datetime.now(dt.UTC)
    assert [m.id for m in await store.outbound.list()] == [first, second]
    assert [m.id for m in await store.outbound.list(limit=1)] == [first]
    assert [m.id for m in await store.outbound.list(due_before=now + dt.timedelta(seconds=5))] == [
        first,
        second,
    ]
    assert await store.outbound.list(due_before=now - dt.timedelta(hours=1)) == []
    assert await store.outbound.list(state=QueueState.DELIVERED) == []
    assert len(await store.outbound.list(state=None)) == 2
    listed = (await store.outbound.list())[1]
    assert len(listed.recipients) == 2  # a message comes with all its recipients


async def test_unknown_ids(store: SqliteStore) -> None:
    assert await store.outbound.get(12345) is None
    assert await store.outbound.read(12345) is None


async def test_a_message_needs_recipients(store: SqliteStore) -> None:
    with pytest.raises(StoreError):
        await store.outbound.enqueue(MESSAGE, ENVELOPE, [], "s")


async def test_large_message_goes_to_a_blob_file(store: SqliteStore) -> None:
    big = MESSAGE + b"x" * (INLINE_MAX * 4) + b"\r\n"
    sha256 = blob_name(big)
    message_id = await store.outbound.enqueue(big, ENVELOPE, RECIPIENTS, "s")
    assert store.blobs.exists(sha256)
    assert await store.outbound.read(message_id) == big
    # What the sweeper must ask before it removes a blob file.
    assert await store.db.read(lambda conn: blob_is_queued(conn, sha256))
    assert not await store.db.read(lambda conn: blob_is_queued(conn, blob_name(b"other")))
    inline = await store.db.read(
        lambda conn: conn.execute(
            "SELECT content IS NULL FROM queue_messages WHERE id = ?", (message_id,)
        ).fetchone()[0]
    )
    assert inline == 1


async def test_a_swept_blob_is_written_again(store: SqliteStore) -> None:
    # The file vanished between its write and the transaction (the sweeper's race).
    big = MESSAGE + b"y" * (INLINE_MAX * 2)
    original_put = store.blobs.put
    calls: list[int] = []

    def put_then_lose(data: bytes) -> str:
        name = original_put(data)
        calls.append(1)
        if len(calls) == 1:
            store.blobs.delete(name)
        return name

    store.blobs.put = put_then_lose  # type: ignore[method-assign]
    message_id = await store.outbound.enqueue(big, ENVELOPE, RECIPIENTS, "s")
    assert len(calls) == 2
    assert await store.outbound.read(message_id) == big


async def test_queue_survives_reopening(tmp_path: Path) -> None:
    store = await open_store(tmp_path, inline_max=INLINE_MAX)
    message_id = await store.outbound.enqueue(MESSAGE, ENVELOPE, RECIPIENTS, "s")
    await store.close()
    reopened = await open_store(tmp_path, inline_max=INLINE_MAX)
    try:
        queued = await reopened.outbound.get(message_id)
        assert queued is not None
        assert [r.recipient for r in queued.recipients] == list(RECIPIENTS)
        assert await reopened.outbound.read(message_id) == MESSAGE
    finally:
        await reopened.close()


async def test_sweep_keeps_blob_files_of_queued_messages(tmp_path: Path) -> None:
    store = await open_store(tmp_path, inline_max=1024)
    try:
        big = b"Subject: big\r\n\r\n" + b"x" * 4096 + b"\r\n"
        queued = await store.outbound.enqueue(
            big,
            Envelope("alice@example.test", (Recipient("bob@remote.test"),)),
            (Recipient("bob@remote.test"),),
            "session-1",
        )
        await store.sweep(min_age_seconds=0)
        assert await store.outbound.read(queued) == big
    finally:
        await store.close()
