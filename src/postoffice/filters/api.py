"""The three kinds of filter stage, and what they hand each other (DESIGN §4).

- A `SessionStage` judges the SMTP conversation before any content: the client at connect,
  the sender at MAIL, each recipient at RCPT (DNSBL, greylisting, rate limits).
- A `MessageStage` reads the whole message once, for every recipient (SPF/DKIM/DMARC/ARC,
  viruses, rspamd/spamd).  It records what it found in the shared `Findings`: headers to add,
  a refusal, "file into Junk", a quarantine.
- A `RecipientStage` decides, per local account, where that account's copy goes (the junk
  classifier, then Sieve): it edits the account's `LocalPlan`.

A stage raises `StageUnavailable` when a service it needs (DNS, clamd, rspamd) is down; the
chain then applies the stage's `on_failure`: "accept" carries on without it (fail open),
"tempfail" answers 451 so the sender tries again (fail closed).  Any other exception is a bug:
it is logged and treated like StageUnavailable, so a filter can delay mail but never lose it.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Protocol

from postoffice.delivery.model import Envelope, Origin, Outcome, Verdict
from postoffice.store.model import NO_FLAGS, Account, Flag, SpecialUse

__all__ = [
    "JUNK_FOLDER",
    "AutoReply",
    "FileInto",
    "Findings",
    "LocalPlan",
    "Message",
    "MessageStage",
    "OnFailure",
    "RecipientStage",
    "SessionStage",
    "StageUnavailable",
    "on_failure",
    "rejected",
]

OnFailure = Literal["accept", "tempfail"]


def on_failure(setting: str) -> OnFailure:
    """A section's `on_failure` setting (config.py accepts only these two words) as typed."""
    return "tempfail" if setting == "tempfail" else "accept"


class StageUnavailable(Exception):
    """A service the stage needs did not answer; the chain applies its on_failure."""


def rejected(detail: str) -> Verdict:
    """A refusal by policy (550 5.7.1 at DATA) with a reason safe to show the client."""
    return Verdict(Outcome.REJECTED, detail)


class Message:
    """One received message as every stage sees it: the raw bytes as the client sent them
    (before our own trace headers), the envelope and who handed it over."""

    def __init__(self, envelope: Envelope, raw: bytes, origin: Origin) -> None:
        self.envelope = envelope
        self.raw = raw
        self.origin = origin

    @cached_property
    def headers(self) -> email.message.Message:
        """The header section, parsed once and shared by the stages (read-only).

        RFC 6532 allows UTF-8 in header fields; other bytes are a defect, read as U+FFFD, so
        every value is a str (compat32 hands undecodable bytes over as Header objects).
        """
        end = self.raw.find(b"\r\n\r\n")
        head = self.raw if end < 0 else self.raw[: end + 2]
        parser = email.parser.HeaderParser(policy=email.policy.compat32)
        return parser.parsestr(head.decode("utf-8", "replace"))

    @property
    def from_world(self) -> bool:
        """Unauthenticated mail from another MTA: sender checks apply to it."""
        return self.origin.account_id is None and self.origin.listener in ("smtp", "lmtp")


@dataclass(slots=True)
class Findings:
    """What the message stages found, in the order they ran."""

    headers: list[tuple[str, str]] = field(default_factory=list)  # added to every stored copy
    refusal: Verdict | None = None  # set: no recipient gets the message; the chain stops
    junk: bool = False  # every local copy goes to Junk (DMARC quarantine, DNSBL tag, ...)
    quarantined: bool = False  # a stage has kept the message for the admin: deliver nothing
    spam_score: float | None = None  # from rspamd/spamd, when configured
    # One word per check for later stages and Sieve: {"spf": "pass", "dkim": "fail", ...}
    results: dict[str, str] = field(default_factory=dict)

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    def refuse(self, verdict: Verdict) -> None:
        if self.refusal is None:
            self.refusal = verdict


@dataclass(frozen=True, slots=True)
class FileInto:
    """One copy into a mailbox of the account (Sieve fileinto, or the implicit keep)."""

    mailbox: str
    flags: Flag = NO_FLAGS
    keywords: frozenset[str] = frozenset()
    create: bool = False  # RFC 5490 :create; otherwise a missing mailbox means INBOX
    # Set: the account's mailbox with this special use, whatever the user renamed it to
    # (`mailbox` is then only the name to create when it has none).
    special_use: SpecialUse | None = None


JUNK_FOLDER = FileInto("Junk", special_use=SpecialUse.JUNK)


@dataclass(frozen=True, slots=True)
class AutoReply:
    """A message the server sends on the account's behalf (vacation, Sieve notify)."""

    recipient: str
    raw: bytes  # complete, with From, To, Date, Message-ID, Auto-Submitted headers
    sender: str = ""  # envelope sender; "" is the null reverse-path (RFC 5230 §5.4)


@dataclass(slots=True)
class LocalPlan:
    """What happens to one local account's copy; recipient stages edit it in turn."""

    account: Account
    delivered_to: str  # the address that reached the account (Sieve's envelope "to")
    findings: Findings
    keep: bool = True  # RFC 5228 §2.10.2 implicit keep; cancelled by fileinto, discard, ...
    keep_into: FileInto = field(default_factory=lambda: FileInto("INBOX"))
    files: list[FileInto] = field(default_factory=list)  # explicit fileinto / keep copies
    headers: list[tuple[str, str]] = field(default_factory=list)  # this account's copy only
    redirects: list[str] = field(default_factory=list)  # addresses to forward the message to
    replies: list[AutoReply] = field(default_factory=list)
    refusal: Verdict | None = None  # Sieve reject/ereject, spam over the reject threshold

    def targets(self) -> list[FileInto]:
        """Every copy to store: the explicit ones and the keep, each mailbox once."""
        chosen = list(self.files)
        if self.keep and self.refusal is None:
            chosen.append(self.keep_into)
        seen: set[str] = set()
        unique = []
        for target in chosen:
            key = target.mailbox.upper() if target.mailbox.upper() == "INBOX" else target.mailbox
            if key not in seen:
                seen.add(key)
                unique.append(target)
        return unique


class SessionStage(Protocol):
    name: str
    on_failure: OnFailure

    async def check_connect(self, origin: Origin) -> Verdict | None:
        """None lets the client in; a verdict is the greeting's refusal (then hang up)."""
        ...

    async def check_sender(self, sender: str, origin: Origin) -> Verdict | None: ...

    async def check_recipient(
        self, sender: str, recipient: str, origin: Origin
    ) -> Verdict | None: ...


class MessageStage(Protocol):
    name: str
    on_failure: OnFailure

    async def scan(self, message: Message, findings: Findings) -> None: ...


class RecipientStage(Protocol):
    name: str
    on_failure: OnFailure

    async def plan(self, message: Message, plan: LocalPlan) -> None: ...
