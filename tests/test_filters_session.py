"""The connection-level filters: DNS blocklists, greylisting and rate limits.

The stages run in process on a real store, behind the real `FilterChain`, with a clock the
test moves; the blocklists are answered by a DNS server on loopback.  The last tests drive a
real `postoffice serve` with smtplib.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import logging
import smtplib
import socket
import sqlite3
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import dns.message
import pytest

from conftest import Cli, StartServe, set_config
from outbound_helpers import DnsServer
from postoffice.auth.throttle import LoginThrottle
from postoffice.config import (
    Config,
    DnsblConfig,
    GreylistConfig,
    Network,
    QueueConfig,
    RateLimitsConfig,
    ServerConfig,
)
from postoffice.context import Context, throttle_config
from postoffice.delivery.model import Envelope, Origin, Outcome, Recipient, Verdict
from postoffice.filters import dnsbl, greylist, ratelimit
from postoffice.filters.api import Findings, Message, MessageStage, SessionStage
from postoffice.filters.chain import TRY_LATER, FilterChain
from postoffice.log import get_logger
from postoffice.resolver import async_resolver
from postoffice.store import open_store
from postoffice.store.greylist import PURGE_EVERY

START = dt.datetime(2026, 12, 1, 8, 0, 0, tzinfo=dt.UTC)
LISTED_IP = "93.184.216.34"  # a global address: private ones are never looked up
CLEAN_IP = "93.184.216.35"
ZONE = "bl.test"


class ManualClock:
    """Wall and monotonic time that move only when the test says so."""

    def __init__(self) -> None:
        self.wall = START
        self.mono = 1000.0

    def now(self) -> dt.datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += dt.timedelta(seconds=seconds)
        self.mono += seconds


def origin(ip: str, listener: str = "smtp") -> Origin:
    return Origin(
        listener=listener,
        protocol="ESMTP",
        helo="client.test",
        peer_ip=ip,
        session_id="sess0001",
        received_at=START,
    )


def config(**sections: object) -> Config:
    base = Config(server=ServerConfig(hostname="mx.example.test"))
    return dataclasses.replace(base, **sections)  # type: ignore[arg-type]


@dataclasses.dataclass
class World:
    ctx: Context
    clock: ManualClock

    def chain(self, *stages: SessionStage | None) -> FilterChain:
        return FilterChain(get_logger("filters"), session=[s for s in stages if s is not None])


OpenWorld = Callable[[Config], Awaitable[World]]


@pytest.fixture
async def open_world(tmp_path: Path) -> AsyncIterator[OpenWorld]:
    """`await open_world(config)`: a context on a real store in tmp_path, with a ManualClock."""
    opened: list[Context] = []

    async def open_(cfg: Config) -> World:
        store = await open_store(tmp_path)
        clock = ManualClock()
        ctx = Context(
            cfg,
            tmp_path,
            store,
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
            LoginThrottle(throttle_config(cfg.auth), clock.monotonic),
            clock,
        )
        opened.append(ctx)
        return World(ctx, clock)

    yield open_
    for ctx in opened:
        await ctx.close()


# -- DNSBL ---------------------------------------------------------------------------------------


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = await DnsServer().start()
    server.add(f"34.216.184.93.{ZONE}", "A", "127.0.0.2")
    yield server
    server.close()


def dnsbl_config(dns_server: DnsServer, **fields: object) -> Config:
    return config(
        queue=QueueConfig(resolver=dns_server.address),
        dnsbl=dataclasses.replace(DnsblConfig(zones=(ZONE,)), **fields),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("ip", "name"),
    [
        ("192.0.2.99", "99.2.0.192.bl.test"),  # RFC 5782 §2.1
        (
            "2001:db8:1:2:3:4:567:89ab",  # RFC 5782 §2.4
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test",
        ),
    ],
)
def test_query_name_reverses_the_address(ip: str, name: str) -> None:
    assert dnsbl.query_name(ipaddress.ip_address(ip), "bl.test.") == name


async def test_listed_client_is_blocked_at_rcpt_but_may_write_to_postmaster(
    open_world: OpenWorld, dns_server: DnsServer
) -> None:
    world = await open_world(dnsbl_config(dns_server))
    chain = world.chain(dnsbl.build(world.ctx))
    client = origin(LISTED_IP)
    assert await chain.check_connect(client) is None
    assert await chain.check_sender("a@remote.test", client) is None
    verdict = await chain.check_recipient("a@remote.test", "bob@example.test", client)
    assert verdict == Verdict(Outcome.BLOCKED, f"{LISTED_IP} is listed by {ZONE}")
    for role in ("postmaster@example.test", "Abuse@example.test", "postmaster"):
        assert await chain.check_recipient("a@remote.test", role, client) is None
    assert (
        await chain.check_recipient("a@remote.test", "bob@example.test", origin(CLEAN_IP)) is None
    )


async def test_answers_are_cached_per_ip_for_a_few_minutes(
    open_world: OpenWorld, dns_server: DnsServer
) -> None:
    world = await open_world(dnsbl_config(dns_server))
    chain = world.chain(dnsbl.build(world.ctx))
    client = origin(LISTED_IP)
    for _ in range(3):
        assert await chain.check_recipient("a@remote.test", "bob@example.test", client) is not None
    assert len(dns_server.queries) == 1
    world.clock.advance(dnsbl.CACHE_SECONDS + 1)
    await chain.check_recipient("a@remote.test", "bob@example.test", client)
    assert len(dns_server.queries) == 2


async def test_every_zone_is_asked_and_the_listing_one_named(
    open_world: OpenWorld, dns_server: DnsServer
) -> None:
    world = await open_world(dnsbl_config(dns_server, zones=("clean.test", ZONE)))
    chain = world.chain(dnsbl.build(world.ctx))
    verdict = await chain.check_recipient("a@remote.test", "bob@example.test", origin(LISTED_IP))
    assert verdict == Verdict(Outcome.BLOCKED, f"{LISTED_IP} is listed by {ZONE}")
    assert sorted(name for name, _ in dns_server.queries) == [
        "34.216.184.93.bl.test",
        "34.216.184.93.clean.test",
    ]


@pytest.mark.parametrize(
    ("answer", "refused"),
    [("127.255.255.254", True), ("127.255.255.252", True), ("203.0.113.5", False)],
)
async def test_refusal_codes_and_answers_outside_loopback_are_no_listing(
    open_world: OpenWorld,
    dns_server: DnsServer,
    caplog: pytest.LogCaptureFixture,
    answer: str,
    refused: bool,
) -> None:
    dns_server.add(f"35.216.184.93.{ZONE}", "A", answer)
    world = await open_world(dnsbl_config(dns_server))
    chain = world.chain(dnsbl.build(world.ctx))
    with caplog.at_level(logging.WARNING):
        verdict = await chain.check_recipient("a@remote.test", "bob@example.test", origin(CLEAN_IP))
    assert verdict is None
    assert ("dnsbl refused the query" in caplog.text) is refused


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "::1", "fd00::1", ""])
async def test_private_and_loopback_clients_are_never_looked_up(
    open_world: OpenWorld, dns_server: DnsServer, ip: str
) -> None:
    world = await open_world(dnsbl_config(dns_server))
    chain = world.chain(dnsbl.build(world.ctx))
    assert await chain.check_recipient("a@remote.test", "bob@example.test", origin(ip)) is None
    assert dns_server.queries == []


class ServfailServer(DnsServer):
    """Answers SERVFAIL, as a broken upstream resolver does, for names under `failing`
    ("" for every name); the others as DnsServer does."""

    def __init__(self, failing: str = "") -> None:
        super().__init__()
        self.failing = failing

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        query = dns.message.from_wire(data)
        name = query.question[0].name.to_text(omit_final_dot=True)
        if not name.endswith(self.failing):
            super().datagram_received(data, addr)
            return
        self.queries.append((name, "A"))
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.SERVFAIL)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
def silent_dns() -> Iterator[str]:
    """A UDP port that takes queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(("on_failure", "expected"), [("accept", None), ("tempfail", TRY_LATER)])
async def test_dns_failure_applies_on_failure(
    open_world: OpenWorld, on_failure: str, expected: Verdict | None
) -> None:
    servfail = await ServfailServer().start()
    try:
        world = await open_world(
            config(
                queue=QueueConfig(resolver=servfail.address),
                dnsbl=DnsblConfig(zones=(ZONE,), on_failure=on_failure),
            ),
        )
        chain = world.chain(dnsbl.build(world.ctx))
        client = origin(LISTED_IP)
        assert await chain.check_recipient("a@remote.test", "b@example.test", client) == expected
        # A failure is not cached as "not listed": the next RCPT asks again.
        await chain.check_recipient("a@remote.test", "b@example.test", client)
        assert len(servfail.queries) == 2
    finally:
        servfail.close()


async def test_dns_timeout_makes_the_stage_unavailable(
    silent_dns: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    lookup = dnsbl.DnsblLookup(
        (ZONE,), async_resolver(silent_dns, timeout=0.2), clock.monotonic, get_logger("dnsbl")
    )
    chain = FilterChain(get_logger("filters"), session=[dnsbl.DnsblGate(lookup, "tempfail")])
    with caplog.at_level(logging.WARNING):
        verdict = await chain.check_recipient("a@remote.test", "b@example.test", origin(LISTED_IP))
    assert verdict == TRY_LATER
    assert "filter unavailable" in caplog.text


async def test_one_zone_listing_is_enough_when_another_is_down(open_world: OpenWorld) -> None:
    dns_server = await ServfailServer(failing="down.test").start()
    dns_server.add(f"34.216.184.93.{ZONE}", "A", "127.0.0.2")
    try:
        world = await open_world(
            config(
                queue=QueueConfig(resolver=dns_server.address),
                dnsbl=DnsblConfig(zones=("down.test", ZONE), on_failure="tempfail"),
            )
        )
        chain = world.chain(dnsbl.build(world.ctx))
        listed = await chain.check_recipient("a@remote.test", "b@example.test", origin(LISTED_IP))
        assert listed == Verdict(Outcome.BLOCKED, f"{LISTED_IP} is listed by {ZONE}")
        clean = await chain.check_recipient("a@remote.test", "b@example.test", origin(CLEAN_IP))
        assert clean == TRY_LATER
    finally:
        dns_server.close()


def message_from(client: Origin) -> Message:
    envelope = Envelope(sender="a@remote.test", recipients=(Recipient("bob@example.test"),))
    return Message(envelope, b"Subject: hi\r\n\r\nhello\r\n", client)


async def test_tag_action_marks_the_message_instead_of_refusing(
    open_world: OpenWorld, dns_server: DnsServer
) -> None:
    world = await open_world(dnsbl_config(dns_server, action="tag"))
    assert dnsbl.build(world.ctx) is None  # nothing to refuse at RCPT
    tagger = dnsbl.build_tagger(world.ctx)
    assert tagger is not None
    findings = Findings()
    await tagger.scan(message_from(origin(LISTED_IP)), findings)
    assert findings.headers == [("X-DNSBL", ZONE)]
    assert findings.junk
    assert findings.results["dnsbl"] == "listed"

    clean = Findings()
    await tagger.scan(message_from(origin(CLEAN_IP)), clean)
    assert (clean.headers, clean.junk, clean.results["dnsbl"]) == ([], False, "pass")


async def test_tagger_leaves_submitted_and_lmtp_mail_alone(
    open_world: OpenWorld, dns_server: DnsServer
) -> None:
    world = await open_world(dnsbl_config(dns_server, action="tag"))
    tagger: MessageStage | None = dnsbl.build_tagger(world.ctx)
    assert tagger is not None
    submitted = dataclasses.replace(origin(LISTED_IP, "submission"), account_id=1)
    for client in (submitted, origin(LISTED_IP, "lmtp")):
        findings = Findings()
        await tagger.scan(message_from(client), findings)
        assert findings == Findings()
    assert dns_server.queries == []


async def test_no_zones_no_stage(open_world: OpenWorld) -> None:
    world = await open_world(config())
    assert dnsbl.build(world.ctx) is None
    assert dnsbl.build_tagger(world.ctx) is None


# -- greylisting ---------------------------------------------------------------------------------

GREYLIST = GreylistConfig(enabled=True, delay=300, retry_window=3600, expiry=86400)


async def greylisting(open_world: OpenWorld) -> tuple[World, FilterChain]:
    world = await open_world(config(greylist=GREYLIST))
    return world, world.chain(greylist.build(world.ctx))


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("::ffff:192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ],
)
def test_client_network(ip: str, network: str) -> None:
    address = greylist.client_address(ip)
    assert address is not None
    assert greylist.client_network(address) == network


def test_a_unix_socket_has_no_client_address() -> None:
    assert greylist.client_address("") is None


async def test_first_try_and_early_retry_are_greylisted_a_later_retry_passes(
    open_world: OpenWorld,
) -> None:
    world, chain = await greylisting(open_world)
    client = origin("192.0.2.7")
    first = await chain.check_recipient("a@remote.test", "bob@example.test", client)
    assert first == Verdict(Outcome.GREYLISTED, "Greylisted, please try again in 300 seconds")
    world.clock.advance(100)
    early = await chain.check_recipient("a@remote.test", "bob@example.test", client)
    assert early == Verdict(Outcome.GREYLISTED, "Greylisted, please try again in 200 seconds")
    world.clock.advance(200)
    # The retry may come from another address of the sender's pool, in another case.
    retry = origin("192.0.2.200")
    assert await chain.check_recipient("A@Remote.Test", "Bob@example.test", retry) is None
    world.clock.advance(GREYLIST.expiry // 2)
    assert await chain.check_recipient("a@remote.test", "bob@example.test", client) is None


async def test_a_passed_network_and_sender_domain_skip_greylisting(
    open_world: OpenWorld,
) -> None:
    world, chain = await greylisting(open_world)
    client = origin("192.0.2.7")
    await chain.check_recipient("a@remote.test", "bob@example.test", client)
    world.clock.advance(300)
    assert await chain.check_recipient("a@remote.test", "bob@example.test", client) is None
    # Same network, same sender domain: the MTA has shown it retries.
    assert await chain.check_recipient("c@remote.test", "alice@example.test", client) is None
    # Another domain, or another network, is a new triplet.
    other_domain = await chain.check_recipient("a@elsewhere.test", "bob@example.test", client)
    assert other_domain is not None and other_domain.outcome is Outcome.GREYLISTED
    other_net = await chain.check_recipient(
        "a@remote.test", "bob@example.test", origin("192.0.3.7")
    )
    assert other_net is not None and other_net.outcome is Outcome.GREYLISTED


async def test_null_sender_is_greylisted_on_its_own_triplet(open_world: OpenWorld) -> None:
    world, chain = await greylisting(open_world)
    client = origin("2001:db8:1:2::5")
    first = await chain.check_recipient("", "bob@example.test", client)
    assert first is not None and first.outcome is Outcome.GREYLISTED
    world.clock.advance(300)
    assert await chain.check_recipient("", "bob@example.test", origin("2001:db8:1:2::9")) is None


async def test_a_retry_after_the_window_starts_again(open_world: OpenWorld) -> None:
    world, chain = await greylisting(open_world)
    client = origin("192.0.2.7")
    await chain.check_recipient("a@remote.test", "bob@example.test", client)
    world.clock.advance(GREYLIST.retry_window + 1)
    late = await chain.check_recipient("a@remote.test", "bob@example.test", client)
    assert late == Verdict(Outcome.GREYLISTED, "Greylisted, please try again in 300 seconds")
    world.clock.advance(300)
    assert await chain.check_recipient("a@remote.test", "bob@example.test", client) is None


async def test_use_keeps_a_pass_and_expiry_forgets_it(open_world: OpenWorld) -> None:
    world, chain = await greylisting(open_world)
    client = origin("192.0.2.7")
    await chain.check_recipient("a@remote.test", "bob@example.test", client)
    world.clock.advance(300)
    assert await chain.check_recipient("a@remote.test", "bob@example.test", client) is None
    for _ in range(3):  # each message moves the expiry on
        world.clock.advance(GREYLIST.expiry - 10)
        assert await chain.check_recipient("a@remote.test", "bob@example.test", client) is None
    world.clock.advance(GREYLIST.expiry + 1)
    forgotten = await chain.check_recipient("a@remote.test", "bob@example.test", client)
    assert forgotten is not None and forgotten.outcome is Outcome.GREYLISTED


async def test_expired_rows_are_deleted(open_world: OpenWorld, tmp_path: Path) -> None:
    world, chain = await greylisting(open_world)
    for n in range(5):
        await chain.check_recipient(f"s{n}@remote.test", "bob@example.test", origin("192.0.2.7"))
    database = tmp_path / "store" / "meta.sqlite3"
    assert _greylist_rows(database) == 5
    world.clock.advance(max(GREYLIST.retry_window, PURGE_EVERY) + 1)
    await chain.check_recipient("new@remote.test", "bob@example.test", origin("192.0.2.7"))
    assert _greylist_rows(database) == 1


def _greylist_rows(database: Path) -> int:
    with sqlite3.connect(database) as conn:
        (count,) = conn.execute("SELECT count(*) FROM greylist").fetchone()
    return int(count)


async def test_greylisting_is_off_unless_enabled(open_world: OpenWorld) -> None:
    world = await open_world(config())
    assert greylist.build(world.ctx) is None


# -- rate limits ---------------------------------------------------------------------------------


async def rate_limited(
    open_world: OpenWorld,
    connections: int = 0,
    messages: int = 0,
    recipients: int = 0,
    exempt: tuple[Network, ...] | None = None,
) -> tuple[World, FilterChain]:
    limits = RateLimitsConfig(
        connections_per_minute=connections,
        messages_per_hour=messages,
        recipients_per_hour=recipients,
    )
    if exempt is not None:
        limits = dataclasses.replace(limits, exempt_networks=exempt)
    world = await open_world(config(rate_limits=limits))
    return world, world.chain(ratelimit.build(world.ctx))


async def test_connections_per_minute(open_world: OpenWorld) -> None:
    world, chain = await rate_limited(open_world, connections=2)
    client = origin("192.0.2.7")
    assert await chain.check_connect(client) is None
    assert await chain.check_connect(client) is None
    third = await chain.check_connect(client)
    assert third == Verdict(
        Outcome.RATE_LIMITED, "Too many connections from 192.0.2.7, try again later"
    )
    assert await chain.check_connect(origin("192.0.2.8")) is None  # another client
    world.clock.advance(60)
    assert await chain.check_connect(client) is None


async def test_exempt_networks_are_not_counted(open_world: OpenWorld) -> None:
    _, by_default = await rate_limited(open_world, connections=1)
    for _ in range(3):
        assert await by_default.check_connect(origin("127.0.0.1")) is None
        assert await by_default.check_connect(origin("::1")) is None
    _, counted = await rate_limited(open_world, connections=1, exempt=())
    assert await counted.check_connect(origin("127.0.0.1")) is None
    assert await counted.check_connect(origin("127.0.0.1")) is not None


async def test_messages_and_recipients_per_hour(open_world: OpenWorld) -> None:
    world, chain = await rate_limited(open_world, messages=1, recipients=3)
    client = origin("2001:db8::1")
    assert await chain.check_sender("a@remote.test", client) is None
    refused = await chain.check_sender("a@remote.test", origin("2001:db8::2"))  # same /64
    assert refused is not None and refused.outcome is Outcome.RATE_LIMITED
    verdicts = [
        await chain.check_recipient("a@remote.test", "b@example.test", client) for _ in range(4)
    ]
    assert [v is None for v in verdicts] == [True, True, True, False]
    world.clock.advance(3600)
    assert await chain.check_sender("a@remote.test", client) is None
    assert await chain.check_recipient("a@remote.test", "b@example.test", client) is None


async def test_zero_turns_a_limit_off(open_world: OpenWorld) -> None:
    _, chain = await rate_limited(open_world, recipients=1)
    client = origin("192.0.2.7")
    for _ in range(100):
        assert await chain.check_connect(client) is None
        assert await chain.check_sender("a@remote.test", client) is None
    off = RateLimitsConfig(connections_per_minute=0, messages_per_hour=0, recipients_per_hour=0)
    world = await open_world(config(rate_limits=off))
    assert ratelimit.build(world.ctx) is None


def test_window_memory_is_bounded() -> None:
    clock = ManualClock()
    window = ratelimit.FixedWindow(1, 60, clock.monotonic, max_keys=8)
    assert window.allow("first")
    assert not window.allow("first")
    for n in range(20):
        window.allow(f"client{n}")
        assert len(window) <= 8
    # "first" was forgotten to make room: it starts afresh.
    assert window.allow("first")
    # Expired windows go before live ones.
    clock.advance(60)
    for n in range(9):
        window.allow(f"late{n}")
    assert len(window) <= 8


# -- end to end: `postoffice serve` and smtplib ---------------------------------------------------


def test_serve_refuses_the_third_connection_in_a_minute(
    data_dir: Path, start_serve: StartServe
) -> None:
    set_config(data_dir, "rate_limits", "connections_per_minute", "2")
    set_config(data_dir, "rate_limits", "exempt_networks", "[]")  # the test connects from here
    server = start_serve()
    host, port = server.address("smtp")
    for _ in range(2):
        with smtplib.SMTP(host, port, timeout=30) as client:
            assert client.noop()[0] == 250
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP(host, port, timeout=30)
    assert refused.value.smtp_code == 421
    assert b"Too many connections" in refused.value.smtp_error


def test_serve_greylists_the_first_rcpt(cli: Cli, data_dir: Path, start_serve: StartServe) -> None:
    cli.ok("user", "add", "bob@example.test", "--password", "secret-pw-1")
    set_config(data_dir, "greylist", "enabled", "true")
    server = start_serve()
    host, port = server.address("smtp")
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail("a@remote.test")[0] == 250
        code, text = client.rcpt("bob@example.test")
    assert code == 451
    assert text.startswith(b"4.7.1 Greylisted")
