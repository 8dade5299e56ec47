"""Sender authentication of mail from the world: SPF (RFC 7208), DKIM (RFC 6376), ARC
(RFC 8617) and DMARC (RFC 7489), reported in one Authentication-Results field (RFC 8601).

The cryptography and record grammars are the libraries' (pyspf, dkimpy, dmarc's record
parser, authres for the header); this module feeds them our resolver, bounds their DNS by one
deadline per message, and turns their answers into findings.  DMARC's evaluation is ours: the
dmarc package aligns subdomains only with a public suffix list, which is not installed, so the
organizational domain here is the last two labels of a name (a.b.example.com → example.com),
wrong for names under multi-label suffixes such as co.uk.

pyspf and dkimpy block, so they run in worker threads, SPF beside DKIM and ARC.  DNS failures
become temperror results; the stage raises StageUnavailable (after adding its header) only
when the DMARC verdict hinges on one, so `on_failure` decides whether such mail waits.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import authres
import authres.arc
import authres.dmarc
import dkim
import dkim.util
import dmarc
import dns.exception
import dns.name
import dns.resolver
import spf

from postoffice.config import SenderAuthConfig
from postoffice.context import Context
from postoffice.delivery.pipeline import from_addresses
from postoffice.filters.api import (
    Findings,
    Message,
    MessageStage,
    OnFailure,
    StageUnavailable,
    on_failure,
    rejected,
)
from postoffice.resolver import SystemResolverRefused, sync_resolver

R = TypeVar("R")
DNS_THREADS: Final = 64

# dkimpy logs every signature that does not verify at ERROR: that is the sender's problem,
# not ours, and the result is in the header.
_DKIMPY_LOG = logging.getLogger("postoffice.filters.dkimpy")
_DKIMPY_LOG.setLevel(logging.CRITICAL)


class DnsUnavailable(Exception):
    """The DNS server did not answer within the message's budget."""


class DnsBudget:
    """The lookups for one message, through our resolver, all before one deadline."""

    def __init__(self, resolver: dns.resolver.Resolver, seconds: float) -> None:
        self.resolver = resolver
        self.deadline = time.monotonic() + seconds

    def query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """The answer, or None for NXDOMAIN, no data and names DNS cannot hold."""
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return None  # a name from the message that is not a DNS name has no records
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DnsUnavailable(f"out of time before {name} {rdtype}")
        try:
            answer = self.resolver.resolve(
                qname, rdtype, lifetime=remaining, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            return None
        except dns.exception.DNSException as exc:
            raise DnsUnavailable(f"{name} {rdtype}: {exc}") from exc
        return answer if answer.rrset is not None else None

    def txt(self, name: str) -> list[bytes]:
        answer = self.query(name, "TXT")
        return [] if answer is None else [b"".join(rdata.strings) for rdata in answer]

    def dkim_key(self, name: bytes, timeout: float = 0) -> bytes | None:
        """dkimpy's `dnsfunc`; its timeout gives way to the budget."""
        records = self.txt(name.decode("ascii", "replace"))
        return records[0] if records else None


# pyspf looks names up through its module-level `DNSLookup` and offers no other hook, so the
# hook is replaced once; the budget of the check running in this thread (a context variable,
# which asyncio.to_thread carries over) decides where the queries go.
_spf_budget: contextvars.ContextVar[DnsBudget] = contextvars.ContextVar("spf_budget")
_pyspf_lookup: Callable[..., list[tuple[tuple[str, str], Any]]] = spf.DNSLookup


def _spf_lookup(
    name: str, qtype: str, tcpfallback: bool = True, timeout: float = 30
) -> list[tuple[tuple[str, str], Any]]:
    budget = _spf_budget.get(None)
    if budget is None:  # someone else's pyspf check in this process
        return _pyspf_lookup(name, qtype, tcpfallback, timeout)
    try:
        answer = budget.query(name, qtype)
    except DnsUnavailable as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    if answer is None:
        return []
    # The shapes pyspf's own dnspython driver returns.
    key = (name, qtype)
    if qtype in ("A", "AAAA"):
        return [(key, rdata.address) for rdata in answer]
    if qtype == "MX":
        return [(key, (rdata.preference, rdata.exchange)) for rdata in answer]
    if qtype == "PTR":
        return [(key, rdata.target.to_text(True)) for rdata in answer]
    return [(key, rdata.strings) for rdata in answer]  # TXT


spf.DNSLookup = _spf_lookup


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str  # RFC 7208 §2.6: pass, fail, softfail, neutral, none, temperror, permerror
    domain: str  # the identity checked: MAIL FROM's domain, or HELO's for the null sender
    sender: str  # "" when HELO was checked


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: str  # RFC 8601 §2.7.1: pass, fail, neutral, temperror, permerror
    domain: str  # d=
    identity: str  # i=
    selector: str  # s=


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str  # pass, fail, none, temperror, permerror
    domain: str  # the From: domain
    disposition: str  # what the domain's policy asks for this message: none, quarantine, reject


def check_spf(ip: str, sender: str, helo: str, budget: DnsBudget) -> SpfResult:
    """RFC 7208 §2.4: MAIL FROM, or postmaster@HELO for the null reverse-path."""
    domain = (sender.rpartition("@")[2] if sender else helo).lower()
    if not ip:  # a unix socket: there is no client address to authorize
        return SpfResult("none", domain, sender)
    token = _spf_budget.set(budget)
    try:
        # querytime=0: the budget, not pyspf's own clock, bounds the lookups.
        result, _ = spf.check2(i=ip, s=sender, h=helo, querytime=0)
    finally:
        _spf_budget.reset(token)
    return SpfResult(str(result), domain, sender)


# RFC 6376 §6.1.1: a signature without one of these cannot be verified at all.
REQUIRED_DKIM_TAGS = frozenset((b"v", b"a", b"b", b"bh", b"d", b"h", b"s"))


def check_dkim(raw: bytes, budget: DnsBudget) -> list[DkimResult]:
    """Every DKIM-Signature, topmost first (RFC 6376 §6.1: each is verified on its own)."""
    verifier = dkim.DKIM(raw, logger=_DKIMPY_LOG)
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    results = []
    for index, value in enumerate(signatures):
        try:
            tags = dkim.util.parse_tag_value(value)
        except dkim.util.InvalidTagValueList:
            results.append(DkimResult("permerror", "", "", ""))
            continue
        if REQUIRED_DKIM_TAGS - tags.keys():
            # dkimpy calls this a validation failure; RFC 6376 §6.1.1 a malformed signature.
            results.append(DkimResult("permerror", "", "", ""))
            continue
        domain = tags[b"d"].decode("ascii", "replace").lower()
        identity = tags.get(b"i", b"").decode("ascii", "replace")
        selector = tags[b"s"].decode("ascii", "replace")
        try:
            result = "pass" if verifier.verify(idx=index, dnsfunc=budget.dkim_key) else "fail"
        except dkim.ValidationError:
            result = "fail"  # body hash mismatch, signature outside its validity
        except dkim.DKIMException:
            result = "permerror"  # a malformed signature or key record
        except DnsUnavailable:
            result = "temperror"
        results.append(DkimResult(result, domain, identity, selector))
    return results


def check_arc(raw: bytes, budget: DnsBudget) -> str:
    """RFC 8617 §5.2: the chain validation status, pass, fail or none."""
    try:
        status, _, _ = dkim.arc_verify(raw, logger=_DKIMPY_LOG, dnsfunc=budget.dkim_key)
    except DnsUnavailable:
        return "temperror"
    # None: a seal reported cv=fail, which ends the chain (§5.2 step 2); that fails it too.
    return "fail" if status is None else bytes(status).decode("ascii")


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2 without a public suffix list: the last two labels."""
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


def aligned(author: str, authenticated: str, mode: str) -> bool:
    """RFC 7489 §3.1: strict wants the same name, relaxed the same organizational domain."""
    if mode == "s":
        return author.lower() == authenticated.lower()
    return organizational_domain(author) == organizational_domain(authenticated)


def dmarc_policy(domain: str, budget: DnsBudget) -> dmarc.Policy | None:
    """RFC 7489 §6.6.3: the From: domain's record, else its organizational domain's."""
    organizational = organizational_domain(domain)
    for candidate in dict.fromkeys((domain, organizational)):
        records = [r for r in budget.txt(f"_dmarc.{candidate}") if r.startswith(b"v=DMARC1")]
        if len(records) != 1:  # several records count as none
            continue
        try:
            return dmarc.DMARC().parse_record(
                records[0].decode("utf-8", "replace"),
                domain,
                org_domain=None if candidate == domain else candidate,
                strict=False,
            )
        except dmarc.RecordSyntaxError:
            continue  # invalid records are discarded
    return None


def check_dmarc(
    domain: str, spf_result: SpfResult | None, dkim_results: list[DkimResult], budget: DnsBudget
) -> DmarcResult:
    try:
        policy = dmarc_policy(domain, budget)
    except DnsUnavailable:
        return DmarcResult("temperror", domain, "none")
    if policy is None:
        return DmarcResult("none", domain, "none")
    # The results of the identifiers that align with the author's domain (§4.2).
    outcomes = [r.result for r in dkim_results if aligned(domain, r.domain, policy.adkim.value)]
    if spf_result is not None and aligned(domain, spf_result.domain, policy.aspf.value):
        outcomes.append(spf_result.result)
    if "pass" in outcomes:
        return DmarcResult("pass", domain, "none")
    if "temperror" in outcomes:  # an identifier that could not be checked might have passed
        return DmarcResult("temperror", domain, "none")
    # RFC 7489 §6.3: sp= governs subdomains of the domain that published the record.
    requested = policy.p
    if policy.org_domain is not None and policy.sp is not dmarc.DMARCDisposition.UNSPECIFIED:
        requested = policy.sp
    disposition = str(requested.value)
    # §6.6.4: mail outside the pct= sample gets the next policy down.
    if random.randrange(100) >= policy.pct:
        disposition = {"reject": "quarantine", "quarantine": "none"}.get(disposition, "none")
    return DmarcResult("fail", domain, disposition)


def author_domains(raw: bytes) -> list[str]:
    """The distinct domains of the From: field; RFC 7489 §6.6.1 applies each one's policy."""
    addresses = from_addresses(raw) or []
    domains = (address.rpartition("@")[2].lower() for address in addresses)
    return list(dict.fromkeys(d for d in domains if d))


class SenderAuthentication:
    name = "sender_auth"

    def __init__(
        self, config: SenderAuthConfig, resolver: dns.resolver.Resolver, hostname: str
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.hostname = hostname
        self.on_failure: OnFailure = on_failure(config.on_failure)
        # The checks wait on DNS far more than they compute, so they get threads of their
        # own: on the loop's default pool (cores + 4) concurrent messages would queue
        # behind each other's lookups.
        self._threads = ThreadPoolExecutor(DNS_THREADS, thread_name_prefix="sender-auth")

    def _in_thread(self, check: Callable[..., R], *args: Any) -> Awaitable[R]:
        # Like asyncio.to_thread, the context goes along: the SPF lookup hook reads it.
        call = functools.partial(contextvars.copy_context().run, check, *args)
        return asyncio.get_running_loop().run_in_executor(self._threads, call)

    async def scan(self, message: Message, findings: Findings) -> None:
        if not message.from_world:
            return
        # One trip to a thread for all four checks: under load the trips, not the lookups
        # (cached, or waited for without the GIL), are what costs the event loop.
        spf_result, dkim_results, arc_result, dmarc_results = await self._in_thread(
            self._check, message
        )
        config = self.config
        findings.add_header(
            "Authentication-Results",
            self._header(spf_result, dkim_results, arc_result, dmarc_results),
        )
        if spf_result is not None:
            findings.results["spf"] = spf_result.result
        if config.dkim:
            # One good signature authenticates the message (RFC 6376 §6.1).
            findings.results["dkim"] = _summary([r.result for r in dkim_results], "pass")
        if arc_result is not None:
            findings.results["arc"] = arc_result
        if config.dmarc:
            # Every From: domain must pass: one failing is enough to act on.
            findings.results["dmarc"] = _summary([r.result for r in dmarc_results], "fail")
        for outcome in dmarc_results:
            self._enforce(outcome, findings)
        if any(r.result == "temperror" for r in dmarc_results):
            raise StageUnavailable("DMARC could not be evaluated: DNS did not answer")

    def _check(
        self, message: Message
    ) -> tuple[SpfResult | None, list[DkimResult], str | None, list[DmarcResult]]:
        """SPF, DKIM, ARC, then DMARC over their results; blocking, on a worker thread."""
        config = self.config
        budget = DnsBudget(self.resolver, config.timeout_seconds)
        origin = message.origin
        spf_result = (
            check_spf(origin.peer_ip, message.envelope.sender, origin.helo, budget)
            if config.spf
            else None
        )
        dkim_results = (
            check_dkim(message.raw, budget)
            if config.dkim and _has_field(message.raw, b"dkim-signature")
            else []
        )
        arc_result = None
        if config.arc:
            arc_result = (
                check_arc(message.raw, budget) if _has_field(message.raw, b"arc-seal") else "none"
            )
        dmarc_results = (
            [
                check_dmarc(domain, spf_result, dkim_results, budget)
                for domain in author_domains(message.raw)
            ]
            if config.dmarc
            else []
        )
        return spf_result, dkim_results, arc_result, dmarc_results

    def _enforce(self, outcome: DmarcResult, findings: Findings) -> None:
        if outcome.result != "fail":
            return
        action = {
            "reject": self.config.dmarc_reject,
            "quarantine": self.config.dmarc_quarantine,
        }.get(outcome.disposition, "none")
        if action == "reject":
            findings.refuse(rejected(f"DMARC policy of {outcome.domain} rejects this message"))
        elif action == "quarantine":
            findings.junk = True

    def _header(
        self,
        spf_result: SpfResult | None,
        dkim_results: list[DkimResult],
        arc_result: str | None,
        dmarc_results: list[DmarcResult],
    ) -> str:
        clauses: list[authres.AuthenticationResult] = []
        if spf_result is not None:
            clauses.append(
                authres.SPFAuthenticationResult(
                    result=spf_result.result,
                    smtp_mailfrom=spf_result.sender or None,
                    smtp_helo=None if spf_result.sender else spf_result.domain,
                )
            )
        if self.config.dkim and not dkim_results:
            clauses.append(authres.DKIMAuthenticationResult(result="none"))
        clauses.extend(
            authres.DKIMAuthenticationResult(
                result=r.result,
                header_d=r.domain or None,
                header_i=r.identity or None,
                header_s=r.selector or None,
            )
            for r in dkim_results
        )
        if self.config.dmarc and not dmarc_results:
            clauses.append(authres.dmarc.DMARCAuthenticationResult(result="none"))
        clauses.extend(
            authres.dmarc.DMARCAuthenticationResult(
                result=r.result,
                header_from=r.domain,
                policy=r.disposition if r.result == "fail" else None,
            )
            for r in dmarc_results
        )
        if arc_result is not None:
            clauses.append(authres.arc.ARCAuthenticationResult(result=arc_result))
        # RFC 8601 §2.2, one result per folded line; the pipeline turns the breaks into CRLF.
        return ";\n".join([self.hostname, *(str(clause) for clause in clauses)])


def _has_field(raw: bytes, name: bytes) -> bool:
    """Whether the header may hold the field: a quick look that spares unsigned mail (most of
    it) a trip to a thread; a false yes only costs that trip."""
    end = raw.find(b"\r\n\r\n")
    return name + b":" in (raw if end < 0 else raw[:end]).lower()


def _summary(results: list[str], deciding: str) -> str:
    """One word for several signatures or From: domains: `deciding` if any has it."""
    if deciding in results:
        return deciding
    return results[0] if results else "none"


def build(ctx: Context) -> MessageStage | None:
    config = ctx.config.sender_auth
    if not (config.spf or config.dkim or config.arc or config.dmarc):
        return None
    try:
        resolver = sync_resolver(ctx.config.queue.resolver, timeout=config.timeout_seconds)
    except SystemResolverRefused:
        # Under pytest without [queue] resolver: a test world with no DNS has no sender checks.
        return None
    return SenderAuthentication(config, resolver, ctx.config.server.hostname)
