"""The one object handed to everything that runs: config, store, TLS, throttle, clock, logs.

DESIGN §9: no module-level mutable state.  A test builds its own Context (its own data folder,
clock or store) and runs in parallel with others on port 0.
"""

from __future__ import annotations

import datetime as dt
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from postoffice.auth.authenticator import Authenticator
from postoffice.auth.throttle import LoginThrottle, ThrottleConfig
from postoffice.config import AuthConfig, Config
from postoffice.log import BoundLogger, get_logger
from postoffice.metrics import Metrics
from postoffice.store import Store, open_store
from postoffice.tls import build_server_context


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds for timeouts and rate limits; never jumps."""
        ...

    def now(self) -> dt.datetime:
        """Wall-clock time, timezone-aware (UTC), for dates written into mail."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)


class LoggerFactory(Protocol):
    def __call__(self, component: str, /, **fields: object) -> BoundLogger: ...


@dataclass(slots=True, eq=False)
class Context:
    config: Config
    data_dir: Path
    store: Store
    tls: ssl.SSLContext  # shared by implicit-TLS listeners and every STARTTLS
    throttle: LoginThrottle  # one per process, shared by every protocol's login
    clock: Clock = field(default_factory=SystemClock)
    logger: LoggerFactory = get_logger
    # One per process like the throttle, so every protocol's logins are checked alike.
    authenticator: Authenticator = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.authenticator = Authenticator(
            self.store.get_credentials, self.throttle, self.clock.monotonic, metrics=self.metrics
        )

    async def close(self) -> None:
        await self.store.close()


def throttle_config(auth: AuthConfig) -> ThrottleConfig:
    return ThrottleConfig(
        max_failures_per_ip=auth.max_failures_per_ip,
        max_failures_per_account=auth.max_failures_per_account,
        window_seconds=auth.window_seconds,
        lockout_seconds=auth.lockout_seconds,
        delay_base_seconds=auth.delay_base_seconds,
        delay_max_seconds=auth.delay_max_seconds,
        max_entries=auth.max_tracked,
        exempt_loopback=auth.exempt_loopback,
    )


def server_tls_context(data_dir: Path, config: Config) -> ssl.SSLContext:
    """The SSLContext from [tls]; raises TlsConfigError naming the file at fault."""
    cert, key = config.tls.paths(data_dir)
    return build_server_context(cert, key, min_version=config.tls.min_version)


async def open_configured_store(data_dir: Path, config: Config) -> Store:
    """The store the config names, opened: the one place that maps [store] to the backend."""
    return await open_store(
        data_dir,
        group_commit_max=config.store.group_commit_max,
        inline_max=config.store.inline_max,
    )


async def open_context(
    data_dir: Path,
    config: Config,
    *,
    tls: ssl.SSLContext | None = None,
    clock: Clock | None = None,
) -> Context:
    """Open the store and build everything else; `tls` is passed when the caller built it
    already (serve checks the certificate before forking its workers)."""
    clock = clock or SystemClock()
    tls = tls or server_tls_context(data_dir, config)
    store = await open_configured_store(data_dir, config)
    throttle = LoginThrottle(throttle_config(config.auth), clock.monotonic)
    return Context(config, data_dir, store, tls, throttle, clock)
