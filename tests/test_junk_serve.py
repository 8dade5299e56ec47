"""The junk classifier through real interfaces: `postoffice junk` as a subprocess, IMAP MOVE
into and out of Junk against `postoffice serve`, and spam sent over SMTP landing in Junk."""

from __future__ import annotations

import contextlib
import email
import imaplib
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Cli, ServeProcess, StartServe
from postoffice.config import JunkConfig, load_config
from postoffice.context import open_configured_store
from postoffice.filters.api import Findings, LocalPlan
from postoffice.filters.junk import JunkFilter
from test_junk import CORPUS, corpus, message

USER = "bob@example.test"
PASSWORD = "secret-pw-1"
TIMEOUT = 30.0


def halves(kind: str, half: int) -> list[str]:
    return [str(f) for f in sorted((CORPUS / kind).glob("*.eml")) if int(f.stem) % 2 == half]


def train_half(cli: Cli) -> None:
    assert cli.ok("junk", "train", "--spam", USER, *halves("spam", 0)) == (
        f"trained 20 of 20 message(s) as spam for {USER}\n"
    )
    assert cli.ok("junk", "train", "--ham", USER, *halves("ham", 0)) == (
        f"trained 20 of 20 message(s) as ham for {USER}\n"
    )


async def decisions(data: Path) -> dict[str, list[str]]:
    """X-Spam-Status of each held-out message, by kind, as the stage decides for USER."""
    config = load_config(data)
    store = await open_configured_store(data, config)
    try:
        account = await store.get_account(USER)
        assert account is not None
        stage = JunkFilter(store, config.junk)
        found: dict[str, list[str]] = {}
        for kind in ("spam", "ham"):
            for raw in corpus(kind, 1):
                plan = LocalPlan(account, USER, Findings())
                await stage.plan(message(raw), plan)
                status = dict(plan.headers).get("X-Spam-Status", "Unknown")
                found.setdefault(kind, []).append(
                    "junk" if plan.keep_into.mailbox == "Junk" else status.split(",")[0]
                )
        return found
    finally:
        await store.close()


async def test_cli_training_teaches_the_classifier(cli: Cli, data_dir: Path) -> None:
    cli.ok("user", "add", USER, "--password", PASSWORD)
    before = await decisions(data_dir)
    assert set(before["spam"]) == set(before["ham"]) == {"Unknown"}  # no decision untrained

    train_half(cli)
    assert cli.ok("junk", "train", "--spam", USER, halves("spam", 0)[0]) == (
        f"trained 0 of 1 message(s) as spam for {USER}\n"
    )
    after = await decisions(data_dir)
    # The default threshold (0.9) is cautious: no ham may reach Junk, most spam should.
    assert after["ham"].count("No") == 20
    assert after["spam"].count("junk") >= 12
    assert set(after["spam"]) <= {"junk", "No"}

    stats = cli.ok("junk", "stats", USER)
    assert "spam messages: 20\nham messages: 20\n" in stats
    assert "threshold: 0.90 (default)\nclassifying: yes\n" in stats
    assert cli.ok("junk", "threshold", USER, "0.5") == f"junk threshold of {USER}: 0.50\n"
    assert "threshold: 0.50\n" in cli.ok("junk", "stats", USER)
    lowered = await decisions(data_dir)
    assert lowered["spam"].count("junk") == 20 and lowered["ham"].count("No") == 20
    assert cli.ok("junk", "threshold", USER, "default").endswith("default\n")


def test_cli_errors(cli: Cli, data_dir: Path) -> None:
    cli.ok("user", "add", USER, "--password", PASSWORD)
    assert "no such user" in cli.fails("junk", "stats", "nobody@example.test")
    assert "invalid threshold" in cli.fails("junk", "threshold", USER, "1.5")
    assert "invalid threshold" in cli.fails("junk", "threshold", USER, "lots")
    assert "no file or mailbox 'Nope'" in cli.fails("junk", "train", "--spam", USER, "Nope")
    assert "--spam" in cli.fails("junk", "train", USER, halves("spam", 0)[0])


def test_cli_trains_a_mailbox_and_stdin(cli: Cli, data_dir: Path) -> None:
    cli.ok("user", "add", USER, "--password", PASSWORD)
    spam = Path(halves("spam", 0)[0]).read_text()
    assert cli.ok("junk", "train", "--spam", USER, stdin=spam).startswith("trained 1 of 1")
    # INBOX is empty; Junk as a mailbox name, not a file.
    assert cli.ok("junk", "train", "--ham", USER, "INBOX") == (
        f"trained 0 of 0 message(s) as ham for {USER}\n"
    )


# -- against a running server ---------------------------------------------------------------------


@contextlib.contextmanager
def imap(server: ServeProcess) -> Iterator[imaplib.IMAP4]:
    host, port = server.address("imap")
    client = imaplib.IMAP4(host, port, timeout=TIMEOUT)
    client.login(USER, PASSWORD)
    try:
        yield client
    finally:
        client.logout()


def wait_for_stats(cli: Cli, expected: str) -> str:
    """Training runs after the IMAP reply: poll `junk stats` until it shows `expected`."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        stats = cli.ok("junk", "stats", USER)
        if expected in stats or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


@pytest.fixture
def running(cli: Cli, start_serve: StartServe) -> ServeProcess:
    cli.ok("user", "add", USER, "--password", PASSWORD)
    return start_serve()


def test_imap_move_into_junk_trains_spam_and_out_trains_ham(
    cli: Cli, running: ServeProcess
) -> None:
    raw = Path(halves("spam", 0)[0]).read_bytes()
    with imap(running) as client:
        assert client.append("INBOX", None, None, raw)[0] == "OK"
        client.select("INBOX")
        assert client.uid("MOVE", "1", "Junk")[0] == "OK"
        stats = wait_for_stats(cli, "spam messages: 1\n")
        assert "spam messages: 1\nham messages: 0\n" in stats

        client.select("Junk")
        assert client.uid("MOVE", "1", "INBOX")[0] == "OK"
        stats = wait_for_stats(cli, "ham messages: 1\n")
        assert "spam messages: 0\nham messages: 1\n" in stats

        # Deleting from Junk (into Trash) teaches nothing.
        client.select("INBOX")
        assert client.uid("MOVE", "2", "Junk")[0] == "OK"
        wait_for_stats(cli, "spam messages: 1\n")
        client.select("Junk")
        assert client.uid("MOVE", "3", "Trash")[0] == "OK"
        assert client.noop()[0] == "OK"
    assert "spam messages: 1\nham messages: 0\n" in cli.ok("junk", "stats", USER)


def fetch_all(client: imaplib.IMAP4, mailbox: str) -> list[email.message.Message]:
    client.select(mailbox)
    _, data = client.uid("SEARCH", "ALL")
    found = []
    for uid in data[0].split():
        _, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
        first = parts[0]
        assert isinstance(first, tuple)
        found.append(email.message_from_bytes(first[1]))
    return found


def test_spam_over_smtp_lands_in_junk(cli: Cli, data_dir: Path, start_serve: StartServe) -> None:
    cli.ok("user", "add", USER, "--password", PASSWORD)
    train_half(cli)
    server = start_serve()
    spam = Path(halves("spam", 1)[0]).read_bytes()
    ham = Path(halves("ham", 1)[0]).read_bytes()
    host, port = server.address("smtp")
    with smtplib.SMTP(host, port, timeout=TIMEOUT) as smtp:
        smtp.sendmail("sender@remote.test", [USER], spam)
        smtp.sendmail("friend@remote.test", [USER], ham)
    with imap(server) as client:
        (junk,) = fetch_all(client, "Junk")
        (inbox,) = fetch_all(client, "INBOX")
    assert junk["Message-ID"] == email.message_from_bytes(spam)["Message-ID"]
    assert str(junk["X-Spam-Status"]).startswith("Yes, score=")
    assert float(str(junk["X-Spam-Score"])) >= JunkConfig().threshold
    assert junk["X-Spam-Tokens"]
    assert str(inbox["X-Spam-Status"]).startswith("No, score=")
