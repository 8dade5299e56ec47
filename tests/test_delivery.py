"""The delivery pipeline on a real store: quotas, one blob, trace headers, queue, From: check."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.message
import email.policy
import email.utils
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Literal

import pytest

from postoffice.auth.throttle import LoginThrottle
from postoffice.config import Config, ServerConfig, SmtpConfig
from postoffice.context import Context, SystemClock, throttle_config
from postoffice.delivery import trace
from postoffice.delivery.bounce import build_bounce
from postoffice.delivery.model import Envelope, Origin, Outcome, Recipient, Verdict
from postoffice.delivery.pipeline import Delivery, from_addresses
from postoffice.store import SqliteStore, open_store
from postoffice.store.model import Account

HOSTNAME = "mx.example.test"
WHEN = dt.datetime(2026, 11, 30, 9, 15, 42, tzinfo=dt.UTC)
MX = Origin(
    listener="smtp",
    protocol="ESMTPS",
    helo="client.test",
    peer_ip="192.0.2.7",
    session_id="sess0001",
    tls="TLSv1.3 TLS_AES_256_GCM_SHA384",
    received_at=WHEN,
)


# LMTP answers per recipient, so its verdicts show each recipient's own outcome.
LMTP = dataclasses.replace(MX, listener="lmtp", protocol="LMTP")


def message(sender: str = "someone@remote.test", body: str = "hello") -> bytes:
    return (
        f"From: Some One <{sender}>\r\nTo: bob@example.test\r\nSubject: test\r\n"
        f"Message-ID: <t1@remote.test>\r\n\r\n{body}\r\n"
    ).encode()


def envelope(*recipients: str | Recipient, sender: str = "someone@remote.test") -> Envelope:
    return Envelope(
        sender=sender,
        recipients=tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients),
    )


def outcomes(verdicts: Sequence[Verdict]) -> list[Outcome]:
    return [v.outcome for v in verdicts]


@dataclasses.dataclass
class World:
    store: SqliteStore
    delivery: Delivery
    ctx: Context

    async def account(self, address: str) -> Account:
        account = await self.store.get_account(address)
        assert account is not None
        return account

    async def inbox(self, address: str) -> list[bytes]:
        account = await self.account(address)
        mailbox = await self.store.get_mailbox(account.id, "INBOX")
        assert mailbox is not None
        messages = []
        for uid in await self.store.uids(mailbox.id):
            raw = await self.store.read_message(mailbox.id, uid)
            assert raw is not None
            messages.append(raw)
        return messages

    async def submission(self, address: str) -> Origin:
        account = await self.account(address)
        return dataclasses.replace(
            MX,
            listener="submission",
            protocol="ESMTPSA",
            account_id=account.id,
            auth_address=account.address,
        )


async def make_world(tmp_path: Path, config: Config) -> World:
    store = await open_store(tmp_path)
    await store.add_domain("example.test")
    for user in ("bob@example.test", "alice@example.test"):
        await store.add_account(user, "hash", None)
    await store.add_alias("postmaster@example.test", ["bob@example.test"])
    await store.add_alias("fwd@example.test", ["friend@remote.test", "alice@example.test"])
    clock = SystemClock()
    ctx = Context(
        config,
        tmp_path,
        store,
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        LoginThrottle(throttle_config(config.auth), clock.monotonic),
        clock,
    )
    return World(store, Delivery(ctx), ctx)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path, Config(server=ServerConfig(hostname=HOSTNAME)))
    yield w
    await w.ctx.close()


def parse(raw: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


# -- RCPT-time checks --------------------------------------------------------------------------


async def test_check_recipient_and_sender_pass_through_the_router(world: World) -> None:
    assert (
        await world.delivery.check_recipient(
            Recipient("bob@example.test"), MX, sender="someone@remote.test"
        )
    ).accepted
    relay = await world.delivery.check_recipient(
        Recipient("x@remote.test"), MX, sender="someone@remote.test"
    )
    assert relay.outcome is Outcome.RELAY_DENIED
    forged = await world.delivery.check_sender("bob@example.test", MX)
    assert forged.outcome is Outcome.SENDER_FORGED
    origin = await world.submission("bob@example.test")
    assert (await world.delivery.check_sender("postmaster@example.test", origin)).accepted
    assert (
        await world.delivery.check_recipient(
            Recipient("x@remote.test"), origin, sender="someone@remote.test"
        )
    ).accepted


async def test_quota_full_at_rcpt(world: World) -> None:
    await world.store.set_quota("bob@example.test", None, 1)
    rcpt = Recipient("bob@example.test")
    assert (await world.delivery.check_recipient(rcpt, MX, sender="someone@remote.test")).accepted
    assert outcomes(await world.delivery.deliver(envelope("bob@example.test"), message(), MX)) == [
        Outcome.ACCEPTED
    ]
    verdict = await world.delivery.check_recipient(rcpt, MX, sender="someone@remote.test")
    assert verdict.outcome is Outcome.QUOTA_FULL
    # An alias still reaching a mailbox with room is accepted.
    assert (
        await world.delivery.check_recipient(
            Recipient("fwd@example.test"), MX, sender="someone@remote.test"
        )
    ).accepted


async def test_quota_exceeded_at_data_for_one_of_two(world: World) -> None:
    raw = message(body="x" * 2000)
    await world.store.set_quota("bob@example.test", 1000, None)
    # Bob is not full yet, so RCPT accepts him; this message would overflow his quota.
    assert (
        await world.delivery.check_recipient(
            Recipient("bob@example.test"), MX, sender="someone@remote.test"
        )
    ).accepted
    verdicts = await world.delivery.deliver(
        envelope("bob@example.test", "alice@example.test"), raw, LMTP
    )
    assert outcomes(verdicts) == [Outcome.QUOTA_EXCEEDED, Outcome.ACCEPTED]
    assert "bob@example.test" in verdicts[0].detail
    assert await world.inbox("bob@example.test") == []
    assert len(await world.inbox("alice@example.test")) == 1
    assert (await world.account("bob@example.test")).used_messages == 0


async def test_smtp_partial_failure_bounces_to_a_remote_sender(world: World) -> None:
    await world.store.set_quota("bob@example.test", 1000, None)
    sent = envelope("bob@example.test", "alice@example.test", sender="someone@remote.test")
    verdicts = await world.delivery.deliver(sent, message(body="x" * 2000), MX)
    # One 250 for the message: the copy that failed is reported by mail instead.
    assert outcomes(verdicts) == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert await world.inbox("bob@example.test") == []
    [queued] = await world.store.outbound.list()
    assert queued.envelope.sender == ""  # RFC 3464: bounces have the null sender
    assert [r.recipient.address for r in queued.recipients] == ["someone@remote.test"]
    report = await world.store.outbound.read(queued.id)
    assert report is not None
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    status = [p for p in parsed.walk() if p.get_content_type() == "message/delivery-status"]
    assert len(status) == 1
    text = report.decode()
    assert "Final-Recipient: rfc822; bob@example.test" in text
    assert "Status: 5.2.2" in text
    assert "alice@example.test" not in text.split("message/delivery-status")[1].split("--")[0]


async def test_smtp_partial_failure_bounces_to_a_local_sender(world: World) -> None:
    await world.store.set_quota("bob@example.test", 1000, None)
    origin = await world.submission("alice@example.test")
    sent = envelope("bob@example.test", "friend@remote.test", sender="alice@example.test")
    verdicts = await world.delivery.deliver(
        sent, message("alice@example.test", body="x" * 2000), origin
    )
    assert outcomes(verdicts) == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    [bounce] = await world.inbox("alice@example.test")
    assert b"Return-Path: <>" in bounce
    assert b"multipart/report" in bounce and b"Final-Recipient: rfc822; bob@example.test" in bounce


async def test_a_bounce_that_cannot_be_stored_fails_the_message(world: World) -> None:
    # Bob's copy fails at DATA and Alice, the sender, is full too: her bounce has nowhere to
    # go, so the message must not get a 250 (the session answers 451 and the client retries).
    await world.store.set_quota("bob@example.test", 1000, None)
    await world.store.set_quota("alice@example.test", None, 0)
    origin = await world.submission("alice@example.test")
    sent = envelope("bob@example.test", "friend@remote.test", sender="alice@example.test")
    with pytest.raises(RuntimeError, match="bounce"):
        await world.delivery.deliver(sent, message("alice@example.test", body="x" * 2000), origin)


async def test_a_bounce_is_never_bounced(world: World) -> None:
    await world.store.set_quota("bob@example.test", 1000, None)
    sent = envelope("bob@example.test", "alice@example.test", sender="")
    verdicts = await world.delivery.deliver(sent, message(body="x" * 2000), MX)
    assert outcomes(verdicts) == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert await world.store.outbound.list() == []


async def test_quota_exceeded_for_everyone(world: World) -> None:
    await world.store.set_quota("bob@example.test", 10, None)
    await world.store.set_quota("alice@example.test", 10, None)
    verdicts = await world.delivery.deliver(
        envelope("bob@example.test", "alice@example.test"), message(), MX
    )
    assert outcomes(verdicts) == [Outcome.QUOTA_EXCEEDED, Outcome.QUOTA_EXCEEDED]
    assert (await world.store.counts())["entries"] == 0


# -- local delivery ----------------------------------------------------------------------------


async def test_one_blob_for_ten_recipients(world: World) -> None:
    users = [f"user{n}@example.test" for n in range(10)]
    for user in users:
        await world.store.add_account(user, "hash", None)
    verdicts = await world.delivery.deliver(envelope(*users), message(), MX)
    assert outcomes(verdicts) == [Outcome.ACCEPTED] * 10
    counts = await world.store.counts()
    assert counts["messages"] == 1
    assert counts["entries"] == 10
    for user in users:
        [raw] = await world.inbox(user)
        parsed = parse(raw)
        assert parsed.get_all("Delivered-To") == [user]
        assert "for <" not in str(parsed["Received"])  # shared: names no recipient


async def test_trace_headers(world: World) -> None:
    [verdict] = await world.delivery.deliver(envelope("bob@example.test"), message(), MX)
    assert verdict.accepted
    [raw] = await world.inbox("bob@example.test")
    assert raw.startswith(
        b"Delivered-To: bob@example.test\r\nReturn-Path: <someone@remote.test>\r\nReceived: "
    )
    assert raw.endswith(message())
    parsed = parse(raw)
    assert parsed["Return-Path"] == "<someone@remote.test>"
    [received] = parsed.get_all("Received") or []
    text = " ".join(str(received).split())
    assert text.startswith("from client.test ([192.0.2.7]) by mx.example.test with ESMTPS ")
    assert "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)" in text
    assert "id sess0001 for <bob@example.test>;" in text
    assert "authenticated" not in text
    stamp = email.utils.parsedate_to_datetime(text.rpartition(";")[2].strip())
    assert stamp == WHEN
    for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n"):
        assert len(line) <= 78, line


async def test_received_for_submission(world: World) -> None:
    origin = await world.submission("bob@example.test")
    verdicts = await world.delivery.deliver(
        envelope("alice@example.test", sender="bob@example.test"),
        message("bob@example.test"),
        origin,
    )
    assert outcomes(verdicts) == [Outcome.ACCEPTED]
    [raw] = await world.inbox("alice@example.test")
    text = " ".join(str(parse(raw)["Received"]).split())
    assert " with ESMTPSA " in text
    assert "(authenticated user bob@example.test)" in text


def test_received_over_ipv6_and_unix_socket() -> None:
    v6 = dataclasses.replace(MX, peer_ip="2001:db8::1", tls=None)
    assert b"from client.test ([IPv6:2001:db8::1])\r\n" in trace.received(v6, HOSTNAME, None, WHEN)
    unix = dataclasses.replace(MX, peer_ip="", listener="lmtp", protocol="LMTP", tls=None)
    header = trace.received(unix, HOSTNAME, None, WHEN)
    assert header.startswith(b"Received: from client.test\r\n\tby mx.example.test with LMTP\r\n")


async def test_client_text_cannot_inject_header_fields(world: World) -> None:
    origin = dataclasses.replace(MX, helo="evil\r\nX-Injected: yes", session_id="a\r\nb")
    rcpt = Recipient("bob@example.test")
    env = Envelope(sender="x@remote.test>\r\nX-Injected: yes", recipients=(rcpt,))
    assert outcomes(await world.delivery.deliver(env, message(), origin)) == [Outcome.ACCEPTED]
    [raw] = await world.inbox("bob@example.test")
    parsed = parse(raw)
    assert parsed["X-Injected"] is None
    assert len(parsed.get_all("Received") or []) == 1


async def test_client_return_path_is_replaced(world: World) -> None:
    raw_in = b"Return-Path: <evil@remote.test>\r\nRETURN-PATH:\r\n <folded@remote.test>\r\n"
    raw_in += message()
    await world.delivery.deliver(envelope("bob@example.test"), raw_in, MX)
    [raw] = await world.inbox("bob@example.test")
    assert parse(raw).get_all("Return-Path") == ["<someone@remote.test>"]
    assert b"evil@" not in raw
    assert b"folded@" not in raw


async def test_null_sender_return_path(world: World) -> None:
    await world.delivery.deliver(envelope("bob@example.test", sender=""), message(), MX)
    [raw] = await world.inbox("bob@example.test")
    assert parse(raw)["Return-Path"] == "<>"


async def test_duplicate_destinations_get_one_copy(world: World) -> None:
    verdicts = await world.delivery.deliver(
        envelope("postmaster@example.test", "bob@example.test", "bob+tag@example.test"),
        message(),
        MX,
    )
    assert outcomes(verdicts) == [Outcome.ACCEPTED] * 3
    [raw] = await world.inbox("bob@example.test")
    assert parse(raw)["Delivered-To"] == "bob@example.test"


async def test_plus_address_in_delivered_to(world: World) -> None:
    await world.delivery.deliver(envelope("Bob+Lists@example.test"), message(), MX)
    [raw] = await world.inbox("bob@example.test")
    assert parse(raw)["Delivered-To"] == "bob+Lists@example.test"


async def test_verdicts_follow_recipient_order(world: World) -> None:
    # What LMTP answers per recipient: a recipient gone since RCPT fails alone.
    verdicts = await world.delivery.deliver(
        envelope("alice@example.test", "gone@example.test", "x@remote.test", "bob@example.test"),
        message(),
        LMTP,
    )
    assert outcomes(verdicts) == [
        Outcome.ACCEPTED,
        Outcome.UNKNOWN_USER,
        Outcome.RELAY_DENIED,
        Outcome.ACCEPTED,
    ]


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_one_log_line_per_delivery(world: World) -> None:
    # A handler of its own: whether `postoffice` propagates depends on earlier tests.
    logger = logging.getLogger("postoffice.delivery")
    handler = ListHandler()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        await world.delivery.deliver(
            envelope("bob@example.test", "nobody@example.test"), message(), MX
        )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    records = handler.records
    assert len(records) == 1
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields == {
        "session": "sess0001",
        "sender": "someone@remote.test",
        "recipients": "bob@example.test,nobody@example.test",
        "size": len(message()),
        "outcome": "accepted,unknown_user",
        "copies": "bob@example.test=accepted",
    }


# -- remote recipients -------------------------------------------------------------------------


async def test_submission_queues_remote_recipients_with_dsn(world: World) -> None:
    origin = await world.submission("bob@example.test")
    friend = Recipient("friend@remote.test", ("SUCCESS", "FAILURE"), "rfc822;friend@remote.test")
    env = Envelope(
        sender="bob@example.test",
        recipients=(friend, Recipient("alice@example.test"), Recipient("x@other.test")),
        body="8BITMIME",
        ret="HDRS",
        envid="env-1",
    )
    raw_in = message("bob@example.test")
    verdicts = await world.delivery.deliver(env, raw_in, origin)
    assert outcomes(verdicts) == [Outcome.ACCEPTED] * 3
    [queued] = await world.store.outbound.list()
    assert queued.envelope == dataclasses.replace(
        env, recipients=(friend, Recipient("x@other.test"))
    )
    assert queued.origin_session == "sess0001"
    content = await world.store.outbound.read(queued.id)
    assert content is not None
    # Relayed mail gets a Received field but no Return-Path (RFC 5321 §4.4: final delivery).
    assert content.startswith(b"Received: from client.test")
    assert content.endswith(raw_in)
    assert parse(content)["Return-Path"] is None
    assert len(await world.inbox("alice@example.test")) == 1


async def test_alias_forwarding_queues_with_original_recipient(world: World) -> None:
    rcpt = Recipient("fwd@example.test", ("FAILURE",))
    verdicts = await world.delivery.deliver(envelope(rcpt), message(), MX)
    assert outcomes(verdicts) == [Outcome.ACCEPTED]
    [queued] = await world.store.outbound.list()
    [forwarded] = queued.recipients
    # RFC 3461 §4.2: NOTIFY carried over, ORCPT names the address the sender used.
    assert forwarded.recipient == Recipient(
        "friend@remote.test", ("FAILURE",), "rfc822;fwd@example.test"
    )
    assert len(await world.inbox("alice@example.test")) == 1


async def test_queue_failure_is_temporary_for_remote_recipients_only(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(world.store.outbound, "enqueue", broken)
    origin = dataclasses.replace(await world.submission("bob@example.test"), listener="lmtp")
    verdicts = await world.delivery.deliver(
        envelope("friend@remote.test", "alice@example.test", sender="bob@example.test"),
        message("bob@example.test"),
        origin,
    )
    assert outcomes(verdicts) == [Outcome.TEMPORARY_FAILURE, Outcome.ACCEPTED]
    # fwd reaches alice (stored) and a remote friend (not queued): the copy that is safe
    # wins, or the client would send alice a duplicate.
    [verdict] = await world.delivery.deliver(envelope("fwd@example.test"), message(), MX)
    assert verdict.accepted


# -- From: header check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_header", "outcome"),
    [
        (b"From: Bob <bob@example.test>", Outcome.ACCEPTED),
        (b"From: BOB@EXAMPLE.TEST", Outcome.ACCEPTED),
        (b"From: postmaster@example.test", Outcome.ACCEPTED),
        (b"From: bob@example.test, postmaster@example.test", Outcome.ACCEPTED),
        (b"From: Alice <alice@example.test>", Outcome.SENDER_NOT_OWNED),
        (b"From: bob@example.test, alice@example.test", Outcome.SENDER_NOT_OWNED),
        (b"From: bob@example.test\r\nFrom: alice@example.test", Outcome.SENDER_NOT_OWNED),
        (b"From: undisclosed:;", Outcome.SENDER_NOT_OWNED),
        (b"X-No-From: here", Outcome.SENDER_NOT_OWNED),
    ],
)
async def test_from_header_must_be_owned(
    world: World, from_header: bytes, outcome: Outcome
) -> None:
    origin = await world.submission("bob@example.test")
    raw = from_header + b"\r\nTo: alice@example.test\r\nSubject: x\r\n\r\nbody\r\n"
    verdicts = await world.delivery.deliver(
        envelope("alice@example.test", "friend@remote.test", sender="bob@example.test"),
        raw,
        origin,
    )
    assert outcomes(verdicts) == [outcome] * 2
    stored = len(await world.inbox("alice@example.test"))
    queued = len(await world.store.outbound.list())
    assert (stored, queued) == ((1, 1) if outcome is Outcome.ACCEPTED else (0, 0))


async def test_from_header_check_can_be_turned_off(tmp_path: Path) -> None:
    config = Config(
        server=ServerConfig(hostname=HOSTNAME), smtp=SmtpConfig(check_from_header=False)
    )
    world = await make_world(tmp_path, config)
    try:
        origin = await world.submission("bob@example.test")
        verdicts = await world.delivery.deliver(
            envelope("alice@example.test", sender="bob@example.test"),
            message("alice@example.test"),
            origin,
        )
        assert outcomes(verdicts) == [Outcome.ACCEPTED]
    finally:
        await world.ctx.close()


async def test_from_header_is_not_checked_for_mx(world: World) -> None:
    # Mail from the world may say anything in From: (DMARC is the filters' business).
    verdicts = await world.delivery.deliver(
        envelope("bob@example.test"), message("alice@example.test"), MX
    )
    assert outcomes(verdicts) == [Outcome.ACCEPTED]


def test_from_addresses() -> None:
    utf8 = "From: Jörg <jörg@example.test>\r\nSubject: ü\r\n\r\nhi\r\n".encode()
    assert from_addresses(message("a@b.test")) == ["a@b.test"]
    assert from_addresses(utf8) == ["jörg@example.test"]
    assert from_addresses(b"Subject: none\r\n\r\n") is None


@pytest.mark.parametrize(
    ("ret", "body", "returned_type"),
    [
        (None, "short", "message/rfc822"),
        ("HDRS", "short", "text/rfc822-headers"),
        (None, "z" * 100_000, "text/rfc822-headers"),  # too large to send back whole
    ],
)
def test_bounce_returns_what_ret_and_size_allow(
    ret: Literal["FULL", "HDRS"] | None, body: str, returned_type: str
) -> None:
    raw = message(body=body)
    sent = Envelope("someone@remote.test", (Recipient("bob@example.test"),), ret=ret)
    report = build_bounce(
        "mx.example.test",
        sent,
        raw,
        [(Recipient("bob@example.test"), Verdict(Outcome.QUOTA_EXCEEDED, "full"))],
        dt.datetime(2026, 11, 30, tzinfo=dt.UTC),
    )
    parsed = email.message_from_bytes(report, policy=email.policy.default)
    parts = [p.get_content_type() for p in parsed.walk()]
    assert parts[:3] == ["multipart/report", "text/plain", "message/delivery-status"]
    assert returned_type in parts
    assert b"Subject: test" in report
    assert (body.encode() in report) == (returned_type == "message/rfc822")
