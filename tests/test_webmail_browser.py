"""Webmail in a real browser (Debian's chromium through Playwright) against `postoffice
serve`: log in, read an HTML message with a remote image (which must not load) and an
attachment, move it, mark it as junk, search, log out.  Screenshots go to artifacts/.

Playwright's sync API runs its own event loop, so these are plain (not asyncio) tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from conftest import Cli, StartServe
from webmail_helpers import (
    ADDRESS,
    PASSWORD,
    ServedWebmail,
    remote_host,
    rich_message,
    serve_webmail,
)

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


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
    return serve_webmail(start_serve, cli)


def _log_in(page: Page, served: ServedWebmail) -> None:
    page.goto(served.base_url + "/mail")
    expect(page).to_have_url(served.base_url + "/login")
    page.get_by_label("Address").fill(ADDRESS)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="INBOX")).to_be_visible()


def test_read_move_junk_search_logout(browser: Browser, served: ServedWebmail) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with remote_host() as (remote, hits):
        served.deliver(rich_message("<p>Your order has shipped.</p>", f"{remote}/pixel.png"))
        page = browser.new_page(accept_downloads=True)
        blocked_by_policy: list[str] = []

        def watch(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text:
                blocked_by_policy.append(message.text)

        page.on("console", watch)
        _log_in(page, served)
        expect(page.get_by_role("link", name="Newsletter")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "webmail-inbox.png"), full_page=True)

        # The star toggles in place through htmx: the page (and this marker) stays.
        page.evaluate("window.stillHere = true")
        page.get_by_role("button", name="Flag this message").click()
        expect(page.get_by_role("button", name="Unflag this message")).to_be_visible()
        assert page.evaluate("window.stillHere") is True

        page.get_by_role("link", name="Newsletter").click()
        expect(page.get_by_text("1 remote image blocked")).to_be_visible()
        body = page.frame_locator("iframe.body")
        expect(body.get_by_text("Your order has shipped.")).to_be_visible()
        logo = body.get_by_role("img", name="logo")
        expect(logo).to_be_visible()
        assert logo.evaluate("image => image.naturalWidth") == 1  # the cid: image loaded
        page.screenshot(path=str(ARTIFACTS / "webmail-message.png"), full_page=True)

        with page.expect_download() as download_info:
            page.get_by_role("link", name="résumé").click()
        download = download_info.value
        assert Path(download.path()).read_bytes() == b"order 42\n"
        assert download.suggested_filename.startswith("résumé")

        page.get_by_label("Move to").select_option("Archive")
        page.get_by_role("button", name="Move", exact=True).click()
        expect(page.get_by_text("No messages.")).to_be_visible()
        assert hits == [], "the remote image was fetched"

    page.goto(served.base_url + "/mail?f=Archive")
    page.get_by_role("checkbox", name="Select message").first.check()
    page.get_by_role("button", name="Junk").click()
    expect(page.get_by_text("No messages.")).to_be_visible()

    page.get_by_role("link", name="Search").click()
    page.get_by_label("Folder").select_option("Junk")
    page.get_by_label("Subject").fill("newsletter")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("link", name="Newsletter")).to_be_visible()
    expect(page.get_by_text("1 found")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(served.base_url + "/login")
    page.goto(served.base_url + "/mail")
    expect(page).to_have_url(served.base_url + "/login")
    assert blocked_by_policy == []
