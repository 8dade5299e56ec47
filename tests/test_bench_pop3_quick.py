"""`bench/pop3_bench.py --quick` as a smoke test: both drains run, every message comes down."""

from __future__ import annotations

from conftest import run_quick_bench


def test_quick_pop3_benchmark_prints_every_row() -> None:
    table = run_quick_bench("pop3_bench.py")
    assert [(name, unit) for name, _, unit in table] == [
        ("drain 1 user (20 msgs)", "msgs/s"),
        ("drain 1 user (20 msgs)", "MB/s"),
        ("drain 16 users (320 msgs)", "msgs/s"),
        ("drain 16 users (320 msgs)", "MB/s"),
    ]
