"""One delivery, start to end: policy, filters, routing, trace headers, store and queue
(DESIGN §4).

The SMTP, submission and LMTP sessions call `check_connect` before the greeting,
`check_sender` at MAIL, `check_recipient` at RCPT and `deliver` after DATA/BDAT; webmail
calls the same.  `deliver` runs the message filters once, then per local account the
recipient filters (junk, Sieve), which decide the mailboxes its copies go to, and returns
only once every copy it reports as accepted is durable: local copies through one
`store.append` (one blob, one group-committed transaction), remote ones through the
outbound queue.  Sieve redirects and vacation replies then go out as the server's own mail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
from collections.abc import Sequence
from dataclasses import dataclass, field

from postoffice.context import Context
from postoffice.delivery import bounce, trace
from postoffice.delivery.model import (
    ACCEPTED,
    INTERNAL,
    Envelope,
    Origin,
    Outcome,
    Recipient,
    Verdict,
)
from postoffice.delivery.routing import LocalDestination, Route, Router
from postoffice.filters.api import JUNK_FOLDER, FileInto, Findings, LocalPlan, Message
from postoffice.filters.chain import FilterChain, build_filters
from postoffice.store.model import Account, AlreadyExists, AppendTarget, QuotaExceeded


def _quota_full(account: Account) -> bool:
    return (account.quota_bytes is not None and account.used_bytes >= account.quota_bytes) or (
        account.quota_messages is not None and account.used_messages >= account.quota_messages
    )


def _orcpt(original: str) -> str:
    # RFC 3461 §4.2 addr-type; RFC 6533 §3 "utf-8" for addresses beyond ASCII.
    return ("rfc822;" if original.isascii() else "utf-8;") + original


def from_addresses(raw: bytes) -> list[str] | None:
    """The addr-specs of every From: field, or None when there is none or it is unreadable.

    email.utils' parser rather than the header registry's: this runs for every message
    (DMARC, the submission From: check, DKIM signing) and the registry's parser costs
    ten times as much for the same addresses.
    """
    values = trace.field_values(raw, "from")
    if not values:
        return None
    addresses = [address for _, address in email.utils.getaddresses(values) if "@" in address]
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


def _internal(origin: Origin) -> Origin:
    """The origin of mail the server sends on its own: bounces, redirects, auto-replies."""
    return dataclasses.replace(origin, listener=INTERNAL, account_id=None, auth_address=None)


class Delivery:
    """The delivery core shared by every SMTP, submission, LMTP and webmail session."""

    def __init__(self, ctx: Context, filters: FilterChain | None = None) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.router = Router(ctx.store, ctx.config)
        self.filters = filters if filters is not None else build_filters(ctx)
        self.log = ctx.logger("delivery")

    async def check_connect(self, origin: Origin) -> Verdict:
        return await self.filters.check_connect(origin) or ACCEPTED

    async def check_sender(self, sender: str, origin: Origin) -> Verdict:
        verdict = await self.router.check_sender(sender, origin)
        if not verdict.accepted:
            return verdict
        return await self.filters.check_sender(sender, origin) or verdict

    async def check_recipient(
        self, recipient: Recipient, origin: Origin, *, sender: str
    ) -> Verdict:
        route = await self.router.route(recipient.address, origin)
        if not route.verdict.accepted:
            return route.verdict
        # Issue 3: 452 4.2.2 at RCPT when every mailbox it reaches is already full; a
        # message that would overflow a mailbox is refused at DATA instead.
        if route.local and not route.remote and all(_quota_full(d.account) for d in route.local):
            return Verdict(Outcome.QUOTA_FULL, "mailbox full")
        # After routing, so an unknown user gets 550 rather than "greylisted, try again".
        return await self.filters.check_recipient(sender, recipient.address, origin) or ACCEPTED

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
        self.ctx.metrics.deliveries.update(v.outcome.value for v in verdicts)
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
        message = Message(envelope, raw, origin)
        if message.from_world:
            raw = message.raw = trace.strip_forged_results(raw, self.ctx.config.server.hostname)
        # The server's own mail was scanned as it came in (or is ours): scan nothing twice.
        findings = Findings() if origin.listener == INTERNAL else await self.filters.scan(message)
        if findings.refusal is not None:
            copies.append(f"refused:{findings.refusal.outcome.value}")
            return [findings.refusal] * len(recipients)
        if findings.quarantined:
            copies.append("quarantined")
            return [ACCEPTED] * len(recipients)
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
        # What the filters found goes above our Received, as later trace fields do.
        received = trace.added_fields(findings.headers) + trace.received(
            origin,
            self.ctx.config.server.hostname,
            recipients[0].address if len(recipients) == 1 else None,
            origin.received_at,
        )
        local, remote = await asyncio.gather(
            self._store_local(received, message, findings, destinations),
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
                results = await self._deliver(notice, report, _internal(origin), [])
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
        message: Message,
        findings: Findings,
        destinations: _Destinations,
    ) -> dict[int, Verdict]:
        """Store each local account's copies where its plan says; the verdict per account id."""
        origin = message.origin
        plans = {
            account_id: LocalPlan(destination.account, destination.delivered_to, findings)
            for account_id, (destination, _) in destinations.local.items()
        }
        for plan in plans.values():
            if findings.junk:
                plan.keep_into = JUNK_FOLDER
        await asyncio.gather(*(self.filters.plan(message, plan) for plan in plans.values()))
        results: dict[int, Verdict] = {}
        pending: dict[int, list[AppendTarget]] = {}
        for account_id, plan in plans.items():
            if plan.refusal is not None:
                results[account_id] = plan.refusal
                continue
            try:
                pending[account_id] = await self._append_targets(plan, origin)
            except Exception as exc:
                self._failed(origin, "mailbox lookup", exc)
                results[account_id] = Verdict(Outcome.TEMPORARY_FAILURE, "mailbox unavailable")
        # Shared by every copy, so the blob is one (DESIGN §3); Delivered-To is per entry.
        envelope = message.envelope
        content = (
            trace.return_path(envelope.sender) + received + trace.strip_return_path(message.raw)
        )
        # An account whose plan stores nothing (discard, redirect) is done already.
        results.update((account_id, ACCEPTED) for account_id, t in pending.items() if not t)
        pending = {account_id: targets for account_id, targets in pending.items() if targets}
        # Each QuotaExceeded drops one account and tries again, so this ends.
        while pending:
            try:
                await self.store.append(
                    content,
                    [t for targets in pending.values() for t in targets],
                    origin.received_at,
                )
            except QuotaExceeded as exc:
                full = self._account_named(plans, pending, exc.address)
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
        for account_id, plan in plans.items():
            if results[account_id].accepted and (plan.redirects or plan.replies):
                results[account_id] = await self._follow_up(plan, message, received + message.raw)
        return results

    async def _append_targets(self, plan: LocalPlan, origin: Origin) -> list[AppendTarget]:
        """The store's targets for the plan's copies, each mailbox once."""
        prefix = trace.delivered_to(plan.delivered_to) + trace.added_fields(plan.headers)
        targets: dict[int, AppendTarget] = {}
        for copy in plan.targets():
            mailbox_id = await self._mailbox_for(plan.account, copy, origin)
            if mailbox_id not in targets:
                targets[mailbox_id] = AppendTarget(
                    mailbox_id, flags=copy.flags, keywords=copy.keywords, prefix=prefix
                )
        return list(targets.values())

    async def _mailbox_for(self, account: Account, copy: FileInto, origin: Origin) -> int:
        """The mailbox a copy goes to; INBOX when the one named is missing (RFC 5228 §4.1:
        a fileinto that cannot be done falls back to keep)."""
        if copy.special_use is not None:
            for candidate in await self.store.list_mailboxes(account.id):
                if candidate.special_use == copy.special_use:
                    return candidate.id
        mailbox = await self.store.get_mailbox(account.id, copy.mailbox)
        if mailbox is None and (copy.create or copy.special_use is not None):
            try:
                mailbox = await self.store.create_mailbox(account.id, copy.mailbox)
            except AlreadyExists:
                mailbox = await self.store.get_mailbox(account.id, copy.mailbox)
        if mailbox is None:
            self.log.info(
                "no such mailbox, keeping in INBOX",
                extra={"session": origin.session_id, "mailbox": copy.mailbox},
            )
            mailbox = await self.store.get_mailbox(account.id, "INBOX")
        if mailbox is None:
            raise LookupError(f"{account.address} has no INBOX")
        return mailbox.id

    async def _follow_up(self, plan: LocalPlan, message: Message, content: bytes) -> Verdict:
        """Send the plan's redirects and auto-replies once its copies are stored.

        A redirect carries the account's mail on, so when nothing was stored its failure is
        the recipient's (451: the client sends again); a failed auto-reply is only logged.
        """
        origin = message.origin
        system = _internal(origin)
        failure: Verdict | None = None
        # This account's Delivered-To marks the copy, so a redirect back here shows as a loop.
        forwarded = trace.delivered_to(plan.account.address) + content
        for address in plan.redirects:
            if trace.delivered_here(content, address):
                self.log.warning(
                    "redirect loop dropped", extra={"session": origin.session_id, "to": address}
                )
                continue
            # RFC 5228 §4.2: the redirected message keeps its envelope sender.
            redirected = Envelope(message.envelope.sender, (Recipient(address),))
            [result] = await self._deliver(redirected, forwarded, system, [])
            if not result.accepted and failure is None:
                failure = result
        for reply in plan.replies:
            [result] = await self._deliver(
                Envelope(reply.sender, (Recipient(reply.recipient),)), reply.raw, system, []
            )
            if not result.accepted:
                self.log.warning(
                    "auto-reply not sent",
                    extra={"session": origin.session_id, "to": reply.recipient},
                )
        return failure if failure is not None and not plan.targets() else ACCEPTED

    @staticmethod
    def _account_named(
        plans: dict[int, LocalPlan], pending: dict[int, list[AppendTarget]], address: str
    ) -> int | None:
        for account_id in pending:
            if plans[account_id].account.address.lower() == address.lower():
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
