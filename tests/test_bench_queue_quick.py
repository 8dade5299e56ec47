"""`bench/queue_bench.py --quick` as a smoke test: every row is printed with a positive value."""

from __future__ import annotations

from conftest import run_quick_bench


def test_quick_queue_benchmark_prints_every_row() -> None:
    table = run_quick_bench("queue_bench.py")
    assert [(name, unit) for name, _, unit in table] == [
        ("deliver 50 msgs to 1 domain", "msgs/s"),
        ("deliver 50 msgs to 10 domains", "msgs/s"),
        ("DKIM sign (RSA-2048)", "ms/msg"),
        ("DKIM sign (Ed25519)", "ms/msg"),
    ]
