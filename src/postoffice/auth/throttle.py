"""Failed-login throttling per client network and per account (DESIGN §7).

One `LoginThrottle` per process is shared by IMAP, POP3, SMTP submission, ManageSieve and the
web login.  Each failure grows the delay before the next attempt is answered; too many in the
window lock the IP (or account) out for a while.  Memory is bounded: expired entries are
dropped as new failures arrive, and each table has a hard size cap so an attacker spraying
source addresses or user names cannot grow it without limit.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    max_failures_per_ip: int = 10
    max_failures_per_account: int = 5
    window_seconds: float = 300.0
    lockout_seconds: float = 300.0
    delay_base_seconds: float = 0.5
    delay_max_seconds: float = 5.0
    max_entries: int = 100_000  # per table (IPs, accounts)
    # Off by default: a local proxy or webmail passes the real client address, and a
    # compromised local process deserves no free guesses.
    exempt_loopback: bool = False

    def __post_init__(self) -> None:
        if self.max_failures_per_ip < 1 or self.max_failures_per_account < 1:
            raise ValueError("failure limits must be at least 1")
        if self.window_seconds <= 0 or self.lockout_seconds < 0:
            raise ValueError("window must be positive and lockout not negative")
        if not 0 <= self.delay_base_seconds <= self.delay_max_seconds:
            raise ValueError("need 0 <= delay_base_seconds <= delay_max_seconds")
        if self.max_entries < 1:
            raise ValueError("max_entries must be at least 1")


@dataclass(frozen=True, slots=True)
class ThrottleDecision:
    """`allowed` False: refuse without checking the password, tell the client to come back
    in `retry_after` seconds.  `allowed` True: wait `delay` seconds, then check."""

    allowed: bool
    delay: float
    retry_after: float


@dataclass(slots=True)
class _Counter:
    failures: int
    window_start: float
    locked_until: float

    def expires(self, window: float) -> float:
        return max(self.window_start + window, self.locked_until)


class _Table:
    """Failure counters by key, least recently failed first."""

    def __init__(self, limit: int, config: ThrottleConfig) -> None:
        self._limit = limit
        self._config = config
        self._entries: OrderedDict[str, _Counter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> _Counter | None:
        counter = self._entries.get(key)
        if counter is not None and counter.expires(self._config.window_seconds) <= now:
            del self._entries[key]
            return None
        return counter

    def fail(self, key: str, now: float) -> None:
        counter = self.get(key, now)
        if counter is None:
            counter = self._entries[key] = _Counter(0, now, 0.0)
        elif now < counter.locked_until:
            # A failure reported during a lockout does not extend it: otherwise an attacker
            # could keep a victim's account locked for ever with one guess per lockout.
            return
        elif now >= counter.window_start + self._config.window_seconds:
            counter.failures, counter.window_start = 0, now
        self._entries.move_to_end(key)
        counter.failures += 1
        if counter.failures >= self._limit:
            counter.locked_until = now + self._config.lockout_seconds
            counter.failures, counter.window_start = 0, now
        self._prune(now)

    def clear(self, key: str) -> None:
        self._entries.pop(key, None)

    def _prune(self, now: float) -> None:
        window = self._config.window_seconds
        # Oldest failures first, so the expired ones sit at the front; stopping at the first
        # live entry keeps each call cheap (every entry is dropped at most once).
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires(window) > now:
                break
            self._entries.popitem(last=False)
        while len(self._entries) > self._config.max_entries:
            self._entries.popitem(last=False)


class LoginThrottle:
    def __init__(self, config: ThrottleConfig, clock: Callable[[], float]) -> None:
        """`clock` is monotonic seconds (time.monotonic in production)."""
        self._config = config
        self._clock = clock
        self._ips = _Table(config.max_failures_per_ip, config)
        self._accounts = _Table(config.max_failures_per_account, config)

    @property
    def tracked_ips(self) -> int:
        return len(self._ips)

    @property
    def tracked_accounts(self) -> int:
        return len(self._accounts)

    def check(self, ip: str, account: str | None) -> ThrottleDecision:
        """May a login for `account` (None: not known yet) from `ip` be tried now?"""
        now = self._clock()
        counters = [self._accounts.get(account_key(account), now)] if account is not None else []
        if not self._exempt(ip):
            counters.append(self._ips.get(ip_key(ip), now))
        live = [c for c in counters if c is not None]
        locked_until = max((c.locked_until for c in live), default=0.0)
        if locked_until > now:
            return ThrottleDecision(allowed=False, delay=0.0, retry_after=locked_until - now)
        failures = max((c.failures for c in live), default=0)
        return ThrottleDecision(allowed=True, delay=self._delay(failures), retry_after=0.0)

    def record_failure(self, ip: str, account: str | None) -> None:
        """Count a failed login; `account` is None when the client never named one."""
        now = self._clock()
        if not self._exempt(ip):
            self._ips.fail(ip_key(ip), now)
        if account is not None:
            self._accounts.fail(account_key(account), now)

    def record_success(self, ip: str, account: str) -> None:
        """Forget the account's failures.

        The IP's failures stay: clearing them would let an attacker who owns one account
        reset the counter of the network they guess other accounts from.  `ip` is taken
        so that every caller reports the same pair for failure and success.
        """
        self._accounts.clear(account_key(account))

    def _exempt(self, ip: str) -> bool:
        if not self._config.exempt_loopback:
            return False
        try:
            return _unmapped(ipaddress.ip_address(ip)).is_loopback
        except ValueError:
            return False

    def _delay(self, failures: int) -> float:
        if failures == 0:
            return 0.0
        delay = self._config.delay_base_seconds * 2.0 ** (failures - 1)
        return min(delay, self._config.delay_max_seconds)


def ip_key(ip: str) -> str:
    """The throttling key of a client address: the address itself for IPv4, its /64 for
    IPv6 (one end site usually owns a whole /64, so per-address counting is trivially
    dodged).  Anything that is not an IP literal (a unix socket peer) is used as given."""
    try:
        address = _unmapped(ipaddress.ip_address(ip))
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def account_key(account: str) -> str:
    # Case variants of one address reach the same mailbox, so they share one counter.
    return account.casefold()


def _unmapped(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # An IPv4 client on a dual-stack socket appears as ::ffff:a.b.c.d; count it as IPv4.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
