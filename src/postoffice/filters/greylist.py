"""Greylisting (config [greylist]): the first message of an unknown triplet gets 451 4.7.1.

A triplet is (client network, sender, recipient): the network is the client's /24 (IPv4) or
/64 (IPv6), because large senders retry from another address of the same pool.  A retry
between `delay` and `retry_window` after first sight passes; a passed triplet is remembered
for `expiry` after its last message.  Once a triplet passed, any new sender of the same
domain from the same network passes at once: that MTA has shown it retries, and greylisting
it again for each new correspondent would only delay mail.  The state is in the store
(store/greylist.py), so every worker process shares it.
"""

from __future__ import annotations

import ipaddress

from postoffice.context import Clock, Context
from postoffice.delivery.model import Origin, Outcome, Verdict
from postoffice.filters.api import OnFailure, SessionStage
from postoffice.store.api import Greylist, GreylistTimes, GreylistTriplet

ClientAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(ip: str) -> ClientAddress | None:
    """The client's address, IPv4 also when a dual-stack socket maps it into IPv6; None when
    there is none (a unix socket)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_network(address: ClientAddress, ipv4_prefix: int = 24, ipv6_prefix: int = 64) -> str:
    """The network `address` is counted in, in CIDR form."""
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network((address, prefix), strict=False))


class Greylisting:
    name = "greylist"
    # A store that fails to answer must not stop the mail: greylisting is only a delay.
    on_failure: OnFailure = "accept"

    def __init__(self, greylist: Greylist, times: GreylistTimes, clock: Clock) -> None:
        self.greylist = greylist
        self.times = times
        self.clock = clock

    async def check_connect(self, origin: Origin) -> Verdict | None:
        return None

    async def check_sender(self, sender: str, origin: Origin) -> Verdict | None:
        return None

    async def check_recipient(self, sender: str, recipient: str, origin: Origin) -> Verdict | None:
        address = client_address(origin.peer_ip)
        if address is None:
            return None
        triplet = GreylistTriplet(client_network(address), sender.lower(), recipient.lower())
        decision = await self.greylist.check(triplet, self.clock.now(), self.times)
        if decision.passed:
            return None
        return Verdict(
            Outcome.GREYLISTED, f"Greylisted, please try again in {decision.wait} seconds"
        )


def build(ctx: Context) -> SessionStage | None:
    config = ctx.config.greylist
    if not config.enabled:
        return None
    times = GreylistTimes(config.delay, config.retry_window, config.expiry)
    return Greylisting(ctx.store.greylist, times, ctx.clock)
