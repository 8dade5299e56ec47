"""`bench/imap_bench.py --quick` as a smoke test: every workload runs and yields numbers."""

from __future__ import annotations

from conftest import run_quick_bench

MAILBOX_ROWS = [
    ("UID FETCH 1:* (FLAGS ENVELOPE)", "ms"),
    ("UID FETCH 1:* (FLAGS ENVELOPE)", "msgs/s"),
    ("UID FETCH 1:* BODY.PEEK[HEADER]", "ms"),
    ("UID FETCH 1:* BODY.PEEK[HEADER]", "msgs/s"),
    ("BODY.PEEK[]", "msgs/s"),
    ("BODY.PEEK[]", "MB/s"),
    ("UID SEARCH TEXT", "ms"),
    ("UID SEARCH FROM", "ms"),
    ("UID SEARCH SINCE", "ms"),
]
IDLE_ROWS = [
    ("set-up rate", "conns/s"),
    ("server RSS per connection", "bytes"),
    ("wake latency p50", "ms"),
    ("wake latency p99", "ms"),
    ("wake latency max", "ms"),
]


def test_quick_imap_benchmark_prints_every_row() -> None:
    table = run_quick_bench("imap_bench.py")
    # (how the row's name starts, what else it says, its unit)
    expected = [("fill 500 msgs", "", "msgs/s")]
    for size in ("100 msgs:", "500 msgs:"):
        expected += [(size, what, unit) for what, unit in MAILBOX_ROWS]
    expected.append(("IDLE: server RSS before any idler", "", "MiB"))
    for level in (25, 50, 100):
        expected += [(f"IDLE {level} conns:", what, unit) for what, unit in IDLE_ROWS]
    assert len(table) == len(expected), table
    for (name, _, unit), (start, what, wanted_unit) in zip(table, expected, strict=True):
        assert name.startswith(start) and what in name and unit == wanted_unit, name
