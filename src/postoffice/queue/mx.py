"""Where mail for a domain goes: MX lookup with dnspython's async resolver (RFC 5321 §5.1).

MX hosts in preference order (equal preferences shuffled, §5.1), each resolved to its A then
AAAA addresses; no MX at all means the domain itself is the mail host (the implicit MX);
a null MX (RFC 7505) or a domain that does not exist fails at once.  The resolver address
comes from `[queue] resolver` (see resolver.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.MX import MX

from postoffice.resolver import async_resolver


class DnsError(Exception):
    """A lookup failed; `permanent` decides between a bounce and a retry."""

    def __init__(self, message: str, *, permanent: bool, status: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status  # RFC 3463 enhanced code for the report


@dataclass(frozen=True, slots=True)
class MailHost:
    name: str  # the MX host (or the domain, for an implicit MX), for logs and reports
    addresses: tuple[str, ...]  # to try in order


class MxResolver:
    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        """`address` is "HOST:PORT" of the DNS server to ask, or "" for the system's."""
        resolver = async_resolver(address, timeout=timeout)
        self._resolver = resolver

    async def mail_hosts(self, domain: str) -> list[MailHost]:
        """The hosts to try for `domain`, best first; raises DnsError."""
        try:
            name = dns.name.from_text(domain.encode("idna").decode("ascii"))
        except (UnicodeError, dns.exception.DNSException):
            raise DnsError(f"invalid domain {domain}", permanent=True, status="5.1.2") from None
        try:
            answer = await self._resolver.resolve(name, "MX", search=False)
        except dns.resolver.NoAnswer:
            # RFC 5321 §5.1: no MX records, so the domain is its own mail host.
            addresses = await self._addresses(name)
            if not addresses:
                raise DnsError(
                    f"{domain} has no MX and no address", permanent=True, status="5.1.2"
                ) from None
            return [MailHost(domain, addresses)]
        except dns.exception.DNSException as exc:
            raise _dns_error(domain, exc) from None
        records = sorted((cast(MX, r) for r in answer), key=lambda r: r.preference)
        if len(records) == 1 and records[0].exchange == dns.name.root:
            # RFC 7505 §3: the domain accepts no mail; 556 5.1.10.
            raise DnsError(f"{domain} accepts no mail (null MX)", permanent=True, status="5.1.10")
        hosts: list[MailHost] = []
        for group in _preference_groups(records):
            random.shuffle(group)
            for record in group:
                exchange: dns.name.Name = record.exchange
                if exchange == dns.name.root:
                    continue
                addresses = await self._addresses(exchange)
                if addresses:
                    hosts.append(MailHost(exchange.to_text(omit_final_dot=True), addresses))
        if not hosts:
            raise DnsError(
                f"no address for any MX host of {domain}", permanent=False, status="4.4.3"
            )
        return hosts

    async def _addresses(self, name: dns.name.Name) -> tuple[str, ...]:
        found: list[str] = []
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self._resolver.resolve(name, rdtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            except dns.exception.DNSException as exc:
                raise _dns_error(name.to_text(omit_final_dot=True), exc) from None
            found.extend(r.to_text() for r in answer)
        return tuple(found)


def _preference_groups(records: Sequence[MX]) -> list[list[MX]]:
    groups: dict[int, list[MX]] = {}
    for record in records:
        groups.setdefault(record.preference, []).append(record)
    return [groups[p] for p in sorted(groups)]


def _dns_error(domain: str, exc: dns.exception.DNSException) -> DnsError:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return DnsError(f"{domain} does not exist", permanent=True, status="5.1.2")
    # SERVFAIL, timeouts, no answering server: the DNS may recover (RFC 5321 §5.1).
    return DnsError(f"DNS lookup for {domain} failed: {exc}", permanent=False, status="4.4.3")
