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


def _configure(resolver: dns.resolver.BaseResolver, address: str, timeout: float) -> None:
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


def async_resolver(address: str, *, timeout: float = 10.0) -> dns.asyncresolver.Resolver:
    """`address` is "HOST:PORT" of the DNS server to ask, or "" for the system's."""
    resolver = dns.asyncresolver.Resolver(configure=not address)
    _configure(resolver, address, timeout)
    return resolver


def sync_resolver(address: str, *, timeout: float = 10.0) -> dns.resolver.Resolver:
    """The blocking twin, for libraries that look up in a worker thread (pyspf, dkimpy)."""
    resolver = dns.resolver.Resolver(configure=not address)
    _configure(resolver, address, timeout)
    return resolver
