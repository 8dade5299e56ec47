"""The antivirus stage against Debian's real clamd, knowing the EICAR signature.

First the stage in-process on a real store (clean, infected, quarantine, oversize, clamd
down, slow or answering an error, clamd over TCP), then through the SMTP server with smtplib:
550 for a virus, 250 and the quarantine, 451 or delivery without clamd by on_failure; last,
`postoffice serve` reading the clamd address from its config file.
"""

from __future__ import annotations

import dataclasses
import email.message
import email.policy
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

import test_delivery
import test_smtp_session as shared
from clamd_helpers import (
    EICAR,
    SIGNATURE,
    FakeClamd,
    RunningClamd,
    TcpToUnix,
    clamd_available,
    running_clamd,
)
from conftest import Cli, StartServe, set_config
from postoffice.config import AntivirusConfig
from postoffice.delivery.model import Envelope, Outcome, Recipient
from postoffice.filters import antivirus
from postoffice.filters.api import Findings, Message, StageUnavailable
from postoffice.filters.chain import FilterChain
from test_delivery import MX, World
from test_smtp_session import BOB, StartSmtp, smtp_config

# The in-process SMTP server fixtures of test_smtp_session, used here under the same names.
_smtp_template = shared._smtp_template
smtp_data = shared.smtp_data
start_smtp = shared.start_smtp
# The real store the in-process stage tests run on, from test_delivery.
world = test_delivery.world

SENDER = "someone@remote.test"


def infected() -> bytes:
    """A message with EICAR in a base64 attachment, as a mail client sends it."""
    msg = email.message.EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"Some One <{SENDER}>"
    msg["To"] = BOB
    msg["Subject"] = "the report you asked for"
    msg.set_content("See the attachment.")
    msg.add_attachment(EICAR, maintype="application", subtype="octet-stream", filename="report.com")
    return msg.as_bytes()


CLEAN = (
    f"From: Some One <{SENDER}>\r\nTo: {BOB}\r\nSubject: lunch\r\n"
    "Message-ID: <clean-1@remote.test>\r\n\r\nNoon at the usual place?\r\n"
).encode()


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningClamd]:
    if not clamd_available():
        pytest.skip("clamd is not installed (Debian package clamav-daemon)")
    with running_clamd(tmp_path_factory.mktemp("clamd")) as running:
        yield running


# -- the stage in-process ----------------------------------------------------------------------


def stage(world: World, config: AntivirusConfig) -> antivirus.Antivirus:
    world.ctx.config = dataclasses.replace(world.ctx.config, antivirus=config)
    built = antivirus.build(world.ctx)
    assert built is not None
    return built


def nowhere(tmp_path: Path) -> str:
    """A clamd address where no clamd listens."""
    return f"unix:{tmp_path / 'no-clamd.sock'}"


def received(raw: bytes, *recipients: str) -> Message:
    return Message(Envelope(SENDER, tuple(Recipient(r) for r in recipients or (BOB,))), raw, MX)


async def test_scanning_is_off_without_a_clamd_address(world: World) -> None:
    assert antivirus.build(world.ctx) is None


async def test_a_clean_message_gets_the_scanned_header(world: World, clamd: RunningClamd) -> None:
    findings = Findings()
    await stage(world, AntivirusConfig(clamd=clamd.setting)).scan(received(CLEAN), findings)
    assert findings.refusal is None
    assert not findings.quarantined
    assert findings.headers == [("X-Virus-Scanned", "ClamAV")]
    assert findings.results["virus"] == "clean"


async def test_a_virus_in_an_attachment_is_refused(world: World, clamd: RunningClamd) -> None:
    findings = Findings()
    await stage(world, AntivirusConfig(clamd=clamd.setting)).scan(received(infected()), findings)
    assert findings.refusal is not None
    assert findings.refusal.outcome is Outcome.REJECTED
    assert findings.refusal.detail.startswith(f"virus found: {SIGNATURE}")
    assert findings.results["virus"] == "infected"
    assert not findings.quarantined


async def test_clamd_over_tcp(world: World, clamd: RunningClamd) -> None:
    forwarder = await TcpToUnix(clamd.socket_path).start()
    try:
        scanner = stage(world, AntivirusConfig(clamd=forwarder.setting))
        dirty, clean = Findings(), Findings()
        await scanner.scan(received(infected()), dirty)
        await scanner.scan(received(CLEAN), clean)
    finally:
        await forwarder.close()
    assert dirty.refusal is not None and SIGNATURE in dirty.refusal.detail
    assert clean.refusal is None and clean.results["virus"] == "clean"


async def test_quarantine_keeps_the_message_and_tells_the_postmaster(
    world: World, clamd: RunningClamd, tmp_path: Path
) -> None:
    raw = infected()
    findings = Findings()
    scanner = stage(world, AntivirusConfig(clamd=clamd.setting, action="quarantine"))
    await scanner.scan(received(raw, "alice@example.test"), findings)
    assert findings.quarantined
    assert findings.refusal is None
    [kept] = (tmp_path / "quarantine").iterdir()
    assert kept.suffix == ".eml"
    assert kept.stat().st_mode & 0o777 == 0o600
    content = kept.read_bytes()
    assert content.endswith(raw)
    head = content[: -len(raw)]
    assert head.startswith(f"Return-Path: <{SENDER}>\r\n".encode())
    assert b"X-Envelope-To: <alice@example.test>\r\n" in head
    assert f"X-Quarantine-Reason: virus {SIGNATURE}".encode() in head
    # postmaster@example.test is an alias of bob in this world.
    [notice] = await world.inbox("bob@example.test")
    parsed = email.message_from_bytes(notice, policy=email.policy.default)
    assert parsed["Delivered-To"] == "bob@example.test"
    assert parsed["To"] == "postmaster@example.test"
    assert SIGNATURE in parsed["Subject"]
    assert parsed["Auto-Submitted"] == "auto-generated"
    body = parsed.get_content()
    assert str(kept) in body
    assert "<alice@example.test>" in body
    assert "the report you asked for" in body
    assert await world.inbox("alice@example.test") == []


async def test_a_quarantine_that_cannot_be_written_tempfails_whatever_on_failure(
    world: World, clamd: RunningClamd, tmp_path: Path
) -> None:
    (tmp_path / "quarantine").write_bytes(b"a file where the folder should be")
    config = AntivirusConfig(clamd=clamd.setting, action="quarantine", on_failure="accept")
    findings = Findings()
    await stage(world, config).scan(received(infected()), findings)
    assert findings.refusal is not None
    assert findings.refusal.outcome is Outcome.TEMPORARY_FAILURE
    assert not findings.quarantined
    assert await world.inbox("bob@example.test") == []


async def test_a_message_over_the_scan_limit_passes_unscanned(
    world: World, clamd: RunningClamd
) -> None:
    raw = infected()
    findings = Findings()
    await stage(world, AntivirusConfig(clamd=clamd.setting, max_scan_size=len(raw) - 1)).scan(
        received(raw), findings
    )
    assert findings.refusal is None
    assert findings.headers == [
        ("X-Virus-Status", f"not scanned (over the {len(raw) - 1} byte scan limit)")
    ]
    assert findings.results["virus"] == "unscanned"


async def test_clamd_down_is_unavailable(world: World, tmp_path: Path) -> None:
    scanner = stage(world, AntivirusConfig(clamd=nowhere(tmp_path)))
    with pytest.raises(StageUnavailable):
        await scanner.scan(received(CLEAN), Findings())


async def test_a_silent_clamd_times_out(world: World) -> None:
    silent = await FakeClamd(reply=None).start()
    try:
        scanner = stage(world, AntivirusConfig(clamd=silent.setting, timeout_seconds=0.2))
        with pytest.raises(StageUnavailable, match="no answer"):
            await scanner.scan(received(CLEAN), Findings())
    finally:
        await silent.close()


@pytest.mark.parametrize(
    "reply",
    [b"INSTREAM size limit exceeded. ERROR\0", b"stream: OK", b"hello there\0"],
    ids=["error", "no-terminator", "not-clamd"],
)
async def test_an_answer_that_is_not_a_verdict_is_unavailable(world: World, reply: bytes) -> None:
    peer = await FakeClamd(reply).start()
    try:
        with pytest.raises(StageUnavailable):
            await stage(world, AntivirusConfig(clamd=peer.setting)).scan(
                received(CLEAN), Findings()
            )
    finally:
        await peer.close()


@pytest.mark.parametrize(
    ("on_failure", "refused"), [("tempfail", Outcome.TEMPORARY_FAILURE), ("accept", None)]
)
async def test_the_chain_applies_on_failure(
    world: World, tmp_path: Path, on_failure: str, refused: Outcome | None
) -> None:
    scanner = stage(world, AntivirusConfig(clamd=nowhere(tmp_path), on_failure=on_failure))
    chain = FilterChain(world.ctx.logger("filters"), message=[scanner])
    findings = await chain.scan(received(CLEAN))
    assert (findings.refusal.outcome if findings.refusal else None) is refused
    assert findings.headers == []


# -- through SMTP --------------------------------------------------------------------------------


def test_smtp_refuses_a_virus_with_550(start_smtp: StartSmtp, clamd: RunningClamd) -> None:
    server = start_smtp(smtp_config(antivirus=AntivirusConfig(clamd=clamd.setting)))
    with server.smtp() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(SENDER, [BOB], infected())
    assert refused.value.smtp_code == 550
    assert b"5.7.1" in refused.value.smtp_error
    assert SIGNATURE.encode() in refused.value.smtp_error
    assert server.inbox(BOB) == []


def test_smtp_delivers_a_clean_message_with_the_header(
    start_smtp: StartSmtp, clamd: RunningClamd
) -> None:
    server = start_smtp(smtp_config(antivirus=AntivirusConfig(clamd=clamd.setting)))
    with server.smtp() as client:
        assert client.sendmail(SENDER, [BOB], CLEAN) == {}
    [stored] = server.inbox(BOB)
    head, _, body = stored.partition(b"\r\n\r\n")
    assert b"X-Virus-Scanned: ClamAV\r\n" in head + b"\r\n"
    assert body == CLEAN.partition(b"\r\n\r\n")[2]


def test_smtp_quarantine_answers_250_and_delivers_nothing(
    start_smtp: StartSmtp, clamd: RunningClamd, smtp_data: Path
) -> None:
    server = start_smtp(
        smtp_config(antivirus=AntivirusConfig(clamd=clamd.setting, action="quarantine"))
    )
    with server.smtp() as client:
        assert client.sendmail(SENDER, [BOB], infected()) == {}
    assert server.inbox(BOB) == []
    [kept] = (smtp_data / "quarantine").iterdir()
    [notice] = server.inbox("postmaster@example.test")
    assert str(kept).encode() in notice


def test_smtp_without_clamd_tempfails_with_451(start_smtp: StartSmtp, tmp_path: Path) -> None:
    server = start_smtp(smtp_config(antivirus=AntivirusConfig(clamd=nowhere(tmp_path))))
    with server.smtp() as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail(SENDER, [BOB], CLEAN)
    assert refused.value.smtp_code == 451
    assert server.inbox(BOB) == []


def test_smtp_without_clamd_accepts_when_told_to(start_smtp: StartSmtp, tmp_path: Path) -> None:
    server = start_smtp(
        smtp_config(antivirus=AntivirusConfig(clamd=nowhere(tmp_path), on_failure="accept"))
    )
    with server.smtp() as client:
        assert client.sendmail(SENDER, [BOB], CLEAN) == {}
    [stored] = server.inbox(BOB)
    assert b"X-Virus-Scanned" not in stored


def test_serve_scans_with_the_clamd_of_its_config(
    cli: Cli, data_dir: Path, start_serve: StartServe, clamd: RunningClamd
) -> None:
    cli.ok("user", "add", BOB, "--password", "secret-pw-1")
    set_config(data_dir, "antivirus", "clamd", f'"{clamd.setting}"')
    server = start_serve()
    with smtplib.SMTP(*server.address("smtp"), timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SENDER, [BOB], infected())
        assert client.sendmail(SENDER, [BOB], CLEAN) == {}
    assert refused.value.smtp_code == 550
    assert SIGNATURE.encode() in refused.value.smtp_error
    assert server.stop() == 0
