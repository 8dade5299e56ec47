"""The sieve stage in the real delivery pipeline on a real store: where copies go, refusals,
redirects and vacation replies (with a clock the test moves)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from outbound_helpers import FakeClock
from postoffice.config import Config, ServerConfig, SieveConfig
from postoffice.delivery.model import Outcome
from postoffice.delivery.pipeline import Delivery
from postoffice.filters.api import (
    JUNK_FOLDER,
    Findings,
    LocalPlan,
    Message,
    OnFailure,
    RecipientStage,
)
from postoffice.filters.chain import FilterChain
from postoffice.filters.sieve import build
from postoffice.log import get_logger
from postoffice.store.model import Flag, UidSet
from test_delivery import HOSTNAME, LMTP, World, envelope, make_world, outcomes, parse

START = dt.datetime(2026, 11, 30, 12, 0, 0, tzinfo=dt.UTC)
BOB = "bob@example.test"
ALICE = "alice@example.test"


def mail(
    sender: str = ALICE,
    to: str = BOB,
    subject: str = "lunch?",
    extra: str = "",
    body: str = "Shall we?",
) -> bytes:
    return (
        f"From: Sender <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <q1@example.test>\r\n{extra}\r\n{body}\r\n"
    ).encode()


@dataclasses.dataclass
class SpamTagger:
    """A message stage adding a header, as rspamd or the junk stage would."""

    name: str = "tagger"
    on_failure: OnFailure = "accept"

    async def scan(self, message: Message, findings: Findings) -> None:
        findings.add_header("X-Spam-Flag", "YES")


@dataclasses.dataclass
class JunkEverything:
    """A recipient stage before Sieve that files every copy into Junk, as the classifier would."""

    name: str = "junk"
    on_failure: OnFailure = "accept"

    async def plan(self, message: Message, plan: LocalPlan) -> None:
        plan.keep_into = JUNK_FOLDER


@dataclasses.dataclass
class Sieve:
    world: World
    clock: FakeClock
    delivery: Delivery

    async def script(self, address: str, text: str) -> None:
        account = await self.world.account(address)
        await self.world.store.sieve.put(account.id, "main", text)
        await self.world.store.sieve.activate(account.id, "main")

    async def send(self, raw: bytes, *recipients: str, sender: str = ALICE) -> list[Outcome]:
        verdicts = await self.delivery.deliver(envelope(*recipients, sender=sender), raw, LMTP)
        self.last_details = [verdict.detail for verdict in verdicts]
        return outcomes(verdicts)

    async def folder(self, address: str, name: str) -> list[tuple[bytes, Flag, frozenset[str]]]:
        account = await self.world.account(address)
        mailbox = await self.world.store.get_mailbox(account.id, name)
        if mailbox is None:
            return []
        found = []
        for uid in await self.world.store.uids(mailbox.id):
            raw = await self.world.store.read_message(mailbox.id, uid)
            [entry] = await self.world.store.fetch(mailbox.id, UidSet.of([uid]))
            assert raw is not None
            found.append((raw, entry.flags, entry.keywords))
        return found

    async def replies(self, address: str) -> list[bytes]:
        return [
            raw
            for raw, _, _ in await self.folder(address, "INBOX")
            if b"Auto-Submitted: auto-replied" in raw
        ]


async def make_sieve(
    tmp_path: Path, config: SieveConfig | None = None, junk: RecipientStage | None = None
) -> Sieve:
    world = await make_world(
        tmp_path,
        Config(server=ServerConfig(hostname=HOSTNAME), sieve=config or SieveConfig()),
    )
    clock = FakeClock(START)
    ctx = dataclasses.replace(world.ctx, clock=clock)
    stage = build(ctx)
    assert stage is not None
    recipient = [stage] if junk is None else [junk, stage]
    chain = FilterChain(get_logger("filters"), message=[SpamTagger()], recipient=recipient)
    return Sieve(world, clock, Delivery(ctx, chain))


@pytest.fixture
async def sieve(tmp_path: Path) -> AsyncIterator[Sieve]:
    made = await make_sieve(tmp_path)
    yield made
    await made.world.ctx.close()


# -- where the copy goes -----------------------------------------------------------------------


async def test_no_script_keeps_in_inbox(sieve: Sieve) -> None:
    assert await sieve.send(mail(), BOB) == [Outcome.ACCEPTED]
    assert len(await sieve.folder(BOB, "INBOX")) == 1


async def test_fileinto_with_flags_and_create(sieve: Sieve) -> None:
    account = await sieve.world.account(BOB)
    await sieve.world.store.create_mailbox(account.id, "Lists")
    await sieve.script(
        BOB,
        'require ["fileinto", "imap4flags", "mailbox"];\n'
        'if header :contains "subject" "lunch" {\n'
        '  fileinto :flags ["\\\\Seen", "$Food"] "Lists";\n'
        '  fileinto :create "Food/Lunch";\n'
        "}",
    )
    assert await sieve.send(mail(), BOB) == [Outcome.ACCEPTED]
    assert await sieve.folder(BOB, "INBOX") == []
    [(raw, flags, keywords)] = await sieve.folder(BOB, "Lists")
    assert b"Subject: lunch?" in raw
    assert flags == Flag.SEEN and keywords == {"$Food"}
    assert len(await sieve.folder(BOB, "Food/Lunch")) == 1


async def test_raw_8bit_headers_are_matched_not_skipped(sieve: Sieve) -> None:
    # UTF-8 in a header (RFC 6532), and a byte that is not UTF-8 in another: the script
    # still runs and compares text.
    account = await sieve.world.account(BOB)
    await sieve.world.store.create_mailbox(account.id, "Cafe")
    await sieve.script(
        BOB,
        'require "fileinto";\nif header :contains "subject" "café" { fileinto "Cafe"; }',
    )
    raw = mail(subject="le café").replace(b"Message-ID:", b"X-Junk: bad \xff\r\nMessage-ID:")
    assert await sieve.send(raw, BOB) == [Outcome.ACCEPTED]
    assert len(await sieve.folder(BOB, "Cafe")) == 1


async def test_fileinto_a_missing_mailbox_without_create_keeps_in_inbox(sieve: Sieve) -> None:
    await sieve.script(BOB, 'require "fileinto"; fileinto "Nowhere";')
    assert await sieve.send(mail(), BOB) == [Outcome.ACCEPTED]
    assert len(await sieve.folder(BOB, "INBOX")) == 1
    assert await sieve.folder(BOB, "Nowhere") == []


async def test_implicit_keep_with_flags_and_copy(sieve: Sieve) -> None:
    await sieve.script(
        BOB,
        'require ["fileinto", "copy", "imap4flags", "mailbox"];\n'
        'addflag "\\\\Flagged"; fileinto :copy :create "Also";',
    )
    assert await sieve.send(mail(), BOB) == [Outcome.ACCEPTED]
    [(_, flags, _)] = await sieve.folder(BOB, "INBOX")
    assert flags == Flag.FLAGGED
    [(_, also_flags, _)] = await sieve.folder(BOB, "Also")
    assert also_flags == Flag.FLAGGED


async def test_discard(sieve: Sieve) -> None:
    await sieve.script(BOB, 'if header :is "subject" "lunch?" { discard; }')
    assert await sieve.send(mail(), BOB, ALICE) == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert await sieve.folder(BOB, "INBOX") == []
    assert len(await sieve.folder(ALICE, "INBOX")) == 1


async def test_reject_refuses_for_that_recipient_only(sieve: Sieve) -> None:
    await sieve.script(BOB, 'require "reject"; reject "I do not eat lunch";')
    assert await sieve.send(mail(), BOB, ALICE) == [Outcome.REJECTED, Outcome.ACCEPTED]
    assert "I do not eat lunch" in sieve.last_details[0]
    assert await sieve.folder(BOB, "INBOX") == []


async def test_redirect_to_another_local_user(sieve: Sieve) -> None:
    await sieve.script(BOB, 'redirect "alice@example.test";')
    assert await sieve.send(mail(sender="carol@remote.test"), BOB, sender="carol@remote.test") == [
        Outcome.ACCEPTED
    ]
    assert await sieve.folder(BOB, "INBOX") == []
    [(raw, _, _)] = await sieve.folder(ALICE, "INBOX")
    assert b"Subject: lunch?" in raw
    assert b"Return-Path: <carol@remote.test>" in raw  # RFC 5228 §4.2: the sender stays


async def test_redirect_copy_keeps_too(sieve: Sieve) -> None:
    await sieve.script(BOB, 'require "copy"; redirect :copy "alice@example.test";')
    assert await sieve.send(mail(sender="carol@remote.test"), BOB, sender="carol@remote.test") == [
        Outcome.ACCEPTED
    ]
    assert len(await sieve.folder(BOB, "INBOX")) == 1
    assert len(await sieve.folder(ALICE, "INBOX")) == 1


async def test_script_sees_headers_of_earlier_stages_and_the_address_used(sieve: Sieve) -> None:
    await sieve.script(
        BOB,
        'require ["fileinto", "envelope", "subaddress", "variables", "mailbox"];\n'
        'if allof (header :is "X-Spam-Flag" "yes", envelope :detail :matches "to" "*") {\n'
        '  fileinto :create "Tagged/${1}";\n'
        "}",
    )
    assert await sieve.send(mail(to="bob+work@example.test"), "bob+work@example.test") == [
        Outcome.ACCEPTED
    ]
    assert len(await sieve.folder(BOB, "Tagged/work")) == 1


async def test_mailboxexists_looks_at_the_store(sieve: Sieve) -> None:
    script = (
        'require ["fileinto", "mailbox"];\n'
        'if mailboxexists "Projects" { fileinto "Projects"; } else { fileinto :create "Other"; }'
    )
    await sieve.script(BOB, script)
    await sieve.send(mail(), BOB)
    assert len(await sieve.folder(BOB, "Other")) == 1
    account = await sieve.world.account(BOB)
    await sieve.world.store.create_mailbox(account.id, "Projects")
    await sieve.send(mail(), BOB)
    assert len(await sieve.folder(BOB, "Projects")) == 1


async def test_a_changed_script_runs_in_its_new_form(sieve: Sieve) -> None:
    await sieve.script(BOB, "discard;")
    await sieve.send(mail(), BOB)
    await sieve.script(BOB, "keep;")
    await sieve.send(mail(), BOB)
    assert len(await sieve.folder(BOB, "INBOX")) == 1


async def test_a_failing_script_keeps_the_message(sieve: Sieve) -> None:
    await sieve.script(BOB, 'require "variables"; redirect "${nothing}";')
    assert await sieve.send(mail(), BOB) == [Outcome.ACCEPTED]
    assert len(await sieve.folder(BOB, "INBOX")) == 1


async def test_a_script_that_does_not_compile_keeps_the_message(sieve: Sieve) -> None:
    await sieve.script(BOB, "this is not sieve")  # stored behind ManageSieve's back
    assert await sieve.send(mail(), BOB) == [Outcome.ACCEPTED]
    assert len(await sieve.folder(BOB, "INBOX")) == 1


async def test_limits_come_from_the_config(tmp_path: Path) -> None:
    made = await make_sieve(tmp_path, SieveConfig(max_redirects=1))
    try:
        await made.script(BOB, 'redirect "alice@example.test"; redirect "x@example.test";')
        assert await made.send(mail(), BOB) == [Outcome.ACCEPTED]
        # The run failed, so nothing was redirected and the message was kept.
        assert len(await made.folder(BOB, "INBOX")) == 1
        assert await made.folder(ALICE, "INBOX") == []
    finally:
        await made.world.ctx.close()


async def test_disabled_sieve_builds_no_stage(tmp_path: Path) -> None:
    world = await make_world(tmp_path, Config(sieve=SieveConfig(enabled=False)))
    try:
        assert build(world.ctx) is None
    finally:
        await world.ctx.close()


# -- vacation (RFC 5230) -----------------------------------------------------------------------

VACATION = 'require "vacation";\nvacation :days 2 text:\nI am away until Monday.\nBob\n.\n;'


async def test_vacation_replies_once_per_days(sieve: Sieve) -> None:
    await sieve.script(BOB, VACATION)
    assert await sieve.send(mail(), BOB) == [Outcome.ACCEPTED]
    assert len(await sieve.folder(BOB, "INBOX")) == 1  # vacation does not cancel the keep
    [reply] = await sieve.replies(ALICE)
    parsed = parse(reply)
    assert parsed["From"] == BOB
    assert parsed["To"] == ALICE
    assert parsed["Subject"] == "Auto: lunch?"
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["In-Reply-To"] == "<q1@example.test>"
    assert parsed["References"] == "<q1@example.test>"
    assert parsed["Message-ID"].endswith("@example.test>")
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().replace("\r\n", "\n") == "I am away until Monday.\nBob\n"
    assert b"Return-Path: <>" in reply  # RFC 5230 §5.4: replies go out with the null sender

    await sieve.send(mail(), BOB)
    sieve.clock.advance(dt.timedelta(days=1).total_seconds())
    await sieve.send(mail(), BOB)
    assert len(await sieve.replies(ALICE)) == 1
    sieve.clock.advance(dt.timedelta(days=1, seconds=1).total_seconds())
    await sieve.send(mail(), BOB)
    assert len(await sieve.replies(ALICE)) == 2


async def test_vacation_options(sieve: Sieve) -> None:
    await sieve.script(
        BOB,
        'require "vacation";\n'
        'vacation :subject "Gone fishing" :from "Bob <bob@example.test>" :mime '
        '"Content-Type: text/html; charset=utf-8\r\n\r\n<p>Gone</p>";',
    )
    await sieve.send(mail(), BOB)
    [reply] = await sieve.replies(ALICE)
    parsed = parse(reply)
    assert parsed["Subject"] == "Gone fishing"
    assert parsed["From"] == "Bob <bob@example.test>"
    assert parsed.get_content_type() == "text/html"
    assert "<p>Gone</p>" in parsed.get_content()


async def test_vacation_from_an_address_not_ours_is_replaced(sieve: Sieve) -> None:
    await sieve.script(BOB, 'require "vacation"; vacation :from "ceo@bank.test" "away";')
    await sieve.send(mail(), BOB)
    [reply] = await sieve.replies(ALICE)
    assert parse(reply)["From"] == BOB


async def test_vacation_handles_count_apart(sieve: Sieve) -> None:
    await sieve.script(BOB, 'require "vacation"; vacation :handle "one" "away";')
    await sieve.send(mail(), BOB)
    await sieve.script(BOB, 'require "vacation"; vacation :handle "two" "away";')
    await sieve.send(mail(), BOB)
    await sieve.send(mail(), BOB)
    assert len(await sieve.replies(ALICE)) == 2


@pytest.mark.parametrize(
    ("raw", "sender"),
    [
        (mail(extra="List-Id: <lunch.example.test>\r\n"), ALICE),
        (mail(extra="Precedence: bulk\r\n"), ALICE),
        (mail(extra="Auto-Submitted: auto-generated\r\n"), ALICE),
        (mail(to="someone-else@example.test"), ALICE),  # not addressed to Bob
        (mail(), ""),  # a bounce
        (mail(sender="owner-lunch@example.test"), "owner-lunch@example.test"),
        (mail(sender="lunch-request@example.test"), "lunch-request@example.test"),
        (mail(sender="MAILER-DAEMON@example.test"), "MAILER-DAEMON@example.test"),
        (mail(sender=BOB), BOB),  # never to ourselves
    ],
)
async def test_vacation_does_not_answer(sieve: Sieve, raw: bytes, sender: str) -> None:
    await sieve.script(BOB, VACATION)
    assert await sieve.send(raw, BOB, sender=sender) == [Outcome.ACCEPTED]
    assert await sieve.replies(ALICE) == []
    assert await sieve.replies(BOB) == []
    assert await sieve.world.store.outbound.list() == []


async def test_vacation_answers_mail_to_other_addresses_of_the_user(sieve: Sieve) -> None:
    await sieve.script(BOB, 'require "vacation"; vacation :addresses ["robert@old.test"] "away";')
    assert await sieve.send(mail(to="Robert <robert@old.test>"), BOB) == [Outcome.ACCEPTED]
    assert len(await sieve.replies(ALICE)) == 1


async def test_vacation_to_a_remote_sender_is_queued(sieve: Sieve) -> None:
    await sieve.script(BOB, VACATION)
    await sieve.send(mail(sender="carol@remote.test"), BOB, sender="carol@remote.test")
    [queued] = await sieve.world.store.outbound.list()
    assert queued.envelope.sender == ""
    assert [r.recipient.address for r in queued.recipients] == ["carol@remote.test"]


async def test_vacation_with_line_breaks_in_its_subject(sieve: Sieve) -> None:
    await sieve.script(BOB, 'require "vacation"; vacation :subject text:\nAway\nfor now\n.\n "x";')
    await sieve.send(mail(), BOB)
    [reply] = await sieve.replies(ALICE)
    assert parse(reply)["Subject"] == "Away for now"


async def test_no_vacation_reply_to_junk(tmp_path: Path) -> None:
    made = await make_sieve(tmp_path, junk=JunkEverything())
    try:
        await made.script(BOB, 'require "vacation"; vacation "away";')
        assert await made.send(mail(), BOB) == [Outcome.ACCEPTED]
        assert len(await made.folder(BOB, "Junk")) == 1
        assert await made.replies(ALICE) == []
    finally:
        await made.world.ctx.close()
