from __future__ import annotations

from typing import Any

import pytest

from postoffice.auth.throttle import (
    LoginThrottle,
    ThrottleConfig,
    ThrottleDecision,
    account_key,
    ip_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(clock: Clock) -> LoginThrottle:
    return LoginThrottle(ThrottleConfig(), clock)


ALLOWED = ThrottleDecision(allowed=True, delay=0.0, retry_after=0.0)


def test_defaults() -> None:
    config = ThrottleConfig()
    assert (config.max_failures_per_ip, config.max_failures_per_account) == (10, 5)
    assert (config.window_seconds, config.lockout_seconds) == (300, 300)
    assert (config.delay_base_seconds, config.delay_max_seconds) == (0.5, 5.0)
    assert config.exempt_loopback is False


def test_fresh_client_is_allowed(throttle: LoginThrottle) -> None:
    assert throttle.check("192.0.2.1", "alice@example.com") == ALLOWED
    assert throttle.check("192.0.2.1", None) == ALLOWED


def test_delay_doubles_up_to_the_cap(throttle: LoginThrottle) -> None:
    delays = []
    for i in range(9):
        throttle.record_failure("192.0.2.1", f"user{i}")
        delays.append(throttle.check("192.0.2.1", None).delay)
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0]


def test_account_lockout_from_many_ips_and_expiry(throttle: LoginThrottle, clock: Clock) -> None:
    for i in range(5):
        assert throttle.check(f"192.0.2.{i}", "alice").allowed
        throttle.record_failure(f"192.0.2.{i}", "alice")
    decision = throttle.check("198.51.100.7", "alice")
    assert decision == ThrottleDecision(allowed=False, delay=0.0, retry_after=300.0)
    assert throttle.check("198.51.100.7", "bob") == ALLOWED
    clock.now += 120
    assert throttle.check("198.51.100.7", "alice").retry_after == 180
    clock.now += 180
    assert throttle.check("198.51.100.7", "alice") == ALLOWED


def test_ip_lockout_across_accounts(throttle: LoginThrottle, clock: Clock) -> None:
    for i in range(10):
        throttle.record_failure("192.0.2.1", f"user{i}")
    assert not throttle.check("192.0.2.1", None).allowed
    assert not throttle.check("192.0.2.1", "someone-else").allowed
    assert throttle.check("192.0.2.2", "someone-else") == ALLOWED
    clock.now += 300
    assert throttle.check("192.0.2.1", None) == ALLOWED


def test_failures_outside_the_window_do_not_add_up(throttle: LoginThrottle, clock: Clock) -> None:
    for _ in range(4):
        throttle.record_failure("192.0.2.1", "alice")
    clock.now += 301
    for _ in range(4):
        throttle.record_failure("192.0.2.1", "alice")
    decision = throttle.check("192.0.2.1", "alice")
    assert decision.allowed
    assert decision.delay == 4.0


def test_failures_during_lockout_do_not_extend_it(throttle: LoginThrottle, clock: Clock) -> None:
    for _ in range(5):
        throttle.record_failure("192.0.2.1", "alice")
    clock.now += 200
    throttle.record_failure("192.0.2.9", "alice")
    assert throttle.check("192.0.2.9", "alice").retry_after == 100


def test_success_clears_the_account_but_not_the_ip(throttle: LoginThrottle) -> None:
    for i in range(4):
        throttle.record_failure("192.0.2.1", "alice")
        throttle.record_failure("192.0.2.1", f"other{i}")
    throttle.record_success("192.0.2.1", "alice")
    assert throttle.check("192.0.2.2", "alice") == ALLOWED
    assert throttle.check("192.0.2.1", None).delay == 5.0


def test_account_names_are_case_insensitive(throttle: LoginThrottle) -> None:
    for name in [
        "Alice@Example.com",
        "ALICE@example.com",
        "alice@EXAMPLE.COM",
        "aLiCe@example.com",
    ]:
        throttle.record_failure("192.0.2.1", name)
    throttle.record_failure("192.0.2.1", "alice@example.com")
    assert not throttle.check("192.0.2.99", "alice@example.com").allowed
    assert account_key("Alice@Example.COM") == "alice@example.com"


def test_ipv6_counts_per_64(throttle: LoginThrottle) -> None:
    for i in range(10):
        throttle.record_failure(f"2001:db8:1:2::{i + 1:x}", None)
    assert not throttle.check("2001:db8:1:2:ffff:ffff:ffff:ffff", None).allowed
    assert throttle.check("2001:db8:1:3::1", None) == ALLOWED
    assert throttle.tracked_ips == 1


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unix-socket", "unix-socket"),
    ],
)
def test_ip_key(ip: str, key: str) -> None:
    assert ip_key(ip) == key


def test_ipv4_mapped_shares_the_ipv4_counter(throttle: LoginThrottle) -> None:
    for _ in range(5):
        throttle.record_failure("192.0.2.1", None)
        throttle.record_failure("::ffff:192.0.2.1", None)
    assert not throttle.check("192.0.2.1", None).allowed


def test_expired_entries_are_pruned(throttle: LoginThrottle, clock: Clock) -> None:
    for i in range(50):
        throttle.record_failure(f"192.0.2.{i}", f"user{i}")
    assert (throttle.tracked_ips, throttle.tracked_accounts) == (50, 50)
    clock.now += 301
    throttle.record_failure("198.51.100.1", "fresh")
    assert (throttle.tracked_ips, throttle.tracked_accounts) == (1, 1)


def test_table_size_is_capped(clock: Clock) -> None:
    throttle = LoginThrottle(ThrottleConfig(max_entries=100), clock)
    for i in range(1000):
        throttle.record_failure(f"10.0.{i // 256}.{i % 256}", f"user{i}")
    assert throttle.tracked_ips == 100
    assert throttle.tracked_accounts == 100
    # The most recent offenders are the ones kept.
    assert throttle.check("10.0.3.231", None).delay == 0.5


def test_a_locked_account_survives_an_ip_spray(clock: Clock) -> None:
    throttle = LoginThrottle(ThrottleConfig(max_entries=100), clock)
    for _ in range(5):
        throttle.record_failure("192.0.2.1", "alice")
    for i in range(1000):
        throttle.record_failure(f"10.0.{i // 256}.{i % 256}", None)
    assert not throttle.check("198.51.100.1", "alice").allowed


def test_loopback_is_not_exempt_by_default(throttle: LoginThrottle) -> None:
    for _ in range(10):
        throttle.record_failure("127.0.0.1", None)
    assert not throttle.check("127.0.0.1", None).allowed


def test_loopback_exemption_still_counts_the_account(clock: Clock) -> None:
    throttle = LoginThrottle(ThrottleConfig(exempt_loopback=True), clock)
    for _ in range(5):
        throttle.record_failure("::1", "alice")
    assert throttle.check("127.0.0.1", None) == ALLOWED
    assert throttle.tracked_ips == 0
    assert not throttle.check("127.0.0.1", "alice").allowed


@pytest.mark.parametrize(
    "changes",
    [
        {"max_failures_per_ip": 0},
        {"max_failures_per_account": 0},
        {"window_seconds": 0},
        {"lockout_seconds": -1},
        {"delay_base_seconds": 6.0},
        {"delay_base_seconds": -1.0},
        {"max_entries": 0},
    ],
)
def test_config_validation(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        ThrottleConfig(**changes)
