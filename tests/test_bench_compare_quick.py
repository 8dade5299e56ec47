"""`bench/compare.py --quick` as a smoke test: every workload ran against both postoffice and
the reference Postfix + Dovecot, and produced numbers.

No timing is asserted (numbers belong in docs/performance.md, not in pass/fail); the metric
names are, so that a workload silently dropped from one side or from the run fails here.  The
test skips only where the reference servers cannot be installed or started: not root, or
Postfix/Dovecot missing and no apt-get.  CI runs as root with apt, so there it runs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "compare.py"
UNAVAILABLE = 77  # compare.py's exit status when the reference servers cannot run


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "starting throw-away Postfix and Dovecot instances needs root"
    if not (shutil.which("postfix") and shutil.which("dovecot")) and not shutil.which("apt-get"):
        return "Postfix/Dovecot are not installed and there is no apt-get to install them"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


def expected_metrics() -> list[str]:
    names = ["RSS at rest", "PSS at rest", "processes at rest"]
    for size in (4, 100):
        for connections in (1, 16, 64):
            label = f"SMTP {size} KB x {connections} conns:"
            names += [
                f"{label} {what}"
                for what in (
                    "accepted",
                    "latency p50",
                    "latency p99",
                    "last 250 -> all visible",
                    "accepted and visible",
                    "server CPU per 1000 msgs",
                )
            ]
    names += ["RSS peak under SMTP load", "PSS peak under SMTP load"]
    for sessions in (1, 16):
        names += [
            f"smtp-source 4 KB x {sessions} sessions: {what}"
            for what in ("accepted", "accepted and visible")
        ]
    for label in ("IMAP APPEND 200 msgs x 1 conns:", "IMAP APPEND 400 msgs x 16 conns:"):
        names += [f"{label} appended", f"{label} server CPU per 1000 msgs"]
    items = "(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)"
    for size in (200, 400):
        label = f"IMAP {size} msgs:"
        names += [
            f"{label} SELECT (first)",
            f"{label} SELECT (again, p50)",
            f"{label} UID FETCH 1:* {items} (first)",
            f"{label} UID FETCH 1:* {items} (second)",
            f"{label} UID FETCH 1:* BODY.PEEK[HEADER]",
            f"{label} UID FETCH 1:* BODY.PEEK[]",
            f"{label} UID SEARCH TEXT (p50)",
            f"{label} UID SEARCH FROM (p50)",
            f"{label} UID SEARCH SINCE (p50)",
        ]
    names += [
        "RSS peak under IMAP APPEND/FETCH/SEARCH",
        "PSS peak under IMAP APPEND/FETCH/SEARCH",
    ]
    for label in ("POP3 drain 1 user:", "POP3 drain 16 users:"):
        names += [f"{label} messages", f"{label} bytes"]
    names += [
        f"IDLE 50 conns: {what}"
        for what in (
            "LOGIN+SELECT+IDLE set-up",
            "RSS per connection",
            "PSS per connection",
            "server RSS",
            "wake p50",
            "wake p99",
            "wake max",
        )
    ]
    return names


def test_quick_compare_runs_every_workload_against_both_servers(tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode != UNAVAILABLE, f"reference servers did not start:\n{result.stderr}"
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    metrics = {m["name"]: m for m in document["metrics"]}
    assert list(metrics) == expected_metrics(), result.stdout
    for name, metric in metrics.items():
        for side in ("postoffice", "reference"):
            value = metric[side]
            # Per-connection memory may come out at or below zero on a tiny run; it must
            # still be a number.
            assert isinstance(value, float | int) and math.isfinite(value), (name, side, value)
            if metric["unit"].endswith("/s") or metric["unit"] == "count":
                assert value > 0, (name, side, value)
        assert metric["better"] in ("higher", "lower"), name
    machine = document["machine"]
    assert machine["fsync_4k_writes_per_s"] > 0 and machine["loopback_mb_per_s"] > 0
    assert set(document["durability"]) == {"postoffice", "postfix", "dovecot"}
