"""Sender authentication (SPF, DKIM, ARC, DMARC) on a real store and a loopback DNS server,
in-process and through `postoffice serve` with smtplib."""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from conftest import Cli, StartServe, set_config
from outbound_helpers import DnsServer, txt_value
from postoffice.auth.throttle import LoginThrottle
from postoffice.config import Config, QueueConfig, SenderAuthConfig, ServerConfig
from postoffice.context import Context, SystemClock, throttle_config
from postoffice.delivery.model import Envelope, Origin, Outcome, Recipient
from postoffice.filters import authentication
from postoffice.filters.api import Findings, Message, MessageStage, StageUnavailable
from postoffice.filters.chain import FilterChain
from postoffice.queue.dkim import Algorithm, DkimKey, generate_key, key_folder
from postoffice.store import open_store

HOSTNAME = "mx.example.test"
CLIENT_IP = "192.0.2.7"
WORLD = Origin(
    listener="smtp",
    protocol="ESMTP",
    helo="mail.remote.test",
    peer_ip=CLIENT_IP,
    session_id="sess0001",
)


def message(author: str = "someone@remote.test", body: str = "hello") -> bytes:
    return (
        f"From: Some One <{author}>\r\nTo: bob@example.test\r\nSubject: test\r\n"
        f"Date: Tue, 01 Dec 2026 02:00:00 +0000\r\nMessage-ID: <t1@remote.test>\r\n\r\n"
        f"{body}\r\n"
    ).encode()


@dataclasses.dataclass
class World:
    dns: DnsServer
    keys: Path
    tmp_path: Path
    contexts: list[Context] = dataclasses.field(default_factory=list)

    async def context(self, resolver: str = "", **settings: Any) -> Context:
        config = Config(
            server=ServerConfig(hostname=HOSTNAME),
            queue=QueueConfig(resolver=resolver or self.dns.address),
            sender_auth=dataclasses.replace(SenderAuthConfig(timeout_seconds=2.0), **settings),
        )
        folder = self.tmp_path / f"data{len(self.contexts)}"
        folder.mkdir()
        store = await open_store(folder)
        clock = SystemClock()
        ctx = Context(
            config,
            folder,
            store,
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
            LoginThrottle(throttle_config(config.auth), clock.monotonic),
            clock,
        )
        self.contexts.append(ctx)
        return ctx

    async def stage(self, resolver: str = "", **settings: Any) -> MessageStage:
        stage = authentication.build(await self.context(resolver, **settings))
        assert stage is not None
        return stage

    def key(self, domain: str, selector: str, algorithm: Algorithm = "rsa") -> DkimKey:
        """A fresh key whose public half is published at <selector>._domainkey.<domain>."""
        record = generate_key(self.keys, domain, selector, algorithm)
        self.dns.add(f"{selector}._domainkey.{domain}", "TXT", txt_value(record))
        private = (key_folder(self.keys) / f"{domain}.{selector}.key").read_bytes()
        return DkimKey(domain, selector, algorithm, private)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    dns = await DnsServer().start()
    dns.add("remote.test", "TXT", txt_value(f"v=spf1 ip4:{CLIENT_IP} -all"))
    keys = tmp_path / "keys"
    keys.mkdir()
    w = World(dns, keys, tmp_path)
    yield w
    for ctx in w.contexts:
        await ctx.close()
    dns.close()


async def scan(
    stage: MessageStage,
    raw: bytes,
    sender: str = "someone@remote.test",
    origin: Origin = WORLD,
) -> Findings:
    findings = Findings()
    envelope = Envelope(sender=sender, recipients=(Recipient("bob@example.test"),))
    await stage.scan(Message(envelope, raw, origin), findings)
    return findings


def results_header(findings: Findings) -> str:
    [(name, value)] = findings.headers
    assert name == "Authentication-Results"
    assert value.startswith(f"{HOSTNAME};")
    return value


# -- SPF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "peer_ip", "expected"),
    [
        (f"v=spf1 ip4:{CLIENT_IP} -all", CLIENT_IP, "pass"),
        (f"v=spf1 ip4:{CLIENT_IP} -all", "198.51.100.9", "fail"),
        (f"v=spf1 ip4:{CLIENT_IP} ~all", "198.51.100.9", "softfail"),
        ("v=spf1 mx include:nowhere.test -all", CLIENT_IP, "permerror"),
    ],
)
async def test_spf_result_of_mail_from(
    world: World, policy: str, peer_ip: str, expected: str
) -> None:
    world.dns.add("spf.test", "TXT", txt_value(policy))
    stage = await world.stage(dkim=False, arc=False, dmarc=False)
    origin = dataclasses.replace(WORLD, peer_ip=peer_ip)
    findings = await scan(stage, message(), sender="someone@spf.test", origin=origin)
    assert findings.results == {"spf": expected}
    assert f"spf={expected} smtp.mailfrom=someone@spf.test" in results_header(findings)
    assert ("spf.test", "TXT") in world.dns.queries


async def test_spf_mechanisms_look_up_mx_and_a_records(world: World) -> None:
    # Each record type goes through the resolver hook given to pyspf.
    world.dns.add("spf.test", "TXT", txt_value("v=spf1 mx a:relay.spf.test -all"))
    world.dns.mail_domain("spf.test", "198.51.100.1")
    world.dns.add("relay.spf.test", "A", CLIENT_IP)
    stage = await world.stage(dkim=False, arc=False, dmarc=False)
    findings = await scan(stage, message(), sender="someone@spf.test")
    assert findings.results == {"spf": "pass"}
    mx_host = dataclasses.replace(WORLD, peer_ip="198.51.100.1")
    assert (await scan(stage, message(), "someone@spf.test", mx_host)).results == {"spf": "pass"}
    assert ("spf.test", "MX") in world.dns.queries


async def test_spf_of_the_null_sender_checks_helo(world: World) -> None:
    world.dns.add("mail.remote.test", "TXT", txt_value(f"v=spf1 ip4:{CLIENT_IP} -all"))
    stage = await world.stage(dkim=False, arc=False, dmarc=False)
    findings = await scan(stage, message(), sender="")
    assert findings.results == {"spf": "pass"}
    assert "spf=pass smtp.helo=mail.remote.test" in results_header(findings)


async def test_no_spf_record_is_none(world: World) -> None:
    stage = await world.stage(dkim=False, arc=False, dmarc=False)
    findings = await scan(stage, message(), sender="someone@unknown.test")
    assert findings.results == {"spf": "none"}


async def test_authenticated_mail_is_not_checked(world: World) -> None:
    stage = await world.stage()
    submission = dataclasses.replace(WORLD, listener="submission", account_id=1)
    findings = await scan(stage, message(), sender="bob@example.test", origin=submission)
    assert findings == Findings()
    assert world.dns.queries == []


# -- DNS failures ------------------------------------------------------------------------------


class SilentDns(asyncio.DatagramProtocol):
    """A DNS server that takes every query and never answers."""

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        return f"127.0.0.1:{self.transport.get_extra_info('sockname')[1]}"


@pytest.mark.parametrize(
    ("on_failure", "refusal"), [("accept", None), ("tempfail", Outcome.TEMPORARY_FAILURE)]
)
async def test_dns_not_answering_applies_on_failure(
    world: World, on_failure: str, refusal: Outcome | None
) -> None:
    silent = SilentDns()
    address = await silent.start()
    try:
        stage = await world.stage(resolver=address, timeout_seconds=0.5, on_failure=on_failure)
        with pytest.raises(StageUnavailable):
            await scan(stage, message())
        chain = FilterChain(world.contexts[0].logger("filters"), message=[stage])
        envelope = Envelope("someone@remote.test", (Recipient("bob@example.test"),))
        findings = await chain.scan(Message(envelope, message(), WORLD))
    finally:
        silent.transport.close()
    assert (None if findings.refusal is None else findings.refusal.outcome) is refusal
    # What could not be checked is still said, for the copy accepted without the verdict.
    header = results_header(findings)
    assert "spf=temperror" in header
    assert "dmarc=temperror header.from=remote.test" in header
    assert findings.results["dmarc"] == "temperror"


async def test_dmarc_does_not_hinge_on_a_failed_lookup_it_does_not_need(world: World) -> None:
    # SPF passes and aligns, so a DKIM key that cannot be fetched changes nothing.
    world.dns.add("_dmarc.remote.test", "TXT", txt_value("v=DMARC1; p=reject"))
    key = world.key("remote.test", "s1")
    signed = key.sign(message())
    world.dns.records.pop(("s1._domainkey.remote.test", "TXT"))
    stage = await world.stage(dkim=True)
    findings = await scan(stage, signed)
    assert findings.results["dmarc"] == "pass"
    assert findings.results["dkim"] == "fail"


# -- DKIM --------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
async def test_dkim_good_signature(world: World, algorithm: Algorithm) -> None:
    key = world.key("remote.test", "s1", algorithm)
    stage = await world.stage(spf=False, arc=False, dmarc=False)
    findings = await scan(stage, key.sign(message()))
    assert findings.results == {"dkim": "pass"}
    assert "dkim=pass header.d=remote.test header.i=@remote.test header.s=s1" in results_header(
        findings
    )


async def test_dkim_body_altered_fails(world: World) -> None:
    key = world.key("remote.test", "s1")
    altered = key.sign(message(body="pay 10 EUR")).replace(b"pay 10 EUR", b"pay 99 EUR")
    stage = await world.stage(spf=False, arc=False, dmarc=False)
    findings = await scan(stage, altered)
    assert findings.results == {"dkim": "fail"}
    assert "dkim=fail header.d=remote.test header.i=@remote.test header.s=s1" in results_header(
        findings
    )


async def test_dkim_missing(world: World) -> None:
    stage = await world.stage(spf=False, arc=False, dmarc=False)
    findings = await scan(stage, message())
    assert findings.results == {"dkim": "none"}
    assert results_header(findings) == f"{HOSTNAME};\ndkim=none"


async def test_every_dkim_signature_is_verified(world: World) -> None:
    good = world.key("remote.test", "s1", "ed25519")
    # The key published for s2 is not the one that signs.
    world.key("list.test", "s2")
    forged = dataclasses.replace(world.key("list.test", "s3"), selector="s2")
    raw = forged.sign(good.sign(message()))
    stage = await world.stage(spf=False, arc=False, dmarc=False)
    findings = await scan(stage, raw)
    assert findings.results == {"dkim": "pass"}
    header = results_header(findings)
    assert (
        "dkim=fail header.d=list.test header.i=@list.test header.s=s2;\n"
        "dkim=pass header.d=remote.test"
    ) in header


async def test_malformed_dkim_signature_is_permerror(world: World) -> None:
    raw = b"DKIM-Signature: v=1; a=rsa-sha256; d=remote.test\r\n" + message()
    stage = await world.stage(spf=False, arc=False, dmarc=False)
    findings = await scan(stage, raw)
    assert findings.results == {"dkim": "permerror"}


# -- ARC ---------------------------------------------------------------------------------------


async def test_arc_chain_sealed_by_a_forwarder_passes(world: World) -> None:
    key = world.key("forwarder.test", "arc")
    original = b"Authentication-Results: mx.forwarder.test; spf=pass\r\n" + message()
    seal = dkim.arc_sign(
        original,
        b"arc",
        b"forwarder.test",
        key.private,
        b"mx.forwarder.test",
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    stage = await world.stage(spf=False, dkim=False, dmarc=False)
    findings = await scan(stage, b"".join(seal) + original)
    assert findings.results == {"arc": "pass"}
    assert results_header(findings).endswith("arc=pass")
    unsealed = await scan(stage, message())
    assert unsealed.results == {"arc": "none"}


# -- DMARC -------------------------------------------------------------------------------------


async def test_dmarc_reject_aligned_spf_passes(world: World) -> None:
    world.dns.add("_dmarc.remote.test", "TXT", txt_value("v=DMARC1; p=reject"))
    stage = await world.stage()
    findings = await scan(stage, message())
    assert findings.refusal is None
    assert findings.results == {"spf": "pass", "dkim": "none", "dmarc": "pass", "arc": "none"}
    assert "dmarc=pass header.from=remote.test" in results_header(findings)


async def test_dmarc_reject_not_aligned_is_refused(world: World) -> None:
    world.dns.add("_dmarc.remote.test", "TXT", txt_value("v=DMARC1; p=reject"))
    world.dns.add("bulk.test", "TXT", txt_value(f"v=spf1 ip4:{CLIENT_IP} -all"))
    stage = await world.stage()
    # SPF passes for the envelope's domain, which is not the author's.
    findings = await scan(stage, message(), sender="bounces@bulk.test")
    assert findings.results["spf"] == "pass"
    assert findings.refusal is not None
    assert findings.refusal.outcome is Outcome.REJECTED
    assert findings.refusal.detail == "DMARC policy of remote.test rejects this message"
    assert "dmarc=fail header.from=remote.test policy.dmarc=reject" in results_header(findings)


async def test_dmarc_relaxed_dkim_alignment_with_a_subdomain(world: World) -> None:
    world.dns.add("_dmarc.remote.test", "TXT", txt_value("v=DMARC1; p=reject"))
    key = world.key("mail.remote.test", "s1")
    stage = await world.stage(spf=False)
    assert (await scan(stage, key.sign(message()))).results["dmarc"] == "pass"


async def test_dmarc_strict_dkim_alignment_wants_the_same_domain(world: World) -> None:
    world.dns.add("_dmarc.remote.test", "TXT", txt_value("v=DMARC1; p=reject; adkim=s"))
    key = world.key("mail.remote.test", "s1")
    stage = await world.stage(spf=False)
    findings = await scan(stage, key.sign(message()))
    assert findings.results["dkim"] == "pass"
    assert findings.results["dmarc"] == "fail"
    assert findings.refusal is not None


async def test_dmarc_quarantine_files_into_junk(world: World) -> None:
    world.dns.add("_dmarc.remote.test", "TXT", txt_value("v=DMARC1; p=quarantine"))
    stage = await world.stage()
    findings = await scan(stage, message(), sender="someone@elsewhere.test")
    assert findings.refusal is None
    assert findings.junk
    assert findings.results["dmarc"] == "fail"


async def test_dmarc_subdomain_policy_of_the_organizational_domain(world: World) -> None:
    world.dns.add("_dmarc.remote.test", "TXT", txt_value("v=DMARC1; p=reject; sp=quarantine"))
    stage = await world.stage()
    findings = await scan(stage, message(author="news@news.remote.test"), sender="")
    assert findings.refusal is None
    assert findings.junk
    assert "dmarc=fail header.from=news.remote.test" in results_header(findings)


@pytest.mark.parametrize(
    ("settings", "refused", "junk"),
    [
        ({"dmarc_reject": "none"}, False, False),
        ({"dmarc_reject": "quarantine"}, False, True),
        ({"dmarc": False}, False, False),
    ],
)
async def test_local_policy_softens_dmarc_reject(
    world: World, settings: dict[str, Any], refused: bool, junk: bool
) -> None:
    world.dns.add("_dmarc.remote.test", "TXT", txt_value("v=DMARC1; p=reject"))
    stage = await world.stage(**settings)
    findings = await scan(stage, message(), sender="someone@elsewhere.test")
    assert (findings.refusal is not None) is refused
    assert findings.junk is junk
    assert ("dmarc=fail" in results_header(findings)) is (settings != {"dmarc": False})


async def test_no_dmarc_record_is_none(world: World) -> None:
    stage = await world.stage()
    findings = await scan(stage, message(), sender="someone@elsewhere.test")
    assert findings.refusal is None
    assert not findings.junk
    assert findings.results["dmarc"] == "none"
    assert ("_dmarc.remote.test", "TXT") in world.dns.queries


async def test_all_checks_off_builds_no_stage(world: World) -> None:
    ctx = await world.context(spf=False, dkim=False, arc=False, dmarc=False)
    assert authentication.build(ctx) is None


# -- through `postoffice serve` ----------------------------------------------------------------


def send(port: int, sender: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(sender, ["bob@example.test"], raw)


async def test_serve_checks_and_enforces_dmarc(
    cli: Cli, data_dir: Path, start_serve: StartServe
) -> None:
    dns = await DnsServer().start()
    dns.add("remote.test", "TXT", txt_value("v=spf1 ip4:127.0.0.1 -all"))
    dns.add("_dmarc.remote.test", "TXT", txt_value("v=DMARC1; p=reject"))
    try:
        cli.ok("user", "add", "bob@example.test", "--password", "secret-pw-1")
        set_config(data_dir, "queue", "resolver", f'"{dns.address}"')
        set_config(data_dir, "server", "hostname", f'"{HOSTNAME}"')
        server = await asyncio.to_thread(start_serve)
        _, port = server.address("smtp")
        await asyncio.to_thread(send, port, "someone@remote.test", message())
        with pytest.raises(smtplib.SMTPDataError) as refused:
            await asyncio.to_thread(send, port, "someone@bulk.test", message())
        assert refused.value.smtp_code == 550
        assert b"5.7.1" in refused.value.smtp_error
        assert b"DMARC policy of remote.test" in refused.value.smtp_error
        assert await asyncio.to_thread(server.stop) == 0
    finally:
        dns.close()
    store = await open_store(data_dir)
    try:
        account = await store.get_account("bob@example.test")
        assert account is not None
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        [uid] = await store.uids(inbox.id)
        stored = await store.read_message(inbox.id, uid)
    finally:
        await store.close()
    assert stored is not None
    expected = (
        f"\r\nAuthentication-Results: {HOSTNAME};\r\n"
        "\tspf=pass smtp.mailfrom=someone@remote.test;\r\n"
        "\tdkim=none;\r\n"
        "\tdmarc=pass header.from=remote.test;\r\n"
        "\tarc=none\r\n"
    )
    assert expected.encode() in stored.split(b"\r\n\r\n", 1)[0]
