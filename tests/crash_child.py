"""Child process of tests/test_store_crash.py: append to the store until killed (not a test).

Usage: crash_child.py DATA_DIR MODE SEED TAG INLINE_MAX ADDRESS...

MODE "append": one appender, every message distinct (its TAG and sequence number are in it).
MODE "sweep": the same appender but drawing from a small pool of contents (so appends share
blobs), plus a task that keeps appending pool contents to the first account's "Scratch",
expunging them again and running `sweep(0)`, so message rows and blobs keep being orphaned,
collected and needed again while the appender runs.

Protocol on stdout, one write per line group so a kill never leaves half a group visible:
  "intent SEQ SIZE MAILBOX:SHA256 ..."  before an append (SIZE "large" or "small")
  "UID MAILBOX SHA256"                  one per target, only after that append returned (the ack)
  "error SEQ TYPE"                      the append raised; it must have changed nothing
  "sweep", "swept"                      a sweep() call is starting, has returned
SHA256 is of prefix + message: exactly the bytes read_message must return.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys
from pathlib import Path

from postoffice.store import SqliteStore, open_store
from postoffice.store.model import AppendTarget, Flag, StoreMode, UidSet

LARGE_SIZE = 100 * 1024
MAX_APPENDS = 5_000  # a safety net should the parent never kill us


def say(line: str) -> None:
    # One write() of less than PIPE_BUF bytes reaches the pipe whole or not at all.
    os.write(sys.stdout.fileno(), line.encode() + b"\n")


def make_message(tag: str, seq: int, large: bool) -> bytes:
    head = (
        f"From: Crash Test <crash@example.net>\r\n"
        f"To: undisclosed-recipients:;\r\n"
        f"Subject: {tag} message {seq}\r\n"
        f"Date: Tue, 1 Dec 2026 12:00:00 +0000\r\n"
        f"Message-ID: <{tag}.{seq}@example.net>\r\n\r\n"
    )
    line = f"{tag} {seq} " + "x" * 60 + "\r\n"
    repeat = LARGE_SIZE // len(line) + 1 if large else 3
    return (head + line * repeat).encode()


async def appender(
    store: SqliteStore,
    inboxes: dict[str, int],
    mode: str,
    rng: random.Random,
    tag: str,
    pool: list[bytes],
) -> None:
    for seq in range(1, MAX_APPENDS + 1):
        if mode == "sweep":
            raw = rng.choice(pool)
        else:
            raw = make_message(tag, seq, large=rng.random() < 0.2)
        recipients = rng.sample(sorted(inboxes), rng.choice([1, 1, 2, len(inboxes)]))
        targets = [
            AppendTarget(inboxes[a], prefix=f"Delivered-To: {a}\r\n".encode()) for a in recipients
        ]
        digests = [hashlib.sha256(t.prefix + raw).hexdigest() for t in targets]
        size = "large" if len(raw) >= LARGE_SIZE else "small"
        where = " ".join(f"{t.mailbox_id}:{d}" for t, d in zip(targets, digests, strict=True))
        say(f"intent {seq} {size} {where}")
        try:
            results = await store.append(raw, targets)
        except Exception as exc:  # reported, and the parent checks it left nothing behind
            say(f"error {seq} {type(exc).__name__}")
            continue
        acks = zip(results, digests, strict=True)
        say("\n".join(f"{r.uid} {r.mailbox_id} {digest}" for r, digest in acks))


async def sweeper(store: SqliteStore, scratch: int, rng: random.Random, pool: list[bytes]) -> None:
    while True:
        try:
            for _ in range(rng.randint(1, 3)):
                await store.append(rng.choice(pool), [AppendTarget(scratch)])
            everything = UidSet.span(1, 2**32 - 1)
            await store.store_flags(scratch, everything, StoreMode.ADD, Flag.DELETED)
            await store.expunge(scratch)
            say("sweep")
            await store.sweep(0.0)
            say("swept")
        except Exception as exc:  # a lost race with the appender: not what this test is about
            say(f"sweep-error {type(exc).__name__}")


async def main(argv: list[str]) -> None:
    data_dir, mode, seed, tag, inline_max, *addresses = argv
    rng = random.Random(seed)
    store = await open_store(Path(data_dir), inline_max=int(inline_max))
    inboxes: dict[str, int] = {}
    for address in addresses:
        account = await store.get_account(address)
        assert account is not None, address
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        inboxes[address] = inbox.id
    say("ready")
    pool = [make_message("pool", n, large=n % 2 == 1) for n in range(4)]
    if mode == "append":
        await appender(store, inboxes, mode, rng, tag, pool)
        return
    owner = await store.get_account(addresses[0])
    assert owner is not None
    scratch = await store.get_mailbox(owner.id, "Scratch")
    assert scratch is not None
    sweeping = asyncio.create_task(sweeper(store, scratch.id, random.Random(rng.random()), pool))
    try:
        await appender(store, inboxes, mode, rng, tag, pool)
    finally:
        sweeping.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
