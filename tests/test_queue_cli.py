"""`postoffice queue ...` and `postoffice dkim generate`, run as a user runs them."""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path

from conftest import Cli
from postoffice.delivery.model import Envelope, Recipient
from postoffice.store import open_store
from postoffice.store.api import QueueState

RAW = b"From: <bob@example.test>\r\nSubject: queued\r\n\r\nhello\r\n"


def enqueue(data: Path, *recipients: str) -> int:
    async def run() -> int:
        store = await open_store(data)
        try:
            return await store.outbound.enqueue(
                RAW, Envelope("bob@example.test", ()), [Recipient(r) for r in recipients], "s1"
            )
        finally:
            await store.close()

    return asyncio.run(run())


def states(data: Path, message_id: int) -> list[QueueState] | None:
    async def run() -> list[QueueState] | None:
        store = await open_store(data)
        try:
            message = await store.outbound.get(message_id)
            return None if message is None else [r.state for r in message.recipients]
        finally:
            await store.close()

    return asyncio.run(run())


def test_queue_commands(cli: Cli, data_dir: Path) -> None:
    assert cli.ok("queue", "list") == ""
    first = enqueue(data_dir, "a@remote.test", "b@remote.test")
    second = enqueue(data_dir, "c@other.test")
    listing = cli.ok("queue", "list").splitlines()
    assert len(listing) == 2
    assert re.match(
        rf"{first}  {len(RAW)}  \S+ \S+  <bob@example.test>  2 pending  next ", listing[0]
    )

    shown = cli.ok("queue", "show", str(first))
    assert "recipient: <a@remote.test>  pending  attempts 0" in shown
    assert "sender: <bob@example.test>" in shown

    assert cli.ok("queue", "hold", str(first)) == f"held 2 recipient(s) of message {first}\n"
    assert states(data_dir, first) == [QueueState.HELD, QueueState.HELD]
    assert "2 held" in cli.ok("queue", "list")
    assert cli.ok("queue", "release", str(first)).startswith("released 2")
    assert states(data_dir, first) == [QueueState.PENDING, QueueState.PENDING]
    assert cli.ok("queue", "retry", str(first)).startswith("retrying 2")
    assert cli.ok("queue", "flush") == "retrying 3 recipient(s)\n"

    assert cli.ok("queue", "remove", str(second)) == f"removed message {second}\n"
    assert states(data_dir, second) is None
    for command in ("show", "retry", "hold", "release", "remove"):
        assert cli.fails("queue", command, str(second)).endswith(f"no queued message {second}")


def test_dkim_generate_prints_the_record(cli: Cli, data_dir: Path) -> None:
    out = cli.ok("dkim", "generate", "example.test", "--selector", "s2024")
    match = re.fullmatch(
        r's2024\._domainkey\.example\.test\. IN TXT \( "v=DKIM1; k=rsa; p=[^"]+"( "[^"]+")* \)\n',
        out,
    )
    assert match, out
    key = data_dir / "dkim" / "example.test.s2024.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ed = cli.ok("dkim", "generate", "example.test", "--algorithm", "ed25519")
    assert ed.startswith('mail._domainkey.example.test. IN TXT ( "v=DKIM1; k=ed25519; p=')
    assert "exists already" in cli.fails("dkim", "generate", "example.test", "--selector", "s2024")
    assert "unknown domain" in cli.fails("dkim", "generate", "nowhere.test")
    assert "invalid selector" in cli.fails("dkim", "generate", "example.test", "--selector", "a.b")
