"""The rspamd client of the junk stage against Debian's real rspamd (rspamd_helpers.py runs it
offline on loopback): a clean message and GTUBE through the stage in-process, then GTUBE
refused with 550 by `postoffice serve` configured with `[junk] rspamd_url`."""

from __future__ import annotations

import dataclasses
import email.utils
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import test_delivery
from conftest import Cli, StartServe, set_config
from postoffice.config import JunkConfig
from postoffice.delivery.model import Outcome
from postoffice.filters import spamd
from postoffice.filters.api import Findings
from rspamd_helpers import GTUBE, RunningRspamd, rspamd_available, running_rspamd
from test_delivery import World
from test_junk import MX, message
from test_junk_serve import PASSWORD, USER, fetch_all, imap

# The real store the in-process stage tests build their context on, from test_delivery.
world = test_delivery.world

SENDER = "someone@remote.test"
# Dated now: rspamd scores a Date in the future (DATE_IN_FUTURE) or the far past.
NOW = email.utils.formatdate()
CLEAN = (
    f"From: Some One <{SENDER}>\r\nTo: <{USER}>\r\nSubject: lunch on Friday\r\n"
    f"Date: {NOW}\r\nMessage-ID: <lunch-1@remote.test>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    "Hi Bob,\r\n\r\nnoon at the usual place on Friday? Anna is coming too.\r\n\r\nSome\r\n"
).encode()
SPAM = (
    f"From: Some One <{SENDER}>\r\nTo: <{USER}>\r\nSubject: a test\r\n"
    f"Date: {NOW}\r\nMessage-ID: <gtube-1@remote.test>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    f"This is the GTUBE, the generic test for unsolicited bulk email:\r\n\r\n{GTUBE}\r\n"
).encode()
# test_junk's MX origin (HELO relay.test from 192.0.2.9) and the sender's domain as they would
# be in DNS: without them rspamd's hfilter alone scores a message past "add header" (6).
RECORDS = {
    ("9.2.0.192.in-addr.arpa", "PTR"): ["relay.test."],
    ("relay.test", "A"): ["192.0.2.9"],
    ("remote.test", "MX"): ["10 relay.test."],
    ("remote.test", "A"): ["192.0.2.9"],
    ("remote.test", "TXT"): ['"v=spf1 ip4:192.0.2.9 -all"'],
}


@pytest.fixture(scope="session")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRspamd]:
    if not rspamd_available():
        pytest.skip("rspamd is not installed (Debian package rspamd)")
    with running_rspamd(tmp_path_factory.mktemp("rspamd"), RECORDS) as running:
        yield running


def stage(world: World, url: str) -> spamd.SpamdFilter:
    """The stage as `postoffice serve` builds it from `[junk] rspamd_url`."""
    world.ctx.config = dataclasses.replace(
        world.ctx.config, junk=JunkConfig(rspamd_url=url, timeout_seconds=30.0)
    )
    built = spamd.build(world.ctx)
    assert built is not None
    return built


def wait_for_log(log: Path, text: str, timeout: float = 10.0) -> str:
    """rspamd's log, once it holds `text` (its file logging is buffered)."""
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.1)


async def test_rspamd_starts_offline_quickly(rspamd: RunningRspamd) -> None:
    # Debian's full public suffix list would take ~12 s to compile; see rspamd_helpers.
    assert rspamd.started_in < 20.0


async def test_a_clean_message_is_ham(world: World, rspamd: RunningRspamd) -> None:
    findings = Findings()
    await stage(world, rspamd.url).scan(message(CLEAN), findings)
    assert findings.refusal is None
    assert not findings.junk
    assert findings.results["spamd"] == "ham"
    assert findings.spam_score is not None and findings.spam_score < 0.5
    [(name, value)] = findings.headers
    assert name == "X-Spam-Report"
    assert value.startswith("rspamd score=") and "required=15.00 action=no_action" in value
    # The envelope went in request headers, and rspamd read them: its log line for the task
    # has the queue id, peer address, sender and recipient.
    logged = "id: <lunch-1@remote.test>, qid:"
    [line] = [line for line in wait_for_log(rspamd.log, logged).splitlines() if logged in line]
    for expected in ("qid: <s1>", "ip: 192.0.2.9", f"from: <{SENDER}>", f"rcpts: <{USER}>"):
        assert expected in line
    # Its DNS lookups (the peer's name, SPF, DNSBLs) went to the loopback resolver.
    assert ("9.2.0.192.in-addr.arpa", "PTR") in rspamd.resolver.questions
    assert ("remote.test", "TXT") in rspamd.resolver.questions


async def test_gtube_is_refused(world: World, rspamd: RunningRspamd) -> None:
    findings = Findings()
    await stage(world, rspamd.url).scan(message(SPAM), findings)
    assert findings.refusal is not None
    assert findings.refusal.outcome is Outcome.REJECTED
    assert findings.junk
    assert findings.results["spamd"] == "spam"
    report = dict(findings.headers)["X-Spam-Report"]
    assert "action=reject" in report and "GTUBE" in report
    # GTUBE scores exactly the reject score: 0.5 on the 0..1 scale.
    assert findings.spam_score == pytest.approx(0.5)


async def test_authenticated_mail_is_not_sent_to_rspamd(
    world: World, rspamd: RunningRspamd
) -> None:
    submission = dataclasses.replace(MX, listener="submission", account_id=1)
    findings = Findings()
    await stage(world, rspamd.url).scan(message(SPAM, submission), findings)
    assert findings == Findings()


def test_serve_refuses_gtube_with_550(
    cli: Cli, data_dir: Path, start_serve: StartServe, rspamd: RunningRspamd
) -> None:
    cli.ok("user", "add", USER, "--password", PASSWORD)
    set_config(data_dir, "junk", "rspamd_url", f'"{rspamd.url}"')
    server = start_serve()
    with smtplib.SMTP(*server.address("smtp"), timeout=30) as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail(SENDER, [USER], SPAM)
        assert client.sendmail(SENDER, [USER], CLEAN) == {}
    assert refused.value.smtp_code == 550
    with imap(server) as mailbox:
        [delivered] = fetch_all(mailbox, "INBOX")
        assert fetch_all(mailbox, "Junk") == []
    assert delivered["Message-ID"] == "<lunch-1@remote.test>"
    assert str(delivered["X-Spam-Report"]).startswith("rspamd score=")
    assert server.stop() == 0
