"""Sieve script storage (store/sieve.py): the operations ManageSieve and the CLI build on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postoffice.store import SqliteStore, open_store
from postoffice.store.api import ScriptActive
from postoffice.store.model import AlreadyExists, InvalidName, NotFound

KEEP = 'require "fileinto";\r\nkeep;\r\n'
DISCARD = "discard;\r\n"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await open_store(tmp_path)
    await s.add_domain("example.test")
    yield s
    await s.close()


async def account(store: SqliteStore, address: str = "alice@example.test") -> int:
    return (await store.add_account(address, "hash", None)).id


async def test_put_get_list_by_name(store: SqliteStore) -> None:
    alice = await account(store)
    await store.sieve.put(alice, "zeta", KEEP)
    await store.sieve.put(alice, "alpha", DISCARD)
    assert await store.sieve.list(alice) == [("alpha", False), ("zeta", False)]
    assert await store.sieve.get(alice, "zeta") == KEEP
    assert await store.sieve.get(alice, "missing") is None
    assert await store.sieve.active(alice) is None


async def test_scripts_belong_to_one_account(store: SqliteStore) -> None:
    alice = await account(store)
    bob = await account(store, "bob@example.test")
    await store.sieve.put(alice, "mine", KEEP)
    assert await store.sieve.list(bob) == []
    assert await store.sieve.get(bob, "mine") is None


async def test_replacing_keeps_the_active_flag(store: SqliteStore) -> None:
    alice = await account(store)
    await store.sieve.put(alice, "main", KEEP)
    await store.sieve.activate(alice, "main")
    await store.sieve.put(alice, "main", DISCARD)
    assert await store.sieve.active(alice) == ("main", DISCARD)


async def test_one_active_script_at_a_time(store: SqliteStore) -> None:
    alice = await account(store)
    await store.sieve.put(alice, "a", KEEP)
    await store.sieve.put(alice, "b", DISCARD)
    await store.sieve.activate(alice, "a")
    await store.sieve.activate(alice, "b")
    assert await store.sieve.list(alice) == [("a", False), ("b", True)]
    assert await store.sieve.active(alice) == ("b", DISCARD)
    await store.sieve.activate(alice, None)
    assert await store.sieve.active(alice) is None
    with pytest.raises(NotFound):
        await store.sieve.activate(alice, "missing")


async def test_delete_refuses_the_active_script(store: SqliteStore) -> None:
    alice = await account(store)
    await store.sieve.put(alice, "a", KEEP)
    await store.sieve.activate(alice, "a")
    with pytest.raises(ScriptActive):
        await store.sieve.delete(alice, "a")
    await store.sieve.activate(alice, None)
    await store.sieve.delete(alice, "a")
    assert await store.sieve.list(alice) == []
    with pytest.raises(NotFound):
        await store.sieve.delete(alice, "a")


async def test_rename_moves_the_active_flag_and_refuses_a_taken_name(store: SqliteStore) -> None:
    alice = await account(store)
    await store.sieve.put(alice, "old", KEEP)
    await store.sieve.put(alice, "other", DISCARD)
    await store.sieve.activate(alice, "old")
    await store.sieve.rename(alice, "old", "new")
    assert await store.sieve.active(alice) == ("new", KEEP)
    with pytest.raises(AlreadyExists):
        await store.sieve.rename(alice, "new", "other")
    with pytest.raises(NotFound):
        await store.sieve.rename(alice, "gone", "fresh")
    assert await store.sieve.list(alice) == [("new", True), ("other", False)]


@pytest.mark.parametrize("name", ["", "line\nbreak", "tab\there", "del\x7f", "c1\x85", "ls\u2028"])
async def test_names_rfc_5804_forbids(store: SqliteStore, name: str) -> None:
    alice = await account(store)
    with pytest.raises(InvalidName):
        await store.sieve.put(alice, name, KEEP)
    await store.sieve.put(alice, "fine", KEEP)
    with pytest.raises(InvalidName):
        await store.sieve.rename(alice, "fine", name)


async def test_unicode_names_are_fine(store: SqliteStore) -> None:
    alice = await account(store)
    await store.sieve.put(alice, "Ferien: Grüße ☀", KEEP)
    assert await store.sieve.list(alice) == [("Ferien: Grüße ☀", False)]


async def test_removing_the_account_removes_its_scripts(store: SqliteStore) -> None:
    alice = await account(store)
    await store.sieve.put(alice, "a", KEEP)
    await store.remove_account("alice@example.test")
    alice_again = await account(store)
    assert await store.sieve.list(alice_again) == []
