"""Unit tests of the embedded store through its public API (one real SQLite + blob folder)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postoffice.store import SqliteStore, open_store
from postoffice.store.api import TrainedMessage
from postoffice.store.events import (
    Expunged,
    FlagsChanged,
    MailboxDeleted,
    MailboxRenamed,
    MessagesAdded,
)
from postoffice.store.model import (
    AlreadyExists,
    AppendTarget,
    FetchWhat,
    Flag,
    InvalidName,
    NotFound,
    QuotaExceeded,
    SpecialUse,
    StoreError,
    StoreMode,
    UidSet,
)
from postoffice.store.search import And, Body, HasFlag, Header, Not, Or, Size, Text

MESSAGE = (
    b"From: Alice Example <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: Lunch on Friday\r\n"
    b"Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n"
    b"Message-ID: <lunch-1@example.test>\r\n"
    b"\r\n"
    b"Shall we meet at the usual place?\r\n"
)


def message(n: int, body: str = "hello") -> bytes:
    return (
        f"From: sender{n}@example.test\r\nTo: bob@example.test\r\nSubject: message {n}\r\n"
        f"Message-ID: <m{n}@example.test>\r\n\r\n{body} {n}\r\n"
    ).encode()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await open_store(tmp_path)
    await s.add_domain("example.test")
    yield s
    await s.close()


async def make_user(
    store: SqliteStore,
    address: str = "bob@example.test",
    quota_bytes: int | None = None,
    quota_messages: int | None = None,
) -> int:
    account = await store.add_account(address, "hash", None, quota_bytes, quota_messages)
    return account.id


async def inbox(store: SqliteStore, account_id: int) -> int:
    mailbox = await store.get_mailbox(account_id, "INBOX")
    assert mailbox is not None
    return mailbox.id


# -- domains, accounts, aliases --------------------------------------------------------------


async def test_domains(store: SqliteStore) -> None:
    await store.add_domain("Other.TEST")
    assert await store.list_domains() == ["example.test", "other.test"]
    assert await store.is_local_domain("OTHER.test")
    with pytest.raises(AlreadyExists):
        await store.add_domain("other.test")
    await store.remove_domain("other.test")
    with pytest.raises(NotFound):
        await store.remove_domain("other.test")


async def test_domain_with_users_cannot_be_removed(store: SqliteStore) -> None:
    await make_user(store)
    with pytest.raises(StoreError, match="still has 1 user"):
        await store.remove_domain("example.test")


async def test_account_gets_special_use_mailboxes(store: SqliteStore) -> None:
    account_id = await make_user(store)
    mailboxes = await store.list_mailboxes(account_id)
    assert [(m.name, m.special_use) for m in mailboxes] == [
        ("INBOX", None),
        ("Archive", SpecialUse.ARCHIVE),
        ("Drafts", SpecialUse.DRAFTS),
        ("Junk", SpecialUse.JUNK),
        ("Sent", SpecialUse.SENT),
        ("Trash", SpecialUse.TRASH),
    ]
    assert all(m.subscribed for m in mailboxes)
    assert len({m.uidvalidity for m in mailboxes}) == len(mailboxes)


async def test_account_errors(store: SqliteStore) -> None:
    await make_user(store)
    with pytest.raises(AlreadyExists):
        await make_user(store, "BOB@example.test")
    with pytest.raises(NotFound, match="unknown domain"):
        await make_user(store, "carol@nowhere.test")
    with pytest.raises(NotFound):
        await store.remove_account("nobody@example.test")
    with pytest.raises(NotFound):
        await store.set_password("nobody@example.test", "h", None)


async def test_credentials_and_password_change(store: SqliteStore) -> None:
    account_id = await make_user(store)
    await store.set_password("bob@example.test", "new-hash", "scram")
    creds = await store.get_credentials("Bob@Example.test")
    assert creds is not None
    assert (creds.account_id, creds.password_hash, creds.scram_sha256) == (
        account_id,
        "new-hash",
        "scram",
    )
    assert await store.get_credentials("nobody@example.test") is None


async def test_aliases(store: SqliteStore) -> None:
    await make_user(store)
    await store.add_alias("postmaster@example.test", ["bob@example.test"])
    await store.add_alias("@example.test", ["bob@example.test", "x@remote.test"])
    alias = await store.get_alias("POSTMASTER@example.test")
    assert alias is not None and alias.targets == ("bob@example.test",)
    assert [a.address for a in await store.list_aliases()] == [
        "@example.test",
        "postmaster@example.test",
    ]
    with pytest.raises(AlreadyExists):
        await store.add_alias("bob@example.test", ["x@remote.test"])
    with pytest.raises(NotFound):
        await store.add_alias("a@nowhere.test", ["bob@example.test"])
    await store.remove_alias("postmaster@example.test")
    assert await store.get_alias("postmaster@example.test") is None


async def test_remove_account_frees_everything(store: SqliteStore) -> None:
    account_id = await make_user(store)
    await store.append(MESSAGE, [AppendTarget(await inbox(store, account_id))])
    await store.remove_account("bob@example.test")
    assert await store.get_account("bob@example.test") is None
    assert await store.list_mailboxes(account_id) == []
    counts = await store.counts()
    assert counts["entries"] == 0


# -- mailboxes -------------------------------------------------------------------------------


async def test_mailbox_create_rename_delete_with_children(store: SqliteStore) -> None:
    account_id = await make_user(store)
    await store.create_mailbox(account_id, "Work")
    await store.create_mailbox(account_id, "Work/2026")
    await store.create_mailbox(account_id, "Work/2026/Q4")
    await store.create_mailbox(account_id, "Workshop")
    await store.set_subscribed(account_id, "Work/2026", True)
    sub = store.events.subscribe(account_id, 0)
    renamed = await store.rename_mailbox(account_id, "Work", "Job")
    assert renamed.name == "Job"
    names = [m.name for m in await store.list_mailboxes(account_id, "", "*")]
    assert "Job/2026/Q4" in names and "Workshop" in names and "Work/2026" not in names
    events = sub.pending()
    assert {(e.old_name, e.new_name) for e in events if isinstance(e, MailboxRenamed)} == {
        ("Work", "Job"),
        ("Work/2026", "Job/2026"),
        ("Work/2026/Q4", "Job/2026/Q4"),
    }
    subscriptions = await store.list_subscriptions(account_id)
    assert "Job/2026" in subscriptions and "Work/2026" not in subscriptions
    await store.delete_mailbox(account_id, "Job")
    assert isinstance(sub.pending()[-1], MailboxDeleted)
    # RFC 9051 §6.3.4: children survive their parent's deletion.
    assert await store.get_mailbox(account_id, "Job/2026") is not None


async def test_mailbox_name_rules(store: SqliteStore) -> None:
    account_id = await make_user(store)
    for bad in ("", "a//b", "/a", "a/", "a*b", "a%", "tab\there"):
        with pytest.raises(InvalidName):
            await store.create_mailbox(account_id, bad)
    with pytest.raises(AlreadyExists):
        await store.create_mailbox(account_id, "inbox")
    child = await store.create_mailbox(account_id, "inbox/Child")
    assert child.name == "INBOX/Child"
    with pytest.raises(InvalidName):
        await store.delete_mailbox(account_id, "INBOX")
    with pytest.raises(NotFound):
        await store.delete_mailbox(account_id, "Nope")
    with pytest.raises(AlreadyExists):
        await store.rename_mailbox(account_id, "Sent", "Trash")
    with pytest.raises(InvalidName):
        await store.rename_mailbox(account_id, "Sent", "Sent/inner")
    with pytest.raises(AlreadyExists):
        await store.create_mailbox(account_id, "Another Junk", SpecialUse.JUNK)


async def test_unicode_mailbox_names(store: SqliteStore) -> None:
    account_id = await make_user(store)
    await store.create_mailbox(account_id, "Entwürfe/日本語")
    assert await store.get_mailbox(account_id, "Entwürfe/日本語") is not None


async def test_rename_inbox_moves_messages_and_keeps_inbox(store: SqliteStore) -> None:
    account_id = await make_user(store)
    inbox_id = await inbox(store, account_id)
    await store.append(message(1), [AppendTarget(inbox_id)])
    await store.append(message(2), [AppendTarget(inbox_id)])
    old_inbox = await store.get_mailbox(account_id, "INBOX")
    moved = await store.rename_mailbox(account_id, "INBOX", "Old Mail")
    assert list(await store.uids(moved.id)) == [1, 2]
    assert list(await store.uids(inbox_id)) == []
    new_inbox = await store.get_mailbox(account_id, "INBOX")
    assert old_inbox is not None and new_inbox is not None
    assert new_inbox.uidvalidity == old_inbox.uidvalidity
    assert new_inbox.uidnext == old_inbox.uidnext  # UIDs are never reused
    assert (await store.append(message(3), [AppendTarget(inbox_id)]))[0].uid == 3


async def test_list_patterns(store: SqliteStore) -> None:
    account_id = await make_user(store)
    for name in ("a", "a/b", "a/b/c", "ab"):
        await store.create_mailbox(account_id, name)

    async def names(reference: str, pattern: str) -> list[str]:
        return [m.name for m in await store.list_mailboxes(account_id, reference, pattern)]

    assert await names("", "a%") == ["a", "ab"]
    assert await names("", "a/%") == ["a/b"]
    assert await names("", "a/*") == ["a/b", "a/b/c"]
    assert await names("a/", "%") == ["a/b"]
    assert await names("", "inbox") == ["INBOX"]
    assert await names("", "nothing") == []


async def test_subscriptions_outlive_mailbox(store: SqliteStore) -> None:
    account_id = await make_user(store)
    await store.create_mailbox(account_id, "Lists")
    await store.set_subscribed(account_id, "Lists", True)
    await store.delete_mailbox(account_id, "Lists")
    assert "Lists" in await store.list_subscriptions(account_id)
    await store.set_subscribed(account_id, "Lists", False)
    assert "Lists" not in await store.list_subscriptions(account_id)


# -- messages --------------------------------------------------------------------------------


async def test_append_and_fetch_cached_forms(store: SqliteStore) -> None:
    account_id = await make_user(store)
    inbox_id = await inbox(store, account_id)
    when = dt.datetime(2026, 11, 30, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    [result] = await store.append(
        MESSAGE, [AppendTarget(inbox_id, Flag.SEEN, frozenset({"$Label1"}))], when
    )
    assert result.uid == 1
    [entry] = await store.fetch(
        inbox_id, UidSet.of([1]), FetchWhat(envelope=True, bodystructure=True, parts=True)
    )
    assert entry.flags == Flag.SEEN and entry.keywords == {"$Label1"}
    assert entry.internaldate == when and entry.internaldate.utcoffset() == when.utcoffset()
    assert entry.size == len(MESSAGE)
    assert entry.envelope is not None and b'"Lunch on Friday"' in entry.envelope
    assert entry.bodystructure is not None and entry.bodystructure.upper().startswith(b'("TEXT"')
    assert await store.read_message(inbox_id, 1) == MESSAGE
    assert await store.read_message(inbox_id, 99) is None


async def test_read_messages_whole_and_header_only(store: SqliteStore) -> None:
    inbox_id = await inbox(store, await make_user(store))
    small = message(1)
    # Larger than inline_max: kept in a blob file, read from it.
    large = message(2, "x" * (300 * 1024))
    prefix = b"Delivered-To: bob@example.test\r\n"
    await store.append(small, [AppendTarget(inbox_id, prefix=prefix)])
    await store.append(large, [AppendTarget(inbox_id)])
    await store.append(message(3), [AppendTarget(inbox_id, Flag.DELETED)])
    await store.expunge(inbox_id)
    everything = UidSet.of([1, 2, 3, 4])
    assert await store.read_messages(inbox_id, everything) == {1: prefix + small, 2: large}
    headers = await store.read_messages(inbox_id, everything, header_only=True)
    assert headers == {
        1: prefix + small[: small.index(b"\r\n\r\n") + 4],
        2: large[: large.index(b"\r\n\r\n") + 4],
    }
    assert await store.read_messages(inbox_id, UidSet.of([2])) == {2: large}


async def test_multi_recipient_append_shares_one_blob(store: SqliteStore) -> None:
    ids = [await make_user(store, f"user{i}@example.test") for i in range(10)]
    targets = [
        AppendTarget(
            await inbox(store, account_id),
            prefix=f"Delivered-To: user{i}@example.test\r\n".encode(),
        )
        for i, account_id in enumerate(ids)
    ]
    results = await store.append(MESSAGE, targets)
    assert [r.uid for r in results] == [1] * 10
    counts = await store.counts()
    assert counts["messages"] == 1 and counts["entries"] == 10
    first = await store.read_message(targets[3].mailbox_id, 1)
    assert first == b"Delivered-To: user3@example.test\r\n" + MESSAGE
    [entry] = await store.fetch(targets[3].mailbox_id, UidSet.of([1]))
    assert entry.size == len(first) and entry.prefix_len == len(targets[3].prefix)
    account = await store.get_account("user3@example.test")
    assert account is not None and account.used_bytes == len(first)


async def test_quota_enforced_in_the_same_transaction(store: SqliteStore) -> None:
    full = await make_user(store, "full@example.test", quota_messages=1)
    roomy = await make_user(store, "roomy@example.test")
    await store.append(message(1), [AppendTarget(await inbox(store, full))])
    with pytest.raises(QuotaExceeded) as excinfo:
        await store.append(
            message(2),
            [AppendTarget(await inbox(store, roomy)), AppendTarget(await inbox(store, full))],
        )
    assert excinfo.value.address == "full@example.test"
    # Atomic: the other recipient's copy was rolled back too.
    assert list(await store.uids(await inbox(store, roomy))) == []
    small = await make_user(store, "small@example.test", quota_bytes=len(message(1)))
    await store.append(message(1), [AppendTarget(await inbox(store, small))])
    with pytest.raises(QuotaExceeded):
        await store.append(message(2), [AppendTarget(await inbox(store, small))])
    await store.set_quota("small@example.test", None, None)
    await store.append(message(2), [AppendTarget(await inbox(store, small))])


async def test_flags_modseq_and_unchanged_since(store: SqliteStore) -> None:
    account_id = await make_user(store)
    inbox_id = await inbox(store, account_id)
    for n in range(3):
        await store.append(message(n), [AppendTarget(inbox_id)])
    before = await store.get_mailbox(account_id, "INBOX")
    assert before is not None
    sub = store.events.subscribe(account_id, inbox_id)
    result = await store.store_flags(
        inbox_id, UidSet.span(1, 2), StoreMode.ADD, Flag.SEEN | Flag.FLAGGED, frozenset({"work"})
    )
    assert [u.uid for u in result.updated] == [1, 2]
    modseq = result.updated[0].modseq
    assert modseq > before.highestmodseq
    [event] = sub.pending()
    assert isinstance(event, FlagsChanged) and [c[0] for c in event.changes] == [1, 2]
    # No change → no new modseq, no event.
    again = await store.store_flags(inbox_id, UidSet.of([1]), StoreMode.ADD, Flag.SEEN)
    assert again.updated == [] and sub.pending() == []
    removed = await store.store_flags(
        inbox_id, UidSet.of([1]), StoreMode.REMOVE, Flag.FLAGGED, frozenset({"work"})
    )
    assert removed.updated[0].flags == Flag.SEEN and removed.updated[0].keywords == set()
    # RFC 7162 §3.2: message 2 changed after `modseq - 1`; message 3 did not.
    conditional = await store.store_flags(
        inbox_id, UidSet.span(2, 3), StoreMode.REPLACE, Flag.ANSWERED, unchanged_since=modseq - 1
    )
    assert conditional.failed_unchanged_since == [2]
    assert [u.uid for u in conditional.updated] == [3]
    changed = await store.changed_since(inbox_id, modseq)
    assert {e.uid for e in changed} == {1, 3}


async def test_copy_move_expunge_and_vanished(store: SqliteStore) -> None:
    account_id = await make_user(store)
    inbox_id = await inbox(store, account_id)
    archive = await store.get_mailbox(account_id, "Archive")
    assert archive is not None
    for n in range(5):
        await store.append(message(n), [AppendTarget(inbox_id, Flag.SEEN)])
    copied = await store.copy(inbox_id, UidSet.of([1, 3]), archive.id)
    assert copied.pairs == [(1, 1), (3, 2)] and copied.uidvalidity == archive.uidvalidity
    sub = store.events.subscribe(account_id, inbox_id)
    mark = (await store.status(inbox_id)).mailbox.highestmodseq
    moved = await store.move(inbox_id, UidSet.of([2, 4]), archive.id)
    assert moved.pairs == [(2, 3), (4, 4)]
    assert list(await store.uids(inbox_id)) == [1, 3, 5]
    assert list(await store.uids(archive.id)) == [1, 2, 3, 4]
    [event] = sub.pending()
    assert isinstance(event, Expunged) and event.uids == (2, 4)
    await store.store_flags(inbox_id, UidSet.of([1, 5]), StoreMode.ADD, Flag.DELETED)
    # RFC 4315 UID EXPUNGE: only the named \Deleted messages go.
    assert await store.expunge(inbox_id, UidSet.of([5])) == [5]
    assert await store.expunge(inbox_id) == [1]
    assert list(await store.uids(inbox_id)) == [3]
    assert await store.vanished_since(inbox_id, mark) == [1, 2, 4, 5]
    account = await store.get_account("bob@example.test")
    status_inbox = await store.status(inbox_id)
    status_archive = await store.status(archive.id)
    assert account is not None
    assert account.used_messages == status_inbox.messages + status_archive.messages == 5
    assert account.used_bytes == status_inbox.size + status_archive.size


async def test_move_between_accounts_moves_quota(store: SqliteStore) -> None:
    a = await make_user(store, "a@example.test")
    b = await make_user(store, "b@example.test")
    await store.append(message(1), [AppendTarget(await inbox(store, a))])
    await store.move(await inbox(store, a), UidSet.of([1]), await inbox(store, b))
    account_a = await store.get_account("a@example.test")
    account_b = await store.get_account("b@example.test")
    assert account_a is not None and account_b is not None
    assert (account_a.used_messages, account_b.used_messages) == (0, 1)
    assert account_a.used_bytes == 0


async def test_uid_array_is_shared_until_membership_changes(store: SqliteStore) -> None:
    account_id = await make_user(store)
    inbox_id = await inbox(store, account_id)
    await store.append(message(1), [AppendTarget(inbox_id)])
    first = await store.uids(inbox_id)
    await store.store_flags(inbox_id, UidSet.of([1]), StoreMode.ADD, Flag.SEEN)
    assert await store.uids(inbox_id) is first
    await store.append(message(2), [AppendTarget(inbox_id)])
    second = await store.uids(inbox_id)
    assert second is not first and list(second) == [1, 2] and list(first) == [1]


async def test_concurrent_appends_are_group_committed(store: SqliteStore) -> None:
    account_id = await make_user(store)
    inbox_id = await inbox(store, account_id)
    sub = store.events.subscribe(account_id, inbox_id)
    results = await asyncio.gather(
        *(store.append(message(n), [AppendTarget(inbox_id)]) for n in range(50))
    )
    assert sorted(r[0].uid for r in results) == list(range(1, 51))
    added = [
        uid for event in sub.pending() if isinstance(event, MessagesAdded) for uid in event.uids
    ]
    assert sorted(added) == list(range(1, 51))


async def test_failed_operation_does_not_spoil_its_group(store: SqliteStore) -> None:
    account_id = await make_user(store)
    inbox_id = await inbox(store, account_id)
    outcomes = await asyncio.gather(
        store.append(message(1), [AppendTarget(inbox_id)]),
        store.create_mailbox(account_id, "INBOX"),
        store.append(message(2), [AppendTarget(inbox_id)]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], AlreadyExists)
    assert list(await store.uids(inbox_id)) == [1, 2]


async def test_search(store: SqliteStore) -> None:
    account_id = await make_user(store)
    inbox_id = await inbox(store, account_id)
    await store.append(MESSAGE, [AppendTarget(inbox_id, Flag.SEEN)])
    await store.append(message(2, "completely different words"), [AppendTarget(inbox_id)])
    await store.append(message(3, "x" * 5000), [AppendTarget(inbox_id, Flag.FLAGGED)])
    assert await store.search(inbox_id, Header("from", "alice")) == [1]
    assert await store.search(inbox_id, Header("subject", "FRIDAY")) == [1]
    assert await store.search(inbox_id, Body("usual place")) == [1]
    assert await store.search(inbox_id, Text("different")) == [2]
    assert await store.search(inbox_id, Not(HasFlag(Flag.SEEN))) == [2, 3]
    assert await store.search(inbox_id, Or(HasFlag(Flag.FLAGGED), Body("usual"))) == [1, 3]
    assert await store.search(inbox_id, And((Size(True, 4000), HasFlag(Flag.FLAGGED)))) == [3]


async def test_sweep_removes_only_unreferenced(store: SqliteStore, tmp_path: Path) -> None:
    account_id = await make_user(store)
    inbox_id = await inbox(store, account_id)
    await store.append(message(1), [AppendTarget(inbox_id, Flag.DELETED)])
    await store.append(message(2), [AppendTarget(inbox_id)])
    await store.expunge(inbox_id)
    assert await store.sweep(min_age_seconds=0) == 1
    assert (await store.counts())["messages"] == 1
    assert await store.read_message(inbox_id, 2) == message(2)
    # The same content arriving again after its sweep is stored afresh.
    await store.append(message(1), [AppendTarget(inbox_id)])
    assert await store.read_message(inbox_id, 3) == message(1)


async def test_store_reopens_with_everything(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.add_domain("example.test")
    account_id = await make_user(store)
    inbox_id = await inbox(store, account_id)
    await store.append(MESSAGE, [AppendTarget(inbox_id)])
    await store.close()
    reopened = await open_store(tmp_path)
    try:
        assert await reopened.read_message(inbox_id, 1) == MESSAGE
        conn = sqlite3.connect(tmp_path / "store" / "meta.sqlite3")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    finally:
        await reopened.close()


async def test_disk_full_fails_the_group_and_the_writer_carries_on(tmp_path: Path) -> None:
    store = await open_store(tmp_path, inline_max=10_000_000)
    try:
        await store.add_domain("example.test")
        account_id = await make_user(store)
        inbox_id = await inbox(store, account_id)
        await store.append(message(1), [AppendTarget(inbox_id)])

        def cap(conn: sqlite3.Connection) -> int:
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            conn.execute(f"PRAGMA max_page_count = {pages + 2}")
            return pages

        # The writer's own connection gets the cap, as a full disk would hit it.
        await store.db.write(lambda conn, emit: cap(conn))
        big = message(2, os.urandom(300_000).hex())
        # Bounded: a writer that died would leave these waiting forever.
        results = await asyncio.wait_for(
            asyncio.gather(
                store.append(message(3), [AppendTarget(inbox_id)]),
                store.append(big, [AppendTarget(inbox_id)]),
                return_exceptions=True,
            ),
            timeout=30,
        )
        assert any(isinstance(r, sqlite3.Error) for r in results)
        await store.db.write(
            lambda conn, emit: conn.execute("PRAGMA max_page_count = 1073741823").fetchone()
        )
        # The writer survived: later writes work, and nothing half-done is visible.
        await store.append(message(4), [AppendTarget(inbox_id)])
        uids = list(await store.uids(inbox_id))
        assert uids[0] == 1 and len(uids) in (2, 3)
        for uid in uids:
            assert await store.read_message(inbox_id, uid) is not None
    finally:
        await store.close()


async def test_group_commit_max_splits_groups(tmp_path: Path) -> None:
    store = await open_store(tmp_path, group_commit_max=2)
    try:
        await store.add_domain("example.test")
        inbox_id = await inbox(store, await make_user(store))
        await asyncio.gather(
            *(store.append(message(n), [AppendTarget(inbox_id)]) for n in range(9))
        )
        assert list(await store.uids(inbox_id)) == list(range(1, 10))
    finally:
        await store.close()


async def test_inline_max_decides_database_or_blob_file(tmp_path: Path) -> None:
    store = await open_store(tmp_path, inline_max=100)
    try:
        await store.add_domain("example.test")
        inbox_id = await inbox(store, await make_user(store))
        small, large = b"Subject: s\r\n\r\nhi\r\n", message(1, "y" * 500)
        await store.append(small, [AppendTarget(inbox_id)])
        await store.append(large, [AppendTarget(inbox_id)])
        assert await store.read_message(inbox_id, 1) == small
        assert await store.read_message(inbox_id, 2) == large
        files = [p for p in (tmp_path / "store" / "blobs").rglob("*") if len(p.name) == 64]
        assert [p.read_bytes() for p in files] == [large]
    finally:
        await store.close()


async def test_account_says_whether_its_filters_have_work(store: SqliteStore) -> None:
    account = await store.add_account("bob@example.test", "hash", None)
    fresh = await store.get_account("bob@example.test")
    assert fresh is not None
    assert (fresh.sieve_active, fresh.junk_spam, fresh.junk_ham) == (False, 0, 0)
    await store.sieve.put(account.id, "rules", "keep;")
    inactive = await store.get_account("bob@example.test")
    assert inactive is not None and not inactive.sieve_active
    await store.sieve.activate(account.id, "rules")
    await store.junk.train(account.id, [TrainedMessage(b"s" * 32, ["cheap"])], spam=True)
    await store.junk.train(account.id, [TrainedMessage(b"h" * 32, ["lunch"])], spam=False)
    await store.junk.train(account.id, [TrainedMessage(b"t" * 32, ["pills"])], spam=True)
    read = await store.get_account("bob@example.test")
    assert read is not None
    assert (read.sieve_active, read.junk_spam, read.junk_ham) == (True, 2, 1)
    await store.sieve.activate(account.id, None)
    assert [a.sieve_active for a in await store.list_accounts()] == [False]
