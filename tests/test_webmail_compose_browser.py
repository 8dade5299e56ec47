"""Webmail compose in a real browser (Debian's chromium through Playwright) against
`postoffice serve`: one user sends another a message with an attachment, the other replies;
both arrive over IMAP.  A screenshot of the compose page goes to artifacts/.

Playwright's sync API runs its own event loop, so these are plain (not asyncio) tests.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import imaplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from conftest import Cli, StartServe
from webmail_helpers import ADDRESS, PASSWORD, ServedWebmail, serve_webmail

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
BOB = "bob@example.test"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # Debian's chromium, never a downloaded one; its sandbox needs privileges CI lacks.
        chromium = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def served(start_serve: StartServe, cli: Cli) -> ServedWebmail:
    cli.ok("user", "add", BOB, "--password", PASSWORD)
    return serve_webmail(start_serve, cli)


def log_in(browser: Browser, served: ServedWebmail, address: str) -> Page:
    page = browser.new_page()
    page.goto(served.base_url + "/login")
    page.get_by_label("Address").fill(address)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="INBOX")).to_be_visible()
    return page


def inbox(served: ServedWebmail, address: str) -> list[tuple[bytes, email.message.EmailMessage]]:
    """(FLAGS, message) of every message in the INBOX, read over IMAP."""
    with imaplib.IMAP4(*served.server.address("imap"), timeout=10) as imap:
        imap.login(address, PASSWORD)
        imap.select("INBOX", readonly=True)
        _, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[])")
        found = []
        for item in data:
            if isinstance(item, tuple):
                msg = email.message_from_bytes(item[1], policy=email.policy.default)
                assert isinstance(msg, email.message.EmailMessage)
                found.append((item[0], msg))
        return found


def test_send_with_attachment_then_reply(
    browser: Browser, served: ServedWebmail, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    agenda = tmp_path / "agenda.txt"
    agenda.write_text("1. budget\n2. lunch\n")

    bob = log_in(browser, served, BOB)
    bob.get_by_role("link", name="Compose").click()
    bob.get_by_label("To", exact=True).fill(ADDRESS)
    bob.get_by_label("Subject").fill("Meeting agenda")
    bob.get_by_label("Message").fill("Here is the agenda for Monday.\n")
    bob.get_by_label("Attach files").set_input_files(agenda)
    bob.screenshot(path=str(ARTIFACTS / "webmail-compose.png"), full_page=True)
    bob.get_by_role("button", name="Send").click()
    expect(bob.get_by_role("link", name="Meeting agenda")).to_be_visible()  # in Sent

    [(_, received)] = inbox(served, ADDRESS)
    assert received["From"] == BOB
    [attachment] = received.iter_attachments()
    assert attachment.get_filename() == "agenda.txt"
    assert attachment.get_content() == "1. budget\n2. lunch\n"

    alice = log_in(browser, served, ADDRESS)
    alice.get_by_role("link", name="Meeting agenda").click()
    alice.get_by_role("link", name="Reply", exact=True).click()
    expect(alice.get_by_label("Subject")).to_have_value("Re: Meeting agenda")
    expect(alice.get_by_label("To", exact=True)).to_have_value(BOB)
    body = alice.get_by_label("Message")
    expect(body).to_have_value(
        "\n\nOn " + str(received["Date"]) + f", {BOB} wrote:\n> Here is the agenda for Monday.\n"
    )
    body.press("Control+Home")
    body.type("Thanks, see you there.")
    alice.get_by_role("button", name="Send").click()
    expect(alice.get_by_role("link", name="Re: Meeting agenda")).to_be_visible()

    [(_, answer)] = inbox(served, BOB)
    assert answer["Subject"] == "Re: Meeting agenda"
    assert answer["In-Reply-To"] == received["Message-ID"]
    text = answer.get_body(("plain",))
    assert text is not None
    assert str(text.get_content()).startswith("Thanks, see you there.")
    [(flags, _)] = inbox(served, ADDRESS)
    assert b"\\Answered" in flags
