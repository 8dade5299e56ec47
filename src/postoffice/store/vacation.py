"""Whom vacation has answered, on SQLite (RFC 5230 §4.2): the `VacationMemory` of api.py.

One `vacation_replies` row per (account, handle, sender) holding the last reply's time.
Checking and recording happen in one write transaction, so two copies of one message
delivered at once (two recipients aliased to the account) cannot both be answered.
"""

from __future__ import annotations

import datetime as dt
import sqlite3

from postoffice.store.database import Database, Emit


class SqliteVacationMemory:
    """Created by SqliteStore, sharing its writer thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def claim(
        self, account_id: int, handle: str, sender: str, now: dt.datetime, period: dt.timedelta
    ) -> bool:
        stamp = int(now.timestamp())
        since = int((now - period).timestamp())
        key = (account_id, handle, sender.lower())

        def op(conn: sqlite3.Connection, emit: Emit) -> bool:
            row = conn.execute(
                "SELECT sent FROM vacation_replies WHERE account_id = ? AND handle = ? "
                "AND sender = ?",
                key,
            ).fetchone()
            if row is not None and int(row[0]) > since:
                return False
            conn.execute(
                "INSERT INTO vacation_replies(account_id, handle, sender, sent) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(account_id, handle, sender) "
                "DO UPDATE SET sent = excluded.sent",
                (*key, stamp),
            )
            return True

        return await self.db.write(op)
