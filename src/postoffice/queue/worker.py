"""The outbound queue worker (DESIGN §5): due mail out to MX hosts or a smarthost.

Each look at the queue (every `[queue] poll_seconds`) takes the recipients that are due and
not already being delivered, groups them by destination domain (one group for everything
when a relay is set), and gives each domain up to `connections_per_domain` connections
(at most `max_connections_out` in all).  A connection carries one message after another
(`messages_per_connection`), each message in one transaction for all its recipients in
that domain (RFC 5321 §3.3).

At least once: a recipient is recorded as delivered only after the remote server's 250 to
the final dot, in one store transaction per message and domain.  The window for a duplicate
is between that 250 and our commit: a crash there leaves the recipient pending and it is
sent again (RFC 5321 §6.1 accepts duplicates over losses; so does RFC 1047).  Bounces and
delay warnings go out before the state that makes them due is committed, for the same
reason: a crash between them repeats a report rather than losing it.

With `--workers N` exactly one process runs the queue: the one holding the flock on
DATA/locks/queue; the others try the lock again every poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from postoffice.context import Context
from postoffice.delivery import bounce
from postoffice.delivery.model import Envelope, Origin, Recipient
from postoffice.delivery.pipeline import Delivery
from postoffice.locks import queue_lock
from postoffice.queue import dkim
from postoffice.queue.client import (
    Reply,
    SmtpClient,
    SmtpFailure,
    local_failure,
    opportunistic_tls,
)
from postoffice.queue.mx import DnsError, MailHost, MxResolver
from postoffice.queue.retry import RetryPolicy
from postoffice.resolver import SystemResolverRefused
from postoffice.store.api import AttemptResult, QueuedMessage, QueuedRecipient, QueueState

_BATCH: Final = 1000  # messages looked at per poll
_RELAY: Final = ""  # the one destination key when a smarthost is set


# Reads a queued message once: (the bytes as queued, the bytes as sent, DKIM-signed), or
# None when the admin removed it meanwhile.
_Loader = Callable[[], Awaitable[tuple[bytes, bytes] | None]]


@dataclass(slots=True)
class _Job:
    """Some due recipients of one message, all in one destination domain."""

    message: QueuedMessage
    recipients: list[QueuedRecipient]
    content: _Loader


def _wants(recipient: QueuedRecipient, kind: str) -> bool:
    # RFC 3461 §4.1: no NOTIFY means FAILURE (and, at our discretion, DELAY) reports.
    notify = recipient.recipient.notify
    return notify is None or kind in notify


class QueueWorker:
    """Delivers what is due: `run` until stopped (serve), or `run_once` (tests, bench)."""

    def __init__(self, ctx: Context, resolver: MxResolver | None = None) -> None:
        self.ctx = ctx
        self.config = ctx.config.queue
        self.relay = ctx.config.relay
        self.hostname = ctx.config.server.hostname
        self.store = ctx.store
        self.retry = RetryPolicy.from_config(self.config)
        # Raises SystemResolverRefused under pytest when no resolver address is set.
        self.resolver = (
            resolver
            if resolver is not None or self.relay.host
            else MxResolver(self.config.resolver, timeout=self.config.connect_timeout_seconds)
        )
        self.delivery = Delivery(ctx)
        self.log = ctx.logger("queue")
        self._busy: set[int] = set()  # recipient ids being delivered now
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.config.max_connections_out)
        self._domain_slots: dict[str, tuple[asyncio.Semaphore, int]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Look at the queue every poll interval until `stop`; deliveries still running
        then are cancelled and their recipients stay pending (retried next time)."""
        try:
            while not stop.is_set():
                waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
                try:
                    started, full = await self._dispatch()
                    if full and started:
                        # More is due than one look takes: look again as soon as this
                        # batch is through, not after a poll interval.  (asyncio.wait, not
                        # gather: cancelling the wait must not cancel the deliveries.)
                        waits.append(asyncio.ensure_future(asyncio.wait(started)))
                except Exception:
                    self.log.exception("queue run failed")
                await asyncio.wait(waits, timeout=self.config.poll_seconds)
                for waiting in waits:
                    waiting.cancel()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run_once(self) -> None:
        """Deliver everything due now and return when every attempt is recorded."""
        full = True
        while full:
            started, full = await self._dispatch()
            await asyncio.gather(*started)

    # -- grouping ---------------------------------------------------------------------------

    async def _dispatch(self) -> tuple[list[asyncio.Task[None]], bool]:
        """Start delivering what is due; the tasks, and whether the look was a full batch
        (so that more may be due)."""
        now = self.ctx.clock.now()
        messages = await self.store.outbound.list(due_before=now, limit=_BATCH)
        groups: dict[str, list[_Job]] = {}
        for message in messages:
            content = self._content_loader(message)
            by_domain: dict[str, list[QueuedRecipient]] = {}
            for r in message.recipients:
                if (
                    r.state is QueueState.PENDING
                    and r.next_attempt <= now
                    and r.id not in self._busy
                ):
                    domain = _RELAY if self.relay.host else _domain(r.recipient.address)
                    by_domain.setdefault(domain, []).append(r)
            for domain, recipients in by_domain.items():
                self._busy.update(r.id for r in recipients)
                groups.setdefault(domain, []).append(_Job(message, recipients, content))
        started = []
        for domain, jobs in groups.items():
            task = asyncio.create_task(self._deliver_domain(domain, jobs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started.append(task)
        return started, len(messages) == _BATCH

    def _content_loader(self, message: QueuedMessage) -> _Loader:
        """Read (and DKIM-sign) a message once, however many domains it goes to."""
        loaded: asyncio.Task[tuple[bytes, bytes] | None] | None = None

        async def load() -> tuple[bytes, bytes] | None:
            raw = await self.store.outbound.read(message.id)
            if raw is None:
                return None
            return raw, await self._sign(message, raw)

        def get() -> Awaitable[tuple[bytes, bytes] | None]:
            nonlocal loaded
            if loaded is None:
                loaded = asyncio.ensure_future(load())
            return asyncio.shield(loaded)

        return get

    async def _sign(self, message: QueuedMessage, raw: bytes) -> bytes:
        sender_domain = _domain(message.envelope.sender)
        if not sender_domain or not await self.store.is_local_domain(sender_domain):
            return raw
        domain = dkim.signing_domain(raw)
        if domain is None or not await self.store.is_local_domain(domain):
            return raw
        key = await asyncio.to_thread(dkim.find_key, self.ctx.data_dir, domain)
        if key is None:
            return raw
        try:
            return await dkim.sign_off_loop(key, raw)
        except Exception:
            # An unusable key must not stop the mail: it goes out unsigned, loudly.
            self.log.exception("DKIM signing failed", extra={"queue_id": message.id})
            return raw

    # -- one destination --------------------------------------------------------------------

    async def _deliver_domain(self, domain: str, jobs: list[_Job]) -> None:
        try:
            await self._deliver_jobs(domain, jobs)
        except Exception:
            # The recipients stay pending and are tried at the next look at the queue.
            self.log.exception("delivery to %s failed", domain or self.relay.host)
        finally:
            for job in jobs:
                self._busy.difference_update(r.id for r in job.recipients)

    async def _deliver_jobs(self, domain: str, jobs: list[_Job]) -> None:
        try:
            hosts, port = await self._route(domain)
        except DnsError as exc:
            reply = local_failure(550 if exc.permanent else 451, f"{exc.status} {exc}")
            for job in jobs:
                await self._finish(job, [reply] * len(job.recipients), None)
            return
        waiting = deque(jobs)
        limit = min(self.config.connections_per_domain, len(jobs))
        async with self._domain_slot(domain):
            await asyncio.gather(
                *(self._connection(domain, hosts, port, waiting) for _ in range(limit))
            )

    @contextlib.asynccontextmanager
    async def _domain_slot(self, domain: str) -> AsyncIterator[None]:
        """The domain's connection semaphore, shared by every run delivering there."""
        slot, users = self._domain_slots.get(domain, (None, 0))
        if slot is None:
            slot = asyncio.Semaphore(self.config.connections_per_domain)
        self._domain_slots[domain] = (slot, users + 1)
        try:
            yield
        finally:
            slot, users = self._domain_slots[domain]
            if users == 1:
                del self._domain_slots[domain]
            else:
                self._domain_slots[domain] = (slot, users - 1)

    async def _route(self, domain: str) -> tuple[list[MailHost], int]:
        if self.relay.host:
            return [MailHost(self.relay.host, (self.relay.host,))], self.relay.port
        assert self.resolver is not None
        return await self.resolver.mail_hosts(domain), self.config.smtp_port

    async def _connection(
        self, domain: str, hosts: Sequence[MailHost], port: int, waiting: deque[_Job]
    ) -> None:
        slot, _ = self._domain_slots[domain]
        async with slot, self._slots:
            client: SmtpClient | None = None
            sent = 0
            try:
                while waiting:
                    job = waiting.popleft()
                    content = await job.content()
                    if content is None:  # removed by the admin meanwhile
                        continue
                    if client is None:
                        try:
                            client = await self._open(hosts, port)
                        except SmtpFailure as exc:
                            # Unreachable now: every message waiting for it hears the same.
                            for queued in (job, *waiting):
                                await self._finish(
                                    queued, [exc.reply] * len(queued.recipients), None
                                )
                            waiting.clear()
                            return
                        sent = 0
                    host = client.host
                    try:
                        replies = await client.send(
                            job.message.envelope,
                            [r.recipient for r in job.recipients],
                            content[1],
                        )
                    except SmtpFailure as exc:
                        replies = [exc.reply] * len(job.recipients)
                        client.close()
                        client = None
                    await self._finish(job, replies, host, content[0])
                    sent += 1
                    if client is not None and sent >= self.config.messages_per_connection:
                        await client.quit()
                        client = None
            except BaseException:
                # Cancelled (shutdown) or broken: hang up without waiting for a QUIT reply.
                if client is not None:
                    client.close()
                raise
            if client is not None:
                await client.quit()

    async def _open(self, hosts: Sequence[MailHost], port: int) -> SmtpClient:
        """A connection to the first host that answers; raises SmtpFailure (the last)."""
        failure = local_failure(451, "4.4.1 no mail host to try")
        for host in hosts:
            for address in host.addresses:
                try:
                    return await self._open_one(host.name, address, port)
                except SmtpFailure as exc:
                    failure = exc.reply
                    self.log.info(
                        "connection failed", extra={"host": host.name, "reason": str(exc.reply)}
                    )
        raise SmtpFailure(failure)

    async def _open_one(self, name: str, address: str, port: int, tls: bool = True) -> SmtpClient:
        relay = self.relay
        implicit = ssl.create_default_context() if relay.host and relay.tls == "tls" else None
        client = await SmtpClient.connect(
            address,
            port,
            host=name,
            helo=self.hostname,
            connect_timeout=self.config.connect_timeout_seconds,
            reply_timeout=self.config.command_timeout_seconds,
            implicit_tls=implicit,
        )
        try:
            if relay.host:
                if relay.tls == "starttls":
                    if not client.offers("STARTTLS"):
                        raise SmtpFailure(local_failure(451, f"4.7.0 {name} offers no STARTTLS"))
                    await client.starttls(ssl.create_default_context(), self.hostname)
                if relay.username:
                    await client.login(relay.username, relay.password)
            elif tls and client.offers("STARTTLS"):
                try:
                    await client.starttls(opportunistic_tls(), self.hostname)
                except SmtpFailure:
                    # RFC 7435 §3: opportunistic means a failed handshake is retried in
                    # plaintext rather than not delivering at all (Postfix's `may`).
                    client.close()
                    return await self._open_one(name, address, port, tls=False)
        except SmtpFailure:
            client.close()
            raise
        return client

    # -- results ----------------------------------------------------------------------------

    async def _finish(
        self,
        job: _Job,
        replies: Sequence[Reply],
        host: str | None,
        raw: bytes | None = None,
    ) -> None:
        now = self.ctx.clock.now()
        message = job.message
        results: list[AttemptResult] = []
        failed: list[bounce.RecipientReport] = []
        for recipient, reply in zip(job.recipients, replies, strict=True):
            if reply.ok:
                results.append(AttemptResult(recipient.id, QueueState.DELIVERED, str(reply)))
                continue
            retry_at = (
                None
                if reply.permanent
                else self.retry.next_attempt(message.created, recipient.attempts + 1, now)
            )
            if retry_at is not None:
                results.append(
                    AttemptResult(recipient.id, QueueState.PENDING, str(reply), retry_at)
                )
                continue
            status, detail = reply.status, str(reply)
            if not reply.permanent:
                # RFC 3463 §3.5: 4.4.7, the message was too old; the last reply says why.
                status, detail = "4.4.7", f"gave up after {_age(message, now)}: {reply}"
            results.append(AttemptResult(recipient.id, QueueState.FAILED, detail))
            if _wants(recipient, "FAILURE"):
                failed.append(
                    bounce.RecipientReport(
                        recipient.recipient,
                        "failed",
                        status,
                        detail,
                        host if reply.permanent else None,
                    )
                )
        if failed:
            await self._report(message, raw, failed)
        await self.store.outbound.record(message.id, results, now)
        for result in results:
            self.log.info(
                "attempt",
                extra={
                    "queue_id": message.id,
                    "recipient": next(
                        r.recipient.address for r in job.recipients if r.id == result.recipient_id
                    ),
                    "state": result.state.value,
                    "detail": result.detail,
                },
            )
        by_id = {r.id: reply for r, reply in zip(job.recipients, replies, strict=True)}
        await self._warn(job, results, by_id, raw, now)

    async def _warn(
        self,
        job: _Job,
        results: Sequence[AttemptResult],
        replies: dict[int, Reply],
        raw: bytes | None,
        now: dt.datetime,
    ) -> None:
        """One delay warning per recipient once the message is old enough (RFC 3464 §2.3.3)."""
        if not self.retry.warning_due(job.message.created, now):
            return
        still = {r.recipient_id for r in results if r.state is QueueState.PENDING}
        due = [r for r in job.recipients if r.id in still and not r.warned and _wants(r, "DELAY")]
        if not due:
            return
        reports = [
            bounce.RecipientReport(r.recipient, "delayed", replies[r.id].status, str(replies[r.id]))
            for r in due
        ]
        await self._report(job.message, raw, reports)
        await self.store.outbound.mark_warned([r.id for r in due])

    async def _report(
        self, message: QueuedMessage, raw: bytes | None, reports: Sequence[bounce.RecipientReport]
    ) -> None:
        """Send a bounce or delay warning to the sender, with the null sender."""
        envelope = message.envelope
        if not envelope.sender:  # RFC 5321 §6.1: never a report about a report
            return
        if raw is None:
            raw = await self.store.outbound.read(message.id) or b""
        report = bounce.build_report(self.hostname, envelope, raw, reports, message.created)
        notice = Envelope("", (Recipient(envelope.sender),))
        origin = Origin(
            listener="queue",
            protocol="ESMTP",
            helo=self.hostname,
            peer_ip="",
            session_id=f"queue-{message.id}",
            received_at=self.ctx.clock.now(),
        )
        [verdict] = await self.delivery.deliver(notice, report, origin)
        if verdict.accepted:
            return
        if await self.store.is_local_domain(_domain(envelope.sender)):
            # A local sender who no longer exists: nobody to tell.
            self.log.warning(
                "report not delivered",
                extra={"queue_id": message.id, "sender": envelope.sender, "why": verdict.detail},
            )
            return
        await self.store.outbound.enqueue(
            report, notice, notice.recipients, origin.session_id, origin.received_at
        )


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _age(message: QueuedMessage, now: dt.datetime) -> str:
    hours = int((now - message.created).total_seconds() // 3600)
    return f"{hours // 24} days" if hours >= 48 else f"{hours} hours"


async def serve_queue(ctx: Context, stop: asyncio.Event) -> None:
    """Run the queue in this serving process while it holds the queue lock, until `stop`."""
    log = ctx.logger("queue")
    lock = queue_lock(ctx.data_dir)
    while lock is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ctx.config.queue.poll_seconds)
        if stop.is_set():
            return
        lock = queue_lock(ctx.data_dir)
    try:
        try:
            worker = QueueWorker(ctx)
        except SystemResolverRefused as exc:
            log.warning("queue worker not started: %s", exc)
            return
        log.info("queue worker started")
        await worker.run(stop)
    except Exception:
        log.exception("queue worker failed")
    finally:
        lock.release()
