"""RFC 3464 delivery status notifications for recipients that failed after the 250.

SMTP answers once per message: when a message is accepted for some recipients and not
others, the others must hear of it by mail (RFC 5321 §3.3, §6.1), or their copies would be
lost silently.  The outbound queue sends the same reports for remote failures, expiry and
delays (`build_report`).  Bounces go out with the null sender, so a bounce is never bounced.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from postoffice.delivery.model import Envelope, Outcome, Recipient, Verdict

# RFC 3464 §2.4: the status code class of each outcome (detail in the Diagnostic-Code).
_STATUS: dict[Outcome, str] = {
    Outcome.UNKNOWN_USER: "5.1.1",
    Outcome.RELAY_DENIED: "5.7.1",
    Outcome.BAD_ADDRESS: "5.1.3",
    Outcome.SENDER_NOT_OWNED: "5.7.1",
    Outcome.SENDER_FORGED: "5.7.1",
    Outcome.QUOTA_FULL: "4.2.2",
    Outcome.QUOTA_EXCEEDED: "5.2.2",
    Outcome.TEMPORARY_FAILURE: "4.3.0",
    Outcome.REJECTED: "5.7.1",
    Outcome.BLOCKED: "5.7.1",
    Outcome.GREYLISTED: "4.7.1",
    Outcome.RATE_LIMITED: "4.7.0",
}
# RFC 3461 §4.3 RET=HDRS, and a cap on what we send back of a large message.
_RETURN_MAX = 64 * 1024


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """One recipient's per-recipient fields in a delivery status notification (RFC 3464 §2.3)."""

    recipient: Recipient
    action: Literal["failed", "delayed"]
    status: str  # RFC 3463 enhanced code, e.g. "5.1.1"
    diagnostic: str  # the reply or reason, one line, without the "smtp; " type
    remote_mta: str | None = None  # the host that gave the reply, when one did


def build_bounce(
    hostname: str,
    envelope: Envelope,
    raw: bytes,
    failed: Sequence[tuple[Recipient, Verdict]],
    arrival: dt.datetime,
) -> bytes:
    """The multipart/report (RFC 6522) to `envelope.sender` naming each failed recipient."""
    reports = []
    for recipient, verdict in failed:
        status = _STATUS.get(verdict.outcome, "5.0.0")
        reports.append(RecipientReport(recipient, "failed", status, f"{status} {_detail(verdict)}"))
    return build_report(hostname, envelope, raw, reports, arrival)


def build_report(
    hostname: str,
    envelope: Envelope,
    raw: bytes,
    reports: Sequence[RecipientReport],
    arrival: dt.datetime,
) -> bytes:
    """A multipart/report (RFC 6522) to `envelope.sender`: a bounce when every report is
    "failed", a delay warning when they are "delayed" (RFC 3464 §2.3.3)."""
    delayed = all(r.action == "delayed" for r in reports)
    boundary = f"=_{secrets.token_hex(16)}"
    explanation = [
        f"This is the mail system at {hostname}.",
        "",
        (
            "Your message has not been delivered yet to the following recipients; "
            "delivery will be retried, there is nothing you need to do:"
            if delayed
            else "Your message could not be delivered to the following recipients:"
        ),
        "",
        *(f"  <{r.recipient.address}>: {_line(r.diagnostic)}" for r in reports),
    ]
    per_message = [f"Reporting-MTA: dns; {hostname}"]
    if envelope.envid:
        per_message.append(f"Original-Envelope-Id: {envelope.envid}")
    per_message.append(f"Arrival-Date: {email.utils.format_datetime(arrival)}")
    blocks = ["\r\n".join(per_message)]
    for report in reports:
        recipient = report.recipient
        fields = [f"Original-Recipient: {recipient.orcpt}"] if recipient.orcpt else []
        fields += [
            f"Final-Recipient: rfc822; {recipient.address}",
            f"Action: {report.action}",
            f"Status: {report.status}",
        ]
        if report.remote_mta:
            fields.append(f"Remote-MTA: dns; {report.remote_mta}")
        fields.append(f"Diagnostic-Code: smtp; {_line(report.diagnostic)}")
        blocks.append("\r\n".join(fields))
    header_end = raw.find(b"\r\n\r\n")
    # RFC 3461 §4.3: RET=HDRS returns the header only; so do we for a large message, and
    # a delay warning never returns the whole message (RFC 3464 §4 leaves it to us).
    headers_only = header_end >= 0 and (envelope.ret == "HDRS" or len(raw) > _RETURN_MAX or delayed)
    returned = raw[: header_end + 2] if headers_only else raw
    returned_type = "text/rfc822-headers" if headers_only else "message/rfc822"
    subject = (
        "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    )
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{envelope.sender}>",
        f"Subject: {subject}",
        f"Date: {email.utils.format_datetime(dt.datetime.now(dt.UTC))}",
        f"Message-ID: {email.utils.make_msgid(domain=hostname)}",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: no auto-reply to this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    parts = [
        "\r\n".join(head).encode(),
        b"",
        f"--{boundary}".encode(),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
        b"",
        "\r\n".join(explanation).encode(),
        f"--{boundary}".encode(),
        b"Content-Type: message/delivery-status",
        b"",
        "\r\n\r\n".join(blocks).encode(),
        b"",
        f"--{boundary}".encode(),
        f"Content-Type: {returned_type}".encode(),
        b"Content-Transfer-Encoding: 8bit",
        b"",
        returned.removesuffix(b"\r\n"),
        f"--{boundary}--".encode(),
        b"",
    ]
    return b"\r\n".join(parts)


def _line(text: str) -> str:
    return " ".join(text.split())


def _detail(verdict: Verdict) -> str:
    # Header and report lines must stay single lines, whatever a detail text holds.
    return _line(verdict.detail or verdict.outcome.value)
