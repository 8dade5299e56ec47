"""Search one folder by sender, recipient, subject, body text and date range, with the
store's search: the same evaluation as IMAP SEARCH."""

from __future__ import annotations

import datetime as dt
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from postoffice.store.search import And, Body, Header, SearchKey, SentDate
from postoffice.web.webmail.folders import mailbox_named, render_page
from postoffice.web.webmail.messages import Order, listing
from postoffice.web.webmail.session import context_of, require_user

TEXT_FIELDS: Final = ("from", "to", "subject", "body")
DATE_FIELDS: Final = ("since", "before")


def search_key(criteria: dict[str, str]) -> SearchKey | None:
    """The conjunction of the filled-in fields; None when none is (nothing to search);
    ValueError for a date that is not YYYY-MM-DD."""
    keys: list[SearchKey] = []
    for name in ("from", "to", "subject"):
        if criteria.get(name):
            keys.append(Header(name, criteria[name]))
    if criteria.get("body"):
        keys.append(Body(criteria["body"]))
    for name in DATE_FIELDS:
        if criteria.get(name):
            day = dt.date.fromisoformat(criteria[name])
            keys.append(SentDate("since" if name == "since" else "before", day))
    if not keys:
        return None
    return keys[0] if len(keys) == 1 else And(tuple(keys))


async def search(request: Request) -> Response:
    user = await require_user(request)
    ctx = context_of(request)
    params = request.query_params
    folder = params.get("f", "INBOX")
    mailbox = await mailbox_named(ctx, user, folder)
    criteria = {name: params.get(name, "").strip() for name in TEXT_FIELDS + DATE_FIELDS}
    context: dict[str, object] = {"mailbox": mailbox, "criteria": criteria, "results": None}
    try:
        key = search_key(criteria)
    except ValueError:
        context["error"] = "Dates are written YYYY-MM-DD."
        return await render_page(request, user, "webmail/search.html", context, 400)
    if key is not None:
        uids = await ctx.store.search(mailbox.id, key)
        page = int(params["page"]) if params.get("page", "").isdigit() else 1
        context["results"] = await listing(ctx, mailbox, uids, Order(), page)
        context["here"] = request.url.path + "?" + request.url.query
    return await render_page(request, user, "webmail/search.html", context)


def routes() -> list[BaseRoute]:
    return [Route("/search", search, methods=["GET"])]
