"""Vacation replies (RFC 5230 with RFC 3834): whether to answer, and the reply itself.

Pure: the caller asks the store whether this sender was answered within :days
(`VacationMemory.claim`) only after `reply_allowed` said yes, then builds the reply here.
"""

from __future__ import annotations

import datetime as dt
import email
import email.message
import email.policy
import email.utils
from collections.abc import Iterable, Sequence
from typing import Final

from postoffice.filters.sieve.actions import Vacation

# RFC 5230 §4.6 / RFC 3834 §2: mailing lists and robots are never answered.
_LIST_HEADERS: Final = frozenset(
    {
        "list-id",
        "list-help",
        "list-subscribe",
        "list-unsubscribe",
        "list-post",
        "list-owner",
        "list-archive",
    }
)
_BULK_PRECEDENCE: Final = frozenset({"bulk", "list", "junk"})
_ROBOT_LOCALPARTS: Final = frozenset({"mailer-daemon", "listserv", "majordomo"})
_REPLY_HEADERS: Final = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Auto-Submitted",
    "MIME-Version",
)


def _canonical(address: str) -> str:
    """Lower-cased, without a +detail: bob+news@x is bob@x for "is this me?"."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    return f"{local.split('+', 1)[0]}@{domain}"


def _values(headers: Sequence[tuple[str, str]], *names: str) -> list[str]:
    wanted = {name.lower() for name in names}
    return [value for name, value in headers if name.lower() in wanted]


def _one_line(text: str) -> str:
    # A header value with a line break would be refused by the email package (or, worse,
    # start a header of its own); a script's text: string or an odd original may hold one.
    return " ".join(text.split())


def _first(headers: Sequence[tuple[str, str]], name: str) -> str:
    return _one_line(next(iter(_values(headers, name)), ""))


def reply_allowed(
    sender: str, headers: Sequence[tuple[str, str]], own_addresses: Iterable[str]
) -> bool:
    """RFC 5230 §4.5 and §4.6: only to a person, about mail addressed to the user by name."""
    if not sender:
        return False  # a bounce or another auto-reply: answering could loop
    for value in _values(headers, "Auto-Submitted"):
        if value.split(";", 1)[0].strip().lower() != "no":
            return False
    if any(name.lower() in _LIST_HEADERS for name, _ in headers):
        return False
    if any(value.strip().lower() in _BULK_PRECEDENCE for value in _values(headers, "Precedence")):
        return False
    local = sender.rpartition("@")[0].lower()
    if local in _ROBOT_LOCALPARTS or local.startswith("owner-") or local.endswith("-request"):
        return False
    mine = {_canonical(address) for address in own_addresses}
    if _canonical(sender) in mine:
        return False
    recipients = _values(headers, "To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc")
    addressed = {_canonical(address) for _, address in email.utils.getaddresses(recipients)}
    return bool(addressed & mine)


def build_reply(
    vacation: Vacation,
    *,
    account_address: str,
    sender: str,
    headers: Sequence[tuple[str, str]],
    now: dt.datetime,
) -> bytes:
    """The complete reply (RFC 5230 §5): from the user, to the envelope sender, threaded."""
    if vacation.mime:
        entity = vacation.reason.replace("\r\n", "\n").lstrip("\n")
        reply = email.message_from_string(entity, policy=email.policy.SMTP)
        assert isinstance(reply, email.message.EmailMessage)
        for name in _REPLY_HEADERS:
            del reply[name]
    else:
        reply = email.message.EmailMessage(policy=email.policy.SMTP)
        reply.set_content(vacation.reason.replace("\r\n", "\n"))
    original_subject = _first(headers, "Subject")
    subject = vacation.subject
    if subject is None:
        # RFC 5230 §5.2: "Auto:" and the original subject
        subject = f"Auto: {original_subject}"
    domain = account_address.rpartition("@")[2] or None
    reply["From"] = _one_line(vacation.sender or account_address)
    reply["To"] = sender
    reply["Subject"] = _one_line(subject)
    reply["Date"] = email.utils.format_datetime(now)
    reply["Message-ID"] = email.utils.make_msgid(domain=domain)
    original_id = _first(headers, "Message-ID")
    if original_id:
        reply["In-Reply-To"] = original_id
        references = _first(headers, "References").split()
        reply["References"] = " ".join([*references, original_id])
    reply["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5, RFC 5230 §5.1
    if "MIME-Version" not in reply:
        reply["MIME-Version"] = "1.0"
    return reply.as_bytes()
