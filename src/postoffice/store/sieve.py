"""Users' Sieve scripts on SQLite (RFC 5804 §1.4): the `SieveScripts` of store/api.py.

One `sieve_scripts` row per script; a partial unique index keeps at most one active per
account, so activating is "clear the old flag, set the new one" in one transaction.  Limits
on how many scripts and how large are the caller's (ManageSieve answers them with response
codes the store cannot know); script names are checked here so every front-end agrees.
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from typing import Final

from postoffice.store.api import ScriptActive
from postoffice.store.database import Database, Emit
from postoffice.store.model import AlreadyExists, InvalidName, NotFound

# RFC 5804 §1.6: generous enough for any human name, small enough to log.
MAX_SCRIPT_NAME: Final = 512


def check_script_name(name: str) -> None:
    """RFC 5804 §1.6: a non-empty name without control characters (C0, DEL, C1, and the
    Unicode line and paragraph separators)."""
    if not name:
        raise InvalidName("a script name cannot be empty")
    if len(name) > MAX_SCRIPT_NAME:
        raise InvalidName(f"a script name is at most {MAX_SCRIPT_NAME} characters")
    for char in name:
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029):
            raise InvalidName("a script name cannot hold control characters")


def _require(conn: sqlite3.Connection, account_id: int, name: str) -> bool:
    """Whether the script is active; NotFound when there is no such script."""
    row = conn.execute(
        "SELECT active FROM sieve_scripts WHERE account_id = ? AND name = ?", (account_id, name)
    ).fetchone()
    if row is None:
        raise NotFound(f"no script named {name!r}")
    return bool(row[0])


class SqliteSieveScripts:
    """Created by SqliteStore, sharing its writer thread and readers."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, account_id: int) -> builtins.list[tuple[str, bool]]:
        def op(conn: sqlite3.Connection) -> builtins.list[tuple[str, bool]]:
            return [
                (str(name), bool(active))
                for name, active in conn.execute(
                    "SELECT name, active FROM sieve_scripts WHERE account_id = ? ORDER BY name",
                    (account_id,),
                )
            ]

        return await self.db.read(op)

    async def get(self, account_id: int, name: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT content FROM sieve_scripts WHERE account_id = ? AND name = ?",
                (account_id, name),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self.db.read(op)

    async def put(self, account_id: int, name: str, content: str) -> None:
        check_script_name(name)
        now = int(time.time())

        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            # Replacing keeps the active flag: RFC 5804 §2.6, an active script stays active.
            conn.execute(
                "INSERT INTO sieve_scripts(account_id, name, content, updated) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(account_id, name) "
                "DO UPDATE SET content = excluded.content, updated = excluded.updated",
                (account_id, name, content, now),
            )

        await self.db.write(op)

    async def delete(self, account_id: int, name: str) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            # RFC 5804 §2.10: the active script cannot be deleted.
            if _require(conn, account_id, name):
                raise ScriptActive(f"script {name!r} is active")
            conn.execute(
                "DELETE FROM sieve_scripts WHERE account_id = ? AND name = ?", (account_id, name)
            )

        await self.db.write(op)

    async def rename(self, account_id: int, old: str, new: str) -> None:
        check_script_name(new)
        now = int(time.time())

        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            _require(conn, account_id, old)
            if old == new:
                return
            taken = conn.execute(
                "SELECT 1 FROM sieve_scripts WHERE account_id = ? AND name = ?", (account_id, new)
            ).fetchone()
            if taken is not None:
                raise AlreadyExists(f"a script named {new!r} exists")
            conn.execute(
                "UPDATE sieve_scripts SET name = ?, updated = ? WHERE account_id = ? AND name = ?",
                (new, now, account_id, old),
            )

        await self.db.write(op)

    async def activate(self, account_id: int, name: str | None) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            if name is not None:
                _require(conn, account_id, name)
            conn.execute(
                "UPDATE sieve_scripts SET active = 0 WHERE account_id = ? AND active = 1",
                (account_id,),
            )
            if name is not None:
                conn.execute(
                    "UPDATE sieve_scripts SET active = 1 WHERE account_id = ? AND name = ?",
                    (account_id, name),
                )

        await self.db.write(op)

    async def active(self, account_id: int) -> tuple[str, str] | None:
        def op(conn: sqlite3.Connection) -> tuple[str, str] | None:
            row = conn.execute(
                "SELECT name, content FROM sieve_scripts WHERE account_id = ? AND active = 1",
                (account_id,),
            ).fetchone()
            return None if row is None else (str(row[0]), str(row[1]))

        return await self.db.read(op)
