"""A real `postoffice serve` for a benchmark: one listener on a free loopback port, the
others off, and the log in a file (a pipe nobody reads would fill up and stall the server).

Its DNS goes to a server on loopback that knows no name (`confine_dns`): the filters look up
SPF and DMARC records of the benchmark's sender domains, and a benchmark must never send a
query to the world.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset

from postoffice.config import LISTENER_NAMES

_dns_address: str | None = None
_SOA = "ns.invalid. hostmaster.invalid. 1 3600 600 86400 300"


def _answer_nxdomain(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            response = dns.message.make_response(dns.message.from_wire(data))
        except Exception:  # noqa: S112 - a malformed query gets no answer, like a real server
            continue
        response.set_rcode(dns.rcode.NXDOMAIN)
        # As a real server does (RFC 2308 §3): the SOA says how long "no such name" holds.
        question = response.question[0]
        response.authority.append(dns.rrset.from_text(question.name, 300, "IN", "SOA", _SOA))
        sock.sendto(response.to_wire(), peer)


def confine_dns(data: Path) -> None:
    """Point `[queue] resolver` of `data` at a loopback DNS server (started once per
    process) that answers every query with NXDOMAIN."""
    global _dns_address
    if _dns_address is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        threading.Thread(target=_answer_nxdomain, args=(sock,), daemon=True).start()
        _dns_address = f"127.0.0.1:{sock.getsockname()[1]}"
    config = data / "postoffice.toml"
    text, count = re.subn(
        r'(?m)^resolver = ".*"$', f'resolver = "{_dns_address}"', config.read_text()
    )
    if count != 1:
        raise RuntimeError(f"no resolver setting in {config}")
    config.write_text(text)


def start_server(data: Path, listener: str) -> tuple[subprocess.Popen[str], int]:
    """Start serving the initialised `data` folder; the process and the listener's port."""
    confine_dns(data)
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
