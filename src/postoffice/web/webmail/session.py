"""Webmail logins: server-side sessions behind an opaque cookie, and per-session CSRF tokens.

Sessions live in the store (`store.web_sessions`), not in a signed cookie, so that every
`--workers` process sees the same ones and logging out (or changing the password) really ends
them.  The cookie holds a random token; the store keeps only its SHA-256, so a copy of the
database does not hand out live sessions.  Expiry slides: each use pushes it
`[webmail] session_seconds` ahead.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from postoffice.context import Context

COOKIE: Final = "postoffice_session"
# A session's expiry is rewritten at most this often, so reading mail is not a write per click.
EXTEND_AFTER: Final = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class WebUser:
    account_id: int
    address: str
    csrf: str


class LoginRequired(HTTPException):
    """No valid session: a 303 to the login page, or 401 for htmx (it does not follow
    redirects into a swap; HX-Redirect makes it load the login page whole)."""

    def __init__(self, request: Request) -> None:
        if request.headers.get("hx-request") == "true":
            super().__init__(401, "login required", headers={"hx-redirect": "/login"})
        else:
            super().__init__(303, "login required", headers={"location": "/login"})


def context_of(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def current_user(request: Request) -> WebUser | None:
    """The logged-in user of this request, extending the session; None without one."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    ctx = context_of(request)
    now = ctx.clock.now()
    digest = token_digest(token)
    session = await ctx.store.web_sessions.get(digest, now)
    if session is None:
        return None
    lifetime = dt.timedelta(seconds=ctx.config.webmail.session_seconds)
    if session.expires - now < lifetime - EXTEND_AFTER:
        await ctx.store.web_sessions.extend(digest, now + lifetime)
    return WebUser(session.account_id, session.address, session.csrf)


async def require_user(request: Request) -> WebUser:
    user = await current_user(request)
    if user is None:
        raise LoginRequired(request)
    return user


async def check_csrf(request: Request, user: WebUser, form: FormData) -> None:
    """Refuse a state-changing request whose form does not carry the session's token."""
    offered = form.get("csrf")
    if not isinstance(offered, str) or not hmac.compare_digest(
        offered.encode(), user.csrf.encode()
    ):
        raise HTTPException(403, "invalid or missing CSRF token")


async def checked_form(request: Request) -> tuple[WebUser, FormData]:
    """The logged-in user and the posted form, once its CSRF token is checked."""
    user = await require_user(request)
    form = await request.form()
    await check_csrf(request, user, form)
    return user, form


async def start_session(request: Request, response: Response, account_id: int) -> None:
    """Open a session for `account_id` and set its cookie on `response`."""
    ctx = context_of(request)
    token = secrets.token_urlsafe(32)
    now = ctx.clock.now()
    expires = now + dt.timedelta(seconds=ctx.config.webmail.session_seconds)
    await ctx.store.web_sessions.create(
        token_digest(token), account_id, secrets.token_urlsafe(32), expires, now
    )
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        # Lax, not Strict: a link to the webmail from another site (or a mail client) should
        # land logged in; every state change is a POST, which Lax does not send cross-site.
        samesite="lax",
        secure=_secure(request),
        path="/",
    )


async def end_session(request: Request, response: Response) -> None:
    token = request.cookies.get(COOKIE)
    if token:
        await context_of(request).store.web_sessions.delete(token_digest(token))
    response.delete_cookie(COOKIE, path="/")


async def end_other_sessions(request: Request, account_id: int) -> None:
    """After a password change: every session of the account but this one ends."""
    token = request.cookies.get(COOKIE, "")
    await context_of(request).store.web_sessions.delete_account(
        account_id, keep=token_digest(token) if token else None
    )


def check_origin(request: Request) -> None:
    """Refuse a cross-site POST where no session token can be checked yet (the login form:
    otherwise another site could log a visitor into the attacker's account)."""
    origin = request.headers.get("origin")
    # Browsers send Origin with every POST; a client without one is not a browser to trick.
    # Host only, not scheme: behind a TLS-terminating proxy this side sees plain http.
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, "cross-site request refused")


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _secure(request: Request) -> bool:
    match context_of(request).config.webmail.secure_cookies:
        case "always":
            return True
        case "never":
            return False
    if request.url.scheme == "https":
        return True
    # X-Forwarded-Proto is believed only from a proxy on this host.
    return _is_loopback(client_ip(request)) and (
        request.headers.get("x-forwarded-proto", "").lower() == "https"
    )


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
