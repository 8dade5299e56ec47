"""Webmail through its HTTP interface: sessions, CSRF, throttling, folders, lists, reading
(sanitising), search and settings, on a real store; and, against `postoffice serve`, that
IMAP sessions see webmail's changes at once."""

from __future__ import annotations

import hashlib
import imaplib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from conftest import Cli, StartServe
from postoffice.auth.passwords import hash_password
from postoffice.config import AuthConfig, WebmailConfig
from postoffice.filters.sieve import check_script
from postoffice.store.model import FETCH_BASIC, Flag, UidSet
from postoffice.web.webmail.reading import sanitise_html, text_to_html
from webmail_helpers import (
    ADDRESS,
    CSRF_FIELD,
    PASSWORD,
    Webmail,
    plain_message,
    rich_message,
    serve_webmail,
    webmail,
)

REMOTE = "http://tracker.remote.test/pixel.png"


@pytest.fixture
async def mail(data_dir: Path) -> AsyncIterator[Webmail]:
    async with webmail(data_dir, WebmailConfig(session_seconds=3600, page_size=5)) as world:
        yield world


async def _flags(mail: Webmail, folder: str, uid: int) -> Flag:
    mailbox = await mail.ctx.store.get_mailbox(mail.account.id, folder)
    assert mailbox is not None
    [entry] = await mail.ctx.store.fetch(mailbox.id, UidSet.of([uid]), FETCH_BASIC)
    return entry.flags


async def _uids(mail: Webmail, folder: str) -> list[int]:
    mailbox = await mail.ctx.store.get_mailbox(mail.account.id, folder)
    assert mailbox is not None
    return list(await mail.ctx.store.uids(mailbox.id))


# -- sessions ---------------------------------------------------------------------------------


async def test_pages_need_a_login(mail: Webmail) -> None:
    response = await mail.client.get("/mail")
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    htmx = await mail.client.get("/mail", headers={"HX-Request": "true"})
    assert htmx.status_code == 401
    assert htmx.headers["hx-redirect"] == "/login"


async def test_login_sets_a_protected_cookie_and_shows_the_inbox(mail: Webmail) -> None:
    await mail.deliver(plain_message("Hello there", "hi"))
    wrong = await mail.client.post("/login", data={"address": ADDRESS, "password": "nope"})
    assert wrong.status_code == 401
    assert "Wrong address or password" in wrong.text
    response = await mail.client.post("/login", data={"address": ADDRESS, "password": PASSWORD})
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" not in cookie  # plain http with secure_cookies = "auto"
    inbox = await mail.client.get("/mail")
    assert inbox.status_code == 200
    assert "Hello there" in inbox.text
    assert ADDRESS in inbox.text


async def test_webmail_can_be_turned_off(data_dir: Path) -> None:
    async with webmail(data_dir, WebmailConfig(enabled=False)) as world:
        assert (await world.client.get("/login")).status_code == 404
        autoconfig = await world.client.get(
            "/mail/config-v1.1.xml", params={"emailaddress": ADDRESS}
        )
        assert autoconfig.status_code == 200


async def test_cookie_is_secure_over_https(data_dir: Path) -> None:
    async with webmail(data_dir) as world:
        world.client.base_url = httpx.URL("https://mail.test")
        response = await world.client.post(
            "/login", data={"address": ADDRESS, "password": PASSWORD}
        )
        assert "secure" in response.headers["set-cookie"].lower()


async def test_the_store_keeps_no_usable_session_token(mail: Webmail) -> None:
    await mail.login()
    token = mail.client.cookies["postoffice_session"]
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert await mail.ctx.store.web_sessions.get(token, mail.clock.now()) is None
    assert await mail.ctx.store.web_sessions.get(digest, mail.clock.now()) is not None


async def test_session_expires_unless_used(mail: Webmail) -> None:
    await mail.login()
    # Each use pushes the expiry ahead: three uses ~59 minutes apart keep it alive.
    for _ in range(3):
        mail.clock.advance(3540)
        assert (await mail.client.get("/mail")).status_code == 200
    mail.clock.advance(3601)
    assert (await mail.client.get("/mail")).status_code == 303


async def test_logout_ends_the_session_for_good(mail: Webmail) -> None:
    csrf = await mail.login()
    token = mail.client.cookies["postoffice_session"]
    refused = await mail.client.post("/logout", data={})
    assert refused.status_code == 403
    response = await mail.client.post("/logout", data={"csrf": csrf})
    assert response.status_code == 303
    # The old cookie, replayed, opens nothing.
    mail.client.cookies.set("postoffice_session", token)
    assert (await mail.client.get("/mail")).status_code == 303


async def test_state_changes_need_the_csrf_token(mail: Webmail) -> None:
    uid = await mail.deliver(plain_message("Keep me", "x"))
    csrf = await mail.login()
    for data in ({}, {"csrf": "forged"}, {"csrf": csrf[:-1]}):
        for path in ("/mail/bulk", "/folders/create", "/settings/password", "/settings/sieve"):
            form = {**data, "f": "INBOX", "uid": str(uid), "action": "delete", "name": "X"}
            response = await mail.client.post(path, data=form)
            assert response.status_code == 403, path
    assert await _uids(mail, "INBOX") == [uid]
    assert await mail.ctx.store.get_mailbox(mail.account.id, "X") is None


async def test_cross_site_login_is_refused(mail: Webmail) -> None:
    response = await mail.client.post(
        "/login",
        data={"address": ADDRESS, "password": PASSWORD},
        headers={"Origin": "https://evil.test"},
    )
    assert response.status_code == 403
    assert "postoffice_session" not in response.headers.get("set-cookie", "")


async def test_logins_are_throttled_like_every_protocol(data_dir: Path) -> None:
    auth = AuthConfig(max_failures_per_ip=3, delay_base_seconds=0.0, delay_max_seconds=0.0)
    async with webmail(data_dir, auth=auth) as world:
        for _ in range(3):
            response = await world.client.post(
                "/login", data={"address": ADDRESS, "password": "guess"}
            )
            assert response.status_code == 401
        locked = await world.client.post("/login", data={"address": ADDRESS, "password": PASSWORD})
        assert locked.status_code == 429
        assert "Too many failed logins" in locked.text
        assert "postoffice_session" not in locked.headers.get("set-cookie", "")


async def test_pages_carry_a_strict_content_security_policy(mail: Webmail) -> None:
    await mail.deliver(plain_message("CSP", "x"))
    pages = [await mail.client.get("/login")]
    await mail.login()
    for path in ("/mail", "/folders", "/search", "/settings", "/message?f=INBOX&uid=1"):
        pages.append(await mail.client.get(path))
    for response in pages:
        path = response.request.url.path
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        for directive in ("script-src 'self'", "style-src 'self'", "form-action 'self'"):
            assert directive in policy
        assert "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy
        # Nothing the policy would block: no inline script, style element or attribute.
        assert not re.search(r"<script(?![^>]*\bsrc=)", response.text)
        assert "<style" not in response.text
        assert " style=" not in response.text
        assert not re.search(r"<[^>]*\son[a-z]+=", response.text)


# -- folders ----------------------------------------------------------------------------------


async def test_folders_create_rename_delete_with_unread_counts(mail: Webmail) -> None:
    await mail.deliver(plain_message("one", "x"))
    await mail.deliver(plain_message("two", "x"))
    csrf = await mail.login()
    page = await mail.client.get("/mail")
    assert re.search(r'href="/mail\?f=INBOX">INBOX</a>\s*<span class="unread"[^>]*>2<', page.text)

    await mail.client.post("/folders/create", data={"csrf": csrf, "name": "Projects/2026"})
    assert await mail.ctx.store.get_mailbox(mail.account.id, "Projects/2026") is not None
    duplicate = await mail.client.post(
        "/folders/create", data={"csrf": csrf, "name": "Projects/2026"}
    )
    assert duplicate.status_code == 400
    await mail.client.post(
        "/folders/rename", data={"csrf": csrf, "name": "Projects/2026", "new_name": "Work"}
    )
    assert await mail.ctx.store.get_mailbox(mail.account.id, "Work") is not None
    await mail.client.post("/folders/delete", data={"csrf": csrf, "name": "Work"})
    assert await mail.ctx.store.get_mailbox(mail.account.id, "Work") is None
    refused = await mail.client.post("/folders/delete", data={"csrf": csrf, "name": "INBOX"})
    assert refused.status_code == 400


async def test_another_accounts_folder_is_not_found(mail: Webmail) -> None:
    other = await mail.ctx.store.add_account("carol@example.test", hash_password("x" * 12), None)
    secret = await mail.ctx.store.get_mailbox(other.id, "INBOX")
    assert secret is not None
    await mail.login()
    # Names are per account: "INBOX" is alice's own, whatever the id of carol's.
    response = await mail.client.get("/message", params={"f": "INBOX", "uid": "1"})
    assert response.status_code == 404


# -- message lists ----------------------------------------------------------------------------


async def test_list_is_paged_and_sorted(mail: Webmail) -> None:
    for letter in "gcaefbd":
        await mail.deliver(plain_message(f"subject {letter}", "x"))
    await mail.login()
    first = await mail.client.get("/mail", params={"sort": "subject", "order": "asc"})
    subjects = re.findall(r">subject (\w)</a>", first.text)
    assert subjects == ["a", "b", "c", "d", "e"]
    assert "Page 1 of 2" in first.text
    second = await mail.client.get("/mail", params={"sort": "subject", "order": "asc", "page": 2})
    assert re.findall(r">subject (\w)</a>", second.text) == ["f", "g"]
    descending = await mail.client.get("/mail", params={"sort": "subject", "order": "desc"})
    assert re.findall(r">subject (\w)</a>", descending.text)[0] == "g"


async def test_threaded_view_indents_replies_under_their_thread(mail: Webmail) -> None:
    def message(subject: str, message_id: str, date: str, parent: str = "") -> bytes:
        references = f"In-Reply-To: {parent}\r\nReferences: {parent}\r\n" if parent else ""
        return (
            f"From: b@remote.test\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
            f"Date: {date}\r\n{references}\r\nx\r\n"
        ).encode()

    await mail.deliver(message("Plans", "<p1@x>", "Mon, 30 Nov 2026 08:00:00 +0000"))
    await mail.deliver(message("Other", "<o1@x>", "Mon, 30 Nov 2026 09:00:00 +0000"))
    await mail.deliver(message("Re: Plans", "<p2@x>", "Mon, 30 Nov 2026 10:00:00 +0000", "<p1@x>"))
    await mail.login()
    page = await mail.client.get("/mail", params={"view": "threads"})
    rows = re.findall(r'<td class="subject( reply depth-\d)?"><a [^>]*>([^<]+)</a>', page.text)
    # The thread with the latest reply comes first, its reply indented under it.
    assert rows == [("", "Plans"), (" reply depth-1", "Re: Plans"), ("", "Other")]


async def test_bulk_read_flag_and_move(mail: Webmail) -> None:
    one = await mail.deliver(plain_message("one", "x"))
    two = await mail.deliver(plain_message("two", "x"))
    csrf = await mail.login()
    form = {"csrf": csrf, "f": "INBOX", "uid": [str(one), str(two)]}
    response = await mail.client.post("/mail/bulk", data={**form, "action": "read"})
    assert response.status_code == 303
    assert Flag.SEEN in await _flags(mail, "INBOX", one)
    await mail.client.post("/mail/bulk", data={**form, "uid": str(two), "action": "unread"})
    assert Flag.SEEN not in await _flags(mail, "INBOX", two)
    await mail.client.post("/mail/bulk", data={**form, "action": "flag"})
    assert Flag.FLAGGED in await _flags(mail, "INBOX", two)
    await mail.client.post("/mail/flag", data={"csrf": csrf, "f": "INBOX", "toggle": str(two)})
    assert Flag.FLAGGED not in await _flags(mail, "INBOX", two)
    page = await mail.client.get("/mail")
    assert f'id="row-{one}" class=" flagged"' in page.text
    await mail.client.post("/mail/bulk", data={**form, "action": "move", "target": "Archive"})
    assert await _uids(mail, "INBOX") == []
    assert len(await _uids(mail, "Archive")) == 2


async def test_bulk_action_answers_htmx_with_the_list(mail: Webmail) -> None:
    uid = await mail.deliver(plain_message("htmx", "x"))
    csrf = await mail.login()
    response = await mail.client.post(
        "/mail/bulk",
        data={
            "csrf": csrf,
            "f": "INBOX",
            "uid": str(uid),
            "action": "read",
            "return_to": "/mail?f=INBOX",
        },
        headers={"HX-Request": "true"},
        follow_redirects=True,
    )
    assert response.status_code == 200
    assert 'id="message-list"' in response.text
    assert f'id="row-{uid}" class=""' in response.text


async def test_delete_moves_to_trash_then_expunges(mail: Webmail) -> None:
    uid = await mail.deliver(plain_message("doomed", "x"))
    csrf = await mail.login()
    await mail.client.post(
        "/mail/bulk", data={"csrf": csrf, "f": "INBOX", "uid": str(uid), "action": "delete"}
    )
    [trashed] = await _uids(mail, "Trash")
    await mail.client.post(
        "/mail/bulk", data={"csrf": csrf, "f": "Trash", "uid": str(trashed), "action": "delete"}
    )
    assert await _uids(mail, "Trash") == []


async def test_junk_and_not_junk_move_and_train(mail: Webmail) -> None:
    uid = await mail.deliver(plain_message("cheap pills", "buy cheap pills now"))
    csrf = await mail.login()
    await mail.client.post(
        "/mail/bulk", data={"csrf": csrf, "f": "INBOX", "uid": str(uid), "action": "junk"}
    )
    [junk] = await _uids(mail, "Junk")
    totals = await mail.ctx.store.junk.totals(mail.account.id)
    assert (totals.spam, totals.ham) == (1, 0)
    await mail.client.post(
        "/mail/bulk", data={"csrf": csrf, "f": "Junk", "uid": str(junk), "action": "notjunk"}
    )
    assert await _uids(mail, "Junk") == []
    assert len(await _uids(mail, "INBOX")) == 1
    totals = await mail.ctx.store.junk.totals(mail.account.id)
    assert totals.ham == 1


async def test_redirects_stay_on_this_site(mail: Webmail) -> None:
    uid = await mail.deliver(plain_message("r", "x"))
    csrf = await mail.login()
    for target in ("https://evil.test/", "//evil.test/", "/\\evil.test"):
        response = await mail.client.post(
            "/mail/bulk",
            data={
                "csrf": csrf,
                "f": "INBOX",
                "uid": str(uid),
                "action": "read",
                "return_to": target,
            },
        )
        location = response.headers["location"]
        assert location.startswith("/") and not location.startswith("//"), location


# -- reading ----------------------------------------------------------------------------------


async def test_reading_marks_seen_and_links_text_safely(mail: Webmail) -> None:
    uid = await mail.deliver(
        plain_message("Links", "<b>bold?</b> see https://example.org/?a=1&b=2 now")
    )
    await mail.login()
    page = await mail.client.get("/message", params={"f": "INBOX", "uid": uid})
    assert page.status_code == 200
    assert "&lt;b&gt;bold?&lt;/b&gt;" in page.text
    assert '<a href="https://example.org/?a=1&amp;b=2" rel="noopener noreferrer"' in page.text
    assert Flag.SEEN in await _flags(mail, "INBOX", uid)


async def test_message_page_links_to_every_way_of_answering(mail: Webmail) -> None:
    uid = await mail.deliver(plain_message("Answer me", "hello"))
    draft = await mail.deliver(plain_message("Unfinished", "to be continued"), "Drafts")
    await mail.login()
    page = await mail.client.get("/message", params={"f": "INBOX", "uid": uid})
    for link in (
        f"reply={uid}",
        f"reply_all={uid}",
        f"forward={uid}&amp;f=INBOX&amp;as=attachment",
    ):
        assert f'href="/compose?{link}' in page.text, link
    assert "draft=" not in page.text  # only messages in Drafts are edited as drafts
    page = await mail.client.get("/message", params={"f": "Drafts", "uid": draft})
    assert f'href="/compose?draft={draft}&amp;f=Drafts"' in page.text


async def test_unknown_charset_is_still_shown(mail: Webmail) -> None:
    uid = await mail.deliver(
        b"From: a@remote.test\r\nSubject: odd\r\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nhello \xff there\r\n"
    )
    await mail.login()
    page = await mail.client.get("/message", params={"f": "INBOX", "uid": uid})
    assert page.status_code == 200
    assert "hello \ufffd there" in page.text


def test_text_links_cannot_break_out() -> None:
    html = str(text_to_html('go to https://x.test/"onmouseover="alert(1) or javascript:alert(1)'))
    assert 'onmouseover="' not in html
    assert 'href="javascript' not in html


async def test_html_body_is_sanitised_and_framed(mail: Webmail) -> None:
    hostile = (
        '<p onclick="steal()">Hi</p><script>steal()</script>'
        '<a href="javascript:steal()">click</a>'
        "<style>body{background:url(https://exfil.test/?q=1)}</style>"
        '<div style="width:expression(steal())">x</div>'
        '<form action="https://evil.test"><input name=p></form>'
        '<iframe src="https://evil.test"></iframe>'
    )
    uid = await mail.deliver(rich_message(hostile, REMOTE))
    await mail.login()
    page = await mail.client.get("/message", params={"f": "INBOX", "uid": uid})
    frame = re.search(r'<iframe class="body" src="([^"]+)" sandbox="([^"]+)"', page.text)
    assert frame is not None
    assert "allow-scripts" not in frame[2]
    assert "1 remote image blocked" in page.text

    body = await mail.client.get(frame[1].replace("&amp;", "&"))
    policy = body.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "img-src 'self' data:;" in policy
    assert "sandbox" in policy and "allow-scripts" not in policy
    for forbidden in (
        "onclick",
        "<script",
        "steal()",
        "javascript:",
        "exfil.test",
        "expression",
        "<form",
        "<iframe",
        "<style",
        "tracker.remote.test",
    ):
        assert forbidden not in body.text, forbidden
    assert "<p>Hi</p>" in body.text
    cid = re.search(r'<img src="(/message/cid\?[^"]+)"', body.text)
    assert cid is not None
    image = await mail.client.get(cid[1].replace("&amp;", "&"))
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"

    shown = await mail.client.get("/message/body", params={"f": "INBOX", "uid": uid, "remote": "1"})
    assert f'src="{REMOTE}"' in shown.text
    assert "https:" in shown.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("html", "forbidden"),
    [
        ("<img src=x onerror=alert(1)>", "onerror"),
        ("<svg><script>alert(1)</script></svg>", "alert"),
        ('<a href=" JaVaScRiPt:alert(1)">x</a>', "alert"),
        ('<a href="data:text/html,<script>alert(1)</script>">x</a>', "data:"),
        ('<p style="background-image:url(https://x.test/a)">x</p>', "x.test"),
        ('<p style="color:red;background:u\\72l(https://x.test/a)">x</p>', "x.test"),
        ('<p style="behavior:url(x.htc)">x</p>', "htc"),
        ("<style>@import 'https://x.test/a.css';</style>", "x.test"),
        ('<link rel="stylesheet" href="https://x.test/a.css">', "x.test"),
        ('<meta http-equiv="refresh" content="0;url=https://x.test">', "x.test"),
        ('<base href="https://x.test/">', "x.test"),
        ('<img srcset="https://x.test/a.png 1x">', "x.test"),
        ('<table background="https://x.test/a.png"><tr><td>x</td></tr></table>', "x.test"),
        ('<img src="/logout">', "logout"),
        ("<object data='https://x.test/a.swf'></object>", "x.test"),
    ],
)
def test_sanitiser_removes(html: str, forbidden: str) -> None:
    clean = sanitise_html(html, "/message/cid?f=INBOX&uid=1&cid=", remote_images=False).html
    assert forbidden not in clean


def test_sanitiser_keeps_ordinary_mail_formatting() -> None:
    html = (
        '<table width="100%"><tr><td style="color: #333; padding: 4px">Cell</td></tr></table>'
        '<a href="https://shop.test/item">Item</a><img src="https://shop.test/i.png" alt="i">'
    )
    blocked = sanitise_html(html, "/c?cid=", remote_images=False)
    assert "Cell" in blocked.html and "padding:4px" in blocked.html.replace(" ", "")
    assert 'href="https://shop.test/item"' in blocked.html
    assert 'target="_blank"' in blocked.html
    assert blocked.blocked_images == 1 and "i.png" not in blocked.html
    allowed = sanitise_html(html, "/c?cid=", remote_images=True)
    assert 'src="https://shop.test/i.png"' in allowed.html


async def test_attachment_downloads_with_a_safe_disposition(mail: Webmail) -> None:
    uid = await mail.deliver(rich_message("<p>see attached</p>", REMOTE))
    await mail.login()
    page = await mail.client.get("/message", params={"f": "INBOX", "uid": uid})
    link = re.search(r'<a href="(/message/part\?[^"]+)" download>([^<]+)</a>', page.text)
    assert link is not None
    assert link[2] == "résumé &#34;1&#34;.txt"
    response = await mail.client.get(link[1].replace("&amp;", "&"))
    assert response.status_code == 200
    assert response.content == b"order 42\n"
    assert response.headers["content-type"].startswith("text/plain")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment; ")
    assert "filename*=UTF-8''" + quote('résumé "1".txt', safe="") in disposition
    assert '"1"' not in disposition  # quotes in the name cannot end the parameter early


# -- search -----------------------------------------------------------------------------------


async def test_search_by_fields_and_dates(mail: Webmail) -> None:
    await mail.deliver(plain_message("Quarterly report", "numbers inside", sender="ceo@corp.test"))
    await mail.deliver(plain_message("Lunch", "pizza on friday"))
    await mail.login()

    async def found(**criteria: str) -> list[str]:
        response = await mail.client.get("/search", params={"f": "INBOX", **criteria})
        assert response.status_code == 200
        return re.findall(r'&amp;uid=\d+">([^<]+)</a>', response.text)

    assert await found(subject="quarterly") == ["Quarterly report"]
    assert await found(**{"from": "ceo@corp"}) == ["Quarterly report"]
    assert await found(body="pizza") == ["Lunch"]
    assert await found(to=ADDRESS, body="nothing-like-this") == []
    assert sorted(await found(since="2026-11-30", before="2026-12-01")) == [
        "Lunch",
        "Quarterly report",
    ]
    assert await found(since="2026-12-01") == []
    bad = await mail.client.get("/search", params={"since": "yesterday"})
    assert bad.status_code == 400


# -- settings ---------------------------------------------------------------------------------


async def test_password_change(mail: Webmail, data_dir: Path) -> None:
    csrf = await mail.login()
    new = "a much better passphrase"
    wrong = await mail.client.post(
        "/settings/password",
        data={"csrf": csrf, "current": "wrong", "new": new, "confirm": new},
    )
    assert wrong.status_code == 403
    # A second browser, logged in before the change, is logged out by it.
    transport = httpx.ASGITransport(app=mail.client._transport.app)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=transport, base_url="http://mail.test") as other:
        await other.post("/login", data={"address": ADDRESS, "password": PASSWORD})
        assert (await other.get("/mail")).status_code == 200
        ok = await mail.client.post(
            "/settings/password",
            data={"csrf": csrf, "current": PASSWORD, "new": new, "confirm": new},
        )
        assert ok.status_code == 200 and "Password changed" in ok.text
        assert (await other.get("/mail")).status_code == 303
    assert (await mail.client.get("/mail")).status_code == 200
    result = await mail.ctx.authenticator.authenticate_password(ADDRESS, new, "192.0.2.99")
    assert type(result).__name__ == "AuthSuccess"


async def test_vacation_and_rules_become_an_active_sieve_script(mail: Webmail) -> None:
    csrf = await mail.login()
    response = await mail.client.post(
        "/settings/sieve",
        data={
            "csrf": csrf,
            "vacation_enabled": "on",
            "vacation_subject": 'Away "till" Monday',
            "vacation_body": "Back soon.\\ Really.",
            "vacation_days": "3",
            "rule0_field": "from",
            "rule0_contains": "boss@corp.test",
            "rule0_folder": "Archive",
        },
    )
    assert response.status_code == 303
    active = await mail.ctx.store.sieve.active(mail.account.id)
    assert active is not None and active[0] == "webmail"
    check_script(active[1])
    assert (
        'vacation :days 3 :subject "Away \\"till\\" Monday" "Back soon.\\\\ Really.";' in active[1]
    )
    assert 'if header :contains "from" "boss@corp.test" { fileinto "Archive"; stop; }' in active[1]
    page = await mail.client.get("/settings")
    assert 'value="boss@corp.test"' in page.text
    assert "Away &#34;till&#34; Monday" in page.text


async def test_junk_threshold_and_profile_link(mail: Webmail) -> None:
    csrf = await mail.login()
    refused = await mail.client.post("/settings/junk", data={"csrf": csrf, "threshold": "7"})
    assert refused.status_code == 400
    await mail.client.post("/settings/junk", data={"csrf": csrf, "threshold": "0.75"})
    assert (await mail.ctx.store.junk.totals(mail.account.id)).threshold == 0.75
    page = await mail.client.get("/settings")
    link = re.search(r'<a href="(/mobileconfig\?[^"]+)">', page.text)
    assert link is not None
    profile = await mail.client.get(link[1].replace("&amp;", "&"))
    assert profile.status_code == 200
    assert ADDRESS.encode() in profile.content


# -- against `postoffice serve`: IMAP sees webmail's changes ------------------------------------


def test_imap_sees_webmail_changes_at_once(start_serve: StartServe, cli: Cli) -> None:
    served = serve_webmail(start_serve, cli)
    served.deliver(plain_message("watched", "x"))
    imap = imaplib.IMAP4(*served.server.address("imap"), timeout=30)
    try:
        imap.login(ADDRESS, PASSWORD)
        imap.select("INBOX")
        with httpx.Client(base_url=served.base_url, timeout=30) as browser:
            browser.post("/login", data={"address": ADDRESS, "password": PASSWORD})
            csrf_match = CSRF_FIELD.search(browser.get("/mail").text)
            assert csrf_match is not None
            response = browser.post(
                "/mail/bulk",
                data={"csrf": csrf_match[1], "f": "INBOX", "uid": "1", "action": "flag"},
            )
            assert response.status_code == 303
        status, _ = imap.noop()
        assert status == "OK"
        fetches = imap.untagged_responses.get("FETCH", [])
        assert any(b"\\Flagged" in item for item in fetches if isinstance(item, bytes)), fetches
    finally:
        imap.logout()
