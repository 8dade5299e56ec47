"""Reading one message: headers, the body, attachments, inline (cid:) images.

A plain-text body is escaped and its URLs made links.  An HTML body is sanitised with nh3
(an allow-list: no script, style element, form, iframe or event attribute, links only to
http/https/mailto, `style` attributes cut down to layout and colour properties and dropped
whole when they hold url(), expression() or CSS escapes) and then shown in an iframe served
by its own route, for two more fences around whatever the sanitiser might miss:

- the iframe is sandboxed without allow-scripts (and its response repeats that as a CSP
  `sandbox` directive, in case it is opened on its own), so no script runs in it at all;
  allow-same-origin is kept only so the frame's requests for cid: images carry the session
  cookie (with scripts off, the frame's origin gives it nothing else);
- the frame's own Content-Security-Policy loads nothing but images from this site (and
  data:), plus https: images once the user asked for remote images for that message: a
  remote image is a read receipt the sender did not ask permission for, so until then every
  remote src is removed before the HTML leaves the server, and the CSP blocks any that is
  left (e.g. a background in CSS).  style-src 'unsafe-inline' is needed for the mail's own
  inline styles, which are harmless without url() and scripts.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message
from typing import Final
from urllib.parse import quote, urlencode, urlsplit

import nh3
from markupsafe import Markup, escape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from postoffice.context import Context
from postoffice.store.model import FETCH_BASIC, Flag, Mailbox, StoreMode, UidSet
from postoffice.web.webmail.folders import mailbox_named, render_page
from postoffice.web.webmail.messages import list_url
from postoffice.web.webmail.session import WebUser, context_of, require_user

ALLOWED_TAGS: Final = nh3.ALLOWED_TAGS | {"font", "center"}
ALLOWED_ATTRIBUTES: Final = {
    **{tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()},
    "*": {"style", "title", "dir", "lang", "align", "valign", "bgcolor", "width", "height"},
    "font": {"color", "face", "size"},
    "table": {"align", "summary", "border", "cellpadding", "cellspacing", "width"},
}
# Layout, type and colour: nothing that takes a URL or moves content over the page.
ALLOWED_STYLE_PROPERTIES: Final = frozenset(
    {
        "color", "background-color", "font", "font-family", "font-size", "font-style",
        "font-weight", "text-align", "text-decoration", "text-transform", "text-indent",
        "line-height", "letter-spacing", "word-spacing", "vertical-align", "white-space",
        "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
        "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
        "border", "border-top", "border-right", "border-bottom", "border-left",
        "border-color", "border-style", "border-width", "border-collapse", "border-spacing",
        "border-radius", "width", "height", "max-width", "min-width", "max-height",
        "min-height", "display", "list-style-type", "table-layout",
    }
)  # fmt: skip
LINK_SCHEMES: Final = frozenset({"http", "https", "mailto"})
# Anything in a style value that could fetch or hide a fetch: url(), IE expression(),
# CSS escapes (which could spell either), @import.
SUSPICIOUS_STYLE: Final = re.compile(r"url\s*\(|expression|\\|@import|image-set", re.IGNORECASE)
URL_IN_TEXT: Final = re.compile(r"\b(?:https?://|mailto:)[^\s<>\"'()]+[^\s<>\"'().,;:!?]")
IMAGE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp"})
SAFE_TYPE: Final = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$")
FRAME_SANDBOX: Final = "allow-same-origin allow-popups allow-popups-to-escape-sandbox"


@dataclass(frozen=True)
class Attachment:
    part: int  # the part's position in the message's walk() order
    filename: str
    content_type: str
    size: int


@dataclass(frozen=True)
class Sanitised:
    html: str
    blocked_images: int  # remote images removed


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # what policy.default builds
    return message


def text_of(part: EmailMessage) -> str:
    """A text part's content; one in a charset Python does not know is read as UTF-8,
    undecodable bytes replaced, rather than not shown at all."""
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError):
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def text_to_html(text: str) -> Markup:
    """Plain text, escaped, with its http(s)/mailto URLs as links that open a new tab."""
    pieces: list[Markup] = []
    last = 0
    for match in URL_IN_TEXT.finditer(text):
        pieces.append(escape(text[last : match.start()]))
        url = match.group(0)
        pieces.append(
            Markup('<a href="{0}" rel="noopener noreferrer" target="_blank">{0}</a>').format(url)
        )
        last = match.end()
    pieces.append(escape(text[last:]))
    return Markup("").join(pieces)


def sanitise_html(html: str, cid_url: str, *, remote_images: bool) -> Sanitised:
    """`html` made safe to show; cid: images point at `cid_url` + the quoted Content-ID."""
    blocked = 0

    def keep(tag: str, attribute: str, value: str) -> str | None:
        nonlocal blocked
        if attribute == "style":
            return None if SUSPICIOUS_STYLE.search(value) else value
        if attribute == "src":
            scheme = urlsplit(value).scheme.lower()
            if scheme == "cid":
                return cid_url + quote(value[4:], safe="")
            if scheme in ("http", "https") and remote_images:
                return value
            if scheme in ("http", "https") and tag == "img":
                blocked += 1
            return None
        if attribute in ("href", "cite"):
            # Only absolute links: a relative one would be a request to this site.
            return value if urlsplit(value).scheme.lower() in LINK_SCHEMES else None
        return value

    clean = nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        clean_content_tags={"script", "style", "title", "head"},
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=keep,
        url_schemes=set(LINK_SCHEMES | {"cid"}),
        filter_style_properties=set(ALLOWED_STYLE_PROPERTIES),
        set_tag_attribute_values={"a": {"target": "_blank"}},
        strip_comments=True,
    )
    return Sanitised(clean, blocked)


def body_parts(message: EmailMessage) -> tuple[EmailMessage | None, EmailMessage | None]:
    """The parts shown as the body: (text/html, text/plain), either may be None."""
    html = message.get_body(preferencelist=("html",))
    plain = message.get_body(preferencelist=("plain",))
    return (
        html if isinstance(html, EmailMessage) else None,
        plain if isinstance(plain, EmailMessage) else None,
    )


def attachments(message: EmailMessage) -> list[Attachment]:
    """Every leaf part that is not a body and not an inline image of the HTML body."""
    shown = {id(part) for part in body_parts(message) if part is not None}
    found = []
    for index, part in enumerate(message.walk()):
        if part.is_multipart() or id(part) in shown:
            continue
        inline_image = (
            part.get("content-id") is not None
            and part.get_content_maintype() == "image"
            and part.get_content_disposition() != "attachment"
        )
        if inline_image:
            continue
        payload = part.get_payload(decode=True)
        found.append(
            Attachment(
                part=index,
                filename=part.get_filename() or f"part-{index}",
                content_type=part.get_content_type(),
                size=len(payload) if isinstance(payload, bytes) else 0,
            )
        )
    return found


def message_url(path: str, folder: str, uid: int, **extra: str) -> str:
    return f"{path}?" + urlencode({"f": folder, "uid": str(uid), **extra})


def content_disposition(kind: str, filename: str) -> str:
    """RFC 6266: an ASCII fallback with no quote or backslash, and the exact name in
    RFC 5987 form."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def show_message(request: Request) -> Response:
    user = await require_user(request)
    mailbox, uid, message = await _load(request, user)
    ctx = context_of(request)
    await _mark_seen(ctx, mailbox, uid)
    remote = request.query_params.get("remote") == "1"
    html, plain = body_parts(message)
    folder = mailbox.name
    blocked = 0
    if html is not None:
        blocked = _sanitised(html, folder, uid, remote).blocked_images
    return await render_page(
        request,
        user,
        "webmail/message.html",
        {
            "mailbox": mailbox,
            "uid": uid,
            "headers": {
                name: str(message.get(name, "")) for name in ("from", "to", "cc", "date", "subject")
            },
            "text": text_to_html(text_of(plain)) if plain is not None and html is None else None,
            "frame_url": message_url("/message/body", folder, uid, remote="1" if remote else "0")
            if html is not None
            else None,
            "frame_sandbox": FRAME_SANDBOX,
            "blocked_images": blocked,
            "remote_url": message_url("/message", folder, uid, remote="1"),
            "attachments": attachments(message),
            "part_url": lambda part: message_url("/message/part", folder, uid, part=str(part)),
            "back_url": list_url(folder),
            "here": message_url("/message", folder, uid),
        },
    )


async def message_body(request: Request) -> Response:
    """The sanitised HTML body as a document of its own, for the sandboxed iframe."""
    user = await require_user(request)
    mailbox, uid, message = await _load(request, user)
    html, _plain = body_parts(message)
    if html is None:
        raise HTTPException(404, "no HTML body")
    remote = request.query_params.get("remote") == "1"
    clean = _sanitised(html, mailbox.name, uid, remote).html
    document = (
        f'<!doctype html><html><head><meta charset="utf-8"></head><body>{clean}</body></html>'
    )
    images = "img-src 'self' data: https:" if remote else "img-src 'self' data:"
    policy = (
        f"default-src 'none'; {images}; style-src 'unsafe-inline'; form-action 'none';"
        f" base-uri 'none'; frame-ancestors 'self'; sandbox {FRAME_SANDBOX}"
    )
    return Response(
        document,
        media_type="text/html; charset=utf-8",
        headers={"content-security-policy": policy, "cache-control": "no-store"},
    )


async def download_part(request: Request) -> Response:
    """One attachment, always as a download: never rendered by the browser on this site."""
    user = await require_user(request)
    _mailbox, _uid, message = await _load(request, user)
    part = _part(message, request.query_params.get("part", ""))
    if part is None or part.is_multipart():
        raise HTTPException(404, "no such part")
    payload = part.get_payload(decode=True)
    content_type = part.get_content_type()
    filename = part.get_filename() or "attachment"
    return Response(
        payload if isinstance(payload, bytes) else b"",
        media_type=content_type if SAFE_TYPE.match(content_type) else "application/octet-stream",
        headers={
            "content-disposition": content_disposition("attachment", filename),
            "cache-control": "private, no-store",
        },
    )


async def inline_image(request: Request) -> Response:
    """An image the HTML body refers to as cid:..., from the message itself."""
    user = await require_user(request)
    _mailbox, _uid, message = await _load(request, user)
    wanted = request.query_params.get("cid", "").strip("<>")
    for part in message.walk():
        content_id = str(part.get("content-id", "")).strip().strip("<>")
        if content_id and content_id == wanted and not part.is_multipart():
            payload = part.get_payload(decode=True)
            content_type = part.get_content_type()
            # Raster images only: an SVG opened on its own could carry script.
            if content_type not in IMAGE_TYPES or not isinstance(payload, bytes):
                break
            return Response(
                payload, media_type=content_type, headers={"cache-control": "private, max-age=3600"}
            )
    raise HTTPException(404, "no such image")


async def _load(request: Request, user: WebUser) -> tuple[Mailbox, int, EmailMessage]:
    ctx = context_of(request)
    mailbox = await mailbox_named(ctx, user, request.query_params.get("f", "INBOX"))
    try:
        uid = int(request.query_params.get("uid", ""))
    except ValueError:
        raise HTTPException(404, "no such message") from None
    raw = await ctx.store.read_message(mailbox.id, uid)
    if raw is None:
        raise HTTPException(404, "no such message")
    return mailbox, uid, parse(raw)


async def _mark_seen(ctx: Context, mailbox: Mailbox, uid: int) -> None:
    uids = UidSet.of([uid])
    entries = await ctx.store.fetch(mailbox.id, uids, FETCH_BASIC)
    # Only when unseen: a STORE that changes nothing would still bump the modseq.
    if entries and Flag.SEEN not in entries[0].flags:
        await ctx.store.store_flags(mailbox.id, uids, StoreMode.ADD, Flag.SEEN)


def _sanitised(html: EmailMessage, folder: str, uid: int, remote: bool) -> Sanitised:
    cid_url = message_url("/message/cid", folder, uid) + "&cid="
    return sanitise_html(text_of(html), cid_url, remote_images=remote)


def _part(message: Message, index: str) -> Message | None:
    parts: Iterator[Message] = message.walk()
    for position, part in enumerate(parts):
        if str(position) == index:
            return part
    return None


def routes() -> list[BaseRoute]:
    return [
        Route("/message", show_message, methods=["GET"]),
        Route("/message/body", message_body, methods=["GET"]),
        Route("/message/part", download_part, methods=["GET"]),
        Route("/message/cid", inline_image, methods=["GET"]),
    ]
