"""DNS blocklists (config [dnsbl], RFC 5782): is the smtp client's IP listed by a zone?

One A query per zone, all zones at once, through the configured resolver; the answer for an
IP is cached for a few minutes, since a client sends several RCPTs and often several
messages.  With action "reject" the `DnsblGate` session stage refuses each RCPT from a
listed client (554 5.7.1), except to postmaster@ and abuse@, so a blocked sender can still
reach a human.  With action "tag" the `DnsblTagger` message stage lets the mail through with
an `X-DNSBL: <zone>` header and files it as junk.  Loopback, private and other non-global
addresses are never looked up: no public list knows them.  Written here rather than taken
from a library because it is one query per zone, and it must go through the resolver of
`[queue] resolver` (which tests point at loopback) rather than one a library picks.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

import dns.asyncresolver
import dns.exception
import dns.resolver

from postoffice.context import Context
from postoffice.delivery.model import Origin, Outcome, Verdict
from postoffice.filters.api import (
    Findings,
    Message,
    MessageStage,
    OnFailure,
    SessionStage,
    StageUnavailable,
    on_failure,
)
from postoffice.filters.greylist import ClientAddress, client_address
from postoffice.log import BoundLogger
from postoffice.resolver import async_resolver

LISTED: Final = ipaddress.IPv4Network("127.0.0.0/8")  # RFC 5782 §2.1
# Not listings: Spamhaus and others answer 127.255.255.x when they refuse to serve the query
# (a public resolver, over quota); treating those as listed would block everyone.
REFUSED: Final = ipaddress.IPv4Network("127.255.255.0/24")
# A role address a listed client may still write to (RFC 2142), to ask for its removal.
EXEMPT_LOCAL_PARTS: Final = frozenset({"postmaster", "abuse"})
CACHE_SECONDS: Final = 300.0
CACHE_ENTRIES: Final = 10_000
QUERY_TIMEOUT: Final = 5.0


def query_name(address: ClientAddress, zone: str) -> str:
    """RFC 5782 §2.1 (IPv4 octets) and §2.4 (IPv6 nibbles), reversed, under the zone."""
    reversed_labels = address.reverse_pointer.split(".")[:-2]  # less in-addr.arpa / ip6.arpa
    return ".".join([*reversed_labels, zone.rstrip(".")])


class DnsblLookup:
    """Which zones list an IP, cached per IP; shared by the gate and the tagger."""

    def __init__(
        self,
        zones: Sequence[str],
        resolver: dns.asyncresolver.Resolver,
        monotonic: Callable[[], float],
        log: BoundLogger,
    ) -> None:
        self.zones = tuple(zones)
        self.resolver = resolver
        self.monotonic = monotonic
        self.log = log
        self._cache: OrderedDict[str, tuple[float, tuple[str, ...]]] = OrderedDict()

    async def listed_by(self, ip: str) -> tuple[str, ...]:
        """The zones listing `ip`, in config order; () for an address no list can know.
        Raises StageUnavailable when a zone did not answer and none listed the IP."""
        address = client_address(ip)
        if address is None or not address.is_global:
            return ()
        key = str(address)
        now = self.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        answers = await asyncio.gather(
            *(self._listed(address, zone) for zone in self.zones), return_exceptions=True
        )
        listing = tuple(
            zone for zone, answer in zip(self.zones, answers, strict=True) if answer is True
        )
        failures = [answer for answer in answers if isinstance(answer, BaseException)]
        for failure in failures:
            if not isinstance(failure, StageUnavailable):
                raise failure
        if failures and not listing:
            raise failures[0]
        # A listing is worth remembering even if another zone failed; "not listed" only
        # when every zone said so.
        self._cache.pop(key, None)
        self._cache[key] = (now + CACHE_SECONDS, listing)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return listing

    async def _listed(self, address: ClientAddress, zone: str) -> bool:
        name = query_name(address, zone)
        try:
            answer = await self.resolver.resolve(name, "A")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return False
        except dns.exception.DNSException as exc:
            raise StageUnavailable(f"{zone}: {exc}") from exc
        listed = False
        for record in answer:
            code = ipaddress.IPv4Address(record.address)
            if code in REFUSED:
                self.log.warning("dnsbl refused the query", extra={"zone": zone, "code": str(code)})
            # Anything outside 127/8 is no listing but a broken or hijacked zone (say, an
            # expired list's domain answering every name).
            elif code in LISTED:
                listed = True
        return listed


class DnsblGate:
    """Action "reject": refuse every RCPT from a listed client but those to role addresses."""

    name = "dnsbl"

    def __init__(self, lookup: DnsblLookup, on_failure: OnFailure) -> None:
        self.lookup = lookup
        self.on_failure = on_failure

    async def check_connect(self, origin: Origin) -> Verdict | None:
        return None

    async def check_sender(self, sender: str, origin: Origin) -> Verdict | None:
        return None

    async def check_recipient(self, sender: str, recipient: str, origin: Origin) -> Verdict | None:
        local_part = recipient.rpartition("@")[0] or recipient  # RFC 5321 §4.5.1 <postmaster>
        if local_part.lower() in EXEMPT_LOCAL_PARTS:
            return None
        listing = await self.lookup.listed_by(origin.peer_ip)
        if not listing:
            return None
        return Verdict(Outcome.BLOCKED, f"{origin.peer_ip} is listed by {listing[0]}")


class DnsblTagger:
    """Action "tag": mail from a listed client is accepted, marked and filed as junk."""

    name = "dnsbl"

    def __init__(self, lookup: DnsblLookup, on_failure: OnFailure) -> None:
        self.lookup = lookup
        self.on_failure = on_failure

    async def scan(self, message: Message, findings: Findings) -> None:
        if message.origin.listener != "smtp" or not message.from_world:
            return
        listing = await self.lookup.listed_by(message.origin.peer_ip)
        for zone in listing:
            findings.add_header("X-DNSBL", zone)
        if listing:
            findings.junk = True
        findings.results["dnsbl"] = "listed" if listing else "pass"


def _lookup(ctx: Context) -> DnsblLookup:
    config = ctx.config.dnsbl
    return DnsblLookup(
        config.zones,
        async_resolver(ctx.config.queue.resolver, timeout=QUERY_TIMEOUT, cache=False),
        ctx.clock.monotonic,
        ctx.logger("dnsbl"),
    )


def build(ctx: Context) -> SessionStage | None:
    config = ctx.config.dnsbl
    if not config.zones or config.action != "reject":
        return None
    return DnsblGate(_lookup(ctx), on_failure(config.on_failure))


def build_tagger(ctx: Context) -> MessageStage | None:
    """The message stage for action "tag"; the chain lists it with the other message stages."""
    config = ctx.config.dnsbl
    if not config.zones or config.action != "tag":
        return None
    return DnsblTagger(_lookup(ctx), on_failure(config.on_failure))
