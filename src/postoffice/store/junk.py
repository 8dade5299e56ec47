"""The Bayesian classifier's counts on SQLite: the `JunkTokens` of store/api.py.

`junk_tokens` holds, per account and token, how many trained spam and ham messages contained
it; `junk_totals` the number of trained messages of each class (and the account's own
threshold); `junk_trained` which messages were trained as what, so that training is
idempotent and a message moved from Junk back to the inbox moves its tokens from spam to ham
instead of counting twice.  The classifier itself is filters/junk/bayes.py.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Final

from postoffice.store.api import JunkTotals, TrainedMessage
from postoffice.store.database import Database, Emit

# SQLite's default SQLITE_MAX_VARIABLE_NUMBER is 32766; a few hundred keeps statements small.
_IN_BATCH: Final = 500


def _batches(tokens: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(tokens), _IN_BATCH):
        yield tokens[start : start + _IN_BATCH]


def _add(
    conn: sqlite3.Connection, account_id: int, tokens: Sequence[str], spam: int, ham: int
) -> None:
    """Add the deltas (each -1, 0 or 1) to every token's counts, never below zero."""
    conn.executemany(
        "INSERT INTO junk_tokens (account_id, token, spam, ham) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (account_id, token)"
        " DO UPDATE SET spam = MAX(spam + ?, 0), ham = MAX(ham + ?, 0)",
        [(account_id, token, max(spam, 0), max(ham, 0), spam, ham) for token in tokens],
    )


class SqliteJunkTokens:
    """Created by SqliteStore, sharing its writer thread and readers."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def counts(self, account_id: int, tokens: Sequence[str]) -> dict[str, tuple[int, int]]:
        def op(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            found: dict[str, tuple[int, int]] = {}
            for batch in _batches(tokens):
                marks = ",".join("?" * len(batch))
                for token, spam, ham in conn.execute(
                    "SELECT token, spam, ham FROM junk_tokens"
                    f" WHERE account_id = ? AND token IN ({marks})",
                    (account_id, *batch),
                ):
                    found[str(token)] = (int(spam), int(ham))
            return found

        return await self.db.read(op)

    async def totals(self, account_id: int) -> JunkTotals:
        def op(conn: sqlite3.Connection) -> JunkTotals:
            row = conn.execute(
                "SELECT spam, ham, threshold FROM junk_totals WHERE account_id = ?",
                (account_id,),
            ).fetchone()
            if row is None:
                return JunkTotals(0, 0, None)
            return JunkTotals(int(row[0]), int(row[1]), None if row[2] is None else float(row[2]))

        return await self.db.read(op)

    async def token_count(self, account_id: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT COUNT(*) FROM junk_tokens WHERE account_id = ?", (account_id,)
            ).fetchone()
            return int(row[0])

        return await self.db.read(op)

    async def train(self, account_id: int, messages: Sequence[TrainedMessage], spam: bool) -> int:
        def op(conn: sqlite3.Connection, emit: Emit) -> int:
            changed = 0
            spam_delta = ham_delta = 0
            for message in messages:
                row = conn.execute(
                    "SELECT spam FROM junk_trained WHERE account_id = ? AND digest = ?",
                    (account_id, message.digest),
                ).fetchone()
                if row is not None and bool(row[0]) == spam:
                    continue
                undo = -1 if row is not None else 0  # the earlier, opposite training
                token_spam, token_ham = (1, undo) if spam else (undo, 1)
                _add(conn, account_id, message.tokens, token_spam, token_ham)
                spam_delta += token_spam
                ham_delta += token_ham
                conn.execute(
                    "INSERT OR REPLACE INTO junk_trained (account_id, digest, spam)"
                    " VALUES (?, ?, ?)",
                    (account_id, message.digest, int(spam)),
                )
                changed += 1
            if changed:
                conn.execute(
                    "INSERT INTO junk_totals (account_id, spam, ham) VALUES (?, ?, ?)"
                    " ON CONFLICT (account_id)"
                    " DO UPDATE SET spam = MAX(spam + ?, 0), ham = MAX(ham + ?, 0)",
                    (account_id, max(spam_delta, 0), max(ham_delta, 0), spam_delta, ham_delta),
                )
            return changed

        return await self.db.write(op)

    async def set_threshold(self, account_id: int, threshold: float | None) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            conn.execute(
                "INSERT INTO junk_totals (account_id, threshold) VALUES (?, ?)"
                " ON CONFLICT (account_id) DO UPDATE SET threshold = excluded.threshold",
                (account_id, threshold),
            )

        await self.db.write(op)
