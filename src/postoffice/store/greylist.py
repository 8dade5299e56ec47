"""Greylisting triplets on SQLite: the `Greylist` of api.py (table `greylist`).

Each check reads and updates its triplet in one write operation on the writer thread, so two
sessions (or two worker processes) retrying the same triplet at once cannot both count as its
first sight.  A row not yet passed keeps `last_seen = first_seen`; a passed row's `last_seen`
moves with every message, so both kinds expire by one indexed range on `last_seen`.
"""

from __future__ import annotations

import datetime as dt
import functools
import sqlite3
from typing import Final

from postoffice.store.api import GreylistDecision, GreylistTimes, GreylistTriplet
from postoffice.store.database import Database, Emit

# Expired rows are deleted by a check at most this often, so the table stays small without a
# sweeper of its own and without a DELETE on every RCPT.
PURGE_EVERY: Final = 600
_PASSED: Final = GreylistDecision(passed=True)


class SqliteGreylist:
    """Created by SqliteStore, sharing its writer thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._next_purge = 0  # touched only on the writer thread

    async def check(
        self, triplet: GreylistTriplet, now: dt.datetime, times: GreylistTimes
    ) -> GreylistDecision:
        op = functools.partial(
            self._check_op, triplet=triplet, now=int(now.timestamp()), times=times
        )
        return await self.db.write(op)

    def _check_op(
        self,
        conn: sqlite3.Connection,
        emit: Emit,
        *,
        triplet: GreylistTriplet,
        now: int,
        times: GreylistTimes,
    ) -> GreylistDecision:
        if now >= self._next_purge:
            _purge(conn, now, times)
            self._next_purge = now + PURGE_EVERY
        key = (triplet.network, triplet.sender, triplet.recipient)
        row = conn.execute(
            "SELECT first_seen, passed, last_seen FROM greylist"
            " WHERE network = ? AND sender = ? AND recipient = ?",
            key,
        ).fetchone()
        if row is not None:
            first_seen, passed, last_seen = row
            if passed is not None and now - last_seen <= times.expiry:
                conn.execute(
                    "UPDATE greylist SET last_seen = ?"
                    " WHERE network = ? AND sender = ? AND recipient = ?",
                    (now, *key),
                )
                return _PASSED
            if passed is None and now - first_seen <= times.retry_window:
                if now - first_seen < times.delay:
                    return GreylistDecision(passed=False, wait=first_seen + times.delay - now)
                conn.execute(
                    "UPDATE greylist SET passed = ?, last_seen = ?"
                    " WHERE network = ? AND sender = ? AND recipient = ?",
                    (now, now, *key),
                )
                return _PASSED
            # Otherwise the row has expired and this is a first sight again.
        vouched = (
            conn.execute(
                "SELECT 1 FROM greylist WHERE network = ? AND sender_domain = ?"
                " AND passed IS NOT NULL AND last_seen >= ? LIMIT 1",
                (triplet.network, triplet.sender_domain, now - times.expiry),
            ).fetchone()
            is not None
        )
        conn.execute(
            "INSERT OR REPLACE INTO greylist"
            " (network, sender, recipient, sender_domain, first_seen, passed, last_seen)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (*key, triplet.sender_domain, now, now if vouched else None, now),
        )
        return _PASSED if vouched else GreylistDecision(passed=False, wait=times.delay)


def _purge(conn: sqlite3.Connection, now: int, times: GreylistTimes) -> None:
    conn.execute(
        "DELETE FROM greylist WHERE last_seen < ?"
        " AND ((passed IS NULL AND last_seen < ?) OR (passed IS NOT NULL AND last_seen < ?))",
        (
            now - min(times.retry_window, times.expiry),
            now - times.retry_window,
            now - times.expiry,
        ),
    )
