"""Side by side: postoffice against Debian's Postfix + Dovecot, same client code, one run.

    .venv/bin/python bench/compare.py [--quick] [--json FILE] [--mailbox N] [--profile DIR]

Installs Postfix and Dovecot with apt-get if they are missing and starts throw-away instances
on loopback (configs, queue, maildirs and logs in a temp folder; the distro's own instances are
never started): Postfix smtpd -> LMTP -> Dovecot (maildir, IMAP, POP3), plaintext auth, TLS off,
each product's durability settings as shipped.  postoffice runs from a fresh data folder on other
loopback ports with the same users and password.  Every workload then runs the same client code
(bench/smtp_bench.py's SMTP client, bench/imap_bench.py's IMAP client and idlers) against one
server and then the other, and the run prints one table -- metric, postoffice, reference, ratio
postoffice/reference, which direction is better -- and optionally writes it as JSON.  Only the
processes this script started are stopped, also on Ctrl-C.  Numbers only, no pass/fail.

"Reference" is always the sum of both products' process trees (Postfix's master and Dovecot's
master with all their children): together they do what one postoffice process does.  CPU time
includes children the masters have already reaped.  With `--profile DIR`, py-spy records the
postoffice process during each workload into DIR/<workload>.txt (raw collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import platform
import pwd
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import imap_bench
import serving
import smtp_bench
import store_bench
from imap_bench import PASSWORD, Client, Idlers, percentile
from postoffice.config import LISTENER_NAMES

DOMAIN = imap_bench.DOMAIN
SMTP_USER = f"user@{DOMAIN}"  # smtp_bench's client sends to this address
POP_USERS = [f"pop{i:02d}@{DOMAIN}" for i in range(17)]  # one for 1 user, 16 for 16 users
USERS = [SMTP_USER, imap_bench.BIG_USER, imap_bench.SMALL_USER, imap_bench.IDLE_USER, *POP_USERS]
PACKAGES = ("postfix", "dovecot-imapd", "dovecot-pop3d", "dovecot-lmtpd")
UNAVAILABLE = 77  # exit status: the reference servers cannot be installed or started
PAGE = os.sysconf("SC_PAGE_SIZE")
Better = Literal["higher", "lower"]

# Written into the output: each product's durability behaviour as shipped (none is changed).
DURABILITY = {
    "postoffice": "250 after the SQLite WAL commit is fsync'd (group commit); blobs fsync'd",
    "postfix": "cleanup(8) fsync()s the queue file before smtpd answers 250 (not configurable)",
    "dovecot": "mail_fsync = optimized (shipped default): the maildir file is fsync'd on save",
}


class Unavailable(Exception):
    """The reference servers cannot be installed or started here (not root, no apt-get)."""


# -- processes --------------------------------------------------------------------------------


@dataclass
class Usage:
    cpu_seconds: float
    rss_bytes: int
    processes: int


def process_tree(roots: Sequence[int]) -> list[int]:
    """The root PIDs and all their descendants, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid for pid in roots if Path(f"/proc/{pid}").exists()]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def usage(roots: Sequence[int]) -> Usage:
    ticks = os.sysconf("SC_CLK_TCK")
    cpu, rss, count = 0, 0, 0
    for pid in process_tree(roots):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited since the scan
        # utime stime cutime cstime: reaped children's time moves into their parent's c*time.
        cpu += sum(int(f) for f in fields[11:15])
        rss += int(fields[21]) * PAGE
        count += 1
    return Usage(cpu / ticks, rss, count)


def pss_bytes(roots: Sequence[int]) -> int:
    """Proportional set size: RSS with pages shared between forked processes counted once."""
    total = 0
    for pid in process_tree(roots):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


class PeakRss:
    """Samples the summed RSS and PSS of a process tree in a thread while a workload runs."""

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = roots
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, usage(self.roots).rss_bytes)
            self.peak_pss = max(self.peak_pss, pss_bytes(self.roots))

    def __enter__(self) -> PeakRss:
        self.peak = usage(self.roots).rss_bytes
        self.peak_pss = pss_bytes(self.roots)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def add_memory(results: Results, server: Server, when: str, rss: int, pss: int) -> None:
    results.add(server, f"RSS {when}", rss / 2**20, "MiB", "lower")
    results.add(server, f"PSS {when}", pss / 2**20, "MiB", "lower")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, what: str, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log.exists() else "(no log)"
    raise Unavailable(f"{what} did not start listening on {port}:\n{tail}")


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.1)
    return False


def daemon(command: list[str], log: Path) -> None:
    """Run a command that daemonizes.  Its output goes to a file: the daemon inherits the
    descriptors, so a pipe would never reach EOF and capturing it would hang."""
    with log.open("a") as out:
        code = subprocess.call(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    if code != 0:
        raise Unavailable(f"{' '.join(command)} failed:\n{log.read_text()[-3000:]}")


def read_pid(path: Path) -> int:
    """A daemon's PID file, which appears a moment after the start command returns."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text())
        time.sleep(0.05)
    raise Unavailable(f"no PID in {path}")


def kill_tree(roots: Sequence[int]) -> None:
    for pid in process_tree(roots):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- the reference: Postfix -> LMTP -> Dovecot ------------------------------------------------


def install_reference() -> None:
    if shutil.which("dovecot") and shutil.which("postfix") and _dovecot_modules_present():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("Postfix/Dovecot are missing and apt-get as root is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Without this preseed postfix's postinst asks which mail setup to write to /etc/postfix.
    subprocess.run(
        ["debconf-set-selections"],
        input="postfix postfix/main_mailer_type select No configuration\n",
        text=True,
        check=True,
    )
    result = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise Unavailable(f"apt-get install {' '.join(PACKAGES)} failed:\n{result.stderr}")


def _dovecot_modules_present() -> bool:
    libexec = Path("/usr/lib/dovecot")
    return all((libexec / name).exists() for name in ("imap", "pop3", "lmtp"))


@dataclass
class Reference:
    """Postfix and Dovecot instances living entirely in `root`; only their own PIDs stopped."""

    root: Path
    max_connections: int
    smtp: int = field(default_factory=free_port)
    imap: int = field(default_factory=free_port)
    pop3: int = field(default_factory=free_port)
    lmtp: int = field(default_factory=free_port)
    roots: list[int] = field(default_factory=list)

    @property
    def dovecot_conf(self) -> Path:
        return self.root / "dovecot" / "dovecot.conf"

    @property
    def postfix_dir(self) -> Path:
        return self.root / "postfix"

    def start(self) -> None:
        self._start_dovecot()
        self._start_postfix()

    def _start_dovecot(self) -> None:
        top = self.root / "dovecot"
        (top / "run").mkdir(parents=True)
        (top / "mail").mkdir()
        # Mail processes may not run as root: the mail belongs to nobody.
        nobody = pwd.getpwnam("nobody")
        os.chown(top / "mail", nobody.pw_uid, nobody.pw_gid)
        (top / "passwd").write_text(
            "".join(
                f"{user}:{{PLAIN}}{PASSWORD}:{nobody.pw_uid}:{nobody.pw_gid}::{top}/mail/{user}\n"
                for user in USERS
            )
        )
        limit = self.max_connections + 100
        self.dovecot_conf.write_text(
            DOVECOT_CONF.format(
                top=top,
                uid=nobody.pw_uid,
                imap=self.imap,
                pop3=self.pop3,
                lmtp=self.lmtp,
                limit=limit,
                clients=limit + 1000,
            )
        )
        daemon(["dovecot", "-c", str(self.dovecot_conf)], top / "start.log")
        self.roots.append(read_pid(top / "run" / "master.pid"))
        for port in (self.imap, self.pop3, self.lmtp):
            wait_for_port(port, "dovecot", top / "dovecot.log")

    def _start_postfix(self) -> None:
        conf = self.postfix_dir
        (conf / "queue").mkdir(parents=True)
        (conf / "data").mkdir()
        shutil.chown(conf / "data", "postfix")
        (conf / "vmailbox").write_text("".join(f"{user} OK\n" for user in USERS))
        (conf / "main.cf").write_text(POSTFIX_MAIN.format(dir=conf, lmtp=self.lmtp, domain=DOMAIN))
        (conf / "master.cf").write_text(POSTFIX_MASTER.format(port=self.smtp))
        daemon(["postfix", "-c", str(conf), "start"], conf / "start.log")
        self.roots.append(read_pid(conf / "queue" / "pid" / "master.pid"))
        wait_for_port(self.smtp, "postfix", conf / "maillog")

    def warnings(self) -> list[str]:
        """Dovecot's log lines that change what the numbers mean."""
        log = (self.root / "dovecot" / "dovecot.log").read_text(errors="replace")
        if "Inotify instance limit" not in log:
            return []
        return [
            "dovecot: inotify instance limit exceeded (fs.inotify.max_user_instances); "
            "idlers beyond it poll every mailbox_idle_check_interval (30 s as shipped)"
        ]

    def stop(self) -> None:
        started = list(self.roots)
        with contextlib.suppress(Unavailable):
            if (self.postfix_dir / "main.cf").exists():
                daemon(["postfix", "-c", str(self.postfix_dir), "stop"], self.root / "stop.log")
            if self.dovecot_conf.exists():
                daemon(["dovecot", "-c", str(self.dovecot_conf), "stop"], self.root / "stop.log")
        if not wait_gone(started, 30):
            kill_tree(started)


# Capacity limits are raised so that thousands of idlers fit (every client comes from one IP
# and one account); process model (one imap process per connection: service imap client_limit
# is 1 as shipped), caching and fsync behaviour stay as shipped.
DOVECOT_CONF = """\
base_dir = {top}/run
state_dir = {top}/run
log_path = {top}/dovecot.log
instance_name = bench-dovecot-{imap}
protocols = imap pop3 lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {uid}
last_valid_uid = {uid}
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~/Maildir
mail_max_userip_connections = {limit}
default_client_limit = {clients}
namespace inbox {{
  inbox = yes
  separator = /
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {top}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {top}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
service imap {{
  process_limit = {limit}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

# Debian's main.cf/master.cf minus what a bench needs not (local delivery, aliases, content
# filters); chroot off, so that no chroot tree has to be built in the temp folder.
POSTFIX_MAIN = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-bench
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = mx.reference.test
mydomain = reference.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = texthash:{dir}/vmailbox
virtual_transport = lmtp:inet:127.0.0.1:{lmtp}
biff = no
append_dot_mydomain = no
"""

POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


# -- postoffice -------------------------------------------------------------------------------


@dataclass
class Postoffice:
    data: Path
    max_connections: int
    smtp: int = 0
    imap: int = 0
    pop3: int | None = None
    roots: list[int] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        """A fresh data folder with the bench users, then `launch`."""
        imap_bench.prepare(self.data, self.max_connections)
        exe = [sys.executable, "-m", "postoffice", "--data", str(self.data)]
        for user in USERS:
            if user not in (imap_bench.BIG_USER, imap_bench.SMALL_USER, imap_bench.IDLE_USER):
                subprocess.run(
                    [*exe, "user", "add", user, "--password", PASSWORD],
                    check=True,
                    capture_output=True,
                )
        self.launch()

    def launch(self) -> None:
        served = ("smtp", "imap", "pop3")
        listen = [f"--listen={name}=127.0.0.1:0" for name in served]
        listen += [f"--listen={name}=off" for name in LISTENER_NAMES if name not in served]
        # The log goes to a file: a pipe nobody reads would fill up and stall the server.
        log_path = self.data / "serve.log"
        serving.confine_dns(self.data)
        exe = [sys.executable, "-m", "postoffice", "--data", str(self.data), "serve"]
        with log_path.open("a") as log:
            start = log.tell()
            self.process = subprocess.Popen([*exe, *listen], stderr=log, text=True)
        self.roots = [self.process.pid]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log_path.read_text()[start:]
            if " ready" in text:
                ports = dict(re.findall(r"listener (\w+) 127\.0\.0\.1:(\d+): listening", text))
                self.smtp, self.imap = int(ports["smtp"]), int(ports["imap"])
                self.pop3 = int(ports["pop3"]) if "pop3" in ports else None
                return
            time.sleep(0.05)
        raise RuntimeError(f"postoffice did not start:\n{log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            serving.stop_server(self.process)

    def server(self) -> Server:
        return Server("postoffice", self.smtp, self.imap, self.pop3, self.roots, self.roots[0])


# -- results ----------------------------------------------------------------------------------


@dataclass
class Metric:
    name: str
    unit: str
    better: Better
    postoffice: float | None = None
    reference: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.postoffice is None or not self.reference:
            return None
        return self.postoffice / self.reference


@dataclass
class Server:
    """One side of the comparison, as the workloads see it."""

    name: Literal["postoffice", "reference"]
    smtp: int
    imap: int
    pop3: int | None
    roots: list[int]
    profile_pid: int | None = None  # py-spy target (postoffice only)


class Results:
    def __init__(self, profile_dir: Path | None) -> None:
        self.metrics: dict[str, Metric] = {}
        self.notes: list[str] = []
        self.profile_dir = profile_dir

    def add(
        self, server: Server, name: str, value: float | None, unit: str, better: Better
    ) -> None:
        metric = self.metrics.setdefault(name, Metric(name, unit, better))
        setattr(metric, server.name, value)

    @contextlib.contextmanager
    def profiled(self, server: Server, workload: str) -> Iterator[None]:
        """py-spy on postoffice for the duration of one workload (with --profile)."""
        if self.profile_dir is None or server.profile_pid is None:
            yield
            return
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        slug = re.sub(r"[^a-z0-9]+", "-", workload.lower()).strip("-")
        out = self.profile_dir / f"{slug}.txt"
        recorder = subprocess.Popen(
            [
                *(py_spy, "record", "--pid", str(server.profile_pid), "--rate", "200"),
                *("--threads", "--format", "raw", "--nonblocking", "--output", str(out)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            recorder.send_signal(signal.SIGINT)
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()


# -- workloads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    smtp_small: int  # messages per SMTP row of 4 KB
    smtp_large: int  # messages per SMTP row of 100 KB
    smtp_source: int
    small_mailbox: int
    big_mailbox: int
    search_runs: int
    idle_levels: tuple[int, ...]
    pop_one: int  # messages drained by one user
    pop_each: int  # messages drained by each of 16 users
    ceiling_seconds: float


QUICK = Sizes(64, 32, 200, 200, 400, 1, (50,), 50, 10, 0.5)
FULL = Sizes(2000, 500, 5000, 10_000, 100_000, 3, (1000, 5000, 10_000), 2000, 250, 2.0)


async def status_messages(client: Client) -> int:
    reply = await client.command("STATUS INBOX (MESSAGES)")
    found = re.search(rb"MESSAGES (\d+)", reply.last)
    assert found is not None, reply.last
    return int(found[1])


async def wait_visible(server: Server, expected: int, limit: float) -> float:
    """Seconds until SMTP_USER's INBOX holds `expected` messages, polling STATUS."""
    client = await Client.login(server.imap, SMTP_USER)
    started = time.perf_counter()
    try:
        while (count := await status_messages(client)) < expected:
            if time.perf_counter() - started > limit:
                raise RuntimeError(f"{server.name}: {count} of {expected} messages visible")
            await asyncio.sleep(0.01)
        return time.perf_counter() - started
    finally:
        await client.close()


async def visible_now(server: Server) -> int:
    client = await Client.login(server.imap, SMTP_USER)
    try:
        return await status_messages(client)
    finally:
        await client.close()


def smtp_workloads(results: Results, server: Server, sizes: Sizes) -> None:
    with PeakRss(server.roots) as peak:
        for size in (4 * 1024, 100 * 1024):
            for connections in (1, 16, 64):
                total = sizes.smtp_small if size < 65536 else sizes.smtp_large
                label = f"SMTP {size // 1024} KB x {connections} conns:"
                with results.profiled(server, label):
                    before = asyncio.run(visible_now(server))
                    cpu = usage(server.roots).cpu_seconds
                    row = asyncio.run(smtp_bench.measure(server.smtp, size, connections, total))
                    lag = asyncio.run(wait_visible(server, before + row.messages, 600))
                    cpu = usage(server.roots).cpu_seconds - cpu
                accept_s = row.messages / row.msgs_per_s
                results.add(server, f"{label} accepted", row.msgs_per_s, "msgs/s", "higher")
                results.add(server, f"{label} latency p50", row.p50_ms, "ms", "lower")
                results.add(server, f"{label} latency p99", row.p99_ms, "ms", "lower")
                results.add(server, f"{label} last 250 -> all visible", lag * 1000, "ms", "lower")
                results.add(
                    server,
                    f"{label} accepted and visible",
                    row.messages / (accept_s + lag),
                    "msgs/s",
                    "higher",
                )
                results.add(
                    server,
                    f"{label} server CPU per 1000 msgs",
                    cpu / row.messages * 1000,
                    "s",
                    "lower",
                )
    add_memory(results, server, "peak under SMTP load", peak.peak, peak.peak_pss)


def smtp_source_workload(results: Results, server: Server, sizes: Sizes) -> None:
    """Postfix's C load generator: the client's own cost out of the accept rate."""
    for sessions in (1, 16):
        label = f"smtp-source 4 KB x {sessions} sessions:"
        with results.profiled(server, label):
            before = asyncio.run(visible_now(server))
            started = time.perf_counter()
            subprocess.run(
                [
                    *("smtp-source", "-d", "-s", str(sessions), "-m", str(sizes.smtp_source)),
                    *("-l", "4096", "-f", "bench@sender.test", "-t", SMTP_USER),
                    f"127.0.0.1:{server.smtp}",
                ],
                check=True,
                capture_output=True,
            )
            elapsed = time.perf_counter() - started
            lag = asyncio.run(wait_visible(server, before + sizes.smtp_source, 600))
        results.add(server, f"{label} accepted", sizes.smtp_source / elapsed, "msgs/s", "higher")
        results.add(
            server,
            f"{label} accepted and visible",
            sizes.smtp_source / (elapsed + lag),
            "msgs/s",
            "higher",
        )


@dataclass(frozen=True)
class Mail:
    internaldate: str  # RFC 9051 date-time, also the Date: header's instant
    raw: bytes


def corpus(count: int) -> list[Mail]:
    """imap_bench's realistic messages, oldest first, dates spread over two years."""
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(1)
    ages = sorted((rng.uniform(0, 730 * 86400) for _ in range(count)), reverse=True)
    mails = []
    for n, age in enumerate(ages):
        when = now - dt.timedelta(seconds=age)
        raw = imap_bench.make_message(random.Random(n), n, when)
        mails.append(Mail(when.strftime("%d-%b-%Y %H:%M:%S +0000"), raw))
    return mails


async def append_all(server: Server, user: str, mails: Sequence[Mail], connections: int) -> float:
    """APPEND every mail to user's INBOX over `connections` connections; msgs/s."""
    pending = list(reversed(mails))

    async def worker() -> None:
        client = await Client.login(server.imap, user)
        try:
            while pending:
                mail = pending.pop()
                await client.command(f'APPEND INBOX () "{mail.internaldate}"', mail.raw)
        finally:
            await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return len(mails) / (time.perf_counter() - started)


async def timed(client: Client, text: str, runs: int = 1) -> tuple[float, imap_bench.Reply]:
    """p50 seconds of `runs` runs of one command, and the last reply."""
    times = []
    for _ in range(runs):
        elapsed, reply = await imap_bench.timed(client, text)
        times.append(elapsed)
    return statistics.median(times), reply


async def mailbox_workloads(
    results: Results, server: Server, user: str, size: int, runs: int
) -> dict[str, int]:
    """FETCH and SEARCH on one mailbox; the SEARCH hit counts, to compare between servers."""
    client = await Client.login(server.imap, user)
    label = f"IMAP {size} msgs:"
    hits: dict[str, int] = {}
    try:
        elapsed, _ = await timed(client, "SELECT INBOX")
        results.add(server, f"{label} SELECT (first)", elapsed * 1000, "ms", "lower")
        elapsed, _ = await timed(client, "SELECT INBOX", runs)
        results.add(server, f"{label} SELECT (again, p50)", elapsed * 1000, "ms", "lower")
        items = "(FLAGS INTERNALDATE RFC822.SIZE ENVELOPE)"
        # Dovecot caches ENVELOPE on its first FETCH; postoffice at delivery: both runs count.
        for attempt in ("first", "second"):
            elapsed, reply = await timed(client, f"UID FETCH 1:* {items}")
            if reply.untagged != size:
                raise RuntimeError(f"{server.name}: {reply.untagged} of {size} FETCH responses")
            name = f"{label} UID FETCH 1:* {items} ({attempt})"
            results.add(server, name, elapsed * 1000, "ms", "lower")
        elapsed, reply = await timed(client, "UID FETCH 1:* BODY.PEEK[HEADER]")
        results.add(
            server, f"{label} UID FETCH 1:* BODY.PEEK[HEADER]", elapsed * 1000, "ms", "lower"
        )
        elapsed, reply = await timed(client, "UID FETCH 1:* BODY.PEEK[]")
        name = f"{label} UID FETCH 1:* BODY.PEEK[]"
        results.add(server, name, reply.literal_bytes / elapsed / 1e6, "MB/s", "higher")
        since = (dt.date.today() - dt.timedelta(days=imap_bench.SINCE_DAYS)).strftime("%d-%b-%Y")
        for key in (
            f"TEXT {imap_bench.SEARCH_WORD}",
            f"FROM {imap_bench.SEARCH_FROM}",
            f"SINCE {since}",
        ):
            elapsed, reply = await timed(client, f"UID SEARCH {key}", runs)
            verb = key.split()[0]
            hits[f"{label} SEARCH {verb}"] = len(reply.last.split()) - 2
            results.add(server, f"{label} UID SEARCH {verb} (p50)", elapsed * 1000, "ms", "lower")
        await client.command("LOGOUT")
        return hits
    finally:
        await client.close()


async def idle_workloads(
    results: Results, server: Server, levels: Sequence[int], notes: list[str]
) -> None:
    """imap_bench's idlers: RSS and PSS per connection over all the server's processes, and
    the wake latency after one APPEND from another connection."""
    # A few logins first: argon2's 19 MiB per verify and the thread pool's arenas would
    # otherwise land in the first level's per-connection figure.
    user = imap_bench.IDLE_USER
    warm = await asyncio.gather(*(Client.login(server.imap, user) for _ in range(16)))
    for client in warm:
        await client.close()
    await asyncio.sleep(1)
    rest = usage(server.roots).rss_bytes
    rest_pss = pss_bytes(server.roots)
    appender = await Client.login(server.imap, imap_bench.IDLE_USER)
    idlers = Idlers(server.imap)
    rng = random.Random(2)
    try:
        for n, level in enumerate(levels):
            label = f"IDLE {level} conns:"
            if not _memory_allows(results, server, level, rest_pss):
                notes.append(f"{server.name}: {label} skipped, not enough memory")
                continue
            # 50 at a time: Dovecot's imap-login process_limit (100 as shipped) stays clear.
            rate = await idlers.grow(level, concurrency=50)
            await asyncio.sleep(1)
            extra = usage(server.roots).rss_bytes - rest
            extra_pss = pss_bytes(server.roots) - rest_pss
            when = dt.datetime.now(dt.UTC)
            wake = sorted(await idlers.wake(appender, imap_bench.make_message(rng, n, when)))
            results.add(server, f"{label} LOGIN+SELECT+IDLE set-up", rate, "conns/s", "higher")
            results.add(server, f"{label} RSS per connection", extra / level, "bytes", "lower")
            results.add(server, f"{label} PSS per connection", extra_pss / level, "bytes", "lower")
            results.add(server, f"{label} server RSS", (rest + extra) / 2**20, "MiB", "lower")
            results.add(server, f"{label} wake p50", statistics.median(wake) * 1000, "ms", "lower")
            results.add(server, f"{label} wake p99", percentile(wake, 0.99) * 1000, "ms", "lower")
            results.add(server, f"{label} wake max", wake[-1] * 1000, "ms", "lower")
            print(f"  {server.name}: {label} done", file=sys.stderr, flush=True)
    finally:
        await idlers.close()
        await appender.close()


def _memory_allows(results: Results, server: Server, level: int, rest_pss: int) -> bool:
    """Whether the last level's PSS per connection, times `level`, fits in half the free RAM."""
    per_connection = [
        m.postoffice if server.name == "postoffice" else m.reference
        for m in results.metrics.values()
        if m.name.endswith("PSS per connection")
    ]
    known = [v for v in per_connection if v is not None]
    if not known:
        return True
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
            return known[-1] * level < available / 2
    return True


async def pop3_drain(port: int, user: str) -> tuple[int, int]:
    """RFC 1939: log in, RETR and DELE every message, QUIT; (messages, bytes) drained."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)

    async def ok(line: bytes | None = None) -> bytes:
        if line is not None:
            writer.write(line + b"\r\n")
        reply = await reader.readline()
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"POP3 {line!r}: {reply!r}")
        return reply

    try:
        await ok()
        await ok(f"USER {user}".encode())
        await ok(f"PASS {PASSWORD}".encode())
        count = int((await ok(b"STAT")).split()[1])
        drained = 0
        for n in range(1, count + 1):
            await ok(b"RETR %d" % n)
            while (line := await reader.readline()) != b".\r\n":
                if not line:
                    raise ConnectionError("server closed the connection")
                drained += len(line)
            await ok(b"DELE %d" % n)
        await ok(b"QUIT")  # RFC 1939 §6: the deletions happen here
        return count, drained
    finally:
        writer.close()


async def pop3_workloads(results: Results, server: Server, sizes: Sizes) -> None:
    mails = corpus(max(sizes.pop_one, sizes.pop_each))
    await append_all(server, POP_USERS[0], mails[: sizes.pop_one], 1)
    for user in POP_USERS[1:]:
        await append_all(server, user, mails[: sizes.pop_each], 1)
    for label, users in (
        ("POP3 drain 1 user:", POP_USERS[:1]),
        ("POP3 drain 16 users:", POP_USERS[1:]),
    ):
        if server.pop3 is None:
            results.add(server, f"{label} messages", None, "msgs/s", "higher")
            results.add(server, f"{label} bytes", None, "MB/s", "higher")
            continue
        port = server.pop3
        with results.profiled(server, label):
            started = time.perf_counter()
            drained = await asyncio.gather(*(pop3_drain(port, user) for user in users))
            elapsed = time.perf_counter() - started
        messages = sum(m for m, _ in drained)
        octets = sum(b for _, b in drained)
        results.add(server, f"{label} messages", messages / elapsed, "msgs/s", "higher")
        results.add(server, f"{label} bytes", octets / elapsed / 1e6, "MB/s", "higher")


def imap_workloads(
    results: Results, server: Server, sizes: Sizes, mails: Sequence[Mail]
) -> dict[str, int]:
    small = mails[:: len(mails) // sizes.small_mailbox][: sizes.small_mailbox]
    hits: dict[str, int] = {}
    with PeakRss(server.roots) as peak:
        for user, box, connections in (
            (imap_bench.SMALL_USER, small, 1),
            (imap_bench.BIG_USER, mails, 16),
        ):
            label = f"IMAP APPEND {len(box)} msgs x {connections} conns:"
            with results.profiled(server, label):
                cpu = usage(server.roots).cpu_seconds
                rate = asyncio.run(append_all(server, user, box, connections))
                cpu = usage(server.roots).cpu_seconds - cpu
            results.add(server, f"{label} appended", rate, "msgs/s", "higher")
            results.add(
                server, f"{label} server CPU per 1000 msgs", cpu / len(box) * 1000, "s", "lower"
            )
        for user, size in ((imap_bench.SMALL_USER, len(small)), (imap_bench.BIG_USER, len(mails))):
            with results.profiled(server, f"IMAP {size} msgs"):
                hits |= asyncio.run(
                    mailbox_workloads(results, server, user, size, sizes.search_runs)
                )
    add_memory(results, server, "peak under IMAP APPEND/FETCH/SEARCH", peak.peak, peak.peak_pss)
    return hits


# -- the machine ------------------------------------------------------------------------------


def loopback_mb_per_s(seconds: float) -> float:
    """One TCP stream over 127.0.0.1 in 64 KB writes: the wire between client and server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        received = [0]

        def sink() -> None:
            conn, _ = listener.accept()
            with conn:
                while chunk := conn.recv(1 << 20):
                    received[0] += len(chunk)

        thread = threading.Thread(target=sink)
        thread.start()
        block = b"x" * 65536
        with socket.create_connection(listener.getsockname()) as sender:
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                sender.sendall(block)
        thread.join()
        return received[0] / (time.perf_counter() - started) / 1e6


def machine(tmp: Path, sizes: Sizes) -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(os.sysconf("SC_PHYS_PAGES") * PAGE / 2**30, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postfix": _version(["postconf", "-d", "-h", "mail_version"]),
        "dovecot": _version(["dovecot", "--version"]),
        "fsync_4k_writes_per_s": round(store_bench.fsync_ceiling(tmp, sizes.ceiling_seconds)),
        "loopback_mb_per_s": round(loopback_mb_per_s(sizes.ceiling_seconds)),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _version(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()


# -- main -------------------------------------------------------------------------------------


def run(sizes: Sizes, profile_dir: Path | None) -> tuple[Results, dict[str, object]]:
    install_reference()
    results = Results(profile_dir)
    imap_bench.raise_fd_limit(max(sizes.idle_levels) + 500)
    with tempfile.TemporaryDirectory(prefix="postoffice-compare-") as tmp:
        root = Path(tmp)
        info = machine(root, sizes)
        limit = max(sizes.idle_levels) + 100
        # Only loopback-local folders: nobody (Dovecot's mail user) must reach its maildirs.
        root.chmod(0o755)
        reference = Reference(root / "reference", limit)
        postoffice = Postoffice(root / "postoffice" / "data", limit)
        try:
            reference.start()
            postoffice.start()
            servers = [
                postoffice.server(),
                Server(
                    "reference", reference.smtp, reference.imap, reference.pop3, reference.roots
                ),
            ]
            if postoffice.pop3 is None:
                results.notes.append("postoffice: pop3 listener not built yet (rows n/a)")
            time.sleep(1)
            for server in servers:
                rest = usage(server.roots)
                add_memory(results, server, "at rest", rest.rss_bytes, pss_bytes(server.roots))
                results.add(server, "processes at rest", rest.processes, "count", "lower")
            _phase("SMTP")
            for server in servers:
                smtp_workloads(results, server, sizes)
                smtp_source_workload(results, server, sizes)
            _phase("IMAP")
            mails = corpus(sizes.big_mailbox)
            hits = [imap_workloads(results, server, sizes, mails) for server in servers]
            if hits[0] != hits[1]:
                results.notes.append(
                    f"SEARCH hit counts differ: postoffice {hits[0]}, reference {hits[1]}"
                )
            _phase("POP3")
            for server in servers:
                asyncio.run(pop3_workloads(results, server, sizes))
            _phase("IDLE")
            # A fresh postoffice process, so that memory freed after the big FETCHes cannot
            # be reused by the idlers and flatter their figure (Dovecot's imap processes are
            # new per connection anyway).
            postoffice.stop()
            postoffice.launch()
            servers[0] = postoffice.server()
            for server in servers:
                asyncio.run(idle_workloads(results, server, sizes.idle_levels, results.notes))
            results.notes += reference.warnings()
        finally:
            postoffice.stop()
            reference.stop()
    return results, info


def _phase(name: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {name}", file=sys.stderr, flush=True)


def print_table(results: Results, info: dict[str, object]) -> None:
    width = max(len(f"{m.name} ({m.unit})") for m in results.metrics.values())
    print(f"{'metric':<{width}}  {'postoffice':>12} {'reference':>12} {'ratio':>7}  better")
    for m in results.metrics.values():
        ratio = m.ratio
        print(
            f"{f'{m.name} ({m.unit})':<{width}}  {_cell(m.postoffice)} {_cell(m.reference)} "
            f"{'n/a' if ratio is None else f'{ratio:.2f}':>7}  {m.better}"
        )
    print()
    for key, value in info.items():
        print(f"{key}: {value}")
    for product, text in DURABILITY.items():
        print(f"durability, {product}: {text}")
    for note in results.notes:
        print(f"note: {note}")


def _cell(value: float | None) -> str:
    if value is None:
        return f"{'n/a':>12}"
    return f"{value:>12.1f}" if abs(value) < 1e6 else f"{value:>12.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (CI)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--mailbox",
        type=int,
        help="size of the big mailbox (default 100000; Dovecot's maildir APPEND slows as it grows)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy postoffice per workload into DIR")
    args = parser.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    # SIGTERM unwinds like Ctrl-C, so that the finally blocks stop what this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sizes = QUICK if args.quick else FULL
        if args.mailbox:
            # The small mailbox is sampled from the big one, so it cannot be larger.
            sizes = dataclasses.replace(
                sizes,
                big_mailbox=args.mailbox,
                small_mailbox=min(sizes.small_mailbox, args.mailbox),
            )
        results, info = run(sizes, args.profile)
    except Unavailable as e:
        print(f"compare: reference servers unavailable: {e}", file=sys.stderr)
        sys.exit(UNAVAILABLE)
    print_table(results, info)
    if args.json:
        document = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "sizes": dataclasses.asdict(sizes),
            "machine": info,
            "durability": DURABILITY,
            "notes": results.notes,
            "metrics": [asdict(m) | {"ratio": m.ratio} for m in results.metrics.values()],
        }
        args.json.write_text(json.dumps(document, indent=2))
    values = [v for m in results.metrics.values() for v in (m.postoffice, m.reference)]
    sys.exit(0 if all(v is None or math.isfinite(v) for v in values) else 1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
