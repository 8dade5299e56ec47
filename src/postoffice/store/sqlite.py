"""The embedded store: SQLite metadata (WAL, group commit) + blob files (DESIGN §3, §6).

Every public method is one whole operation and one transaction.  Writes are functions run
on the writer thread (see database.py); they read what they change inside the same
transaction, so two sessions changing one mailbox cannot interleave.  Blob files are
written and fsync'd before the transaction that refers to them is queued.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import sqlite3
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postoffice.store import mime, sqlsearch
from postoffice.store.blobs import FileBlobStore, hash_off_loop
from postoffice.store.database import Database, Emit
from postoffice.store.events import (
    EventBus,
    Expunged,
    FlagsChanged,
    InProcessBus,
    MailboxCreated,
    MailboxDeleted,
    MailboxRenamed,
    MessagesAdded,
)
from postoffice.store.greylist import SqliteGreylist
from postoffice.store.junk import SqliteJunkTokens
from postoffice.store.model import (
    DEFAULT_MAILBOXES,
    FETCH_BASIC,
    HIERARCHY_SEPARATOR,
    Account,
    Alias,
    AlreadyExists,
    Appended,
    AppendTarget,
    CopyResult,
    Credentials,
    Entry,
    FetchWhat,
    Flag,
    FlagUpdate,
    InvalidName,
    Mailbox,
    MailboxStatus,
    NotFound,
    PopAccountPolicy,
    PopBounds,
    PopLoginTooSoon,
    PopMaildrop,
    QuotaExceeded,
    SortFields,
    SpecialUse,
    StoreError,
    StoreMode,
    StoreResult,
    UidSet,
)
from postoffice.store.names import (
    compile_list_pattern,
    is_inbox,
    normalize_mailbox_name,
)
from postoffice.store.outbound import SqliteOutbound, blob_is_queued
from postoffice.store.search import SearchKey
from postoffice.store.sieve import SqliteSieveScripts
from postoffice.store.vacation import SqliteVacationMemory
from postoffice.store.websessions import SqliteWebSessions

_MAILBOX_COLUMNS = (
    "m.id, m.account_id, m.name, m.special_use, m.uidvalidity, m.uidnext, m.highestmodseq, "
    "EXISTS (SELECT 1 FROM subscriptions s WHERE s.account_id = m.account_id "
    "AND s.name = m.name)"
)
_ACCOUNT_COLUMNS = (
    "id, address, quota_bytes, quota_messages, used_bytes, used_messages, "
    "EXISTS (SELECT 1 FROM sieve_scripts s WHERE s.account_id = accounts.id AND s.active = 1), "
    "(SELECT j.spam FROM junk_totals j WHERE j.account_id = accounts.id), "
    "(SELECT j.ham FROM junk_totals j WHERE j.account_id = accounts.id)"
)
_POP_POLICY_COLUMNS = "id, address, pop_enabled, pop_login_delay, pop_expire_days, pop_apop_secret"
_ENTRY_COLUMNS = (
    "e.uid, e.modseq, e.flags, e.keywords, e.internaldate, e.tz_offset, e.size, "
    "e.message_id, length(e.prefix)"
)
# Above this many ranges a UID set is fetched as one span and filtered here: fewer queries.
_MAX_RANGE_QUERIES = 16
_APPEND_ATTEMPTS = 3
# Messages up to this size live in the metadata database itself: their bytes then ride in
# the group commit's single WAL fsync instead of costing a file fsync and a folder fsync
# each.  Larger ones go to blob files, keeping the database compact for big attachments.
DEFAULT_INLINE_MAX = 128 * 1024

# sqlite3 rows are untyped tuples; the column lists above say what each holds.
Row = tuple[Any, ...]


class _BlobGone(Exception):
    """The sweeper removed a blob between its write and the append's transaction: redo."""


def _mailbox(row: Row) -> Mailbox:
    special = row[3]
    return Mailbox(
        id=int(row[0]),
        account_id=int(row[1]),
        name=str(row[2]),
        special_use=SpecialUse(special) if special else None,
        uidvalidity=int(row[4]),
        uidnext=int(row[5]),
        highestmodseq=int(row[6]),
        subscribed=bool(row[7]),
    )


def _account(row: Row) -> Account:
    return Account(
        id=int(row[0]),
        address=str(row[1]),
        quota_bytes=None if row[2] is None else int(row[2]),
        quota_messages=None if row[3] is None else int(row[3]),
        used_bytes=int(row[4]),
        used_messages=int(row[5]),
        sieve_active=bool(row[6]),
        junk_spam=int(row[7] or 0),
        junk_ham=int(row[8] or 0),
    )


def _pop_policy(row: Row | None) -> PopAccountPolicy | None:
    if row is None:
        return None
    return PopAccountPolicy(
        account_id=int(row[0]),
        address=str(row[1]),
        enabled=bool(row[2]),
        login_delay=int(row[3]),
        expire_days=None if row[4] is None else int(row[4]),
        apop_secret=row[5],
    )


def _keywords(text: str | None) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()


def _keywords_text(keywords: Iterable[str]) -> str | None:
    joined = " ".join(sorted(set(keywords)))
    return joined or None


# Per-row constructors a big FETCH calls 100,000 times over a handful of distinct values.
@functools.lru_cache(maxsize=256)
def _zone(minutes: int) -> dt.timezone:
    return dt.timezone(dt.timedelta(minutes=minutes))


@functools.lru_cache(maxsize=64)
def _flags(bits: int) -> Flag:
    return Flag(bits)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """Everything an append computes from the raw bytes before its write transaction."""

    message: mime.ParsedMessage
    parts: bytes  # mime.encode_parts of the part tree
    text: sqlsearch.SearchText

    @classmethod
    def of(cls, raw: bytes) -> _Prepared:
        message = mime.parse_message(raw)
        return cls(
            message,
            mime.encode_parts(message.root),
            sqlsearch.fold_message_text(message.header_text, message.body_text),
        )


def _entry(row: Row, what: FetchWhat) -> Entry:
    tz = _zone(int(row[5]))
    extra = row[9:]
    envelope = body = bodystructure = None
    parts = None
    index = 0
    if what.envelope:
        envelope = bytes(extra[index])
        index += 1
    if what.bodystructure:
        body = bytes(extra[index])
        bodystructure = bytes(extra[index + 1])
        index += 2
    if what.parts:
        parts = mime.decode_parts(bytes(extra[index]))
    return Entry(
        uid=int(row[0]),
        modseq=int(row[1]),
        flags=_flags(int(row[2])),
        keywords=_keywords(row[3]),
        internaldate=dt.datetime.fromtimestamp(int(row[4]), tz),
        size=int(row[6]),
        message_id=int(row[7]),
        prefix_len=int(row[8] or 0),
        envelope=envelope,
        body=body,
        bodystructure=bodystructure,
        parts=parts,
    )


def _fetch_columns(what: FetchWhat) -> str:
    columns = [_ENTRY_COLUMNS]
    if what.envelope:
        columns.append("m.envelope")
    if what.bodystructure:
        columns.append("m.body, m.bodystructure")
    if what.parts:
        columns.append("m.parts")
    return ", ".join(columns)


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def _next_uidvalidity(conn: sqlite3.Connection) -> int:
    # Time-based so a mailbox deleted and created again never repeats a UIDVALIDITY,
    # and increasing even when two mailboxes are created in the same second.
    row = conn.execute("SELECT value FROM meta WHERE key = 'last_uidvalidity'").fetchone()
    last = int(row[0]) if row else 0
    value = max(int(time.time()), last + 1) & 0xFFFFFFFF
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('last_uidvalidity', ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (str(value),),
    )
    return value


def _uid_ranges_sql(uids: UidSet) -> list[tuple[int, int]]:
    ranges = list(uids.ranges)
    if len(ranges) > _MAX_RANGE_QUERIES:
        return [(min(lo for lo, _ in ranges), max(hi for _, hi in ranges))]
    return ranges


class SqliteStore:
    """The `Store` of store/api.py on SQLite + FileBlobStore; create with `open_store`."""

    def __init__(
        self,
        root: Path,
        *,
        bus: EventBus | None = None,
        group_commit_max: int = 256,
        inline_max: int = DEFAULT_INLINE_MAX,
    ) -> None:
        self.root = root
        self.inline_max = inline_max
        self.events: EventBus = bus or InProcessBus()
        self.blobs = FileBlobStore(root / "blobs")
        self.db = Database(
            root / "meta.sqlite3",
            publish=self.events.publish,
            setup=sqlsearch.register_functions,
            group_commit_max=group_commit_max,
        )
        self.outbound = SqliteOutbound(self.db, self.blobs, inline_max=inline_max)
        self.greylist = SqliteGreylist(self.db)
        self.junk = SqliteJunkTokens(self.db)
        self.sieve = SqliteSieveScripts(self.db)
        self.vacation = SqliteVacationMemory(self.db)
        self.web_sessions = SqliteWebSessions(self.db)
        # Shared, immutable UID arrays (DESIGN §3): one per mailbox, replaced on change.
        self._uid_cache: dict[int, tuple[int, array[int]]] = {}

    async def start(self) -> None:
        await self.db.start()

    async def close(self) -> None:
        await self.db.close()

    # -- domains ---------------------------------------------------------------------------
    async def add_domain(self, name: str) -> None:
        name = name.lower()

        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            try:
                conn.execute("INSERT INTO domains(name) VALUES (?)", (name,))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"domain {name} already exists") from None

        await self.db.write(op)

    async def remove_domain(self, name: str) -> None:
        name = name.lower()

        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            users = conn.execute(
                "SELECT count(*) FROM accounts WHERE domain = ?", (name,)
            ).fetchone()[0]
            aliases = conn.execute(
                "SELECT count(*) FROM aliases WHERE domain = ?", (name,)
            ).fetchone()[0]
            if users or aliases:
                raise StoreError(
                    f"domain {name} still has {users} user(s) and {aliases} alias(es); "
                    "remove them first"
                )
            if conn.execute("DELETE FROM domains WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no such domain: {name}")

        await self.db.write(op)

    async def list_domains(self) -> list[str]:
        return await self.db.read(
            lambda conn: [row[0] for row in conn.execute("SELECT name FROM domains ORDER BY name")]
        )

    async def is_local_domain(self, name: str) -> bool:
        return await self.db.read(
            lambda conn: (
                conn.execute("SELECT 1 FROM domains WHERE name = ?", (name.lower(),)).fetchone()
                is not None
            )
        )

    # -- accounts --------------------------------------------------------------------------
    async def add_account(
        self,
        address: str,
        password_hash: str,
        scram_sha256: str | None,
        quota_bytes: int | None = None,
        quota_messages: int | None = None,
    ) -> Account:
        domain = _domain_of(address).lower()

        def op(conn: sqlite3.Connection, emit: Emit) -> Account:
            if conn.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone() is None:
                raise NotFound(f"unknown domain {domain} (add it with: domain add {domain})")
            if conn.execute("SELECT 1 FROM aliases WHERE address = ?", (address,)).fetchone():
                raise AlreadyExists(f"{address} is already an alias")
            try:
                cursor = conn.execute(
                    "INSERT INTO accounts(address, domain, password_hash, scram_sha256, "
                    "quota_bytes, quota_messages, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        address,
                        domain,
                        password_hash,
                        scram_sha256,
                        quota_bytes,
                        quota_messages,
                        int(time.time()),
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"user {address} already exists") from None
            account_id = int(cursor.lastrowid or 0)
            for name, special in DEFAULT_MAILBOXES:
                conn.execute(
                    "INSERT INTO mailboxes(account_id, name, special_use, uidvalidity) "
                    "VALUES (?, ?, ?, ?)",
                    (account_id, name, special.value if special else None, _next_uidvalidity(conn)),
                )
                conn.execute(
                    "INSERT INTO subscriptions(account_id, name) VALUES (?, ?)", (account_id, name)
                )
            return Account(account_id, address, quota_bytes, quota_messages, 0, 0)

        return await self.db.write(op)

    async def remove_account(self, address: str) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            row = conn.execute("SELECT id FROM accounts WHERE address = ?", (address,)).fetchone()
            if row is None:
                raise NotFound(f"no such user: {address}")
            for mailbox_id, name in conn.execute(
                "SELECT id, name FROM mailboxes WHERE account_id = ?", (row[0],)
            ).fetchall():
                emit(row[0], MailboxDeleted(row[0], mailbox_id, name))
            conn.execute("DELETE FROM accounts WHERE id = ?", (row[0],))

        await self.db.write(op)

    async def get_account(self, address: str) -> Account | None:
        def op(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE address = ?", (address,)
            ).fetchone()
            return _account(row) if row else None

        return await self.db.read(op)

    async def list_accounts(self) -> list[Account]:
        return await self.db.read(
            lambda conn: [
                _account(row)
                for row in conn.execute(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY address")
            ]
        )

    async def get_credentials(self, address: str) -> Credentials | None:
        def op(conn: sqlite3.Connection) -> Credentials | None:
            row = conn.execute(
                "SELECT id, address, password_hash, scram_sha256 FROM accounts WHERE address = ?",
                (address,),
            ).fetchone()
            return Credentials(row[0], row[1], row[2], row[3]) if row else None

        return await self.db.read(op)

    async def set_password(
        self, address: str, password_hash: str, scram_sha256: str | None
    ) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            cursor = conn.execute(
                "UPDATE accounts SET password_hash = ?, scram_sha256 = ? WHERE address = ?",
                (password_hash, scram_sha256, address),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"no such user: {address}")

        await self.db.write(op)

    async def set_quota(
        self, address: str, quota_bytes: int | None, quota_messages: int | None
    ) -> Account:
        def op(conn: sqlite3.Connection, emit: Emit) -> Account:
            conn.execute(
                "UPDATE accounts SET quota_bytes = ?, quota_messages = ? WHERE address = ?",
                (quota_bytes, quota_messages, address),
            )
            row = conn.execute(
                f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE address = ?", (address,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no such user: {address}")
            return _account(row)

        return await self.db.write(op)

    # -- POP3 policy -----------------------------------------------------------------------
    async def get_pop_policy(self, address: str) -> PopAccountPolicy | None:
        return await self.db.read(
            lambda conn: _pop_policy(
                conn.execute(
                    f"SELECT {_POP_POLICY_COLUMNS} FROM accounts WHERE address = ?", (address,)
                ).fetchone()
            )
        )

    async def set_pop_policy(
        self,
        address: str,
        *,
        enabled: bool,
        login_delay: int,
        expire_days: int | None,
        apop_secret: str | None,
    ) -> PopAccountPolicy:
        if login_delay < 0 or (expire_days is not None and expire_days < 0):
            raise StoreError("login delay and expire days must not be negative")

        def op(conn: sqlite3.Connection, emit: Emit) -> PopAccountPolicy:
            row = conn.execute(
                "UPDATE accounts SET pop_enabled = ?, pop_login_delay = ?, pop_expire_days = ?, "
                f"pop_apop_secret = ? WHERE address = ? RETURNING {_POP_POLICY_COLUMNS}",
                (int(enabled), login_delay, expire_days, apop_secret, address),
            ).fetchone()
            policy = _pop_policy(row)
            if policy is None:
                raise NotFound(f"no such user: {address}")
            return policy

        return await self.db.write(op)

    async def pop_bounds(self) -> PopBounds:
        def op(conn: sqlite3.Connection) -> PopBounds:
            # NULL (never) sorts as the largest retention: min() over the others.
            row = conn.execute(
                "SELECT min(pop_expire_days), max(pop_login_delay), "
                "count(DISTINCT coalesce(pop_expire_days, -1)), count(DISTINCT pop_login_delay) "
                "FROM accounts"
            ).fetchone()
            min_expire, max_delay, expire_kinds, delay_kinds = row
            return PopBounds(
                min_expire_days=None if min_expire is None else int(min_expire),
                max_login_delay=int(max_delay or 0),
                per_user=expire_kinds > 1 or delay_kinds > 1,
            )

        return await self.db.read(op)

    # -- aliases ---------------------------------------------------------------------------
    async def add_alias(self, address: str, targets: Sequence[str]) -> Alias:
        domain = _domain_of(address).lower()
        if not targets:
            raise StoreError("an alias needs at least one target")

        def op(conn: sqlite3.Connection, emit: Emit) -> Alias:
            if conn.execute("SELECT 1 FROM domains WHERE name = ?", (domain,)).fetchone() is None:
                raise NotFound(f"unknown domain {domain} (add it with: domain add {domain})")
            if conn.execute("SELECT 1 FROM accounts WHERE address = ?", (address,)).fetchone():
                raise AlreadyExists(f"{address} is already a user")
            try:
                conn.execute(
                    "INSERT INTO aliases(address, domain, targets) VALUES (?, ?, ?)",
                    (address, domain, json.dumps(list(targets))),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"alias {address} already exists") from None
            return Alias(address, tuple(targets))

        return await self.db.write(op)

    async def remove_alias(self, address: str) -> None:
        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            if conn.execute("DELETE FROM aliases WHERE address = ?", (address,)).rowcount == 0:
                raise NotFound(f"no such alias: {address}")

        await self.db.write(op)

    async def get_alias(self, address: str) -> Alias | None:
        def op(conn: sqlite3.Connection) -> Alias | None:
            row = conn.execute(
                "SELECT address, targets FROM aliases WHERE address = ?", (address,)
            ).fetchone()
            return Alias(row[0], tuple(json.loads(row[1]))) if row else None

        return await self.db.read(op)

    async def list_aliases(self) -> list[Alias]:
        return await self.db.read(
            lambda conn: [
                Alias(row[0], tuple(json.loads(row[1])))
                for row in conn.execute(
                    "SELECT address, targets FROM aliases ORDER BY domain, address"
                )
            ]
        )

    # -- mailboxes -------------------------------------------------------------------------
    async def create_mailbox(
        self, account_id: int, name: str, special_use: SpecialUse | None = None
    ) -> Mailbox:
        name = normalize_mailbox_name(name)

        def op(conn: sqlite3.Connection, emit: Emit) -> Mailbox:
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, name)
            ).fetchone():
                raise AlreadyExists(f"mailbox {name} already exists")
            if (
                special_use is not None
                and conn.execute(
                    "SELECT 1 FROM mailboxes WHERE account_id = ? AND special_use = ?",
                    (account_id, special_use.value),
                ).fetchone()
            ):
                raise AlreadyExists(f"another mailbox already has {special_use.value}")
            cursor = conn.execute(
                "INSERT INTO mailboxes(account_id, name, special_use, uidvalidity) "
                "VALUES (?, ?, ?, ?)",
                (
                    account_id,
                    name,
                    special_use.value if special_use else None,
                    _next_uidvalidity(conn),
                ),
            )
            mailbox_id = int(cursor.lastrowid or 0)
            emit(account_id, MailboxCreated(account_id, mailbox_id, name))
            return self._mailbox_by_id(conn, mailbox_id)

        return await self.db.write(op)

    @staticmethod
    def _mailbox_by_id(conn: sqlite3.Connection, mailbox_id: int) -> Mailbox:
        row = conn.execute(
            f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes m WHERE m.id = ?", (mailbox_id,)
        ).fetchone()
        if row is None:
            raise NotFound("mailbox no longer exists")
        return _mailbox(row)

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> Mailbox:
        old = normalize_mailbox_name(old)
        new = normalize_mailbox_name(new)

        def op(conn: sqlite3.Connection, emit: Emit) -> Mailbox:
            row = conn.execute(
                "SELECT id, uidnext FROM mailboxes WHERE account_id = ? AND name = ?",
                (account_id, old),
            ).fetchone()
            if row is None:
                raise NotFound(f"no such mailbox: {old}")
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, new)
            ).fetchone():
                raise AlreadyExists(f"mailbox {new} already exists")
            if new.startswith(old + HIERARCHY_SEPARATOR):
                raise InvalidName("cannot rename a mailbox into its own child")
            if is_inbox(old):
                return self._rename_inbox(conn, emit, account_id, row[0], row[1], new)
            children = conn.execute(
                "SELECT id, name FROM mailboxes WHERE account_id = ? AND substr(name, 1, ?) = ?",
                (account_id, len(old) + 1, old + HIERARCHY_SEPARATOR),
            ).fetchall()
            for mailbox_id, name in [(row[0], old), *children]:
                renamed = new + name[len(old) :]
                if conn.execute(
                    "SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?",
                    (account_id, renamed),
                ).fetchone():
                    raise AlreadyExists(f"mailbox {renamed} already exists")
                conn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (renamed, mailbox_id))
                # RFC 9051 §6.3.6 leaves subscriptions to the server; following the rename
                # is what users expect.
                # The new name may still be subscribed from a deleted mailbox (RFC 3501
                # §6.3.9), hence OR IGNORE and the DELETE that follows.
                conn.execute(
                    "UPDATE OR IGNORE subscriptions SET name = ? WHERE account_id = ? AND name = ?",
                    (renamed, account_id, name),
                )
                conn.execute(
                    "DELETE FROM subscriptions WHERE account_id = ? AND name = ?",
                    (account_id, name),
                )
                emit(account_id, MailboxRenamed(account_id, mailbox_id, name, renamed))
            return self._mailbox_by_id(conn, row[0])

        return await self.db.write(op)

    def _rename_inbox(
        self,
        conn: sqlite3.Connection,
        emit: Emit,
        account_id: int,
        inbox_id: int,
        inbox_uidnext: int,
        new: str,
    ) -> Mailbox:
        # RFC 9051 §6.3.6: renaming INBOX moves its messages to a new mailbox and leaves
        # INBOX empty; INBOX's children stay where they are.
        cursor = conn.execute(
            "INSERT INTO mailboxes(account_id, name, uidvalidity, uidnext) VALUES (?, ?, ?, ?)",
            (account_id, new, _next_uidvalidity(conn), inbox_uidnext),
        )
        target_id = int(cursor.lastrowid or 0)
        uids = [
            r[0]
            for r in conn.execute(
                "SELECT uid FROM entries WHERE mailbox_id = ? ORDER BY uid", (inbox_id,)
            )
        ]
        conn.execute(
            "UPDATE entries SET mailbox_id = ? WHERE mailbox_id = ?", (target_id, inbox_id)
        )
        emit(account_id, MailboxCreated(account_id, target_id, new))
        if uids:
            modseq = self._bump_modseq(conn, inbox_id, membership=True)
            conn.executemany(
                "INSERT OR REPLACE INTO tombstones(mailbox_id, uid, modseq) VALUES (?, ?, ?)",
                [(inbox_id, uid, modseq) for uid in uids],
            )
            emit(account_id, Expunged(inbox_id, tuple(uids), modseq))
        return self._mailbox_by_id(conn, target_id)

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        name = normalize_mailbox_name(name)
        if is_inbox(name):
            raise InvalidName("INBOX cannot be deleted")

        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            row = conn.execute(
                "SELECT id FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, name)
            ).fetchone()
            if row is None:
                raise NotFound(f"no such mailbox: {name}")
            self._release_quota(conn, account_id, "mailbox_id = ?", (row[0],))
            conn.execute("DELETE FROM entries WHERE mailbox_id = ?", (row[0],))
            conn.execute("DELETE FROM mailboxes WHERE id = ?", (row[0],))
            emit(account_id, MailboxDeleted(account_id, row[0], name))

        await self.db.write(op)

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        try:
            name = normalize_mailbox_name(name)
        except InvalidName:
            return None

        def op(conn: sqlite3.Connection) -> Mailbox | None:
            row = conn.execute(
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes m WHERE m.account_id = ? AND m.name = ?",
                (account_id, name),
            ).fetchone()
            return _mailbox(row) if row else None

        return await self.db.read(op)

    async def list_mailboxes(
        self,
        account_id: int,
        reference: str = "",
        pattern: str = "*",
        subscribed_only: bool = False,
    ) -> list[Mailbox]:
        regex = compile_list_pattern(reference, pattern)

        def op(conn: sqlite3.Connection) -> list[Mailbox]:
            rows = conn.execute(
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes m WHERE m.account_id = ?", (account_id,)
            ).fetchall()
            found = [_mailbox(row) for row in rows if regex.fullmatch(row[2])]
            if subscribed_only:
                found = [mailbox for mailbox in found if mailbox.subscribed]
            # INBOX first, then by name: the order clients show.
            return sorted(found, key=lambda m: (not is_inbox(m.name), m.name))

        return await self.db.read(op)

    async def set_subscribed(self, account_id: int, name: str, subscribed: bool) -> None:
        name = normalize_mailbox_name(name)

        def op(conn: sqlite3.Connection, emit: Emit) -> None:
            if subscribed:
                conn.execute(
                    "INSERT OR IGNORE INTO subscriptions(account_id, name) VALUES (?, ?)",
                    (account_id, name),
                )
            else:
                conn.execute(
                    "DELETE FROM subscriptions WHERE account_id = ? AND name = ?",
                    (account_id, name),
                )

        await self.db.write(op)

    async def list_subscriptions(self, account_id: int) -> list[str]:
        return await self.db.read(
            lambda conn: [
                row[0]
                for row in conn.execute(
                    "SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name",
                    (account_id,),
                )
            ]
        )

    async def status(self, mailbox_id: int) -> MailboxStatus:
        def op(conn: sqlite3.Connection) -> MailboxStatus:
            mailbox = self._mailbox_by_id(conn, mailbox_id)
            row = conn.execute(
                "SELECT count(*), coalesce(sum(flags & ? = 0), 0), "
                "coalesce(sum(flags & ? != 0), 0), coalesce(sum(size), 0) "
                "FROM entries WHERE mailbox_id = ?",
                (int(Flag.SEEN), int(Flag.DELETED), mailbox_id),
            ).fetchone()
            return MailboxStatus(mailbox, row[0], row[1], row[2], row[3])

        return await self.db.read(op)

    async def claim_recent(self, mailbox_id: int, claim: bool) -> int:
        def marks(conn: sqlite3.Connection) -> tuple[int, int]:
            row = conn.execute(
                "SELECT recent_uid, uidnext - 1 FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if row is None:
                raise NotFound("mailbox no longer exists")
            return int(row[0]), int(row[1])

        def take(conn: sqlite3.Connection, emit: Emit) -> int:
            previous, last = marks(conn)
            conn.execute("UPDATE mailboxes SET recent_uid = ? WHERE id = ?", (last, mailbox_id))
            return previous

        previous, last = await self.db.read(marks)
        if not claim or previous == last:
            return previous  # nothing new to claim: no write, no fsync
        return await self.db.write(take)

    # -- messages: writes ------------------------------------------------------------------
    @staticmethod
    def _bump_modseq(conn: sqlite3.Connection, mailbox_id: int, *, membership: bool) -> int:
        row = conn.execute(
            "UPDATE mailboxes SET highestmodseq = highestmodseq + 1"
            + (", membership_modseq = highestmodseq + 1" if membership else "")
            + " WHERE id = ? RETURNING highestmodseq",
            (mailbox_id,),
        ).fetchone()
        if row is None:
            raise NotFound("mailbox no longer exists")
        return int(row[0])

    @staticmethod
    def _charge_quota(
        conn: sqlite3.Connection, account_id: int, octets: int, messages: int
    ) -> None:
        row = conn.execute(
            "UPDATE accounts SET used_bytes = used_bytes + ?, "
            "used_messages = used_messages + ? WHERE id = ? "
            "RETURNING address, used_bytes, used_messages, quota_bytes, quota_messages",
            (octets, messages, account_id),
        ).fetchone()
        if row is None:
            raise NotFound("account no longer exists")
        address, used_bytes, used_messages, quota_bytes, quota_messages = row
        if quota_bytes is not None and octets > 0 and used_bytes > quota_bytes:
            raise QuotaExceeded(address, "storage")
        if quota_messages is not None and messages > 0 and used_messages > quota_messages:
            raise QuotaExceeded(address, "messages")

    def _release_quota(
        self, conn: sqlite3.Connection, account_id: int, where: str, params: tuple[object, ...]
    ) -> None:
        octets, count = conn.execute(
            f"SELECT coalesce(sum(size), 0), count(*) FROM entries WHERE {where}", params
        ).fetchone()
        self._charge_quota(conn, account_id, -octets, -count)

    async def append(
        self, raw: bytes, targets: Sequence[AppendTarget], internaldate: dt.datetime | None = None
    ) -> list[Appended]:
        if not targets:
            return []
        when = internaldate or dt.datetime.now().astimezone()
        if when.tzinfo is None:
            when = when.astimezone()
        offset = when.utcoffset() or dt.timedelta(0)
        stamp = int(when.timestamp())
        tz_minutes = int(offset.total_seconds() // 60)
        sha256 = await hash_off_loop(raw)
        inline = len(raw) <= self.inline_max
        if not inline:
            await asyncio.to_thread(self.blobs.put, raw)
        # Parsed whether or not the content is stored already: asking first would cost a
        # store round trip for every new message to save a parse for the rare duplicate.
        prepared = await asyncio.to_thread(_Prepared.of, raw)
        for _attempt in range(_APPEND_ATTEMPTS):
            op = functools.partial(
                self._append_op,
                raw=raw,
                sha256=sha256,
                prepared=prepared,
                targets=targets,
                stamp=stamp,
                tz_minutes=tz_minutes,
            )
            try:
                return await self.db.write(op)
            except _BlobGone:
                await asyncio.to_thread(self.blobs.put, raw)
        raise StoreError("append kept racing the blob sweeper; try again")

    def _append_op(
        self,
        conn: sqlite3.Connection,
        emit: Emit,
        *,
        raw: bytes,
        sha256: str,
        prepared: _Prepared,
        targets: Sequence[AppendTarget],
        stamp: int,
        tz_minutes: int,
    ) -> list[Appended]:
        size = len(raw)
        row = conn.execute(
            "SELECT id, content IS NULL FROM messages WHERE sha256 = ?", (sha256,)
        ).fetchone()
        in_file = bool(row[1]) if row is not None else size > self.inline_max
        # The sweeper deletes blob files on this same thread, so a file seen here stays
        # until this transaction commits.
        if in_file and not self.blobs.exists(sha256):
            raise _BlobGone
        if row is not None:
            message_id = int(row[0])
        else:
            message_id = self._insert_message(
                conn, sha256, None if in_file else raw, size, prepared
            )
        results: list[Appended] = []
        added: dict[int, list[int]] = {}
        owners: dict[int, int] = {}
        for target in targets:
            mailbox = conn.execute(
                "SELECT account_id, uidvalidity, uidnext FROM mailboxes WHERE id = ?",
                (target.mailbox_id,),
            ).fetchone()
            if mailbox is None:
                raise NotFound("mailbox no longer exists")
            account_id, uidvalidity, uid = mailbox
            modseq = self._bump_modseq(conn, target.mailbox_id, membership=True)
            conn.execute(
                "UPDATE mailboxes SET uidnext = uidnext + 1 WHERE id = ?", (target.mailbox_id,)
            )
            entry_size = size + len(target.prefix)
            conn.execute(
                "INSERT INTO entries(mailbox_id, uid, message_id, modseq, flags, keywords, "
                "internaldate, tz_offset, size, prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    target.mailbox_id,
                    uid,
                    message_id,
                    modseq,
                    int(target.flags),
                    _keywords_text(target.keywords),
                    stamp,
                    tz_minutes,
                    entry_size,
                    target.prefix or None,
                ),
            )
            self._charge_quota(conn, account_id, entry_size, 1)
            results.append(Appended(target.mailbox_id, uidvalidity, uid, modseq))
            added.setdefault(target.mailbox_id, []).append(uid)
            owners[target.mailbox_id] = account_id
        for mailbox_id, uids in added.items():
            highest = max(r.modseq for r in results if r.mailbox_id == mailbox_id)
            emit(owners[mailbox_id], MessagesAdded(mailbox_id, tuple(uids), highest))
        return results

    @staticmethod
    def _insert_message(
        conn: sqlite3.Connection,
        sha256: str,
        content: bytes | None,
        size: int,
        prepared: _Prepared,
    ) -> int:
        parsed = prepared.message
        sent = parsed.sent_date
        sent_day = None
        if sent is not None:
            local = sent.replace(tzinfo=None)
            sent_day = (local.date() - dt.date(1970, 1, 1)).days
        cursor = conn.execute(
            "INSERT INTO messages(sha256, content, size, header_end, sent_date, sent_day, subject, "
            "base_subject, from_addr, to_addr, cc_addr, bcc_addr, sort_from, sort_to, sort_cc, "
            "display_from, display_to, message_id, in_reply_to, refs, envelope, body, "
            "bodystructure, parts, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                sha256,
                content,
                size,
                parsed.header_end,
                int(sent.timestamp()) if sent is not None else None,
                sent_day,
                parsed.subject,
                parsed.base_subject,
                parsed.from_addr,
                parsed.to_addr,
                parsed.cc_addr,
                parsed.bcc_addr,
                parsed.sort_from,
                parsed.sort_to,
                parsed.sort_cc,
                parsed.display_from,
                parsed.display_to,
                parsed.message_id,
                parsed.in_reply_to,
                " ".join(parsed.references),
                parsed.envelope,
                parsed.body,
                parsed.bodystructure,
                prepared.parts,
                int(time.time()),
            ),
        )
        message_id = int(cursor.lastrowid or 0)
        sqlsearch.index_message_text(conn, message_id, prepared.text)
        return message_id

    async def store_flags(
        self,
        mailbox_id: int,
        uids: UidSet,
        mode: StoreMode,
        flags: Flag,
        keywords: frozenset[str] = frozenset(),
        unchanged_since: int | None = None,
    ) -> StoreResult:
        def op(conn: sqlite3.Connection, emit: Emit) -> StoreResult:
            account_id = self._account_of(conn, mailbox_id)
            rows = self._select_uids(conn, mailbox_id, uids, "uid, modseq, flags, keywords")
            updates: list[tuple[int, Flag, frozenset[str]]] = []
            failed: list[int] = []
            for uid, modseq, old_flags, old_keywords_text in rows:
                old_keywords = _keywords(old_keywords_text)
                # RFC 7162 §3.2: UNCHANGEDSINCE fails messages changed after the given value.
                if unchanged_since is not None and modseq > unchanged_since:
                    failed.append(uid)
                    continue
                if mode is StoreMode.REPLACE:
                    new_flags, new_keywords = flags, keywords
                elif mode is StoreMode.ADD:
                    new_flags, new_keywords = Flag(old_flags) | flags, old_keywords | keywords
                else:
                    new_flags, new_keywords = Flag(old_flags) & ~flags, old_keywords - keywords
                if new_flags != old_flags or new_keywords != old_keywords:
                    updates.append((uid, new_flags, new_keywords))
            if not updates:
                return StoreResult([], failed)
            modseq = self._bump_modseq(conn, mailbox_id, membership=False)
            conn.executemany(
                "UPDATE entries SET flags = ?, keywords = ?, modseq = ? "
                "WHERE mailbox_id = ? AND uid = ?",
                [(int(f), _keywords_text(k), modseq, mailbox_id, uid) for uid, f, k in updates],
            )
            emit(
                account_id,
                FlagsChanged(
                    mailbox_id, tuple((uid, modseq, f, k) for uid, f, k in updates), modseq
                ),
            )
            return StoreResult([FlagUpdate(uid, modseq, f, k) for uid, f, k in updates], failed)

        return await self.db.write(op)

    @staticmethod
    def _account_of(conn: sqlite3.Connection, mailbox_id: int) -> int:
        row = conn.execute(
            "SELECT account_id FROM mailboxes WHERE id = ?", (mailbox_id,)
        ).fetchone()
        if row is None:
            raise NotFound("mailbox no longer exists")
        return int(row[0])

    @staticmethod
    def _select_uids(
        conn: sqlite3.Connection, mailbox_id: int, uids: UidSet, columns: str
    ) -> list[Row]:
        rows: list[Row] = []
        for lo, hi in _uid_ranges_sql(uids):
            rows.extend(
                conn.execute(
                    f"SELECT {columns} FROM entries e WHERE e.mailbox_id = ? "
                    "AND e.uid BETWEEN ? AND ? ORDER BY e.uid",
                    (mailbox_id, lo, hi),
                )
            )
        if len(uids.ranges) > _MAX_RANGE_QUERIES:
            rows = [row for row in rows if row[0] in uids]
        return rows

    async def copy(self, mailbox_id: int, uids: UidSet, target_id: int) -> CopyResult:
        return await self.db.write(
            lambda conn, emit: self._copy_op(conn, emit, mailbox_id, uids, target_id, False)
        )

    async def move(self, mailbox_id: int, uids: UidSet, target_id: int) -> CopyResult:
        return await self.db.write(
            lambda conn, emit: self._copy_op(conn, emit, mailbox_id, uids, target_id, True)
        )

    def _copy_op(
        self,
        conn: sqlite3.Connection,
        emit: Emit,
        mailbox_id: int,
        uids: UidSet,
        target_id: int,
        remove_source: bool,
    ) -> CopyResult:
        source_account = self._account_of(conn, mailbox_id)
        target = conn.execute(
            "SELECT account_id, uidvalidity, uidnext FROM mailboxes WHERE id = ?", (target_id,)
        ).fetchone()
        if target is None:
            raise NotFound("target mailbox does not exist")
        target_account, uidvalidity, next_uid = target
        rows = self._select_uids(
            conn,
            mailbox_id,
            uids,
            "uid, message_id, flags, keywords, internaldate, tz_offset, size, prefix",
        )
        if not rows:
            # MOVE into the same mailbox is allowed: the messages get new UIDs (as in
            # Dovecot; RFC 6851 does not forbid it).
            return CopyResult(uidvalidity, [])
        modseq = self._bump_modseq(conn, target_id, membership=True)
        pairs: list[tuple[int, int]] = []
        new_rows = []
        for offset, row in enumerate(rows):
            new_uid = next_uid + offset
            pairs.append((int(row[0]), new_uid))
            new_rows.append((target_id, new_uid, row[1], modseq, *row[2:]))
        conn.executemany(
            "INSERT INTO entries(mailbox_id, uid, message_id, modseq, flags, keywords, "
            "internaldate, tz_offset, size, prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            new_rows,
        )
        conn.execute(
            "UPDATE mailboxes SET uidnext = ? WHERE id = ?", (next_uid + len(rows), target_id)
        )
        octets = sum(int(row[6]) for row in rows)
        same_account = source_account == target_account
        if not (remove_source and same_account):
            self._charge_quota(conn, target_account, octets, len(rows))
        emit(target_account, MessagesAdded(target_id, tuple(new for _, new in pairs), modseq))
        if remove_source:
            source_uids = [old for old, _ in pairs]
            self._remove_entries(
                conn, emit, source_account, mailbox_id, source_uids, release_quota=not same_account
            )
        return CopyResult(uidvalidity, pairs)

    def _remove_entries(
        self,
        conn: sqlite3.Connection,
        emit: Emit,
        account_id: int,
        mailbox_id: int,
        uids: Sequence[int],
        *,
        release_quota: bool,
    ) -> None:
        modseq = self._bump_modseq(conn, mailbox_id, membership=True)
        if release_quota:
            octets = 0
            for chunk_start in range(0, len(uids), 500):
                chunk = uids[chunk_start : chunk_start + 500]
                marks = ",".join("?" * len(chunk))
                octets += conn.execute(
                    f"SELECT coalesce(sum(size), 0) FROM entries WHERE mailbox_id = ? "
                    f"AND uid IN ({marks})",
                    (mailbox_id, *chunk),
                ).fetchone()[0]
            self._charge_quota(conn, account_id, -octets, -len(uids))
        conn.executemany(
            "DELETE FROM entries WHERE mailbox_id = ? AND uid = ?",
            [(mailbox_id, uid) for uid in uids],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO tombstones(mailbox_id, uid, modseq) VALUES (?, ?, ?)",
            [(mailbox_id, uid, modseq) for uid in uids],
        )
        emit(account_id, Expunged(mailbox_id, tuple(uids), modseq))

    async def expunge(self, mailbox_id: int, uids: UidSet | None = None) -> list[int]:
        def op(conn: sqlite3.Connection, emit: Emit) -> list[int]:
            account_id = self._account_of(conn, mailbox_id)
            deleted = [
                int(row[0])
                for row in conn.execute(
                    "SELECT uid FROM entries WHERE mailbox_id = ? AND flags & ? != 0 ORDER BY uid",
                    (mailbox_id, int(Flag.DELETED)),
                )
            ]
            if uids is not None:
                # RFC 4315 §2.1 UID EXPUNGE: only the named messages that are \Deleted.
                deleted = [uid for uid in deleted if uid in uids]
            if deleted:
                self._remove_entries(
                    conn, emit, account_id, mailbox_id, deleted, release_quota=True
                )
            return deleted

        return await self.db.write(op)

    # -- POP3 maildrop ---------------------------------------------------------------------
    async def pop_open(self, account_id: int, now: dt.datetime) -> PopMaildrop | PopLoginTooSoon:
        """Start a POP3 session on the account's INBOX, in one transaction: enforce and record
        LOGIN-DELAY, remove what the expire policy says is due, and take the snapshot.

        Expiry runs here, before the snapshot, so no message vanishes in mid-session
        (RFC 2449 §6.7); its days count from the message's first RETR."""
        when = int(now.timestamp())

        def op(conn: sqlite3.Connection, emit: Emit) -> PopMaildrop | PopLoginTooSoon:
            row = conn.execute(
                "SELECT pop_login_delay, pop_expire_days, pop_last_login FROM accounts "
                "WHERE id = ?",
                (account_id,),
            ).fetchone()
            if row is None:
                raise NotFound("account no longer exists")
            delay, expire_days, last_login = row
            if delay and last_login is not None and when - last_login < delay:
                return PopLoginTooSoon(delay - (when - last_login))
            conn.execute("UPDATE accounts SET pop_last_login = ? WHERE id = ?", (when, account_id))
            mailbox = conn.execute(
                "SELECT id, uidvalidity FROM mailboxes WHERE account_id = ? AND name = 'INBOX'",
                (account_id,),
            ).fetchone()
            if mailbox is None:
                raise NotFound("the account has no INBOX")
            mailbox_id, uidvalidity = int(mailbox[0]), int(mailbox[1])
            expired: list[int] = []
            if expire_days:
                expired = [
                    int(r[0])
                    for r in conn.execute(
                        "SELECT uid FROM entries WHERE mailbox_id = ? AND pop_retrieved <= ? "
                        "ORDER BY uid",
                        (mailbox_id, when - expire_days * 86400),
                    )
                ]
                if expired:
                    self._remove_entries(
                        conn, emit, account_id, mailbox_id, expired, release_quota=True
                    )
            messages = tuple(
                (int(r[0]), int(r[1]))
                for r in conn.execute(
                    "SELECT uid, size FROM entries WHERE mailbox_id = ? ORDER BY uid",
                    (mailbox_id,),
                )
            )
            return PopMaildrop(mailbox_id, uidvalidity, messages, len(expired))

        return await self.db.write(op)

    async def pop_update(
        self, mailbox_id: int, deleted: UidSet, retrieved: UidSet, now: dt.datetime
    ) -> list[int]:
        """The POP3 UPDATE state (RFC 1939 §6) as one transaction: remove exactly the
        `deleted` UIDs whatever their flags (publishing `Expunged`, releasing quota, leaving
        tombstones) and stamp the first-retrieval time of the `retrieved` ones that stay.
        Returns the UIDs removed (those another session expunged first are skipped)."""
        when = int(now.timestamp())

        def op(conn: sqlite3.Connection, emit: Emit) -> list[int]:
            account_id = self._account_of(conn, mailbox_id)
            present = [int(row[0]) for row in self._select_uids(conn, mailbox_id, deleted, "uid")]
            if present:
                self._remove_entries(
                    conn, emit, account_id, mailbox_id, present, release_quota=True
                )
            conn.executemany(
                "UPDATE entries SET pop_retrieved = ? WHERE mailbox_id = ? AND uid = ? "
                "AND pop_retrieved IS NULL",
                [(when, mailbox_id, uid) for uid in retrieved if uid not in deleted],
            )
            return present

        return await self.db.write(op)

    # -- messages: reads -------------------------------------------------------------------
    async def uids(self, mailbox_id: int) -> array[int]:
        def key(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT membership_modseq FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if row is None:
                raise NotFound("mailbox no longer exists")
            return int(row[0])

        def load(conn: sqlite3.Connection) -> tuple[int, array[int]]:
            version = key(conn)
            uids = array(
                "I",
                (
                    row[0]
                    for row in conn.execute(
                        "SELECT uid FROM entries WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,)
                    )
                ),
            )
            return version, uids

        cached = self._uid_cache.get(mailbox_id)
        if cached is not None and cached[0] == await self.db.read(key):
            return cached[1]
        version, uids = await self.db.read(load)
        self._uid_cache[mailbox_id] = (version, uids)
        return uids

    async def fetch(
        self, mailbox_id: int, uids: UidSet, what: FetchWhat = FETCH_BASIC
    ) -> list[Entry]:
        columns = _fetch_columns(what)
        join = (
            " JOIN messages m ON m.id = e.message_id"
            if (what.envelope or what.bodystructure or what.parts)
            else ""
        )

        def op(conn: sqlite3.Connection) -> list[Entry]:
            entries: list[Entry] = []
            for lo, hi in _uid_ranges_sql(uids):
                entries.extend(
                    _entry(row, what)
                    for row in conn.execute(
                        f"SELECT {columns} FROM entries e{join} WHERE e.mailbox_id = ? "
                        "AND e.uid BETWEEN ? AND ? ORDER BY e.uid",
                        (mailbox_id, lo, hi),
                    )
                )
            if len(uids.ranges) > _MAX_RANGE_QUERIES:
                entries = [entry for entry in entries if entry.uid in uids]
            return entries

        return await self.db.read(op)

    async def read_message(self, mailbox_id: int, uid: int) -> bytes | None:
        def op(conn: sqlite3.Connection) -> tuple[bytes | None, str, bytes | None] | None:
            row = conn.execute(
                "SELECT e.prefix, m.sha256, m.content FROM entries e JOIN messages m "
                "ON m.id = e.message_id WHERE e.mailbox_id = ? AND e.uid = ?",
                (mailbox_id, uid),
            ).fetchone()
            return (row[0], row[1], row[2]) if row else None

        found = await self.db.read(op)
        if found is None:
            return None
        prefix, sha256, content = found
        if content is None:
            try:
                content = await asyncio.to_thread(self.blobs.get, sha256)
            except FileNotFoundError:
                # Expunged and swept between the row read and the file read: gone, as if
                # the row had not been found.
                return None
        return (prefix or b"") + content

    async def read_messages(
        self, mailbox_id: int, uids: UidSet, header_only: bool = False
    ) -> dict[int, bytes]:
        # substr() on a BLOB counts bytes; an inline header is cut inside SQLite, so a
        # header-only fetch never copies bodies out of the database.
        content = "substr(m.content, 1, m.header_end)" if header_only else "m.content"

        def op(conn: sqlite3.Connection) -> dict[int, bytes]:
            found: dict[int, bytes] = {}
            for lo, hi in _uid_ranges_sql(uids):
                for uid, prefix, sha256, data, header_end in conn.execute(
                    f"SELECT e.uid, e.prefix, m.sha256, {content}, m.header_end FROM entries e "
                    "JOIN messages m ON m.id = e.message_id "
                    "WHERE e.mailbox_id = ? AND e.uid BETWEEN ? AND ?",
                    (mailbox_id, lo, hi),
                ):
                    if uid not in uids:
                        continue
                    if data is None:
                        try:
                            data = self.blobs.read(sha256, header_end if header_only else None)
                        except FileNotFoundError:
                            continue  # expunged and swept since the row was read
                    found[uid] = (prefix or b"") + data
            return found

        return await self.db.read(op)

    async def search(self, mailbox_id: int, key: SearchKey) -> list[int]:
        compiled = sqlsearch.compile_search(key, time.time())

        def op(conn: sqlite3.Connection) -> list[int]:
            return [
                row[0]
                for row in conn.execute(
                    "SELECT e.uid FROM entries e JOIN messages m ON m.id = e.message_id "
                    f"WHERE e.mailbox_id = ? AND ({compiled.where}) ORDER BY e.uid",
                    (mailbox_id, *compiled.params),
                )
            ]

        return await self.db.read(op)

    async def sort_fields(self, mailbox_id: int, uids: UidSet) -> list[SortFields]:
        """The SORT / THREAD keys of the messages of `uids` that exist, in uid order."""

        def fields_of(row: Row) -> SortFields:
            sent = row[4]
            return SortFields(
                uid=int(row[0]),
                internaldate=dt.datetime.fromtimestamp(
                    int(row[1]), dt.timezone(dt.timedelta(minutes=int(row[2])))
                ),
                # only the instant is stored, which is all SORT and THREAD compare
                sent_date=None if sent is None else dt.datetime.fromtimestamp(int(sent), dt.UTC),
                size=int(row[3]),
                subject=row[5],
                base_subject=row[6],
                sort_from=row[7],
                sort_to=row[8],
                sort_cc=row[9],
                display_from=row[10],
                display_to=row[11],
                message_id=row[12],
                in_reply_to=row[13],
                references=tuple(row[14].split()),
            )

        def op(conn: sqlite3.Connection) -> list[SortFields]:
            fields: list[SortFields] = []
            for lo, hi in _uid_ranges_sql(uids):
                fields.extend(
                    fields_of(row)
                    for row in conn.execute(
                        "SELECT e.uid, e.internaldate, e.tz_offset, e.size, m.sent_date, "
                        "m.subject, m.base_subject, m.sort_from, m.sort_to, m.sort_cc, "
                        "m.display_from, m.display_to, m.message_id, m.in_reply_to, m.refs "
                        "FROM entries e JOIN messages m ON m.id = e.message_id "
                        "WHERE e.mailbox_id = ? AND e.uid BETWEEN ? AND ? ORDER BY e.uid",
                        (mailbox_id, lo, hi),
                    )
                )
            if len(uids.ranges) > _MAX_RANGE_QUERIES:
                fields = [f for f in fields if f.uid in uids]
            return fields

        return await self.db.read(op)

    async def changed_since(self, mailbox_id: int, modseq: int) -> list[Entry]:
        what = FetchWhat()

        def op(conn: sqlite3.Connection) -> list[Entry]:
            return [
                _entry(row, what)
                for row in conn.execute(
                    f"SELECT {_ENTRY_COLUMNS} FROM entries e WHERE e.mailbox_id = ? "
                    "AND e.modseq > ? ORDER BY e.uid",
                    (mailbox_id, modseq),
                )
            ]

        return await self.db.read(op)

    async def vanished_since(self, mailbox_id: int, modseq: int) -> list[int]:
        return await self.db.read(
            lambda conn: [
                row[0]
                for row in conn.execute(
                    "SELECT uid FROM tombstones WHERE mailbox_id = ? AND modseq > ? ORDER BY uid",
                    (mailbox_id, modseq),
                )
            ]
        )

    # -- maintenance -----------------------------------------------------------------------
    async def counts(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            result: dict[str, int] = {}
            for name, table in (
                ("domains", "domains"),
                ("accounts", "accounts"),
                ("aliases", "aliases"),
                ("mailboxes", "mailboxes"),
                ("messages", "messages"),
                ("entries", "entries"),
            ):
                result[name] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            result["message_bytes"], result["inline_bytes"] = conn.execute(
                "SELECT coalesce(sum(size), 0), coalesce(sum(length(content)), 0) FROM messages"
            ).fetchone()
            return result

        counts = await self.db.read(op)
        counts["db_bytes"] = sum(path.stat().st_size for path in self.root.glob("meta.sqlite3*"))
        counts["blob_bytes"] = await asyncio.to_thread(self.blobs.size_on_disk)
        return counts

    async def sweep(self, min_age_seconds: float = 3600.0) -> int:
        """Remove messages no entry refers to, and blob files no message row names.

        Returns how many of the two it removed.
        """

        def op(conn: sqlite3.Connection, emit: Emit) -> int:
            orphans = conn.execute(
                "SELECT id, sha256, content IS NULL FROM messages WHERE created <= ? "
                "AND NOT EXISTS "
                "(SELECT 1 FROM entries e WHERE e.message_id = messages.id)",
                (int(time.time() - min_age_seconds),),
            ).fetchall()
            for row in orphans:
                sqlsearch.unindex_message_text(conn, row[0])
            conn.executemany("DELETE FROM messages WHERE id = ?", [(row[0],) for row in orphans])
            # A blob file may also hold a queued outbound message with the same content.
            doomed = {row[1] for row in orphans if row[2] and not blob_is_queued(conn, row[1])}
            stray = 0
            for name in self.blobs.iter_names(min_age_seconds):
                if (
                    name not in doomed
                    and conn.execute("SELECT 1 FROM messages WHERE sha256 = ?", (name,)).fetchone()
                    is None
                    and not blob_is_queued(conn, name)
                ):
                    doomed.add(name)
                    stray += 1
            # Files go on this (the writer) thread: an append checks its blob here too, so
            # it can never commit a reference to a file removed under it.  Unlinking before
            # COMMIT is safe: should the commit fail, rows name no file, and a message row
            # without its blob is re-put by the next append of that content.
            for name in doomed:
                self.blobs.delete(name)
            return len(orphans) + stray

        return await self.db.write(op)


async def open_store(
    data_dir: Path, *, group_commit_max: int = 256, inline_max: int = DEFAULT_INLINE_MAX
) -> SqliteStore:
    """Open (creating if needed) the embedded store under `data_dir/store`."""
    root = data_dir / "store"
    root.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(root, group_commit_max=group_commit_max, inline_max=inline_max)
    await store.start()
    return store
