"""Webmail compose routes: new messages, reply, reply-all, forward, drafts and sending (issue 9).

GET /compose opens the form, pre-filled from `?reply=`, `?reply_all=`, `?forward=` (with
`&as=attachment` for a message/rfc822 forward) or `?draft=`, each a UID in the folder `?f=`
(INBOX when absent), or from `?to=`.
POST /compose sends the message or saves it as a draft.  Attachments of the original (forward)
or of the draft being edited are not uploaded again: the form names that message (`carry`) and
which of its attachments to keep.  Building and submitting the message is in submit.py.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Final

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Message

from postoffice.config import format_size
from postoffice.context import Context
from postoffice.store.model import SpecialUse
from postoffice.web.webmail.folders import render_page
from postoffice.web.webmail.session import WebUser, check_csrf, client_ip, require_user
from postoffice.web.webmail.submit import (
    Attachment,
    Composition,
    MessageRef,
    Problem,
    Source,
    Submitter,
    carried_attachments,
    forward,
    parse_message,
    reopen_draft,
    reply,
    safe_filename,
    single_line,
)

TEMPLATE: Final = "webmail/compose.html"
# Room for the text fields and multipart framing on top of [webmail] max_upload.
FORM_OVERHEAD: Final = 1 << 20
MAX_FILES: Final = 100


class UploadTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Carry:
    """The message whose attachments the form keeps: a forwarded original, whole or its
    attachments, or the draft being edited."""

    ref: MessageRef
    whole: bool  # forward as attachment: the message itself is the one attachment


@dataclass(slots=True)
class _Form:
    """What the compose page shows: the composition and where it came from."""

    composition: Composition
    carry: Carry | None = None
    draft: MessageRef | None = None  # the draft being edited, replaced on save
    keep: frozenset[int] | None = None  # carried attachments ticked; None: all of them
    # Files uploaded with a form that comes back (refused send): browsers cannot re-fill a
    # file input, so the page names them for the user to attach again.
    uploaded: tuple[str, ...] = ()


def routes(ctx: Context) -> list[BaseRoute]:
    views = _ComposeViews(ctx)
    return [Route("/compose", views.compose, methods=["GET", "POST"])]


class _ComposeViews:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.submitter = Submitter(ctx)
        self.max_upload = ctx.config.webmail.max_upload

    async def compose(self, request: Request) -> Response:
        user = await require_user(request)
        if request.method == "POST":
            return await self._post(request, user)
        form = await self._prefill(request, user)
        notice = "Draft saved." if request.query_params.get("saved") else ""
        return await self._page(request, user, form, notice=notice)

    async def _prefill(self, request: Request, user: WebUser) -> _Form:
        params = request.query_params
        own = await self.submitter.own_addresses(user)
        for mode in ("reply", "reply_all", "forward", "draft"):
            if mode not in params:
                continue
            ref = MessageRef.parse(f"{params.get('f', 'INBOX')}/{params[mode]}")
            if ref is None:
                raise HTTPException(404, "no such message")
            raw = await self.submitter.read(user, ref)
            if raw is None:
                raise HTTPException(404, "no such message")
            original = parse_message(raw)
            if mode == "draft":
                return _Form(reopen_draft(original), Carry(ref, whole=False), draft=ref)
            if mode == "forward":
                whole = params.get("as") == "attachment"
                return _Form(forward(original, ref, own[0], inline=not whole), Carry(ref, whole))
            return _Form(reply(original, ref, own, everyone=mode == "reply_all"))
        to = single_line(params.get("to", ""))
        return _Form(Composition(sender=own[0], to=to))

    async def _post(self, request: Request, user: WebUser) -> Response:
        try:
            fields = await _bounded(request, self.max_upload + FORM_OVERHEAD).form(
                max_files=MAX_FILES, max_part_size=self.max_upload + FORM_OVERHEAD
            )
        except UploadTooLarge:
            return await self._page(
                request,
                user,
                _Form(Composition(sender=user.address)),
                error=self._too_large(),
                status_code=413,
            )
        await check_csrf(request, user, fields)
        form = _form_fields(fields)
        form.composition.attachments = [
            attachment
            for index, attachment in enumerate(await self._carried(user, form.carry))
            if form.keep is None or index in form.keep
        ]
        uploads = [
            f for f in fields.getlist("attachments") if isinstance(f, UploadFile) and f.filename
        ]
        form.composition.attachments += [await _read_upload(f) for f in uploads]
        form.uploaded = tuple(safe_filename(f.filename or "", "attachment") for f in uploads)
        if form.composition.attachment_bytes > self.max_upload:
            return await self._page(request, user, form, error=self._too_large(), status_code=413)
        if fields.get("action") != "send":  # only the Send button sends
            saved = await self.submitter.save_draft(user, form.composition, form.draft)
            query = urllib.parse.urlencode({"draft": saved.uid, "f": saved.mailbox, "saved": 1})
            return RedirectResponse(f"/compose?{query}", 303)
        result = await self.submitter.send(
            user, form.composition, client_ip(request), request.url.scheme == "https"
        )
        if not result.sent:
            return await self._page(request, user, form, problems=result.problems, status_code=422)
        if form.draft is not None:
            await self.submitter.discard_draft(user, form.draft)
        sent = await self.submitter.special_mailbox(user, SpecialUse.SENT, "Sent")
        sent_url = f"/mail?{urllib.parse.urlencode({'f': sent.name})}"
        if result.notice:
            # Sent, but not kept in Sent: the Sent folder alone would not show why.
            context = {"report": result, "sent_url": sent_url}
            return await render_page(request, user, TEMPLATE, context)
        return RedirectResponse(sent_url, 303)

    async def _carried(self, user: WebUser, carry: Carry | None) -> list[Attachment]:
        """Every attachment the form's `carry` message offers (ticked or not)."""
        raw = None if carry is None else await self.submitter.read(user, carry.ref)
        if carry is None or raw is None:
            return []
        return carried_attachments(raw, carry.whole)

    async def _page(
        self,
        request: Request,
        user: WebUser,
        form: _Form,
        *,
        notice: str = "",
        error: str = "",
        problems: tuple[Problem, ...] = (),
        status_code: int = 200,
    ) -> Response:
        carried = list(enumerate(await self._carried(user, form.carry)))
        context: dict[str, object] = {
            "c": form.composition,
            "senders": await self.submitter.own_addresses(user),
            "carry": form.carry,
            "carried": carried,
            "keep": form.keep,
            "uploaded": form.uploaded,
            "draft": form.draft,
            "problems": problems,
            "notice": notice,
            "error": error,
            "max_upload": _size_text(self.max_upload),
        }
        return await render_page(request, user, TEMPLATE, context, status_code)

    def _too_large(self) -> str:
        return f"The attachments are larger than {_size_text(self.max_upload)} in total."


def _size_text(size: int) -> str:
    text = format_size(size)  # "25M", "4K", or plain bytes
    return f"{text[:-1]} {text[-1]}B" if text[-1].isalpha() else f"{text} bytes"


def _form_fields(fields: FormData) -> _Form:
    def text(name: str) -> str:
        value = fields.get(name, "")
        return value if isinstance(value, str) else ""

    carry_ref = MessageRef.parse(text("carry"))
    keep = frozenset(int(v) for v in fields.getlist("keep") if isinstance(v, str) and v.isdigit())
    composition = Composition(
        sender=single_line(text("from")),
        to=text("to"),
        cc=text("cc"),
        bcc=text("bcc"),
        subject=text("subject"),
        body=text("body"),
        in_reply_to=single_line(text("in_reply_to")),
        references=single_line(text("references")),
        source=Source.parse(text("source_mode"), text("source")),
    )
    return _Form(
        composition,
        None if carry_ref is None else Carry(carry_ref, whole=text("carry_whole") == "1"),
        MessageRef.parse(text("draft")),
        keep,
    )


async def _read_upload(upload: UploadFile) -> Attachment:
    data = await upload.read()
    content_type = upload.content_type or "application/octet-stream"
    return Attachment(safe_filename(upload.filename or "", "attachment"), content_type, data)


def _bounded(request: Request, limit: int) -> Request:
    """The request with a body that raises UploadTooLarge past `limit` bytes, so an upload
    is refused while it arrives rather than after it filled the disk."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise UploadTooLarge
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise UploadTooLarge
        return message

    return Request(request.scope, receive)
