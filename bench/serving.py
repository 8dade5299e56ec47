"""A real `postoffice serve` for a benchmark: one listener on a free loopback port, the
others off, and the log in a file (a pipe nobody reads would fill up and stall the server)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from postoffice.config import LISTENER_NAMES


def start_server(data: Path, listener: str) -> tuple[subprocess.Popen[str], int]:
    """Start serving the initialised `data` folder; the process and the listener's port."""
    others = [f"--listen={name}=off" for name in LISTENER_NAMES if name != listener]
    exe = [sys.executable, "-m", "postoffice", "--data", str(data), "serve"]
    log_path = data / "serve.log"
    with log_path.open("a") as log:
        start = log.tell()
        process = subprocess.Popen(
            [*exe, f"--listen={listener}=127.0.0.1:0", *others], stderr=log, text=True
        )
    listening = re.compile(rf"listener {listener} 127\.0\.0\.1:(\d+): listening")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log_path.read_text()[start:]
        found = listening.search(text)
        if found and " ready" in text:
            return process, int(found.group(1))
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"server did not start:\n{log_path.read_text()}")


def stop_server(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
