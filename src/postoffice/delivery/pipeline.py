"""One delivery, start to end: policy, routing, trace headers, store and queue (DESIGN §4).

The SMTP, submission and LMTP sessions call `check_sender` at MAIL, `check_recipient` at
RCPT and `deliver` after DATA/BDAT.  `deliver` returns only once every copy it reports as
accepted is durable: local copies through one `store.append` (one blob, one group-committed
transaction), remote ones through the outbound queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.parser
import email.policy
from collections.abc import Sequence
from dataclasses import dataclass, field

from postoffice.context import Context
from postoffice.delivery import bounce, trace
from postoffice.delivery.model import ACCEPTED, Envelope, Origin, Outcome, Recipient, Verdict
from postoffice.delivery.routing import LocalDestination, Route, Router
from postoffice.store.model import Account, AppendTarget, QuotaExceeded

_HEADER_POLICY = email.policy.default


def _quota_full(account: Account) -> bool:
    return (account.quota_bytes is not None and account.used_bytes >= account.quota_bytes) or (
        account.quota_messages is not None and account.used_messages >= account.quota_messages
    )


def _orcpt(original: str) -> str:
    # RFC 3461 §4.2 addr-type; RFC 6533 §3 "utf-8" for addresses beyond ASCII.
    return ("rfc822;" if original.isascii() else "utf-8;") + original


def _header_section(raw: bytes) -> str:
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    # RFC 6532 allows UTF-8 in header fields; anything else is a defect, not a crash.
    return head.decode("utf-8", "replace")


def from_addresses(raw: bytes) -> list[str] | None:
    """The addr-specs of every From: field, or None when there is none or it is unreadable."""
    try:
        headers = email.parser.HeaderParser(policy=_HEADER_POLICY).parsestr(_header_section(raw))
        fields = headers.get_all("From") or []
        addresses = [a.addr_spec for value in fields for a in getattr(value, "addresses", ())]
    except (ValueError, IndexError, TypeError, AttributeError):
        # The stdlib header parser raises these on some malformed fields.
        return None
    return addresses or None


@dataclass(slots=True)
class _Destinations:
    """Each final destination once, with the envelope recipients (indexes) it serves."""

    local: dict[int, tuple[LocalDestination, list[int]]] = field(default_factory=dict)
    remote: dict[str, tuple[Recipient, list[int]]] = field(default_factory=dict)

    def add(self, index: int, recipient: Recipient, route: Route) -> None:
        for destination in route.local:
            entry = self.local.setdefault(destination.account.id, (destination, []))
            entry[1].append(index)
        for address in route.remote:
            if address not in self.remote:
                # RFC 3461 §4.2: ORCPT keeps the address the sender used, so a bounce from
                # beyond an alias still names it; NOTIFY travels with it.
                orcpt = recipient.orcpt
                if orcpt is None and address != recipient.address:
                    orcpt = _orcpt(recipient.address)
                self.remote[address] = (Recipient(address, recipient.notify, orcpt), [])
            self.remote[address][1].append(index)


def _combine(outcomes: Sequence[Verdict]) -> Verdict:
    """One recipient's verdict from its destinations' outcomes.

    Accepted when any copy is safe: answering with a failure would make the client send
    again and duplicate the copies already stored.  Otherwise a temporary failure wins, so
    the client retries, over a permanent one.
    """
    for verdict in outcomes:
        if verdict.accepted:
            return verdict
    for verdict in outcomes:
        if verdict.outcome is Outcome.TEMPORARY_FAILURE:
            return verdict
    return outcomes[0]


class Delivery:
    """The delivery core shared by every SMTP, submission and LMTP session."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.router = Router(ctx.store, ctx.config)
        self.log = ctx.logger("delivery")

    async def check_sender(self, sender: str, origin: Origin) -> Verdict:
        return await self.router.check_sender(sender, origin)

    async def check_recipient(self, recipient: Recipient, origin: Origin) -> Verdict:
        route = await self.router.route(recipient.address, origin)
        if not route.verdict.accepted:
            return route.verdict
        # Issue 3: 452 4.2.2 at RCPT when every mailbox it reaches is already full; a
        # message that would overflow a mailbox is refused at DATA instead.
        if route.local and not route.remote and all(_quota_full(d.account) for d in route.local):
            return Verdict(Outcome.QUOTA_FULL, "mailbox full")
        return ACCEPTED

    async def deliver(self, envelope: Envelope, raw: bytes, origin: Origin) -> list[Verdict]:
        """Deliver or queue `raw` for every recipient; one verdict per envelope recipient."""
        copies: list[str] = []
        verdicts = await self._deliver(envelope, raw, origin, copies)
        self.log.info(
            "delivery",
            extra={
                "session": origin.session_id,
                "sender": envelope.sender or "<>",
                "recipients": ",".join(r.address for r in envelope.recipients),
                "size": len(raw),
                "outcome": ",".join(v.outcome.value for v in verdicts),
                # Per final destination: an alias member that failed while the alias as a
                # whole was accepted shows up only here.
                "copies": ",".join(copies),
            },
        )
        accepted = sum(v.accepted for v in verdicts)
        if origin.listener != "lmtp" and 0 < accepted < len(verdicts):
            # SMTP can say only one thing about the message: 250, since some copies are
            # committed.  The failed recipients are then reported by a bounce; if that
            # cannot be stored either, the exception makes the session answer 451 and the
            # client retries (a duplicate for some rather than a loss for others).
            await self._bounce(envelope, raw, origin, verdicts)
        return verdicts

    async def _deliver(
        self, envelope: Envelope, raw: bytes, origin: Origin, copies: list[str]
    ) -> list[Verdict]:
        recipients = envelope.recipients
        if origin.account_id is not None and self.ctx.config.smtp.check_from_header:
            refused = await self._check_from(raw, origin.account_id)
            if refused is not None:
                return [refused] * len(recipients)
        try:
            routes = await asyncio.gather(
                *(self.router.route(r.address, origin) for r in recipients)
            )
        except Exception as exc:
            self._failed(origin, "route", exc)
            return [Verdict(Outcome.TEMPORARY_FAILURE, "try again later")] * len(recipients)
        verdicts: list[Verdict | None] = [None] * len(recipients)
        destinations = _Destinations()
        for index, (recipient, route) in enumerate(zip(recipients, routes, strict=True)):
            if route.verdict.accepted:
                destinations.add(index, recipient, route)
            else:
                verdicts[index] = route.verdict
        received = trace.received(
            origin,
            self.ctx.config.server.hostname,
            recipients[0].address if len(recipients) == 1 else None,
            origin.received_at,
        )
        local, remote = await asyncio.gather(
            self._store_local(received, envelope, raw, origin, destinations),
            self._enqueue(received + raw, envelope, origin, destinations),
        )
        outcomes: list[list[Verdict]] = [[] for _ in recipients]
        for account_id, (destination, indexes) in destinations.local.items():
            copies.append(f"{destination.delivered_to}={local[account_id].outcome.value}")
            for index in indexes:
                outcomes[index].append(local[account_id])
        for address, (_, indexes) in destinations.remote.items():
            copies.append(f"{address}=queued" if remote.accepted else f"{address}=not_queued")
            for index in indexes:
                outcomes[index].append(remote)
        return [
            verdict if verdict is not None else _combine(outcomes[index])
            for index, verdict in enumerate(verdicts)
        ]

    async def _bounce(
        self, envelope: Envelope, raw: bytes, origin: Origin, verdicts: list[Verdict]
    ) -> None:
        failed = [
            (recipient, verdict)
            for recipient, verdict in zip(envelope.recipients, verdicts, strict=True)
            if not verdict.accepted
        ]
        if envelope.sender:  # RFC 5321 §6.1: never bounce a bounce
            report = bounce.build_bounce(
                self.ctx.config.server.hostname, envelope, raw, failed, origin.received_at
            )
            notice = Envelope("", (Recipient(envelope.sender),))
            route = await self.router.route(envelope.sender, origin)
            if route.verdict.accepted and route.local:
                # As the system, not as the user: the report's From: is MAILER-DAEMON.
                system = dataclasses.replace(origin, account_id=None, auth_address=None)
                results = await self._deliver(notice, report, system, [])
                if not results[0].accepted:
                    raise RuntimeError(f"bounce to {envelope.sender} not stored")
            else:
                # A remote sender: the outbound queue carries it (null sender, RFC 3464).
                await self.store.outbound.enqueue(
                    report, notice, notice.recipients, origin.session_id
                )
        for index, verdict in enumerate(verdicts):
            if not verdict.accepted:
                verdicts[index] = ACCEPTED

    async def _check_from(self, raw: bytes, account_id: int) -> Verdict | None:
        addresses = from_addresses(raw)
        if addresses is None:
            return Verdict(Outcome.SENDER_NOT_OWNED, "the message has no readable From: address")
        for address in addresses:
            if not await self.router.owns(account_id, address):
                return Verdict(
                    Outcome.SENDER_NOT_OWNED, f"From: {address} is not one of your addresses"
                )
        return None

    async def _store_local(
        self,
        received: bytes,
        envelope: Envelope,
        raw: bytes,
        origin: Origin,
        destinations: _Destinations,
    ) -> dict[int, Verdict]:
        """Append one copy per local account; the verdict for each account id."""
        results: dict[int, Verdict] = {}
        pending: dict[int, tuple[LocalDestination, int]] = {}
        try:
            mailboxes = await asyncio.gather(
                *(self.store.get_mailbox(account_id, "INBOX") for account_id in destinations.local)
            )
        except Exception as exc:
            self._failed(origin, "mailbox lookup", exc)
            mailboxes = [None] * len(destinations.local)
        for (account_id, (destination, _)), mailbox in zip(
            destinations.local.items(), mailboxes, strict=True
        ):
            if mailbox is None:
                results[account_id] = Verdict(Outcome.TEMPORARY_FAILURE, "mailbox unavailable")
            else:
                pending[account_id] = (destination, mailbox.id)
        if not pending:
            return results
        # Shared by every copy, so the blob is one (DESIGN §3); Delivered-To is per entry.
        content = trace.return_path(envelope.sender) + received + trace.strip_return_path(raw)
        # Each QuotaExceeded drops one account and tries again, so this ends.
        while pending:
            targets = [
                AppendTarget(mailbox_id, prefix=trace.delivered_to(d.delivered_to))
                for d, mailbox_id in pending.values()
            ]
            try:
                await self.store.append(content, targets, origin.received_at)
            except QuotaExceeded as exc:
                full = self._account_named(pending, exc.address)
                if full is None:
                    self._failed(origin, "append", exc)
                    break
                results[full] = Verdict(
                    Outcome.QUOTA_EXCEEDED, f"{exc.address}: mailbox would exceed its quota"
                )
                del pending[full]
                continue
            except Exception as exc:
                # Any store failure: the client retries later; the traceback is logged.
                self._failed(origin, "append", exc)
                break
            results.update((account_id, ACCEPTED) for account_id in pending)
            pending.clear()
        results.update(
            (account_id, Verdict(Outcome.TEMPORARY_FAILURE, "mailbox unavailable, try later"))
            for account_id in pending
        )
        return results

    @staticmethod
    def _account_named(
        pending: dict[int, tuple[LocalDestination, int]], address: str
    ) -> int | None:
        for account_id, (destination, _) in pending.items():
            if destination.account.address.lower() == address.lower():
                return account_id
        return None

    async def _enqueue(
        self, content: bytes, envelope: Envelope, origin: Origin, destinations: _Destinations
    ) -> Verdict:
        """Queue the copy for every remote destination; one verdict for all of them."""
        if not destinations.remote:
            return ACCEPTED
        recipients = [recipient for recipient, _ in destinations.remote.values()]
        try:
            await self.store.outbound.enqueue(content, envelope, recipients, origin.session_id)
        except Exception as exc:
            self._failed(origin, "enqueue", exc)
            return Verdict(Outcome.TEMPORARY_FAILURE, "queue unavailable, try later")
        return ACCEPTED

    def _failed(self, origin: Origin, step: str, exc: BaseException) -> None:
        self.log.error(
            "delivery step failed",
            extra={"session": origin.session_id, "step": step},
            exc_info=exc,
        )
