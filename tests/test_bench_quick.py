"""The benchmarks' --quick form as a smoke test: every workload runs and yields numbers.

No timing is asserted (numbers belong in docs/performance.md, not in pass/fail).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    ("script", "rows"),
    [
        ("store_bench.py", 9),  # ceiling, 4 append mixes, fill, fetch x2, overhead
        ("smtp_bench.py", 6),  # 2 sizes x 3 connection counts
    ],
)
def test_quick_benchmark_runs_every_workload(script: str, rows: int) -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    numbers = [line for line in result.stdout.splitlines() if re.search(r"\d+\.\d+", line)]
    assert len(numbers) == rows, result.stdout
