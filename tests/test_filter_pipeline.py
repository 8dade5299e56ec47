"""The delivery pipeline's side of filtering: what stages decide becomes stored copies,
refusals, redirects and replies.  The stages here are small real implementations of the
stage interface; each real filter has its own tests."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from postoffice.config import Config, ServerConfig
from postoffice.delivery.model import ACCEPTED, Origin, Outcome, Verdict
from postoffice.delivery.pipeline import Delivery
from postoffice.filters.api import (
    AutoReply,
    FileInto,
    Findings,
    LocalPlan,
    Message,
    OnFailure,
    StageUnavailable,
    rejected,
)
from postoffice.filters.chain import TRY_LATER, FilterChain
from postoffice.log import get_logger
from postoffice.store.model import Flag, UidSet
from test_delivery import LMTP, MX, World, envelope, make_world, message, outcomes, parse


@dataclasses.dataclass
class Scanner:
    """A message stage doing one configured thing."""

    action: str
    name: str = "scanner"
    on_failure: OnFailure = "accept"

    async def scan(self, message: Message, findings: Findings) -> None:
        match self.action:
            case "header":
                findings.add_header("X-Scanned", f"yes for {message.envelope.sender}")
            case "refuse":
                findings.refuse(rejected("virus found: Test-Signature"))
            case "junk":
                findings.junk = True
            case "quarantine":
                findings.quarantined = True
            case "down":
                raise StageUnavailable("clamd is not answering")
            case "bug":
                raise ZeroDivisionError


@dataclasses.dataclass
class Rules:
    """A recipient stage applying one account's rules, like a Sieve script would."""

    rules: dict[str, list[tuple[str, str]]]
    name: str = "rules"
    on_failure: OnFailure = "accept"

    async def plan(self, message: Message, plan: LocalPlan) -> None:
        for action, argument in self.rules.get(plan.account.address, []):
            match action:
                case "fileinto":
                    plan.files.append(FileInto(argument, flags=Flag.FLAGGED))
                    plan.keep = False
                case "fileinto-create":
                    plan.files.append(FileInto(argument, create=True))
                    plan.keep = False
                case "header":
                    plan.headers.append(("X-Rule", argument))
                case "discard":
                    plan.keep = False
                case "reject":
                    plan.refusal = rejected(argument)
                case "redirect":
                    plan.redirects.append(argument)
                    plan.keep = False
                case "redirect-copy":
                    plan.redirects.append(argument)
                case "reply":
                    raw = (
                        f"From: {plan.account.address}\r\nTo: {argument}\r\n"
                        "Subject: Auto: away\r\nAuto-Submitted: auto-replied\r\n\r\nAway.\r\n"
                    ).encode()
                    plan.replies.append(AutoReply(argument, raw))


@dataclasses.dataclass
class Gate:
    """A session stage refusing one thing at each step."""

    name: str = "gate"
    on_failure: OnFailure = "accept"

    async def check_connect(self, origin: Origin) -> Verdict | None:
        if origin.peer_ip == "192.0.2.99":
            return Verdict(Outcome.RATE_LIMITED, "too many connections")
        return None

    async def check_sender(self, sender: str, origin: Origin) -> Verdict | None:
        return Verdict(Outcome.BLOCKED, "listed") if sender.startswith("spammer@") else None

    async def check_recipient(self, sender: str, recipient: str, origin: Origin) -> Verdict | None:
        if recipient.startswith("alice@"):
            return Verdict(Outcome.GREYLISTED, "come back later")
        return None


def chain(*stages: object) -> FilterChain:
    return FilterChain(
        get_logger("filters"),
        session=[s for s in stages if isinstance(s, Gate)],
        message=[s for s in stages if isinstance(s, Scanner)],
        recipient=[s for s in stages if isinstance(s, Rules)],
    )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path, Config(server=ServerConfig(hostname="mx.example.test")))
    yield w
    await w.ctx.close()


def use(world: World, *stages: object) -> None:
    world.delivery = Delivery(world.ctx, chain(*stages))


async def folder(world: World, address: str, name: str) -> list[bytes]:
    account = await world.account(address)
    mailbox = await world.store.get_mailbox(account.id, name)
    if mailbox is None:
        return []
    messages = []
    for uid in await world.store.uids(mailbox.id):
        raw = await world.store.read_message(mailbox.id, uid)
        assert raw is not None
        messages.append(raw)
    return messages


async def test_session_stages_screen_only_the_world(world: World) -> None:
    use(world, Gate())
    refused = await world.delivery.check_connect(dataclasses.replace(MX, peer_ip="192.0.2.99"))
    assert refused.outcome is Outcome.RATE_LIMITED
    assert (await world.delivery.check_connect(MX)).accepted
    blocked = await world.delivery.check_sender("spammer@remote.test", MX)
    assert blocked.outcome is Outcome.BLOCKED
    alice = await world.delivery.check_recipient(
        envelope("alice@example.test").recipients[0], MX, sender="someone@remote.test"
    )
    assert alice.outcome is Outcome.GREYLISTED
    # An unknown user is told so, not greylisted: routing comes first.
    unknown = await world.delivery.check_recipient(
        envelope("nobody@example.test").recipients[0], MX, sender="someone@remote.test"
    )
    assert unknown.outcome is Outcome.UNKNOWN_USER
    # Logged-in users and LMTP hand-overs skip connection-level checks.
    submission = await world.submission("bob@example.test")
    assert (
        await world.delivery.check_connect(dataclasses.replace(submission, peer_ip="192.0.2.99"))
    ).accepted
    assert (await world.delivery.check_sender("spammer@remote.test", LMTP)).accepted


async def test_message_stage_headers_go_above_received(world: World) -> None:
    use(world, Scanner("header"))
    assert outcomes(await world.delivery.deliver(envelope("bob@example.test"), message(), MX)) == [
        Outcome.ACCEPTED
    ]
    [stored] = await world.inbox("bob@example.test")
    lines = stored.split(b"\r\n")
    names = [line.split(b":")[0] for line in lines[:6]]
    assert names[:4] == [b"Delivered-To", b"Return-Path", b"X-Scanned", b"Received"]
    assert parse(stored)["X-Scanned"] == "yes for someone@remote.test"


async def test_refusal_stores_nothing_and_answers_every_recipient(world: World) -> None:
    use(world, Scanner("refuse"), Scanner("header"))
    verdicts = await world.delivery.deliver(
        envelope("bob@example.test", "alice@example.test"), message(), LMTP
    )
    assert outcomes(verdicts) == [Outcome.REJECTED, Outcome.REJECTED]
    assert verdicts[0].detail == "virus found: Test-Signature"
    assert await world.inbox("bob@example.test") == []


async def test_quarantine_answers_accepted_and_delivers_nothing(world: World) -> None:
    use(world, Scanner("quarantine"))
    verdicts = await world.delivery.deliver(envelope("bob@example.test"), message(), MX)
    assert outcomes(verdicts) == [Outcome.ACCEPTED]
    assert await world.inbox("bob@example.test") == []


async def test_stage_failure_follows_its_policy(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    use(world, Scanner("down", on_failure="tempfail"))
    verdicts = await world.delivery.deliver(envelope("bob@example.test"), message(), MX)
    assert verdicts == [TRY_LATER]
    use(world, Scanner("down", on_failure="accept"), Scanner("bug"), Scanner("header"))
    with caplog.at_level(logging.WARNING):
        verdicts = await world.delivery.deliver(envelope("bob@example.test"), message(), MX)
    assert outcomes(verdicts) == [Outcome.ACCEPTED]
    [stored] = await world.inbox("bob@example.test")
    assert parse(stored)["X-Scanned"]  # the stages after the failed ones still ran
    assert any("filter failed" in r.getMessage() for r in caplog.records)


async def test_junk_finding_files_into_the_junk_folder(world: World) -> None:
    use(world, Scanner("junk"))
    await world.delivery.deliver(envelope("bob@example.test"), message(), MX)
    assert await world.inbox("bob@example.test") == []
    assert len(await folder(world, "bob@example.test", "Junk")) == 1


async def test_plan_files_copies_with_flags_and_per_account_headers(world: World) -> None:
    bob = "bob@example.test"
    use(world, Rules({bob: [("fileinto", "Archive"), ("header", "bob only")]}))
    account = await world.account(bob)  # new accounts have an Archive mailbox
    await world.delivery.deliver(envelope(bob, "alice@example.test"), message(), MX)
    [archived] = await folder(world, bob, "Archive")
    assert parse(archived)["X-Rule"] == "bob only"
    assert await world.inbox(bob) == []
    [alices] = await world.inbox("alice@example.test")
    assert parse(alices)["X-Rule"] is None
    archive = await world.store.get_mailbox(account.id, "Archive")
    assert archive is not None
    [entry] = await world.store.fetch(archive.id, UidSet.of([1]))
    assert entry.flags & Flag.FLAGGED


async def test_missing_mailbox_falls_back_to_inbox_unless_created(world: World) -> None:
    bob = "bob@example.test"
    use(world, Rules({bob: [("fileinto", "Nowhere")]}))
    await world.delivery.deliver(envelope(bob), message(), MX)
    assert len(await world.inbox(bob)) == 1
    use(world, Rules({bob: [("fileinto-create", "Lists/new")]}))
    await world.delivery.deliver(envelope(bob), message(), MX)
    assert len(await folder(world, bob, "Lists/new")) == 1


async def test_discard_and_reject(world: World) -> None:
    bob, alice = "bob@example.test", "alice@example.test"
    use(world, Rules({bob: [("discard", "")], alice: [("reject", "I do not want this")]}))
    verdicts = await world.delivery.deliver(envelope(bob, alice), message(), LMTP)
    assert verdicts[0] == ACCEPTED
    assert verdicts[1] == rejected("I do not want this")
    assert await world.inbox(bob) == []
    assert await world.inbox(alice) == []


async def test_redirect_goes_on_as_internal_mail_and_loops_stop(world: World) -> None:
    bob, alice = "bob@example.test", "alice@example.test"
    use(world, Rules({bob: [("redirect", alice)], alice: [("redirect-copy", bob)]}))
    verdicts = await world.delivery.deliver(envelope(bob), message(), MX)
    assert outcomes(verdicts) == [Outcome.ACCEPTED]
    # bob → alice, who keeps a copy and would send it back to bob; bob's Delivered-To is on
    # it by then, so the loop ends there.
    assert len(await world.inbox(alice)) == 1
    assert await world.inbox(bob) == []
    [forwarded] = await world.inbox(alice)
    assert b"Delivered-To: bob@example.test" in forwarded
    assert parse(forwarded)["Return-Path"] == "<someone@remote.test>"


async def test_redirect_to_the_world_is_queued(world: World) -> None:
    bob = "bob@example.test"
    use(world, Rules({bob: [("redirect", "friend@remote.test")]}))
    assert outcomes(await world.delivery.deliver(envelope(bob), message(), MX)) == [
        Outcome.ACCEPTED
    ]
    queued = await world.store.outbound.list()
    assert [r.recipient.address for m in queued for r in m.recipients] == ["friend@remote.test"]


async def test_auto_reply_is_sent_with_a_null_sender(world: World) -> None:
    bob, alice = "bob@example.test", "alice@example.test"
    use(world, Rules({bob: [("reply", alice)]}))
    await world.delivery.deliver(envelope(bob, sender=alice), message(sender=alice), MX)
    assert len(await world.inbox(bob)) == 1
    [reply] = await world.inbox(alice)
    assert parse(reply)["Return-Path"] == "<>"
    assert parse(reply)["Subject"] == "Auto: away"


async def test_results_claiming_to_be_ours_are_removed(world: World) -> None:
    use(world)
    forged = (
        b"Authentication-Results: mx.example.test; spf=pass\r\n smtp.mailfrom=bank.test\r\n"
        b"Authentication-Results: elsewhere.test; dkim=pass\r\n"
        b"X-Spam-Status: No, score=-100\r\nX-Spam-Flag:\r\n NO\r\n" + message()
    )
    await world.delivery.deliver(envelope("bob@example.test"), forged, MX)
    submission = await world.submission("bob@example.test")
    own = b"Authentication-Results: mx.example.test; dmarc=none\r\n" + message("bob@example.test")
    await world.delivery.deliver(
        envelope("alice@example.test", sender="bob@example.test"), own, submission
    )
    [stored] = await world.inbox("bob@example.test")
    assert parse(stored).get_all("Authentication-Results") == ["elsewhere.test; dkim=pass"]
    assert b"smtp.mailfrom=bank.test" not in stored
    assert b"X-Spam" not in stored and b" NO\r\n" not in stored
    # A logged-in user's message is not from the world: it is left alone.
    [sent] = await world.inbox("alice@example.test")
    assert parse(sent)["Authentication-Results"] == "mx.example.test; dmarc=none"
