"""The queue worker against loopback SMTP sinks and a loopback DNS server, on a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from outbound_helpers import (
    LOCAL,
    START,
    Sink,
    World,
    close,
    make_world,
    message,
    parse,
    report_parts,
)
from postoffice.config import RelayConfig
from postoffice.delivery.model import Envelope, Origin, Recipient
from postoffice.delivery.pipeline import Delivery
from postoffice.locks import queue_lock
from postoffice.queue.mx import MxResolver
from postoffice.queue.worker import QueueWorker
from postoffice.resolver import SystemResolverRefused
from postoffice.store.api import QueueState


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = await make_world(tmp_path, Sink())
    yield w
    await close(w)


# -- delivery ---------------------------------------------------------------------------------


async def test_delivers_each_domain_in_one_transaction(world: World) -> None:
    notify = Recipient("friend@remote.test", ("SUCCESS", "FAILURE"), "rfc822;alias@example.test")
    message_id = await world.enqueue(
        notify, "second@remote.test", "third@other.test", envid="env 1", ret="HDRS"
    )
    await world.worker.run_once()
    assert await world.queued(message_id) is None  # every recipient done: gone from the queue
    by_domain = {m.recipients[0].split("@")[1]: m for m in world.sink.received}
    assert by_domain["remote.test"].recipients == ["friend@remote.test", "second@remote.test"]
    assert by_domain["other.test"].recipients == ["third@other.test"]
    received = by_domain["remote.test"]
    assert received.sender == LOCAL
    assert received.tls  # opportunistic STARTTLS, certificate not checked
    assert f"SIZE={len(message())}" in received.mail_parameters
    # RFC 3461: ENVID and ORCPT travel xtext-encoded, NOTIFY per recipient.
    assert "ENVID=env+201" in received.mail_parameters
    assert "RET=HDRS" in received.mail_parameters
    assert received.rcpt_parameters[0] == [
        "NOTIFY=SUCCESS,FAILURE",
        "ORCPT=rfc822;alias@example.test",
    ]
    assert received.rcpt_parameters[1] == []
    assert received.data == message()


async def test_dot_stuffing_and_8bit(world: World) -> None:
    body = ".leading dot\r\n..two\r\nnaïve"
    await world.enqueue("friend@remote.test", raw=message(body=body), body="8BITMIME")
    await world.worker.run_once()
    [received] = world.sink.received
    assert received.data == message(body=body)
    assert "BODY=8BITMIME" in received.mail_parameters


async def test_connection_reuse_and_per_domain_limit(tmp_path: Path) -> None:
    w = await make_world(
        tmp_path,
        Sink(delay=0.02),
        queue={"connections_per_domain": 2, "messages_per_connection": 3},
    )
    try:
        for n in range(9):
            await w.enqueue(f"user{n}@remote.test")
        await w.worker.run_once()
        assert len(w.sink.received) == 9
        assert w.sink.most_open == 2  # never more than the per-domain limit
        assert w.sink.connections == 4  # 9 messages, 3 per connection, over 2 slots: 2+2
    finally:
        await close(w)


async def test_without_starttls_delivers_in_plaintext(tmp_path: Path) -> None:
    w = await make_world(tmp_path, Sink(starttls=False))
    try:
        await w.enqueue("friend@remote.test")
        await w.worker.run_once()
        [received] = w.sink.received
        assert not received.tls
    finally:
        await close(w)


async def test_mx_preference_falls_through_to_the_next_host(world: World) -> None:
    # 127.0.0.2 is loopback too, with nothing listening on the sink's port: refused.
    world.dns.add("pref.test", "MX", "20 backup.pref.test.", "10 primary.pref.test.")
    world.dns.add("primary.pref.test", "A", "127.0.0.2")
    world.dns.add("backup.pref.test", "A", "127.0.0.1")
    await world.enqueue("user@pref.test")
    await world.worker.run_once()
    assert world.sink.delivered_to() == ["user@pref.test"]
    mx_lookups = [q for q in world.dns.queries if q[1] == "A"]
    assert mx_lookups[0][0] == "primary.pref.test"


async def test_no_mx_falls_back_to_the_address_record(world: World) -> None:
    world.dns.add("plain.test", "A", "127.0.0.1")
    await world.enqueue("user@plain.test")
    await world.worker.run_once()
    assert world.sink.delivered_to() == ["user@plain.test"]


# -- failures ---------------------------------------------------------------------------------


async def test_temporary_failures_follow_the_schedule_then_bounce(world: World) -> None:
    message_id = await world.enqueue("tempfail@remote.test")
    expected = [60, 300, 900, 1800, 3600, 7200, 14400, 14400]
    for delay in expected:
        await world.worker.run_once()
        queued = await world.queued(message_id)
        assert queued is not None
        [recipient] = queued.recipients
        assert recipient.next_attempt == world.clock.now() + dt.timedelta(seconds=delay)
        assert recipient.last_error == "450 4.2.1 mailbox busy, try later"
        # Nothing is due before the next attempt: a run in between does nothing.
        world.clock.current = recipient.next_attempt - dt.timedelta(seconds=1)
        await world.worker.run_once()
        assert (await world.queued(message_id)) == queued
        world.clock.current = recipient.next_attempt
    # The delay warning went out once, when the message was 4 hours old.
    [warning] = await world.inbox()
    assert warning["Subject"] == "Delayed Mail (still being retried)"
    [fields] = report_parts(warning)
    assert fields["Action"] == "delayed"
    assert fields["Status"] == "4.2.1"
    # Every 4 hours until 5 days are up; the final attempt is at exactly 5 days.
    while (queued := await world.queued(message_id)) is not None:
        world.clock.current = queued.recipients[0].next_attempt
        await world.worker.run_once()
    assert world.clock.now() == START + dt.timedelta(days=5)
    warning, bounce = await world.inbox()
    assert bounce["Subject"] == "Undelivered Mail Returned to Sender"
    [fields] = report_parts(bounce)
    assert fields["Final-Recipient"] == "rfc822; tempfail@remote.test"
    assert fields["Action"] == "failed"
    assert fields["Status"] == "4.4.7"
    assert "gave up after 5 days" in fields["Diagnostic-Code"]
    assert "450 4.2.1 mailbox busy" in fields["Diagnostic-Code"]


async def test_permanent_failure_bounces_at_once(world: World) -> None:
    message_id = await world.enqueue("permfail@remote.test", "friend@remote.test")
    await world.worker.run_once()
    assert await world.queued(message_id) is None
    assert world.sink.delivered_to() == ["friend@remote.test"]
    [bounce] = await world.inbox()
    assert bounce["To"].addresses[0].addr_spec == LOCAL
    assert bounce["From"].addresses[0].username == "MAILER-DAEMON"
    [fields] = report_parts(bounce)
    assert fields["Final-Recipient"] == "rfc822; permfail@remote.test"
    assert fields["Status"] == "5.1.1"
    assert fields["Remote-MTA"] == "dns; mx.remote.test"
    assert fields["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user here"
    returned = list(bounce.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    # The bounce itself was stored with the null sender (RFC 3464 §2, RFC 5321 §6.1).
    assert bounce["Return-Path"] == "<>"


async def test_a_remote_sender_gets_its_bounce_through_the_queue(world: World) -> None:
    await world.enqueue("permfail@remote.test", sender="someone@other.test")
    await world.worker.run_once()  # attempt, bounce queued ...
    queued = await world.store.outbound.list(state=None)
    [notice] = queued
    assert notice.envelope.sender == ""
    assert [r.recipient.address for r in notice.recipients] == ["someone@other.test"]
    await world.worker.run_once()  # ... and delivered to the sender's MX
    [delivered] = world.sink.received
    assert delivered.sender == ""
    assert report_parts(parse(delivered.data))[0]["Status"] == "5.1.1"


async def test_a_bounce_is_never_bounced(world: World) -> None:
    await world.enqueue("permfail@remote.test", sender="")
    await world.worker.run_once()
    assert await world.store.outbound.list(state=None) == []
    assert await world.inbox() == []


async def test_notify_never_means_no_report(world: World) -> None:
    await world.enqueue(Recipient("permfail@remote.test", ("NEVER",)))
    await world.worker.run_once()
    assert await world.inbox() == []


async def test_tempfail_at_data_then_accepted(tmp_path: Path) -> None:
    w = await make_world(tmp_path, Sink(tempfail_data=2))
    try:
        message_id = await w.enqueue("friend@remote.test")
        for _ in range(3):
            await w.worker.run_once()
            queued = await w.queued(message_id)
            if queued is not None:
                w.clock.current = queued.recipients[0].next_attempt
        assert await w.queued(message_id) is None
        assert w.sink.delivered_to() == ["friend@remote.test"]
        assert w.sink.connections == 3
    finally:
        await close(w)


async def test_connection_dropped_mid_data_is_retried(tmp_path: Path) -> None:
    w = await make_world(tmp_path, Sink(drop_data=1))
    try:
        message_id = await w.enqueue("friend@remote.test")
        await w.worker.run_once()
        queued = await w.queued(message_id)
        assert queued is not None
        [recipient] = queued.recipients
        assert recipient.state is QueueState.PENDING
        assert recipient.last_error is not None
        assert "4.4.2" in recipient.last_error
        w.clock.current = recipient.next_attempt
        await w.worker.run_once()
        assert w.sink.delivered_to() == ["friend@remote.test"]  # once, complete
    finally:
        await close(w)


async def test_a_slow_server_times_out_and_is_retried(tmp_path: Path) -> None:
    w = await make_world(tmp_path, Sink(delay=0.5), queue={"command_timeout_seconds": 0.1})
    try:
        message_id = await w.enqueue("friend@remote.test")
        await w.worker.run_once()
        queued = await w.queued(message_id)
        assert queued is not None
        assert queued.recipients[0].state is QueueState.PENDING
        assert "timeout" in (queued.recipients[0].last_error or "")
    finally:
        await close(w)


async def test_refused_connection_is_temporary(world: World) -> None:
    world.dns.mail_domain("down.test", "127.0.0.2")
    message_id = await world.enqueue("user@down.test")
    await world.worker.run_once()
    queued = await world.queued(message_id)
    assert queued is not None
    assert (queued.recipients[0].last_error or "").startswith("451 4.4.1 cannot connect")


async def test_smtputf8_needed_but_not_offered_fails_with_the_reason(tmp_path: Path) -> None:
    w = await make_world(tmp_path, Sink(extensions=["PIPELINING", "8BITMIME"]))
    try:
        await w.enqueue("friend@remote.test", smtputf8=True)
        await w.worker.run_once()
        assert w.sink.received == []
        [bounce] = await w.inbox()
        [fields] = report_parts(bounce)
        assert fields["Status"] == "5.6.7"
        assert "does not support SMTPUTF8" in fields["Diagnostic-Code"]
    finally:
        await close(w)


@pytest.mark.parametrize(
    ("records", "status", "text"),
    [
        ({("nullmx.test", "MX"): ["0 ."]}, "5.1.10", "accepts no mail (null MX)"),
        ({}, "5.1.2", "does not exist"),
    ],
)
async def test_dns_permanent_failures_bounce_at_once(
    world: World, records: dict[tuple[str, str], list[str]], status: str, text: str
) -> None:
    world.dns.records.update(records)
    domain = "nullmx.test"
    await world.enqueue(f"user@{domain}")
    await world.worker.run_once()
    assert await world.store.outbound.list(state=None) == []
    [bounce] = await world.inbox()
    [fields] = report_parts(bounce)
    assert fields["Status"] == status
    assert text in fields["Diagnostic-Code"]


# -- relay, locks, safety ---------------------------------------------------------------------


async def test_smarthost_replaces_mx_lookup(tmp_path: Path) -> None:
    sink = Sink(auth=("relayuser", "secret"), starttls=False)
    w = await make_world(
        tmp_path,
        sink,
        relay=RelayConfig(
            host="127.0.0.1", port=0, tls="none", username="relayuser", password="secret"
        ),
    )
    try:
        # The relay port is the sink's, known only now.
        relay = dataclasses.replace(w.ctx.config.relay, port=sink.port)
        w.ctx.config = dataclasses.replace(w.ctx.config, relay=relay)
        worker = QueueWorker(w.ctx)
        await w.enqueue("someone@nowhere-in-dns.test", "friend@remote.test")
        await worker.run_once()
        assert sorted(sink.delivered_to()) == ["friend@remote.test", "someone@nowhere-in-dns.test"]
        assert len(sink.received) == 1  # one transaction: one destination, the relay
        assert w.dns.queries == []
        assert sink.auth_seen
    finally:
        await close(w)


def test_the_queue_lock_admits_one_process(tmp_path: Path) -> None:
    first = queue_lock(tmp_path)
    assert first is not None
    assert queue_lock(tmp_path) is None
    first.release()
    again = queue_lock(tmp_path)
    assert again is not None
    again.release()


def test_tests_never_use_the_system_resolver() -> None:
    with pytest.raises(SystemResolverRefused):
        MxResolver("")


async def test_local_recipients_skip_the_queue(world: World) -> None:
    account = await world.store.get_account(LOCAL)
    assert account is not None
    origin = Origin(
        listener="submission",
        protocol="ESMTPSA",
        helo="client.test",
        peer_ip="127.0.0.1",
        session_id="s1",
        account_id=account.id,
        auth_address=LOCAL,
    )
    envelope = Envelope(LOCAL, (Recipient("alice@example.test"), Recipient("friend@remote.test")))
    verdicts = await Delivery(world.ctx).deliver(envelope, message(), origin)
    assert all(v.accepted for v in verdicts)
    [queued] = await world.store.outbound.list(state=None)
    assert [r.recipient.address for r in queued.recipients] == ["friend@remote.test"]
    assert len(await world.inbox("alice@example.test")) == 1


async def test_run_stops_on_request(world: World) -> None:
    stop = asyncio.Event()
    await world.enqueue("friend@remote.test")
    task = asyncio.create_task(world.worker.run(stop))
    for _ in range(100):
        if world.sink.received:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert world.sink.delivered_to() == ["friend@remote.test"]


async def test_a_plain_server_without_pipelining_or_dsn(tmp_path: Path) -> None:
    w = await make_world(tmp_path, Sink(extensions=["8BITMIME"], starttls=False))
    try:
        notify = Recipient("friend@remote.test", ("FAILURE",), "rfc822;friend@remote.test")
        await w.enqueue(notify, "permfail@remote.test", envid="e1")
        await w.worker.run_once()
        [received] = w.sink.received
        # Without DSN on the other side, no DSN parameters go out (RFC 3461 §4).
        assert received.mail_parameters == []
        assert received.rcpt_parameters == [[]]
        [bounce] = await w.inbox()
        assert report_parts(bounce)[0]["Final-Recipient"] == "rfc822; permfail@remote.test"
    finally:
        await close(w)


async def test_8bit_content_to_a_server_without_8bitmime_bounces(tmp_path: Path) -> None:
    w = await make_world(tmp_path, Sink(extensions=["PIPELINING"], starttls=False))
    try:
        await w.enqueue("friend@remote.test", raw=message(body="naïve"), body="8BITMIME")
        await w.worker.run_once()
        assert w.sink.received == []
        [bounce] = await w.inbox()
        [fields] = report_parts(bounce)
        assert fields["Status"] == "5.6.3"
        assert "no 8BITMIME" in fields["Diagnostic-Code"]
    finally:
        await close(w)


async def test_notify_failure_only_means_no_delay_warning(world: World) -> None:
    message_id = await world.enqueue(Recipient("tempfail@remote.test", ("FAILURE",)))
    world.clock.advance(5 * 3600)  # already older than the 4 h of the warning
    await world.worker.run_once()
    queued = await world.queued(message_id)
    assert queued is not None
    assert not queued.recipients[0].warned
    assert await world.inbox() == []


async def test_relay_requiring_starttls_that_is_not_offered_waits(tmp_path: Path) -> None:
    sink = Sink(starttls=False)
    w = await make_world(tmp_path, sink, relay=RelayConfig(host="127.0.0.1", tls="starttls"))
    try:
        relay = dataclasses.replace(w.ctx.config.relay, port=sink.port)
        w.ctx.config = dataclasses.replace(w.ctx.config, relay=relay)
        message_id = await w.enqueue("friend@remote.test")
        await QueueWorker(w.ctx).run_once()
        assert sink.received == []
        queued = await w.queued(message_id)
        assert queued is not None
        assert queued.recipients[0].last_error == "451 4.7.0 127.0.0.1 offers no STARTTLS"
    finally:
        await close(w)
