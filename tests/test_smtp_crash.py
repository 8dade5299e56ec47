"""Crash test (DESIGN §8, issue 3): SIGKILL the real `postoffice serve` while 8 SMTP clients
send, restart it, and check through the store that every message that got its 250 is there,
intact and exactly once (and that nothing unacknowledged is there twice).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import ServeProcess, postoffice_command
from postoffice.config import LISTENER_NAMES
from postoffice.store import open_store
from test_smtp_session import BOB, make_data_dir

pytestmark = pytest.mark.slow

CLIENTS = 8
ROUNDS = 2
SUBJECT = re.compile(rb"^Subject: (crash-\S+)\r$", re.MULTILINE)


def serve(data: Path) -> ServeProcess:
    listens: list[str] = []
    for name in LISTENER_NAMES:
        listens += ["--listen", f"{name}={'127.0.0.1:0' if name == 'smtp' else 'off'}"]
    process = ServeProcess([*postoffice_command(), "--data", str(data), "serve", *listens])
    process.wait_ready()
    return process


def crash_message(tag: str) -> bytes:
    # Sizes vary so both store paths (inline rows and blob files) are crashed into.
    size = (int(hashlib.sha256(tag.encode()).hexdigest()[:4], 16) % 3) * 60_000
    body = "".join(f"{tag} line {i} {'.' if i % 7 == 0 else ''}\r\n" for i in range(size // 40))
    return (
        f"From: sender@other.test\r\nTo: {BOB}\r\nSubject: {tag}\r\n"
        f"Message-ID: <{tag}@other.test>\r\n\r\n{body}end of {tag}\r\n"
    ).encode()


class Sender(threading.Thread):
    """Sends messages until the server goes away; `acked` holds those that got a 250."""

    def __init__(self, address: tuple[str, int], name: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.tag = name
        self.acked: dict[str, bytes] = {}
        self.sent: dict[str, bytes] = {}

    def run(self) -> None:
        n = 0
        try:
            with smtplib.SMTP(*self.address, local_hostname="client.test", timeout=30) as client:
                while True:
                    tag = f"crash-{self.tag}-{n}"
                    raw = crash_message(tag)
                    self.sent[tag] = raw
                    client.sendmail("sender@other.test", [BOB], raw)
                    self.acked[tag] = raw
                    n += 1
        except (OSError, smtplib.SMTPException):
            return  # the server was killed


async def stored_messages(data: Path) -> list[bytes]:
    store = await open_store(data)
    try:
        account = await store.get_account(BOB)
        assert account is not None
        mailbox = await store.get_mailbox(account.id, "INBOX")
        assert mailbox is not None
        out: list[bytes] = []
        for uid in await store.uids(mailbox.id):
            raw = await store.read_message(mailbox.id, uid)
            assert raw is not None
            out.append(raw)
        return out
    finally:
        await store.close()


def test_every_acknowledged_message_survives_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_data_dir(data)
    acked: dict[str, bytes] = {}
    sent: dict[str, bytes] = {}
    for round_number in range(ROUNDS):
        process = serve(data)
        try:
            address = process.address("smtp")
            senders = [Sender(address, f"{round_number}.{i}") for i in range(CLIENTS)]
            for sender in senders:
                sender.start()
            # Kill once enough has been acknowledged that the kill lands mid-stream.
            deadline = time.monotonic() + 30
            while sum(len(s.acked) for s in senders) < 40 and time.monotonic() < deadline:
                time.sleep(0.05)
            process.proc.kill()
            process.proc.wait()
        finally:
            process.kill()
        for sender in senders:
            sender.join(30)
            assert not sender.is_alive()
            acked.update(sender.acked)
            sent.update(sender.sent)
        assert sum(len(s.acked) for s in senders) >= 40

    # Restart: the server must come up on what the kills left and still take mail.
    process = serve(data)
    try:
        with smtplib.SMTP(*process.address("smtp"), local_hostname="client.test") as client:
            after = crash_message("crash-after-restart")
            client.sendmail("sender@other.test", [BOB], after)
        assert process.stop() == 0, "\n".join(process.lines)
    finally:
        process.kill()

    stored = asyncio.run(stored_messages(data))
    by_tag: dict[str, list[bytes]] = {}
    for raw in stored:
        match = SUBJECT.search(raw)
        assert match is not None, raw[:300]
        by_tag.setdefault(match[1].decode(), []).append(raw)
    counts = Counter({tag: len(copies) for tag, copies in by_tag.items()})
    assert counts.most_common(1)[0][1] == 1, "a message was stored twice"
    for tag, raw in acked.items():
        assert tag in by_tag, f"{tag} got a 250 but is not in the store"
        assert by_tag[tag][0].endswith(raw), f"{tag} is not intact"
    for tag, copies in by_tag.items():
        # What was in flight at a kill may or may not be there, but only whole.
        expected = sent.get(tag, after if tag == "crash-after-restart" else None)
        assert expected is not None and copies[0].endswith(expected), tag
