"""Webmail messages: building them as MIME, sending them, and keeping drafts and Sent copies.

Messages are built with the standard library's `email.message.EmailMessage` (no hand-written
MIME).  Sending goes through the same `Delivery` as SMTP submission, with the logged-in
account as the authenticated sender, so sender ownership, relay policy, quotas, filters and
the outbound queue (where remote copies are DKIM-signed) apply exactly as for a mail client.

Reply, reply-all and forward pre-fill a `Composition` from the original message; the form in
compose.py edits it; `Submitter` sends it or saves it as a draft.
"""

from __future__ import annotations

import email.errors
import email.parser
import email.policy
import email.utils
import html
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage, Message
from typing import Final

import nh3

from postoffice.context import Context
from postoffice.delivery.model import Envelope, Origin, Recipient, Verdict
from postoffice.delivery.pipeline import Delivery
from postoffice.delivery.routing import AddressError, parse_address
from postoffice.store.model import (
    NO_FLAGS,
    AppendTarget,
    Flag,
    Mailbox,
    QuotaExceeded,
    SpecialUse,
    StoreMode,
    UidSet,
)
from postoffice.web.webmail.session import WebUser

USER_AGENT: Final = "postoffice webmail"
# Which original a draft answers or forwards, so that sending it later still marks that
# original \Answered or $Forwarded.  Only drafts carry it; sent messages never do.
SOURCE_HEADER: Final = "X-Postoffice-Source"
FORWARDED_KEYWORD: Final = "$Forwarded"
_READ_POLICY: Final = email.policy.default
# Parsed originals are embedded (forward as attachment) without refolding their header
# lines, which would break their DKIM signatures for no gain.
_WRITE_POLICY: Final = email.policy.SMTP.clone(refold_source="none")
_WRITE_POLICY_UTF8: Final = email.policy.SMTPUTF8.clone(refold_source="none")
_LINE_BREAKS: Final = re.compile(r"[\r\n]+")
_FILENAME_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f/\\]")
_SUBJECT_PREFIX: Final = re.compile(r"^\s*(re|fwd?|aw|sv|wg)\s*:\s*", re.IGNORECASE)
_MAX_FILENAME: Final = 200


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str  # "maintype/subtype"; message/rfc822 data is the whole message
    data: bytes


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A message of the user's, as `<mailbox name>/<uid>` in URLs and forms."""

    mailbox: str
    uid: int

    @classmethod
    def parse(cls, text: str) -> MessageRef | None:
        # Mailbox names may contain "/" (the hierarchy separator); the UID never does.
        mailbox, _, uid = text.rpartition("/")
        if not mailbox or not uid.isdigit() or int(uid) == 0:
            return None
        return cls(mailbox, int(uid))

    def __str__(self) -> str:
        return f"{self.mailbox}/{self.uid}"


@dataclass(frozen=True, slots=True)
class Source:
    """The message a composition answers ("reply") or passes on ("forward")."""

    mode: str  # "reply" or "forward"
    ref: MessageRef

    @classmethod
    def parse(cls, mode: str, ref: str) -> Source | None:
        parsed = MessageRef.parse(ref)
        if mode not in ("reply", "forward") or parsed is None:
            return None
        return cls(mode, parsed)


@dataclass(slots=True)
class Composition:
    """Everything the compose form holds; addresses as the user typed them."""

    sender: str = ""
    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    body: str = ""
    in_reply_to: str = ""
    references: str = ""
    source: Source | None = None
    attachments: list[Attachment] = field(default_factory=list)

    @property
    def attachment_bytes(self) -> int:
        return sum(len(a.data) for a in self.attachments)


@dataclass(frozen=True, slots=True)
class Problem:
    """Why (part of) a message was not sent; `address` is "" when it is about the message."""

    address: str
    detail: str


@dataclass(frozen=True, slots=True)
class SendResult:
    sent: bool  # False: nothing went out, the user fixes the problems and tries again
    problems: tuple[Problem, ...] = ()
    notice: str = ""  # sent, but no copy could be kept in Sent


class InvalidAddresses(ValueError):
    def __init__(self, entries: Sequence[str]) -> None:
        super().__init__(", ".join(entries))
        self.entries = tuple(entries)


# -- addresses and text ------------------------------------------------------------------------
def parse_addresses(text: str) -> list[Address]:
    """The comma-separated addresses of a To/Cc/Bcc field; InvalidAddresses names the bad
    entries.  Each entry is parsed on its own, by the email package's RFC 5322 parser, so a
    mistake is reported where it is instead of being guessed around."""
    addresses: list[Address] = []
    bad: list[str] = []
    for entry in _address_entries(_LINE_BREAKS.sub(" ", text)):
        try:
            header = _READ_POLICY.header_factory("To", entry)
            [address] = header.addresses
            if any(isinstance(d, email.errors.InvalidHeaderDefect) for d in header.defects):
                raise AddressError("not an address")
            parsed = parse_address(address.addr_spec)
            if not parsed.domain or parsed.route:
                raise AddressError("an address needs a domain")
        except (AddressError, ValueError, IndexError):
            # ValueError also covers the unpacking of no address, or of a whole group.
            bad.append(entry)
        else:
            addresses.append(address)
    if bad:
        raise InvalidAddresses(bad)
    return addresses


def _address_entries(text: str) -> list[str]:
    """`text` split at the commas between addresses (RFC 5322 §3.4), not at those inside a
    quoted display name, a comment or an angle address."""
    entries: list[str] = []
    start = nesting = 0
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char in "(<":
            nesting += 1
        elif char in ")>":
            nesting = max(0, nesting - 1)
        elif char == "," and nesting == 0:
            entries.append(text[start:index])
            start = index + 1
    entries.append(text[start:])
    return [entry.strip() for entry in entries if entry.strip()]


def single_line(text: str) -> str:
    return _LINE_BREAKS.sub(" ", text).strip()


def safe_filename(name: str, fallback: str) -> str:
    name = _FILENAME_UNSAFE.sub("_", name.rpartition("/")[2].rpartition("\\")[2]).strip()
    return name[:_MAX_FILENAME] or fallback


def _content_type(text: str) -> tuple[str, str]:
    maintype, _, subtype = text.partition(";")[0].strip().lower().partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*", maintype) or not re.fullmatch(
        r"[a-z0-9][a-z0-9!#$&^_.+-]*", subtype
    ):
        return "application", "octet-stream"
    if maintype == "multipart" or (maintype == "message" and subtype != "rfc822"):
        # A multipart or partial message needs structure an upload does not have.
        return "application", "octet-stream"
    return maintype, subtype


# -- building ----------------------------------------------------------------------------------
def build_message(
    composition: Composition,
    *,
    date: str,
    message_id: str,
    draft: bool,
) -> EmailMessage:
    """The message as it is sent (without Bcc: the caller removes it after the Sent copy) or,
    with `draft`, as it is kept in Drafts.  Address fields must have passed parse_addresses
    unless `draft`: a draft may be saved half-written."""
    msg = EmailMessage(policy=_READ_POLICY)
    msg["Date"] = date
    msg["From"] = composition.sender
    for name, value in (("To", composition.to), ("Cc", composition.cc), ("Bcc", composition.bcc)):
        try:
            addresses = parse_addresses(value)
        except InvalidAddresses:
            if not draft:
                raise
            # A draft keeps what was typed, even if it is not an address list yet.
            msg[name] = single_line(value)
            continue
        if addresses:
            msg[name] = addresses
    msg["Subject"] = single_line(composition.subject)
    msg["Message-ID"] = message_id
    if composition.in_reply_to:
        msg["In-Reply-To"] = single_line(composition.in_reply_to)
    if composition.references:
        msg["References"] = single_line(composition.references)
    msg["User-Agent"] = USER_AGENT
    if draft and composition.source is not None:
        msg[SOURCE_HEADER] = f"{composition.source.mode} {composition.source.ref}"
    msg["MIME-Version"] = "1.0"
    # Quoted-printable keeps the text 7-bit: readable, and safe through any relay or signer.
    body = composition.body.replace("\r\n", "\n")
    msg.set_content(body, charset="utf-8", cte="quoted-printable")
    for attachment in composition.attachments:
        _attach(msg, attachment)
    return msg


def _attach(msg: EmailMessage, attachment: Attachment) -> None:
    maintype, subtype = _content_type(attachment.content_type)
    if (maintype, subtype) == ("message", "rfc822"):
        # RFC 2046 §5.2.1: an embedded message is never base64-encoded, so it goes in whole.
        inner = email.parser.BytesParser(policy=_READ_POLICY).parsebytes(attachment.data)
        msg.add_attachment(inner, filename=attachment.filename)
        return
    msg.add_attachment(
        attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename
    )


def serialize(msg: EmailMessage) -> bytes:
    # Non-ASCII text becomes RFC 2047 encoded words; only an address beyond ASCII needs
    # UTF-8 header fields (RFC 6532), which the envelope then announces as SMTPUTF8.
    utf8 = any(
        not address.addr_spec.isascii()
        for name in ("From", "To", "Cc", "Bcc")
        for address in header_addresses(msg, name)
    )
    return msg.as_bytes(policy=_WRITE_POLICY_UTF8 if utf8 else _WRITE_POLICY)


# -- reading originals -------------------------------------------------------------------------
def parse_message(raw: bytes) -> EmailMessage:
    msg = email.parser.BytesParser(policy=_READ_POLICY).parsebytes(raw)
    assert isinstance(msg, EmailMessage)  # policy.default's message factory
    return msg


def header_text(msg: Message, name: str) -> str:
    try:
        return single_line(str(msg.get(name, "")))
    except (ValueError, IndexError, TypeError, AttributeError):
        # The stdlib header parser raises these on some malformed fields.
        return ""


def header_addresses(msg: Message, name: str) -> list[Address]:
    try:
        return [a for value in msg.get_all(name) or [] for a in getattr(value, "addresses", ())]
    except (ValueError, IndexError, TypeError, AttributeError):
        return []


def body_text(msg: EmailMessage) -> str:
    """The readable text of a message: its text/plain body, else its HTML body as text."""
    part = msg.get_body(preferencelist=("plain", "html"))
    if not isinstance(part, EmailMessage):
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError):
        # An unknown or lying charset: show the bytes as best we can.
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return ""
    if part.get_content_subtype() == "html":
        content = html.unescape(nh3.clean(content, tags=set()))
    return content.replace("\r\n", "\n")


def attachments_of(msg: EmailMessage) -> list[Attachment]:
    """The attachments of a message, for forwarding them or editing a draft."""
    found: list[Attachment] = []
    for index, part in enumerate(msg.iter_attachments(), start=1):
        content_type = part.get_content_type()
        filename = safe_filename(part.get_filename() or "", f"attachment-{index}")
        if content_type == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                found.append(Attachment(filename, content_type, inner[0].as_bytes()))
        elif not part.is_multipart():
            data = part.get_payload(decode=True)
            found.append(
                Attachment(filename, content_type, data if isinstance(data, bytes) else b"")
            )
    return found


def _own(address: Address, own: set[str]) -> bool:
    return address.addr_spec.lower() in own


def _join(addresses: Iterable[Address]) -> str:
    return ", ".join(str(a) for a in addresses)


def _prefixed(prefix: str, subject: str) -> str:
    # One "Re:" (or "Fwd:"), not "Re: Re: Fwd:": the prefixes of the thread so far go.
    while True:
        stripped = _SUBJECT_PREFIX.sub("", subject, count=1)
        if stripped == subject:
            break
        subject = stripped
    return f"{prefix} {subject}"


def _quoted(text: str) -> str:
    lines = text.rstrip("\n").split("\n")
    return "\n".join(">" + line if line.startswith(">") else "> " + line for line in lines)


def reply(
    original: EmailMessage, ref: MessageRef, own: Sequence[str], everyone: bool
) -> Composition:
    """A reply (RFC 5322 §3.6.4) to `original`; with `everyone`, to all its recipients too.
    `own` is the user's addresses, the first being the default sender."""
    own_set = {a.lower() for a in own}
    author = header_addresses(original, "Reply-To") or header_addresses(original, "From")
    recipients = header_addresses(original, "To") + header_addresses(original, "Cc")
    if all(_own(a, own_set) for a in header_addresses(original, "From")) and recipients:
        # Answering one's own message (from Sent) goes to whom it went to, not back to us.
        author = header_addresses(original, "To")
    to = _unique(author, set())
    cc: list[Address] = []
    if everyone:
        taken = {a.addr_spec.lower() for a in to} | own_set
        cc = _unique(recipients, taken)
    # Answer from the address the message was sent to, when that is one of ours.
    sender = next((a.addr_spec for a in recipients if _own(a, own_set)), own[0])
    message_id = header_text(original, "Message-ID")
    references = " ".join(p for p in (header_text(original, "References"), message_id) if p)
    when = header_text(original, "Date")
    who = _join(header_addresses(original, "From")) or "someone"
    intro = f"On {when}, {who} wrote:" if when else f"{who} wrote:"
    return Composition(
        sender=sender,
        to=_join(to),
        cc=_join(cc),
        subject=_prefixed("Re:", header_text(original, "Subject")),
        body=f"\n\n{intro}\n{_quoted(body_text(original))}\n",
        in_reply_to=message_id,
        references=references,
        source=Source("reply", ref),
    )


def _unique(addresses: Iterable[Address], taken: set[str]) -> list[Address]:
    result: list[Address] = []
    for address in addresses:
        key = address.addr_spec.lower()
        if key not in taken:
            taken.add(key)
            result.append(address)
    return result


def forward(original: EmailMessage, ref: MessageRef, sender: str, inline: bool) -> Composition:
    """A forward of `original`, its text quoted when `inline`; what it carries along (its
    attachments, or itself as message/rfc822) is `carried_attachments`."""
    composition = Composition(
        sender=sender,
        subject=_prefixed("Fwd:", header_text(original, "Subject")),
        source=Source("forward", ref),
    )
    if inline:
        lines = ["", "", "---------- Forwarded message ----------"]
        for name in ("From", "Date", "Subject", "To", "Cc"):
            value = header_text(original, name)
            if value:
                lines.append(f"{name}: {value}")
        composition.body = "\n".join(lines) + "\n\n" + body_text(original)
    return composition


def carried_attachments(raw: bytes, whole: bool) -> list[Attachment]:
    """What a forward (or an edited draft) takes from message `raw`: its attachments, or
    with `whole` the message itself as a message/rfc822 attachment (RFC 2046 §5.2.1)."""
    msg = parse_message(raw)
    if whole:
        subject = header_text(msg, "Subject")
        return [Attachment(safe_filename(f"{subject}.eml", "message.eml"), "message/rfc822", raw)]
    return attachments_of(msg)


def reopen_draft(draft: EmailMessage) -> Composition:
    """The composition a draft was saved from; its attachments are `carried_attachments`."""
    source_text = header_text(draft, SOURCE_HEADER)
    mode, _, ref = source_text.partition(" ")
    return Composition(
        sender=", ".join(a.addr_spec for a in header_addresses(draft, "From")),
        to=header_text(draft, "To"),
        cc=header_text(draft, "Cc"),
        bcc=header_text(draft, "Bcc"),
        subject=header_text(draft, "Subject"),
        body=body_text(draft),
        in_reply_to=header_text(draft, "In-Reply-To"),
        references=header_text(draft, "References"),
        source=Source.parse(mode, ref),
    )


# -- sending and saving ------------------------------------------------------------------------
class Submitter:
    """Sends and saves webmail messages for one app; holds the app's `Delivery`."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.hostname = ctx.config.server.hostname
        self.log = ctx.logger("webmail")
        self._delivery: Delivery | None = None

    @property
    def delivery(self) -> Delivery:
        # Built on first use: an app that never sends mail does not need a router.
        if self._delivery is None:
            self._delivery = Delivery(self.ctx)
        return self._delivery

    async def own_addresses(self, user: WebUser) -> list[str]:
        """The addresses the user may send from: their own, then aliases delivering to them."""
        addresses = [user.address]
        for alias in await self.store.list_aliases():
            if not alias.address.startswith("@") and await self.delivery.router.owns(
                user.account_id, alias.address
            ):
                addresses.append(alias.address)
        return addresses

    async def read(self, user: WebUser, ref: MessageRef) -> bytes | None:
        """One of the user's messages; None when it is not there (or not theirs)."""
        mailbox = await self.store.get_mailbox(user.account_id, ref.mailbox)
        return None if mailbox is None else await self.store.read_message(mailbox.id, ref.uid)

    async def send(
        self, user: WebUser, composition: Composition, peer_ip: str, secure: bool
    ) -> SendResult:
        origin = Origin(
            listener="webmail",
            protocol="HTTPS" if secure else "HTTP",
            helo=self.hostname,
            peer_ip=peer_ip,
            session_id=f"web{secrets.token_hex(6)}",
            account_id=user.account_id,
            auth_address=user.address,
        )
        problems: list[Problem] = []
        recipients: dict[str, None] = {}  # ordered set, compared case-insensitively below
        for value in (composition.to, composition.cc, composition.bcc):
            try:
                for address in parse_addresses(value):
                    if address.addr_spec.lower() not in {r.lower() for r in recipients}:
                        recipients[address.addr_spec] = None
            except InvalidAddresses as exc:
                problems += [Problem(entry, "not an email address") for entry in exc.entries]
        if not recipients and not problems:
            problems.append(Problem("", "add at least one recipient"))
        verdict = await self.delivery.check_sender(composition.sender, origin)
        if not verdict.accepted:
            problems.append(Problem(composition.sender, verdict.detail))
        for recipient in recipients:
            verdict = await self.delivery.check_recipient(
                Recipient(recipient), origin, sender=composition.sender
            )
            if not verdict.accepted:
                problems.append(Problem(recipient, _detail(verdict)))
        if problems:
            return SendResult(False, tuple(problems))

        msg = build_message(
            composition,
            date=email.utils.format_datetime(origin.received_at),
            message_id=email.utils.make_msgid(domain=self.hostname),
            draft=False,
        )
        sent_copy = serialize(msg)
        # Bcc recipients are in the envelope only; the Sent copy keeps the field for the user.
        del msg["Bcc"]
        raw = serialize(msg)
        envelope = Envelope(
            sender=composition.sender,
            recipients=tuple(Recipient(a) for a in recipients),
            body=None if raw.isascii() else "8BITMIME",
            smtputf8=not all(a.isascii() for a in (composition.sender, *recipients)),
        )
        try:
            verdicts = await self.delivery.deliver(envelope, raw, origin)
        except Exception:
            # What SMTP answers with 451: nothing (or not everything) is safe, try again.
            self.log.exception("webmail delivery failed", extra={"session": origin.session_id})
            return SendResult(False, (Problem("", "the message could not be sent; try again"),))
        if not any(v.accepted for v in verdicts):
            return SendResult(
                False,
                tuple(
                    Problem(r.address, _detail(v))
                    for r, v in zip(envelope.recipients, verdicts, strict=True)
                ),
            )
        # Recipients refused once some copies were safe come back as accepted: like an
        # SMTP client, the user learns about them from the bounce the pipeline sends.
        return SendResult(True, notice=await self._after_sending(user, composition, sent_copy))

    async def _after_sending(self, user: WebUser, composition: Composition, copy: bytes) -> str:
        sent = await self.special_mailbox(user, SpecialUse.SENT, "Sent")
        notice = ""
        try:
            await self.store.append(copy, [AppendTarget(sent.id, Flag.SEEN)])
        except QuotaExceeded:
            notice = "Sent, but there was no room left to keep a copy in Sent."
        source = composition.source
        if source is not None:
            original = await self.store.get_mailbox(user.account_id, source.ref.mailbox)
            if original is not None:
                flags, keywords = (
                    (Flag.ANSWERED, frozenset[str]())
                    if source.mode == "reply"
                    else (NO_FLAGS, frozenset({FORWARDED_KEYWORD}))
                )
                await self.store.store_flags(
                    original.id, UidSet.of([source.ref.uid]), StoreMode.ADD, flags, keywords
                )
        return notice

    async def save_draft(
        self, user: WebUser, composition: Composition, replacing: MessageRef | None
    ) -> MessageRef:
        """Append the composition to Drafts (\\Draft \\Seen), replacing the draft it was
        re-opened from; the new draft's reference."""
        drafts = await self.special_mailbox(user, SpecialUse.DRAFTS, "Drafts")
        msg = build_message(
            composition,
            date=email.utils.format_datetime(self.ctx.clock.now()),
            message_id=email.utils.make_msgid(domain=self.hostname),
            draft=True,
        )
        appended = await self.store.append(
            serialize(msg), [AppendTarget(drafts.id, Flag.DRAFT | Flag.SEEN)]
        )
        if replacing is not None:
            await self.discard_draft(user, replacing)
        return MessageRef(drafts.name, appended[0].uid)

    async def discard_draft(self, user: WebUser, ref: MessageRef) -> None:
        """Expunge a draft; only ever from the Drafts mailbox, whatever the form claims."""
        drafts = await self.special_mailbox(user, SpecialUse.DRAFTS, "Drafts")
        if ref.mailbox != drafts.name:
            return
        uids = UidSet.of([ref.uid])
        await self.store.store_flags(drafts.id, uids, StoreMode.ADD, Flag.DELETED)
        await self.store.expunge(drafts.id, uids)

    async def special_mailbox(self, user: WebUser, use: SpecialUse, name: str) -> Mailbox:
        """The account's mailbox with special-use `use`; created as `name` when missing."""
        for mailbox in await self.store.list_mailboxes(user.account_id):
            if mailbox.special_use is use:
                return mailbox
        existing = await self.store.get_mailbox(user.account_id, name)
        if existing is not None:
            return existing
        return await self.store.create_mailbox(user.account_id, name, use)


def _detail(verdict: Verdict) -> str:
    return verdict.detail or verdict.outcome.value.replace("_", " ")
