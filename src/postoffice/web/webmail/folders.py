"""The folder sidebar (with unread counts) and folder management: create, rename, delete."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from postoffice.context import Context
from postoffice.store.model import HIERARCHY_SEPARATOR, Mailbox, SpecialUse, StoreError
from postoffice.web.webmail.session import WebUser, checked_form, context_of, require_user
from postoffice.web.webmail.templating import render


@dataclass(frozen=True)
class FolderSummary:
    name: str
    special_use: SpecialUse | None
    messages: int
    unseen: int

    @property
    def depth(self) -> int:
        return self.name.count(HIERARCHY_SEPARATOR)

    @property
    def leaf(self) -> str:
        return self.name.rpartition(HIERARCHY_SEPARATOR)[2]


async def folder_summaries(ctx: Context, account_id: int) -> list[FolderSummary]:
    summaries = []
    for mailbox in await ctx.store.list_mailboxes(account_id):
        status = await ctx.store.status(mailbox.id)
        summaries.append(
            FolderSummary(mailbox.name, mailbox.special_use, status.messages, status.unseen)
        )
    # INBOX first, then the hierarchy in name order, as mail clients show it.
    summaries.sort(key=lambda s: (s.name != "INBOX", s.name.casefold()))
    return summaries


async def mailbox_named(ctx: Context, user: WebUser, name: str) -> Mailbox:
    """The user's folder `name`; 404 when there is none (another account's never shows)."""
    mailbox = await ctx.store.get_mailbox(user.account_id, name)
    if mailbox is None:
        raise HTTPException(404, "no such folder")
    return mailbox


async def special_mailbox(ctx: Context, user: WebUser, use: SpecialUse) -> Mailbox | None:
    for mailbox in await ctx.store.list_mailboxes(user.account_id):
        if mailbox.special_use == use:
            return mailbox
    return None


async def render_page(
    request: Request,
    user: WebUser,
    template: str,
    context: dict[str, object],
    status_code: int = 200,
) -> Response:
    """A full webmail page: `template` with the user and the folder sidebar."""
    folders = await folder_summaries(context_of(request), user.account_id)
    return render(request, template, {"user": user, "folders": folders, **context}, status_code)


async def manage(request: Request) -> Response:
    user = await require_user(request)
    return await render_page(request, user, "webmail/folders.html", {})


async def create(request: Request) -> Response:
    return await _change(request, _create)


async def rename(request: Request) -> Response:
    return await _change(request, _rename)


async def delete(request: Request) -> Response:
    return await _change(request, _delete)


async def _create(ctx: Context, user: WebUser, form: dict[str, str]) -> str:
    name = _folder_name(form.get("name", ""))
    await ctx.store.create_mailbox(user.account_id, name)
    return f"Created {name}."


async def _rename(ctx: Context, user: WebUser, form: dict[str, str]) -> str:
    old, new = form.get("name", ""), _folder_name(form.get("new_name", ""))
    await ctx.store.rename_mailbox(user.account_id, old, new)
    return f"Renamed {old} to {new}."


async def _delete(ctx: Context, user: WebUser, form: dict[str, str]) -> str:
    name = form.get("name", "")
    await ctx.store.delete_mailbox(user.account_id, name)
    return f"Deleted {name}."


async def _change(
    request: Request,
    change: _FolderChange,
) -> Response:
    user, form = await checked_form(request)
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    try:
        notice = await change(context_of(request), user, fields)
    except (StoreError, ValueError) as e:
        # The store's messages name the problem ("already exists", "INBOX cannot ...").
        return await render_page(request, user, "webmail/folders.html", {"error": str(e)}, 400)
    if request.headers.get("hx-request") == "true":
        return await render_page(request, user, "webmail/folders.html", {"notice": notice})
    return RedirectResponse("/folders", 303)


def _folder_name(raw: str) -> str:
    name = raw.strip().strip(HIERARCHY_SEPARATOR)
    if not name:
        raise ValueError("A folder needs a name.")
    return name


_FolderChange = Callable[[Context, WebUser, dict[str, str]], Awaitable[str]]


def routes() -> list[BaseRoute]:
    return [
        Route("/folders", manage, methods=["GET"]),
        Route("/folders/create", create, methods=["POST"]),
        Route("/folders/rename", rename, methods=["POST"]),
        Route("/folders/delete", delete, methods=["POST"]),
    ]
