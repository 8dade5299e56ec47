"""Sieve end to end: scripts stored with `postoffice sieve put`, mail sent with smtplib to
`postoffice serve`, the result read back with imaplib."""

from __future__ import annotations

import email
import email.message
import email.policy
import imaplib
import smtplib

import pytest

from conftest import Cli, ServeProcess, StartServe

PASSWORD = "secret-pw-1"
BOB = "bob@example.test"
ALICE = "alice@example.test"
CAROL = "carol@example.test"
TIMEOUT = 30.0

BOB_SCRIPT = """require ["fileinto", "mailbox", "imap4flags"];
if header :contains "subject" "[list]" {
    fileinto :create :flags "\\\\Seen" "Lists";
} elsif header :is "subject" "junk offer" {
    discard;
} elsif header :is "subject" "for alice" {
    redirect "alice@example.test";
}
"""


def message(subject: str, sender: str = "someone@remote.test", to: str = BOB) -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\nHello.\r\n"
    ).encode()


def put_script(cli: Cli, user: str, text: str) -> None:
    cli.ok("sieve", "put", user, "main", "-", stdin=text)
    cli.ok("sieve", "activate", user, "main")


def mailbox(server: ServeProcess, user: str, name: str) -> list[tuple[email.message.Message, str]]:
    """Each message of the mailbox with its FLAGS response."""
    host, port = server.address("imap")
    client = imaplib.IMAP4(host, port, timeout=TIMEOUT)
    try:
        client.login(user, PASSWORD)
        status, _ = client.select(name, readonly=True)
        if status != "OK":
            return []
        _, data = client.uid("SEARCH", "ALL")
        found = []
        for uid in data[0].split():
            _, parts = client.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
            first = parts[0]
            assert isinstance(first, tuple)
            found.append((email.message_from_bytes(first[1]), first[0].decode()))
        return found
    finally:
        client.logout()


@pytest.fixture
def server(cli: Cli, start_serve: StartServe) -> ServeProcess:
    for user in (BOB, ALICE, CAROL):
        cli.ok("user", "add", user, "--password", PASSWORD)
    return start_serve()


def test_fileinto_discard_redirect_and_reject(cli: Cli, server: ServeProcess) -> None:
    put_script(cli, BOB, BOB_SCRIPT)
    put_script(cli, CAROL, 'require "reject";\nreject "Carol has left the company.";')
    host, port = server.address("smtp")
    with smtplib.SMTP(host, port, timeout=TIMEOUT) as smtp:
        for subject in ("[list] news", "junk offer", "for alice", "plain"):
            assert smtp.sendmail("someone@remote.test", [BOB], message(subject)) == {}
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("someone@remote.test", [CAROL], message("hi", to=CAROL))
    assert refused.value.smtp_code == 550
    assert b"Carol has left the company." in refused.value.smtp_error

    [(listed, flags)] = mailbox(server, BOB, "Lists")
    assert listed["Subject"] == "[list] news"
    assert "\\Seen" in flags
    assert [m["Subject"] for m, _ in mailbox(server, BOB, "INBOX")] == ["plain"]
    assert [m["Subject"] for m, _ in mailbox(server, ALICE, "INBOX")] == ["for alice"]
    assert mailbox(server, CAROL, "INBOX") == []


def test_vacation_reply_reaches_the_local_sender_once(cli: Cli, server: ServeProcess) -> None:
    put_script(
        cli,
        BOB,
        'require "vacation";\nvacation :days 7 :subject "Out of office" "Back on Monday.";',
    )
    host, port = server.address("lmtp")
    with smtplib.LMTP(host, port, timeout=TIMEOUT) as lmtp:
        for subject in ("first", "second"):
            assert lmtp.sendmail(ALICE, [BOB], message(subject, sender=ALICE)) == {}
    assert len(mailbox(server, BOB, "INBOX")) == 2
    [(reply, _)] = mailbox(server, ALICE, "INBOX")
    assert reply["Subject"] == "Out of office"
    assert reply["From"] == BOB
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == "<first@remote.test>"
    assert reply.get_payload(decode=True) == b"Back on Monday.\r\n"
