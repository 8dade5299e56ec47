"""Webmail sessions on SQLite: the `WebSessions` of store/api.py.

One `web_sessions` row per logged-in browser, keyed by the SHA-256 of its cookie token (the
token itself is never stored).  Expired rows are dropped whenever a session is created, so
the table stays as small as the number of live logins without a sweeper of its own.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

from postoffice.store.api import WebSession
from postoffice.store.database import Database, Emit


def _seconds(moment: dt.datetime) -> int:
    return int(moment.timestamp())


class SqliteWebSessions:
    """Created by SqliteStore, sharing its writer thread and readers."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self, token_digest: str, account_id: int, csrf: str, expires: dt.datetime, now: dt.datetime
    ) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            conn.execute("DELETE FROM web_sessions WHERE expires <= ?", (_seconds(now),))
            conn.execute(
                "INSERT INTO web_sessions(token_digest, account_id, csrf, expires)"
                " VALUES (?, ?, ?, ?)",
                (token_digest, account_id, csrf, _seconds(expires)),
            )

        await self.db.write(op)

    async def get(self, token_digest: str, now: dt.datetime) -> WebSession | None:
        def op(conn: sqlite3.Connection) -> WebSession | None:
            row = conn.execute(
                "SELECT s.account_id, a.address, s.csrf, s.expires FROM web_sessions s"
                " JOIN accounts a ON a.id = s.account_id"
                " WHERE s.token_digest = ? AND s.expires > ?",
                (token_digest, _seconds(now)),
            ).fetchone()
            if row is None:
                return None
            return WebSession(
                account_id=int(row[0]),
                address=str(row[1]),
                csrf=str(row[2]),
                expires=dt.datetime.fromtimestamp(int(row[3]), dt.UTC),
            )

        return await self.db.read(op)

    async def extend(self, token_digest: str, expires: dt.datetime) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            conn.execute(
                "UPDATE web_sessions SET expires = ? WHERE token_digest = ?",
                (_seconds(expires), token_digest),
            )

        await self.db.write(op)

    async def delete(self, token_digest: str) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            conn.execute("DELETE FROM web_sessions WHERE token_digest = ?", (token_digest,))

        await self.db.write(op)

    async def delete_account(self, account_id: int, keep: str | None = None) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            conn.execute(
                "DELETE FROM web_sessions WHERE account_id = ? AND token_digest IS NOT ?",
                (account_id, keep),
            )

        await self.db.write(op)
