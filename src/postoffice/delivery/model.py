"""What the protocol front-ends (SMTP, LMTP, submission; later webmail) hand to delivery, and
what they get back (DESIGN §4).

Outcomes are typed, not SMTP replies: each front-end maps them to its own wire answers
(`smtp/replies.py` for SMTP and LMTP).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import Enum

from postoffice.store.model import Envelope, Recipient

__all__ = [
    "ACCEPTED",
    "INTERNAL",
    "Envelope",
    "Origin",
    "Outcome",
    "Recipient",
    "Verdict",
]


# The listener name of mail the server itself sends on: bounces, Sieve redirects, vacation
# replies.  It may relay, and the connection-level and sender checks skip it.
INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class Origin:
    """Who handed the message over, for trace headers, logs and policy."""

    listener: str  # "smtp", "submission", "submissions", "lmtp", "webmail", INTERNAL
    protocol: str  # RFC 3848 "with" keyword: ESMTP, ESMTPS, ESMTPSA, LMTP, LMTPS, ...
    helo: str
    peer_ip: str  # "" on a unix socket
    session_id: str
    tls: str | None = None  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"; None without TLS
    account_id: int | None = None  # authenticated account (submission)
    auth_address: str | None = None
    received_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class Outcome(Enum):
    """The verdict on one sender or recipient, or the delivery to one recipient."""

    ACCEPTED = "accepted"
    UNKNOWN_USER = "unknown_user"  # 550 5.1.1
    RELAY_DENIED = "relay_denied"  # 550 5.7.1 (includes %-hack, source routes, bang paths ...)
    BAD_ADDRESS = "bad_address"  # 501 5.1.3 syntax the policy refuses
    SENDER_NOT_OWNED = "sender_not_owned"  # 553 5.7.1 submission: not one of the user's
    SENDER_FORGED = "sender_forged"  # 550 5.7.1 unauthenticated MAIL FROM a local domain
    QUOTA_FULL = "quota_full"  # 452 4.2.2 at RCPT: already over
    QUOTA_EXCEEDED = "quota_exceeded"  # 552 5.2.2 at DATA: this message would exceed it
    TEMPORARY_FAILURE = "temporary_failure"  # 451 4.3.0 (store unavailable, ...)
    REJECTED = "rejected"  # 550 5.7.1 by policy: DMARC, virus, spam, Sieve reject
    BLOCKED = "blocked"  # 554 5.7.1 the client is on a blocklist
    GREYLISTED = "greylisted"  # 451 4.7.1 try again in a few minutes
    RATE_LIMITED = "rate_limited"  # 451 4.7.0 (421 4.7.0 at connect) too much, too fast


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    detail: str = ""  # human-readable, safe to show the client

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPTED


ACCEPTED = Verdict(Outcome.ACCEPTED)
