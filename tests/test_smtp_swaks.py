"""The SMTP listeners against Debian's `swaks`, a client we did not write (.ci/run installs it).

swaks exit codes used below: 0 delivered, 23 MAIL refused, 24 no recipient accepted,
26 message refused after the data, 28 AUTH failed or unavailable.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

import test_smtp_session as shared
from postoffice.config import LimitsConfig
from test_smtp_session import (
    ALICE,
    BOB,
    PASSWORD,
    SmtpServer,
    StartSmtp,
    smtp_config,
)

pytestmark = pytest.mark.skipif(
    shutil.which("swaks") is None, reason="swaks is not installed (Debian: apt-get install swaks)"
)

# The in-process server fixtures of test_smtp_session, used here under the same names.
_smtp_template = shared._smtp_template
smtp_data = shared.smtp_data
start_smtp = shared.start_smtp
smtp = shared.smtp


def swaks(server: SmtpServer, listener: str, *args: str) -> subprocess.CompletedProcess[str]:
    host, port = server.address(listener)
    return subprocess.run(
        ["swaks", "--server", host, "--port", str(port), "--helo", "client.test", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def bob_login(mechanism: str, password: str = PASSWORD) -> tuple[str, ...]:
    """swaks arguments that log in as Bob."""
    return ("--auth", mechanism, "--auth-user", BOB, "--auth-password", password)


def test_mx_delivery(smtp: SmtpServer) -> None:
    result = swaks(smtp, "smtp", "--from", "a@other.test", "--to", BOB, "--h-Subject", "swaks")
    assert result.returncode == 0, result.stdout
    assert "250 2.0.0" in result.stdout
    [stored] = smtp.inbox(BOB)
    assert b"Subject: swaks" in stored


def test_pipelined_delivery_to_several_recipients(smtp: SmtpServer) -> None:
    result = swaks(smtp, "smtp", "--pipeline", "--from", "a@other.test", "--to", f"{BOB},{ALICE}")
    assert result.returncode == 0, result.stdout
    assert len(smtp.inbox(BOB)) == len(smtp.inbox(ALICE)) == 1


@pytest.mark.parametrize(
    ("recipient", "reply"),
    [
        ("someone@other.test", "550 5.7.1"),
        ("bob%other.test@example.test", "550 5.7.1"),
        ("bob@[127.0.0.1]", "550 5.7.1"),
        ("nobody@example.test", "550 5.1.1"),
    ],
)
def test_recipients_refused_at_rcpt(smtp: SmtpServer, recipient: str, reply: str) -> None:
    result = swaks(smtp, "smtp", "--from", "a@other.test", "--to", recipient)
    assert result.returncode == 24, result.stdout
    assert f"<** {reply}" in result.stdout


def test_utf8_and_8bit_body(smtp: SmtpServer) -> None:
    result = swaks(
        smtp,
        "smtp",
        "--from",
        "a@other.test",
        "--to",
        BOB,
        "--body",
        "Grüße ✓",
        "--add-header",
        "Content-Type: text/plain; charset=utf-8",
    )
    assert result.returncode == 0, result.stdout
    assert "Grüße ✓".encode() in smtp.inbox(BOB)[0]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_submission_starttls_and_auth(smtp: SmtpServer, mechanism: str) -> None:
    result = swaks(
        smtp,
        "submission",
        "--tls",
        *bob_login(mechanism),
        "--from",
        BOB,
        "--to",
        ALICE,
        "--h-From",
        BOB,
    )
    assert result.returncode == 0, result.stdout
    assert "235 2.7.0" in result.stdout
    assert b"with ESMTPSA" in smtp.inbox(ALICE)[0]


def test_submissions_implicit_tls(smtp: SmtpServer) -> None:
    result = swaks(
        smtp,
        "submissions",
        "--tlsc",
        *bob_login("PLAIN"),
        "--from",
        BOB,
        "--to",
        ALICE,
        "--h-From",
        BOB,
    )
    assert result.returncode == 0, result.stdout
    assert len(smtp.inbox(ALICE)) == 1


def test_no_auth_in_cleartext(smtp: SmtpServer) -> None:
    result = swaks(
        smtp,
        "submission",
        *bob_login("PLAIN"),
        "--from",
        BOB,
        "--to",
        ALICE,
    )
    assert result.returncode == 28, result.stdout
    assert smtp.inbox(ALICE) == []


def test_wrong_password(smtp: SmtpServer) -> None:
    result = swaks(
        smtp,
        "submission",
        "--tls",
        *bob_login("PLAIN", "wrong"),
        "--from",
        BOB,
        "--to",
        ALICE,
    )
    assert result.returncode == 28, result.stdout
    assert "535 5.7.8" in result.stdout


def test_sender_spoofing_is_refused(smtp: SmtpServer) -> None:
    result = swaks(
        smtp,
        "submission",
        "--tls",
        *bob_login("LOGIN"),
        "--from",
        ALICE,
        "--to",
        ALICE,
    )
    assert result.returncode == 23, result.stdout
    assert "553 5.7.1" in result.stdout


def test_lmtp(smtp: SmtpServer) -> None:
    result = swaks(smtp, "lmtp", "--protocol", "LMTP", "--from", "a@other.test", "--to", BOB)
    assert result.returncode == 0, result.stdout
    assert b"with LMTP" in smtp.inbox(BOB)[0]


def test_message_too_big(start_smtp: StartSmtp) -> None:
    server = start_smtp(smtp_config(limits=LimitsConfig(message_size=1000)))
    body = "\n".join(["a line of text to fill the message up"] * 100)
    result = swaks(server, "smtp", "--from", "a@other.test", "--to", BOB, "--body", body)
    assert result.returncode == 26, result.stdout
    assert "552 5.3.4" in result.stdout
