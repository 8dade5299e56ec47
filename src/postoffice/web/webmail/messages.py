"""Message lists: one folder's messages, sorted and paged, and the bulk actions on them
(move, delete, read/unread, flag/unflag, junk/not junk).

Every change goes through the same store calls IMAP uses, so IMAP sessions see it at once
through the store's events.  Without JavaScript each action is a form POST answered by a
redirect back to the list; with htmx the same POST swaps the list in place.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from postoffice.context import Context
from postoffice.filters.junk.training import train_messages, training_for_transfer
from postoffice.imap.commands import SortCriterion
from postoffice.imap.sort import sent_time, sort_uids
from postoffice.imap.thread import ThreadNode, thread_references
from postoffice.store.model import (
    FETCH_BASIC,
    Flag,
    Mailbox,
    SortFields,
    SpecialUse,
    StoreMode,
    UidSet,
)
from postoffice.web.webmail.folders import mailbox_named, render_page, special_mailbox
from postoffice.web.webmail.session import WebUser, checked_form, context_of, require_user

# The list's sort choices, by the store's keys (the same as IMAP SORT).
SORT_KEYS: Final[dict[str, SortCriterion]] = {
    "date": SortCriterion("DATE"),
    "from": SortCriterion("DISPLAYFROM"),
    "subject": SortCriterion("SUBJECT"),
    "size": SortCriterion("SIZE"),
}
FLAG_ACTIONS: Final[dict[str, tuple[StoreMode, Flag]]] = {
    "read": (StoreMode.ADD, Flag.SEEN),
    "unread": (StoreMode.REMOVE, Flag.SEEN),
    "flag": (StoreMode.ADD, Flag.FLAGGED),
    "unflag": (StoreMode.REMOVE, Flag.FLAGGED),
}


@dataclass(frozen=True)
class MessageRow:
    uid: int
    sender: str
    subject: str
    date: dt.datetime
    size: int
    seen: bool
    flagged: bool
    depth: int = 0  # in the threaded view: replies are indented under what they answer


@dataclass(frozen=True)
class Listing:
    rows: list[MessageRow]
    page: int
    pages: int
    total: int


@dataclass(frozen=True)
class Order:
    sort: str = "date"
    descending: bool = True
    threaded: bool = False  # conversations (RFC 5256 REFERENCES), newest activity first

    @classmethod
    def of(cls, request: Request) -> Order:
        params = request.query_params
        sort = params.get("sort", "date")
        return cls(
            sort if sort in SORT_KEYS else "date",
            params.get("order") != "asc",
            params.get("view") == "threads",
        )


async def listing(
    ctx: Context, mailbox: Mailbox, uids: Sequence[int], order: Order, page: int
) -> Listing:
    """One page of `uids` (of `mailbox`) in `order`, with what the list shows of each."""
    page_size = ctx.config.webmail.page_size
    if not uids:
        return Listing([], 1, 1, 0)
    fields = await ctx.store.sort_fields(mailbox.id, UidSet.of(uids))
    if order.threaded:
        # Pages hold whole conversations, so a thread is never split across two.
        groups = _conversations(fields)
    else:
        criterion = SORT_KEYS[order.sort]
        ordered = sort_uids(fields, [SortCriterion(criterion.key, reverse=order.descending)])
        groups = [[(uid, 0)] for uid in ordered]
    pages = max(1, math.ceil(len(groups) / page_size))
    page = min(max(page, 1), pages)
    on_page = groups[(page - 1) * page_size : page * page_size]
    depths = dict(pair for group in on_page for pair in group)
    shown = list(depths)
    by_uid = {f.uid: f for f in fields}
    flags = {e.uid: e.flags for e in await ctx.store.fetch(mailbox.id, UidSet.of(shown))}
    rows = [
        MessageRow(
            uid=uid,
            sender=by_uid[uid].display_from or by_uid[uid].sort_from,
            subject=by_uid[uid].subject,
            date=by_uid[uid].sent_date or by_uid[uid].internaldate,
            size=by_uid[uid].size,
            seen=Flag.SEEN in flags[uid],
            flagged=Flag.FLAGGED in flags[uid],
            depth=depths[uid],
        )
        for uid in shown
        if uid in flags  # expunged between the two reads
    ]
    return Listing(rows, page, pages, len(groups))


def _conversations(fields: Sequence[SortFields]) -> list[list[tuple[int, int]]]:
    """Each thread as (uid, depth) in reading order, the most recently active first."""
    latest = {f.uid: sent_time(f) for f in fields}
    conversations = []
    for root in thread_references(fields):
        members: list[tuple[int, int]] = []
        # Iterative: a long reply chain is a deep tree (see imap/thread.py).
        stack: list[tuple[ThreadNode, int]] = [(root, 0)]
        while stack:
            node, depth = stack.pop()
            if node.uid is not None:
                members.append((node.uid, depth))
            # A dummy (a parent not in the folder) takes no row and no indentation.
            child_depth = depth + 1 if node.uid is not None else depth
            stack.extend((child, child_depth) for child in reversed(node.children))
        conversations.append(members)
    conversations.sort(key=lambda members: max(latest[uid] for uid, _ in members), reverse=True)
    return conversations


def list_url(folder: str, order: Order | None = None, page: int = 1) -> str:
    query = {"f": folder}
    if order is not None:
        query |= {"sort": order.sort, "order": "desc" if order.descending else "asc"}
        if order.threaded:
            query["view"] = "threads"
    if page != 1:
        query["page"] = str(page)
    return "/mail?" + urlencode(query)


def safe_return(target: object, default: str) -> str:
    """A redirect target from a form, only when it is a path on this site."""
    # Browsers read "/\\host" as "//host": another site.  Control characters have no place.
    if (
        isinstance(target, str)
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and target.isprintable()
    ):
        return target
    return default


async def show_folder(request: Request) -> Response:
    user = await require_user(request)
    ctx = context_of(request)
    mailbox = await mailbox_named(ctx, user, request.query_params.get("f", "INBOX"))
    order = Order.of(request)
    page = _int(request.query_params.get("page", "1"), 1)
    result = await listing(ctx, mailbox, list(await ctx.store.uids(mailbox.id)), order, page)
    return await render_page(
        request,
        user,
        "webmail/message_list.html",
        {
            "mailbox": mailbox,
            "listing": result,
            "order": order,
            "sort_links": [
                {
                    "key": key,
                    "current": key == order.sort and not order.threaded,
                    # The current column's link turns it round; another starts descending.
                    "url": list_url(
                        mailbox.name,
                        Order(key, not order.descending if key == order.sort else True),
                    ),
                }
                for key in SORT_KEYS
            ],
            "threads_url": list_url(
                mailbox.name, Order(order.sort, order.descending, not order.threaded)
            ),
            "list_url": list_url,
            "here": request.url.path + "?" + request.url.query,
        },
    )


async def bulk(request: Request) -> Response:
    """One action on the selected messages of one folder."""
    user, form = await checked_form(request)
    ctx = context_of(request)
    folder = str(form.get("f", "INBOX"))
    mailbox = await mailbox_named(ctx, user, folder)
    uids = sorted({_int(str(v), 0) for v in form.getlist("uid")} - {0})
    action = str(form.get("action", ""))
    if uids:
        await _apply(ctx, user, mailbox, UidSet.of(uids), action, form)
    return RedirectResponse(safe_return(form.get("return_to"), list_url(folder)), 303)


async def toggle_flag(request: Request) -> Response:
    """The star of one message, flipped."""
    user, form = await checked_form(request)
    ctx = context_of(request)
    folder = str(form.get("f", "INBOX"))
    mailbox = await mailbox_named(ctx, user, folder)
    uid = UidSet.of([_int(str(form.get("toggle", "")), 0)])
    entries = await ctx.store.fetch(mailbox.id, uid, FETCH_BASIC)
    if entries:
        flagged = Flag.FLAGGED in entries[0].flags
        mode = StoreMode.REMOVE if flagged else StoreMode.ADD
        await ctx.store.store_flags(mailbox.id, uid, mode, Flag.FLAGGED)
    return RedirectResponse(safe_return(form.get("return_to"), list_url(folder)), 303)


async def _apply(
    ctx: Context, user: WebUser, mailbox: Mailbox, uids: UidSet, action: str, form: FormData
) -> None:
    store = ctx.store
    if action in FLAG_ACTIONS:
        mode, flag = FLAG_ACTIONS[action]
        await store.store_flags(mailbox.id, uids, mode, flag)
    elif action == "move":
        target = await mailbox_named(ctx, user, str(form.get("target", "")))
        if target.id != mailbox.id:
            # Moving into or out of Junk teaches the classifier, as it does over IMAP.
            spam = training_for_transfer(mailbox, target, move=True)
            if spam is not None:
                await train_messages(store, user.account_id, mailbox.id, list(uids), spam=spam)
            await store.move(mailbox.id, uids, target.id)
    elif action == "delete":
        await delete_messages(ctx, user, mailbox, uids)
    elif action in ("junk", "notjunk"):
        await mark_junk(ctx, user, mailbox, uids, spam=action == "junk")
    else:
        raise HTTPException(400, "unknown action")


async def delete_messages(ctx: Context, user: WebUser, mailbox: Mailbox, uids: UidSet) -> None:
    """Into Trash; in Trash (or without one), gone for good."""
    trash = await special_mailbox(ctx, user, SpecialUse.TRASH)
    if trash is not None and trash.id != mailbox.id:
        await ctx.store.move(mailbox.id, uids, trash.id)
        return
    await ctx.store.store_flags(mailbox.id, uids, StoreMode.ADD, Flag.DELETED)
    await ctx.store.expunge(mailbox.id, uids)


async def mark_junk(
    ctx: Context, user: WebUser, mailbox: Mailbox, uids: UidSet, *, spam: bool
) -> None:
    """Train the account's classifier on the messages, then move them into Junk (spam) or
    out of it into INBOX (not spam)."""
    await train_messages(ctx.store, user.account_id, mailbox.id, list(uids), spam=spam)
    junk = await special_mailbox(ctx, user, SpecialUse.JUNK)
    if spam:
        target = junk
    else:
        target = await ctx.store.get_mailbox(user.account_id, "INBOX")
        if junk is None or mailbox.id != junk.id:
            target = None  # "not junk" outside Junk only trains
    if target is not None and target.id != mailbox.id:
        await ctx.store.move(mailbox.id, uids, target.id)


def _int(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def routes() -> list[BaseRoute]:
    return [
        Route("/", lambda request: RedirectResponse("/mail", 303), methods=["GET"]),
        Route("/mail", show_folder, methods=["GET"]),
        Route("/mail/bulk", bulk, methods=["POST"]),
        Route("/mail/flag", toggle_flag, methods=["POST"]),
    ]
