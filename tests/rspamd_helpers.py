"""A real rspamd for the junk tests: Debian's rspamd 3.4 with its stock rules, offline.

rspamd runs in the foreground (`-f`) as the current user (`-i` lets root do so), in its own
process group, from a generated rspamd.conf in a temporary directory that includes Debian's
defaults (/etc/rspamd) but declares only the normal (scanner) worker, on 127.0.0.1 port 0
(the port is read from /proc).  Database, log, control socket and hyperscan cache go to the
temporary directory; local.d/ there (`LOCAL_CONFDIR`) adjusts three things:

- DNS goes to a loopback resolver in this process that answers the test's records and
  NXDOMAIN to every other name, so DNSBL and map lookups fail at once (not listed, no map)
  and nothing leaves the machine;
- fuzzy_check is off: its servers are resolved with the system resolver, not the above;
- `url_tld` names a four-line suffix list: compiling Debian's ~10,000 public suffixes into
  a hyperscan database takes rspamd ~12 s per start with an empty cache.

Remote maps (maps.rspamd.com) cannot be fetched; rspamd keeps going without them.  No redis,
so no Bayes, greylisting or rate limits.  Startup takes about a second.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from test_junk import listening_port

RSPAMD: Final = "/usr/bin/rspamd"
# GTUBE (rspamd.com/doc/gtube_patterns.html): rspamd's stock rules reject any message with it.
GTUBE: Final = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# How long rspamd may take before the fixture gives up (it takes about a second).
START_TIMEOUT: Final = 60.0
TLDS: Final = ("com", "net", "org", "test")


def rspamd_available() -> bool:
    return Path(RSPAMD).exists()


class Resolver:
    """UDP DNS on 127.0.0.1 in a thread, answering from `records[(name, type)]` (rdata
    text); every other name is NXDOMAIN.  Each question is recorded."""

    def __init__(self, records: Mapping[tuple[str, str], Sequence[str]]) -> None:
        self.records = {
            (name.lower().rstrip("."), kind): list(v) for (name, kind), v in records.items()
        }
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.questions: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rspamd-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(dns.exception.DNSException, IndexError, OSError):
                self.sock.sendto(self._answer(dns.message.from_wire(data)), peer)

    def _answer(self, query: dns.message.Message) -> bytes:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        self.questions.append((name, kind))
        values = self.records.get((name, kind))
        if values:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 300, dns.rdataclass.IN, kind, values)
            )
        elif not any(known == name for known, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return bytes(response.to_wire())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@dataclass(frozen=True, slots=True)
class RunningRspamd:
    port: int
    log: Path
    started_in: float  # seconds from Popen to the first /ping answer
    resolver: Resolver

    @property
    def url(self) -> str:
        """The `[junk] rspamd_url` value that names it."""
        return f"http://127.0.0.1:{self.port}"


def write_config(directory: Path, dns_port: int) -> Path:
    local = directory / "local.d"
    local.mkdir(parents=True)
    (directory / "db").mkdir()
    tlds = directory / "tld.dat"
    tlds.write_text("".join(f"{tld}\n" for tld in TLDS))
    (local / "options.inc").write_text(
        f'dns {{\n  nameserver = ["127.0.0.1:{dns_port}"];\n  timeout = 1s;\n'
        f"  retransmits = 1;\n}}\n"
        f'url_tld = "{tlds}";\n'
    )
    (local / "fuzzy_check.conf").write_text("enabled = false;\n")
    config = directory / "rspamd.conf"
    # Debian's /etc/rspamd/rspamd.conf without the controller, proxy and fuzzy workers.
    config.write_text(
        '.include "$CONFDIR/common.conf"\n'
        "options {\n"
        '    pidfile = "$RUNDIR/rspamd.pid";\n'
        '    .include "$CONFDIR/options.inc"\n'
        '    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"\n'
        "}\n"
        "logging {\n"
        '    type = "file";\n'
        '    filename = "$LOGDIR/rspamd.log";\n'
        '    .include "$CONFDIR/logging.inc"\n'
        "}\n"
        'worker "normal" {\n'
        '    bind_socket = "127.0.0.1:0";\n'
        '    .include "$CONFDIR/worker-normal.inc"\n'
        "    count = 1;\n"
        "}\n"
    )
    return config


def _answers_ping(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/ping")
        response = connection.getresponse()
        return response.status == 200 and response.read().strip() == b"pong"
    except OSError:
        return False
    finally:
        connection.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    """TERM to the whole group (rspamd's main process and the workers it forked)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait()


@contextlib.contextmanager
def running_rspamd(
    directory: Path, records: Mapping[tuple[str, str], Sequence[str]] | None = None
) -> Iterator[RunningRspamd]:
    """Start rspamd in `directory`, its DNS answering `records`, and stop it (and its
    workers) on exit."""
    resolver = Resolver(records or {})
    config = write_config(directory, resolver.port)
    log = directory / "rspamd.log"
    command = [RSPAMD, "--no-fork", "--insecure", "--config", str(config)]
    for name, value in (
        ("LOCAL_CONFDIR", directory),
        ("DBDIR", directory / "db"),
        ("RUNDIR", directory),
        ("LOGDIR", directory),
    ):
        command.append(f"--var={name}={value}")
    started = time.monotonic()
    with (directory / "rspamd.out").open("wb") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = started + START_TIMEOUT
        port = None
        while port is None or not _answers_ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                detail = "".join(
                    f.read_text()[-4000:] for f in (directory / "rspamd.out", log) if f.exists()
                )
                raise RuntimeError(f"rspamd did not start:\n{detail}")
            time.sleep(0.1)
            if port is None:
                with contextlib.suppress(OSError):
                    port = listening_port(process.pid)
        yield RunningRspamd(port, log, time.monotonic() - started, resolver)
    finally:
        _stop(process)
        resolver.close()
