"""What running a Sieve script decided (RFC 5228 §4), before the stage turns it into a plan."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Keep:
    flags: tuple[str, ...]  # imap4flags: the :flags list, or the internal variable's value


@dataclass(frozen=True, slots=True)
class Fileinto:
    mailbox: str
    flags: tuple[str, ...]
    create: bool  # RFC 5490 :create
    copy: bool  # RFC 3894 :copy: the implicit keep is not cancelled


@dataclass(frozen=True, slots=True)
class Redirect:
    address: str
    copy: bool


@dataclass(frozen=True, slots=True)
class Discard:
    pass


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str
    extended: bool  # ereject (RFC 5429 §2.1): refuse in the SMTP dialogue, never by a bounce


@dataclass(frozen=True, slots=True)
class Vacation:
    """RFC 5230 §4: the reply to send, if the stage's rules allow one to this sender."""

    reason: str
    subject: str | None
    sender: str | None  # :from
    addresses: tuple[str, ...]  # the user's other addresses
    mime: bool  # the reason is a MIME entity, headers included
    handle: str  # replies with the same handle count together for :days
    days: int  # already clamped to the configured range


Action = Keep | Fileinto | Redirect | Discard | Reject | Vacation


@dataclass(slots=True)
class Outcome:
    actions: list[Action] = field(default_factory=list)
    implicit_keep: bool = True  # RFC 5228 §2.10.2
    flags: tuple[str, ...] = ()  # imap4flags' internal variable when the script ended
