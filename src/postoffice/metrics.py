"""Counters of one process, read by /metrics (web/app.py) at each scrape.

Plain integers rather than prometheus_client objects: the hot paths (every connection, every
delivery) only add one, and the scrape builds a fresh registry from them, so two servers in
one test process never share a counter.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class Metrics:
    connections_open: Counter[str] = field(default_factory=Counter)  # by listener
    connections_total: Counter[str] = field(default_factory=Counter)  # by listener
    connections_refused: Counter[str] = field(default_factory=Counter)  # by listener
    deliveries: Counter[str] = field(default_factory=Counter)  # per recipient, by outcome
    auth_failures: int = 0

    def connection_opened(self, listener: str) -> None:
        self.connections_open[listener] += 1
        self.connections_total[listener] += 1

    def connection_closed(self, listener: str) -> None:
        self.connections_open[listener] -= 1
