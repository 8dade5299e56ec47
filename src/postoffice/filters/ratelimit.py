"""Per-client rate limits (config [rate_limits]): connections, messages and recipients.

Counted in memory, per worker process, in fixed windows that start at a client's first event:
a client may spend its whole allowance at the end of one window and again at the start of the
next, which is good enough to stop a flood and needs one counter per client instead of one
timestamp per event.  A client is an IPv4 address or an IPv6 /64 (one host's usual share, so a
host cannot escape its limit by changing address within it).  Clients in `exempt_networks`
(by default this host, where local relays and scripts run) are not counted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from postoffice.config import Network
from postoffice.context import Context
from postoffice.delivery.model import Origin, Outcome, Verdict
from postoffice.filters.api import OnFailure, SessionStage
from postoffice.filters.greylist import client_address, client_network

MINUTE = 60.0
HOUR = 3600.0
MAX_CLIENTS = 100_000


class FixedWindow:
    """At most `limit` events per key in each `period` seconds; memory bounded by `max_keys`."""

    def __init__(
        self,
        limit: int,
        period: float,
        monotonic: Callable[[], float],
        max_keys: int = MAX_CLIENTS,
    ) -> None:
        self.limit = limit
        self.period = period
        self.monotonic = monotonic
        self.max_keys = max_keys
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window start, events)

    def __len__(self) -> int:
        """How many clients are tracked."""
        return len(self._windows)

    def allow(self, key: str) -> bool:
        """Count one event; whether it is within the limit (refused events count too, so a
        client that keeps hammering stays refused)."""
        now = self.monotonic()
        start, events = self._windows.pop(key, (now, 0))
        if now - start >= self.period:
            start, events = now, 0
        # Re-inserted, so the dict runs from the least to the most recently active client.
        self._windows[key] = (start, events + 1)
        if len(self._windows) > self.max_keys:
            self._prune(now)
        return events + 1 <= self.limit

    def _prune(self, now: float) -> None:
        self._windows = {
            key: window for key, window in self._windows.items() if now - window[0] < self.period
        }
        # Still full of live windows: forget the least recently active quarter at once, so a
        # flood of new clients does not cost a full pass on every connection.
        excess = len(self._windows) - self.max_keys * 3 // 4
        if excess > 0:
            for key in list(self._windows)[:excess]:
                del self._windows[key]


class RateLimits:
    name = "rate_limits"
    on_failure: OnFailure = "accept"  # in memory: nothing to be unavailable

    def __init__(
        self,
        connections: FixedWindow | None,
        messages: FixedWindow | None,
        recipients: FixedWindow | None,
        exempt: Sequence[Network] = (),
    ) -> None:
        self.connections = connections
        self.messages = messages
        self.recipients = recipients
        self.exempt = tuple(exempt)

    async def check_connect(self, origin: Origin) -> Verdict | None:
        return self._count(self.connections, origin, "connections")

    async def check_sender(self, sender: str, origin: Origin) -> Verdict | None:
        return self._count(self.messages, origin, "messages")

    async def check_recipient(self, sender: str, recipient: str, origin: Origin) -> Verdict | None:
        return self._count(self.recipients, origin, "recipients")

    def _count(self, window: FixedWindow | None, origin: Origin, what: str) -> Verdict | None:
        address = client_address(origin.peer_ip)
        if window is None or address is None or any(address in net for net in self.exempt):
            return None
        if window.allow(client_network(address, ipv4_prefix=32)):
            return None
        return Verdict(
            Outcome.RATE_LIMITED, f"Too many {what} from {origin.peer_ip}, try again later"
        )


def build(ctx: Context) -> SessionStage | None:
    config = ctx.config.rate_limits
    monotonic = ctx.clock.monotonic

    def window(limit: int, period: float) -> FixedWindow | None:
        return FixedWindow(limit, period, monotonic) if limit > 0 else None

    windows = (
        window(config.connections_per_minute, MINUTE),
        window(config.messages_per_hour, HOUR),
        window(config.recipients_per_hour, HOUR),
    )
    if all(counted is None for counted in windows):
        return None
    return RateLimits(*windows, exempt=config.exempt_networks)
