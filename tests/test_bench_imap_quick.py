"""`bench/imap_bench.py --quick` as a smoke test: every workload runs and yields numbers.

No timing is asserted (numbers belong in docs/performance.md, not in pass/fail); the rows are,
so that a workload silently dropped from the benchmark fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "imap_bench.py"
ROW = re.compile(r"^(.*\S)\s+(\d+\.\d)\s+(\S+)$")

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
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [ROW.match(line) for line in result.stdout.splitlines()]
    assert all(rows), result.stdout
    table = [(m[1], float(m[2]), m[3]) for m in rows if m]
    # (how the row's name starts, what else it says, its unit)
    expected = [("fill 500 msgs", "", "msgs/s")]
    for size in ("100 msgs:", "500 msgs:"):
        expected += [(size, what, unit) for what, unit in MAILBOX_ROWS]
    expected.append(("IDLE: server RSS before any idler", "", "MiB"))
    for level in (25, 50, 100):
        expected += [(f"IDLE {level} conns:", what, unit) for what, unit in IDLE_ROWS]
    assert len(table) == len(expected), result.stdout
    for (name, value, unit), (start, what, wanted_unit) in zip(table, expected, strict=True):
        assert name.startswith(start) and what in name and unit == wanted_unit, name
        assert value > 0, name
