"""The one way to get a DNS resolver: the server named in `[queue] resolver`, or the system's.

Tests point `[queue] resolver` at a DNS server on loopback; under pytest the system resolver
is refused outright, so a test can never send a query to the world.
"""

from __future__ import annotations

import os

import dns.asyncresolver
import dns.nameserver
import dns.resolver

from postoffice.config import TcpAddress, parse_listen_address


class SystemResolverRefused(RuntimeError):
    """Raised under pytest when no resolver address is configured."""


# Answers kept per resolver (dnspython honours each record's TTL, and a negative answer's SOA
# minimum): the same sender domains write again and again, and each message would otherwise
# ask for its SPF, DMARC and DKIM records anew.
CACHE_ENTRIES = 10_000


def _configure(
    resolver: dns.resolver.BaseResolver, address: str, timeout: float, cache: bool
) -> None:
    if address:
        parsed = parse_listen_address(address, allow_unix=False)
        if not isinstance(parsed, TcpAddress):  # [queue] resolver was validated
            raise ValueError(f"invalid resolver address {address!r}")
        resolver.nameservers = [dns.nameserver.Do53Nameserver(parsed.host, parsed.port)]
    elif "PYTEST_CURRENT_TEST" in os.environ:
        raise SystemResolverRefused(
            "tests must set [queue] resolver; the system resolver would query the world"
        )
    resolver.lifetime = timeout
    if cache:
        resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)


def async_resolver(
    address: str, *, timeout: float = 10.0, cache: bool = True
) -> dns.asyncresolver.Resolver:
    """`address` is "HOST:PORT" of the DNS server to ask, or "" for the system's; `cache`
    False for a caller that keeps what it learns itself."""
    resolver = dns.asyncresolver.Resolver(configure=not address)
    _configure(resolver, address, timeout, cache)
    return resolver


def sync_resolver(address: str, *, timeout: float = 10.0) -> dns.resolver.Resolver:
    """The blocking twin, for libraries that look up in a worker thread (pyspf, dkimpy)."""
    resolver = dns.resolver.Resolver(configure=not address)
    _configure(resolver, address, timeout, cache=True)
    return resolver
