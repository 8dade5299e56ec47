"""Webmail login and logout pages."""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from postoffice.auth.authenticator import AuthSuccess, AuthThrottled
from postoffice.web.webmail.session import (
    check_csrf,
    check_origin,
    client_ip,
    context_of,
    current_user,
    end_session,
    require_user,
    start_session,
)
from postoffice.web.webmail.templating import render


async def login_page(request: Request) -> Response:
    if await current_user(request) is not None:
        return RedirectResponse("/mail", 303)
    return render(request, "webmail/login.html", {})


async def login(request: Request) -> Response:
    check_origin(request)
    form = await request.form()
    address = str(form.get("address", "")).strip()
    password = str(form.get("password", ""))
    # The same authenticator as IMAP LOGIN: one throttle for every protocol's logins.
    result = await context_of(request).authenticator.authenticate_password(
        address, password, client_ip(request)
    )
    if isinstance(result, AuthSuccess):
        response = RedirectResponse("/mail", 303)
        await start_session(request, response, result.account_id)
        return response
    if isinstance(result, AuthThrottled):
        wait = math.ceil(result.retry_after)
        return render(
            request,
            "webmail/login.html",
            {"address": address, "error": f"Too many failed logins; try again in {wait} s."},
            status_code=429,
        )
    return render(
        request,
        "webmail/login.html",
        {"address": address, "error": "Wrong address or password."},
        status_code=401,
    )


async def logout(request: Request) -> Response:
    user = await require_user(request)
    await check_csrf(request, user, await request.form())
    response = RedirectResponse("/login", 303)
    await end_session(request, response)
    return response


def routes() -> list[BaseRoute]:
    return [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
