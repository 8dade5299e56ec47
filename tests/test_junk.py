"""The junk classifier in-process: tokenizer, Robinson/Fisher scoring, the counts in a real
store, the recipient stage's decisions, and the rspamd/spamd stage against fake scanners on
loopback, and the real spamd when it is installed (the real rspamd: tests/test_rspamd.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from postoffice.config import JunkConfig
from postoffice.delivery.model import Origin, Outcome
from postoffice.filters import junk, spamd
from postoffice.filters.api import (
    JUNK_FOLDER,
    FileInto,
    Findings,
    LocalPlan,
    Message,
    StageUnavailable,
)
from postoffice.filters.junk.bayes import chi2_survival, classify, token_probability
from postoffice.filters.junk.tokens import MAX_TOKENS, digest, tokenize
from postoffice.filters.junk.training import train_messages, train_raw, training_for_transfer
from postoffice.store import SqliteStore, open_store
from postoffice.store.api import TrainedMessage
from postoffice.store.model import (
    Account,
    AppendTarget,
    Envelope,
    Mailbox,
    Recipient,
    SpecialUse,
)

CORPUS = Path(__file__).parent / "data" / "junk"
MX = Origin(
    listener="smtp", protocol="ESMTP", helo="relay.test", peer_ip="192.0.2.9", session_id="s1"
)
USER = "bob@example.test"


def corpus(kind: str, half: int) -> list[bytes]:
    """Every other message of tests/data/junk/<kind>/: half 0 to train, half 1 to test."""
    files = sorted((CORPUS / kind).glob("*.eml"))
    return [f.read_bytes() for f in files if int(f.stem) % 2 == half]


def message(raw: bytes, origin: Origin = MX) -> Message:
    return Message(Envelope("someone@remote.test", (Recipient(USER),)), raw, origin)


# -- tokens ---------------------------------------------------------------------------------------


def test_tokens_from_headers_plain_html_and_urls() -> None:
    raw = (
        b"Received: from mail.sender.test (mail.sender.test [192.0.2.1]) by mx; now\r\n"
        b"From: =?utf-8?q?J=C3=BCrgen_Wei=C3=9F?= <Juergen@Sender.TEST>\r\n"
        b"To: bob@example.test\r\nSubject: Cheap WATCHES for you\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nSee http://shop.watch.test/x now, ok\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>Best <b>prices</b></p><script>hidden()</script>"
        b'<a href="https://Click.Track.test/r?id=1">here</a>\r\n--b--\r\n'
    )
    tokens = tokenize(raw)
    for expected in (
        "received:mail.sender.test",
        "from:sender.test",
        "from:jürgen",
        "from-local:juergen",
        "to:example.test",
        "subject:cheap",
        "subject:watches",
        "url:shop.watch.test",
        "url:click.track.test",
        "prices",
        "best",
        "type:text/html",
    ):
        assert expected in tokens
    assert "hidden" not in tokens  # script content is not text
    assert "ok" not in tokens and "for" not in tokens  # under 3 characters
    assert len(tokens) == len(set(tokens))


def test_tokens_are_bounded_and_long_words_dropped() -> None:
    words = " ".join(f"word{i}" for i in range(5000))
    raw = f"Subject: hi\r\n\r\n{words} {'x' * 41}\r\n".encode()
    tokens = tokenize(raw)
    assert len(tokens) == MAX_TOKENS
    assert "x" * 41 not in tokens


def test_digest_follows_the_message_id() -> None:
    one = b"Message-ID: <a@b>\r\nSubject: one\r\n\r\nbody\r\n"
    prefixed = b"Delivered-To: bob@example.test\r\n" + one
    assert digest(one) == digest(prefixed)
    assert digest(b"Subject: x\r\n\r\n1\r\n") != digest(b"Subject: x\r\n\r\n2\r\n")


# -- the classifier ------------------------------------------------------------------------------


def test_token_probability_is_robinson_f() -> None:
    assert token_probability(0, 0, 10, 10) == 0.5
    # seen once, in spam only: (1 * 0.5 + 1 * 1.0) / (1 + 1)
    assert token_probability(1, 0, 10, 10) == pytest.approx(0.75)
    assert token_probability(0, 9, 10, 10) == pytest.approx(0.05)
    # frequencies, not counts: 5 of 10 spam against 5 of 50 ham
    assert token_probability(5, 5, 10, 50) == pytest.approx((0.5 + 10 * (0.5 / 0.6)) / 11)


def test_chi2_survival() -> None:
    assert chi2_survival(0.0, 4) == 1.0
    assert chi2_survival(2.0, 2) == pytest.approx(0.36787944)  # exp(-1)
    assert chi2_survival(9.4877, 4) == pytest.approx(0.05, abs=1e-4)


def test_classify_combines_the_strongest_tokens() -> None:
    spammy = {f"s{i}": (9, 0) for i in range(5)}
    hammy = {f"h{i}": (0, 9) for i in range(5)}
    neutral = {"the": (5, 5)}
    assert classify({**spammy, **neutral}, 10, 10).probability > 0.99
    assert classify({**hammy, **neutral}, 10, 10).probability < 0.01
    mixed = classify({**spammy, **hammy}, 10, 10)
    assert mixed.probability == pytest.approx(0.5)  # evidence both ways: unsure
    assert [t for t, _ in classify({**spammy, **neutral}, 10, 10).clues] == sorted(spammy)
    assert classify({}, 10, 10).probability == 0.5


# -- the store and training -----------------------------------------------------------------------


@dataclasses.dataclass
class World:
    store: SqliteStore
    account: Account


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = await open_store(tmp_path)
    await store.add_domain("example.test")
    account = await store.add_account(USER, "hash", None)
    yield World(store, account)
    await store.close()


async def test_counts_and_totals(world: World) -> None:
    junk_store = world.store.junk
    one = TrainedMessage(b"1" * 32, ["alpha", "beta"])
    two = TrainedMessage(b"2" * 32, ["beta", "gamma"])
    assert await junk_store.train(world.account.id, [one, two], spam=True) == 2
    assert await junk_store.counts(world.account.id, ["alpha", "beta", "nope"]) == {
        "alpha": (1, 0),
        "beta": (2, 0),
    }
    # The same message again counts once; the other way, it changes class.
    assert await junk_store.train(world.account.id, [one], spam=True) == 0
    assert await junk_store.train(world.account.id, [one], spam=False) == 1
    assert await junk_store.counts(world.account.id, ["alpha", "beta"]) == {
        "alpha": (0, 1),
        "beta": (1, 1),
    }
    totals = await junk_store.totals(world.account.id)
    assert (totals.spam, totals.ham, totals.threshold) == (1, 1, None)
    assert await junk_store.token_count(world.account.id) == 3
    await junk_store.set_threshold(world.account.id, 0.75)
    assert (await junk_store.totals(world.account.id)).threshold == 0.75


async def test_counts_are_read_in_batches(world: World) -> None:
    tokens = [f"t{i}" for i in range(1200)]
    await world.store.junk.train(world.account.id, [TrainedMessage(b"x" * 32, tokens)], True)
    assert len(await world.store.junk.counts(world.account.id, tokens)) == 1200


async def test_train_messages_from_a_mailbox(world: World) -> None:
    inbox = await world.store.get_mailbox(world.account.id, "INBOX")
    assert inbox is not None
    raws = corpus("spam", 0)[:3]
    uids = [
        appended.uid
        for raw in raws
        for appended in await world.store.append(raw, [AppendTarget(inbox.id)])
    ]
    assert await train_messages(world.store, world.account.id, inbox.id, uids, True) == 3
    assert await train_messages(world.store, world.account.id, inbox.id, uids, True) == 0
    assert (await world.store.junk.totals(world.account.id)).spam == 3


def mailbox(special: SpecialUse | None) -> Mailbox:
    return Mailbox(1, 1, "any", special, 1, 1, 1, True)


@pytest.mark.parametrize(
    ("source", "target", "move", "expected"),
    [
        (None, SpecialUse.JUNK, False, True),
        (None, SpecialUse.JUNK, True, True),
        (SpecialUse.JUNK, None, True, False),
        (SpecialUse.JUNK, SpecialUse.ARCHIVE, True, False),
        (SpecialUse.JUNK, None, False, None),  # a copy stays in Junk too: no correction
        (SpecialUse.JUNK, SpecialUse.TRASH, True, None),
        (SpecialUse.JUNK, SpecialUse.JUNK, True, None),
        (None, SpecialUse.ARCHIVE, True, None),
    ],
)
def test_training_for_transfer(
    source: SpecialUse | None, target: SpecialUse | None, move: bool, expected: bool | None
) -> None:
    assert training_for_transfer(mailbox(source), mailbox(target), move) is expected


# -- the recipient stage --------------------------------------------------------------------------


async def trained(world: World) -> None:
    await train_raw(world.store, world.account.id, corpus("spam", 0), spam=True)
    await train_raw(world.store, world.account.id, corpus("ham", 0), spam=False)


async def plan_for(world: World, findings: Findings | None = None) -> LocalPlan:
    """A plan as delivery makes it: with the account as routing reads it, at delivery."""
    account = await world.store.get_account(USER)
    assert account is not None
    return LocalPlan(account, USER, findings or Findings())


async def test_untrained_account_gets_no_decision(world: World) -> None:
    stage = junk.JunkFilter(world.store, JunkConfig(min_trained=1))
    plan = await plan_for(world)
    await stage.plan(message(corpus("spam", 1)[0]), plan)
    assert plan.keep_into == FileInto("INBOX")
    assert plan.headers == []  # no header either: the copy is as it was sent


async def test_trained_account_files_spam_into_junk(world: World) -> None:
    await trained(world)
    await world.store.rename_mailbox(world.account.id, "Junk", "Spam")  # \Junk follows
    stage = junk.JunkFilter(world.store, JunkConfig(threshold=0.9))
    spam_plan, ham_plan = await plan_for(world), await plan_for(world)
    await stage.plan(message(corpus("spam", 1)[0]), spam_plan)
    await stage.plan(message(corpus("ham", 1)[0]), ham_plan)
    assert spam_plan.keep_into == JUNK_FOLDER  # the pipeline finds it by its special use
    headers = dict(spam_plan.headers)
    assert float(headers["X-Spam-Score"]) >= 0.9
    assert headers["X-Spam-Status"].startswith("Yes, score=")
    assert "pills 0." in headers["X-Spam-Tokens"]  # the message sells pills
    assert ham_plan.keep_into == FileInto("INBOX")
    assert dict(ham_plan.headers)["X-Spam-Status"].startswith("No, score=")


async def test_account_threshold_and_reject_threshold(world: World) -> None:
    await trained(world)
    ham = message(corpus("ham", 1)[0])
    await world.store.junk.set_threshold(world.account.id, 0.01)
    plan = await plan_for(world)
    await junk.JunkFilter(world.store, JunkConfig()).plan(ham, plan)
    assert plan.keep_into.mailbox == "Junk"
    plan = await plan_for(world)
    await junk.JunkFilter(world.store, JunkConfig(reject_threshold=0.9)).plan(
        message(corpus("spam", 1)[0]), plan
    )
    assert plan.refusal is not None and plan.refusal.outcome is Outcome.REJECTED


async def test_earlier_findings_count(world: World) -> None:
    stage = junk.JunkFilter(world.store, JunkConfig())
    tagged = await plan_for(world, Findings(junk=True))
    await stage.plan(message(corpus("ham", 1)[0]), tagged)
    assert tagged.keep_into.mailbox == "Junk"
    scored = await plan_for(world, Findings(spam_score=0.95))
    await stage.plan(message(corpus("ham", 1)[0]), scored)
    assert scored.keep_into.mailbox == "Junk"
    assert dict(scored.headers)["X-Spam-Score"] == "0.95"


async def test_authenticated_mail_is_not_classified(world: World) -> None:
    await trained(world)
    submission = dataclasses.replace(MX, listener="submission", account_id=world.account.id)
    plan = await plan_for(world)
    await junk.JunkFilter(world.store, JunkConfig()).plan(
        message(corpus("spam", 1)[0], submission), plan
    )
    assert plan.headers == [] and plan.keep_into == FileInto("INBOX")


# -- rspamd and spamd ------------------------------------------------------------------------------

Reply = Callable[[bytes], bytes]


async def fake_scanner(reply: Reply) -> tuple[asyncio.Server, list[bytes]]:
    """A loopback server that reads one request (head + Content-Length body), answers
    `reply(request)` and closes, as rspamd and spamd do."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        request = head + await reader.readexactly(length)
        requests.append(request)
        answer = reply(request)
        # In two pieces, as a real server may send it: the client must read until EOF.
        for piece in (answer[:20], answer[20:]):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), requests


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def rspamd_reply(action: str, score: float, chunked: bool = False) -> Reply:
    body = json.dumps(
        {"score": score, "required_score": 15.0, "action": action, "symbols": {"BAYES_SPAM": {}}}
    ).encode()

    def reply(request: bytes) -> bytes:
        if chunked:
            return (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
            )
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)

    return reply


async def scan_with(
    build: Callable[[int], spamd.SpamdFilter], reply: Reply, origin: Origin = MX
) -> tuple[Findings, list[bytes]]:
    server, requests = await fake_scanner(reply)
    async with server:
        findings = Findings()
        await build(port_of(server)).scan(message(corpus("spam", 1)[0], origin), findings)
    return findings, requests


def rspamd_stage(port: int) -> spamd.SpamdFilter:
    return spamd.SpamdFilter(spamd.rspamd_scanner(f"http://127.0.0.1:{port}"), 5.0, "accept")


def spamd_stage(port: int) -> spamd.SpamdFilter:
    return spamd.SpamdFilter(spamd.spamd_scanner("127.0.0.1", port), 5.0, "accept")


@pytest.mark.parametrize("chunked", [False, True])
async def test_rspamd_add_header(chunked: bool) -> None:
    findings, requests = await scan_with(rspamd_stage, rspamd_reply("add header", 16.5, chunked))
    assert requests[0].startswith(b"POST /checkv2 HTTP/1.1\r\n")
    assert b"\r\nRcpt: bob@example.test\r\n" in requests[0]
    assert b"\r\nIP: 192.0.2.9\r\n" in requests[0]
    assert requests[0].endswith(corpus("spam", 1)[0])
    assert findings.junk and findings.refusal is None
    assert findings.spam_score == pytest.approx(1 / (1 + 2.718281828**-1.5))
    assert findings.headers == [
        ("X-Spam-Report", "rspamd score=16.50 required=15.00 action=add_header symbols=BAYES_SPAM")
    ]


async def test_rspamd_reject_refuses() -> None:
    findings, _ = await scan_with(rspamd_stage, rspamd_reply("reject", 30.0))
    assert findings.refusal is not None and findings.refusal.outcome is Outcome.REJECTED


async def test_rspamd_no_action_is_ham() -> None:
    findings, _ = await scan_with(rspamd_stage, rspamd_reply("no action", 1.0))
    assert not findings.junk and findings.spam_score is not None and findings.spam_score < 0.01


async def test_scanner_errors_make_the_stage_unavailable() -> None:
    with pytest.raises(StageUnavailable):
        await scan_with(
            rspamd_stage, lambda request: b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
        )
    with pytest.raises(StageUnavailable):
        await scan_with(spamd_stage, lambda request: b"SPAMD/1.1 76 Bad header line\r\n\r\n")
    server, _ = await fake_scanner(lambda request: b"")
    port = port_of(server)
    server.close()
    await server.wait_closed()
    with pytest.raises(StageUnavailable):
        await rspamd_stage(port).scan(message(b"Subject: x\r\n\r\nx\r\n"), Findings())


async def test_a_scanner_that_never_answers_times_out() -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # answers nothing, ever: the client must give up by itself
        await reader.read()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    async with server:
        for scanner in (
            spamd.rspamd_scanner(f"http://127.0.0.1:{port_of(server)}"),
            spamd.spamd_scanner("127.0.0.1", port_of(server)),
        ):
            stage = spamd.SpamdFilter(scanner, 0.2, "tempfail")
            # The outer bound turns a stage that ignores its own timeout into a failure.
            async with asyncio.timeout(5):
                with pytest.raises(StageUnavailable, match="TimeoutError"):
                    await stage.scan(message(b"Subject: x\r\n\r\nx\r\n"), Findings())
        for writer in held:
            writer.close()
            await writer.wait_closed()


async def test_spamd_symbols() -> None:
    def reply(request: bytes) -> bytes:
        body = b"BAYES_99,URIBL_BLACK"
        return b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: True ; 12.5 / 5.0\r\n\r\n%b" % (
            len(body),
            body,
        )

    findings, requests = await scan_with(spamd_stage, reply)
    assert requests[0].startswith(b"SYMBOLS SPAMC/1.5\r\nContent-length: ")
    assert findings.junk
    assert findings.headers == [
        ("X-Spam-Report", "spamd score=12.50 required=5.00 symbols=BAYES_99,URIBL_BLACK")
    ]


async def test_scanner_skips_authenticated_mail() -> None:
    submission = dataclasses.replace(MX, listener="submission", account_id=1)
    findings, requests = await scan_with(rspamd_stage, rspamd_reply("reject", 30.0), submission)
    assert requests == [] and findings == Findings()


# -- the real spamd, when installed -------------------------------------------------------------


def listening_port(pid: int) -> int | None:
    """The TCP port a process listens on (spamd binds port 0 but does not log which)."""
    proc = Path(f"/proc/{pid}")
    inodes = set()
    for fd in (proc / "fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for line in (proc / "net" / "tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            return int(fields[1].rsplit(":", 1)[1], 16)
    return None


@pytest.fixture
def real_spamd() -> Iterator[int]:
    binary = shutil.which("spamd") or "/usr/sbin/spamd"
    if not Path(binary).exists():
        pytest.skip("spamd is not installed (Debian package spamd)")
    # -L: local tests only, no DNS or network lookups; -x: no per-user configuration.
    command = [binary, "-L", "-x", "--listen=127.0.0.1:0", "--max-children=1", "-s", "stderr"]
    if os.geteuid() == 0:
        command += ["-u", "nobody"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            port = listening_port(process.pid)
        assert port is not None, "spamd did not start"
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


async def test_real_spamd(real_spamd: int) -> None:
    stage = spamd.SpamdFilter(spamd.spamd_scanner("127.0.0.1", real_spamd), 60.0, "accept")
    spam, ham = Findings(), Findings()
    await stage.scan(message(corpus("spam", 0)[0]), spam)  # pills: DRUGS_ERECTILE and more
    await stage.scan(message(corpus("ham", 0)[0]), ham)
    assert spam.junk and spam.spam_score is not None and spam.spam_score > 0.5
    assert dict(spam.headers)["X-Spam-Report"].startswith("spamd score=")
    assert not ham.junk and ham.spam_score is not None and ham.spam_score < 0.5
