"""Webmail on the `http` listener: server-rendered pages (Jinja2) over the same store IMAP
uses, made livelier by htmx where JavaScript runs and complete without it.

`routes(ctx)` is everything it serves; web/app.py mounts them when `[webmail] enabled`.
The views find the Context as `request.app.state.ctx` (set by build_app).
"""

from __future__ import annotations

from importlib import resources

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from postoffice.context import Context
from postoffice.web.webmail import compose, folders, login, messages, reading, search, settings


def routes(ctx: Context) -> list[BaseRoute]:
    static = str(resources.files("postoffice.web").joinpath("static"))
    return [
        *login.routes(),
        *messages.routes(),
        *folders.routes(),
        *reading.routes(),
        *search.routes(),
        *settings.routes(),
        *compose.routes(ctx),
        Mount("/static", StaticFiles(directory=static), name="static"),
    ]
