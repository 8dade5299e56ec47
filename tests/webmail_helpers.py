"""Shared by the webmail tests (in-process and browser): test messages, an in-process
webmail on a real store with a clock the test moves, and a served one for browsers.

The in-process client is httpx's ASGITransport over `build_app(ctx)`, run on the test's own
event loop (the one the store was opened on), as tests/test_web_autoconfig.py does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import email.policy
import http.server
import re
import smtplib
import threading
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path

import httpx

from conftest import Cli, ServeProcess, StartServe
from postoffice.auth.passwords import hash_password
from postoffice.config import AuthConfig, Config, WebmailConfig, load_config
from postoffice.context import Context, open_context
from postoffice.store.model import Account, AppendTarget
from postoffice.web.app import build_app

ADDRESS = "alice@example.test"
PASSWORD = "correct horse battery staple"
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
# One pixel, enough for a browser to decode as an image.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


class FakeClock:
    """A clock the test moves by hand: session expiry without waiting."""

    def __init__(self) -> None:
        self.instant = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
        self.seconds = 1000.0

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> dt.datetime:
        return self.instant

    def advance(self, seconds: float) -> None:
        self.seconds += seconds
        self.instant += dt.timedelta(seconds=seconds)


def plain_message(subject: str, body: str, sender: str = "bob@remote.test") -> bytes:
    message = EmailMessage()
    message["From"] = f"Bob <{sender}>"
    message["To"] = ADDRESS
    message["Subject"] = subject
    message["Date"] = "Mon, 30 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = f"<{abs(hash(subject))}@remote.test>"
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)


def rich_message(html: str, remote_image: str, subject: str = "Newsletter") -> bytes:
    """multipart/mixed: an alternative (text + `html` followed by a remote image and an
    inline cid: image) and a text attachment named with non-ASCII characters."""
    message = EmailMessage()
    message["From"] = "Shop <news@shop.test>"
    message["To"] = ADDRESS
    message["Subject"] = subject
    message["Date"] = "Mon, 30 Nov 2026 11:00:00 +0000"
    message["Message-ID"] = "<rich@shop.test>"
    message.set_content("plain version")
    message.add_alternative(
        f'<html><body>{html}<img src="{remote_image}" alt="tracker">'
        '<img src="cid:logo@shop.test" alt="logo"></body></html>',
        subtype="html",
    )
    html_part = message.get_body(("html",))
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(PNG, "image", "png", cid="<logo@shop.test>")
    message.add_attachment(
        b"order 42\n", maintype="text", subtype="plain", filename='r\u00e9sum\u00e9 "1".txt'
    )
    return message.as_bytes(policy=email.policy.SMTP)


@dataclasses.dataclass
class Webmail:
    ctx: Context
    client: httpx.AsyncClient
    account: Account
    clock: FakeClock

    async def deliver(self, raw: bytes, folder: str = "INBOX") -> int:
        mailbox = await self.ctx.store.get_mailbox(self.account.id, folder)
        assert mailbox is not None
        [appended] = await self.ctx.store.append(raw, [AppendTarget(mailbox.id)])
        return appended.uid

    async def login(self, password: str = PASSWORD) -> str:
        """Log in; the session's CSRF token."""
        response = await self.client.post("/login", data={"address": ADDRESS, "password": password})
        assert response.status_code == 303, response.text
        return await self.csrf()

    async def csrf(self) -> str:
        page = await self.client.get("/settings")
        assert page.status_code == 200, page.status_code
        match = CSRF_FIELD.search(page.text)
        assert match is not None
        return match[1]


def webmail_config(data_dir: Path, settings: WebmailConfig) -> Config:
    config = load_config(data_dir)
    return dataclasses.replace(
        config,
        webmail=settings,
        # No waiting between failed logins: the lockout is what the tests look at.
        auth=dataclasses.replace(config.auth, delay_base_seconds=0.0, delay_max_seconds=0.0),
    )


@contextlib.asynccontextmanager
async def webmail(
    data_dir: Path,
    settings: WebmailConfig | None = None,
    *,
    auth: AuthConfig | None = None,
    client_ip: str = "192.0.2.10",
) -> AsyncIterator[Webmail]:
    """The webmail app in process on `data_dir`'s store, with alice's account."""
    config = webmail_config(data_dir, settings or WebmailConfig())
    if auth is not None:
        config = dataclasses.replace(config, auth=auth)
    clock = FakeClock()
    ctx = await open_context(data_dir, config, clock=clock)
    try:
        account = await ctx.store.add_account(ADDRESS, hash_password(PASSWORD), None)
        transport = httpx.ASGITransport(app=build_app(ctx), client=(client_ip, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://mail.test") as client:
            yield Webmail(ctx, client, account, clock)
    finally:
        await ctx.close()


# -- a served webmail, for browsers and IMAP clients ---------------------------------------------


@dataclasses.dataclass
class ServedWebmail:
    server: ServeProcess

    @property
    def base_url(self) -> str:
        host, port = self.server.address("http")
        return f"http://{host}:{port}"

    def deliver(self, raw: bytes) -> None:
        """Through the real SMTP listener, as mail from outside arrives."""
        with smtplib.SMTP(*self.server.address("smtp"), timeout=30) as smtp:
            smtp.sendmail("sender@remote.test", [ADDRESS], raw)


def serve_webmail(start_serve: StartServe, cli: Cli) -> ServedWebmail:
    """`postoffice serve` on port 0 with alice's account."""
    cli.ok("user", "add", ADDRESS, "--password", PASSWORD)
    return ServedWebmail(start_serve())


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.hits.append(self.path)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "image/png")
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the test reads `hits`, not stderr


@contextlib.contextmanager
def remote_host() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server standing in for a sender's image host: (base URL, paths hit)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    hits: list[str] = []
    server.hits = hits  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
