"""`bench/queue_bench.py --quick` as a smoke test: every row is printed with a positive value.

No timing is asserted (numbers belong in docs/performance.md, not in pass/fail); the rows
are, so that a workload silently dropped from the benchmark fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "queue_bench.py"
ROW = re.compile(r"^(.*\S)\s+(\d+\.\d)\s+(\S+)$")


def test_quick_queue_benchmark_prints_every_row() -> None:
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
    expected = [
        ("deliver 50 msgs to 1 domain", "msgs/s"),
        ("deliver 50 msgs to 10 domains", "msgs/s"),
        ("DKIM sign (RSA-2048)", "ms/msg"),
        ("DKIM sign (Ed25519)", "ms/msg"),
    ]
    assert [(name, unit) for name, _, unit in table] == expected, result.stdout
    assert all(value > 0 for _, value, _ in table), result.stdout
