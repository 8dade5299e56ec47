"""Fixtures shared by the whole suite: the installed console script, initialised data folders,
a running `postoffice serve`, and a trivial echo protocol for exercising the listener layer.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from hypothesis import settings

from postoffice.config import LISTENER_NAMES, ListenerConfig
from postoffice.context import Context
from postoffice.listeners import Connection

# CI replays the same examples every run: a property test that fails there fails for a
# reason a developer can reproduce, never by the luck of the draw.  Developers keep random
# exploration (and hypothesis's example database) to find new failures.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

DOMAIN = "example.test"
SERVE_TIMEOUT = 30.0  # seconds for `serve` to get ready or to stop; generous for loaded CI


def postoffice_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m postoffice`."""
    script = Path(sys.executable).with_name("postoffice")
    return [str(script)] if script.exists() else [sys.executable, "-m", "postoffice"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without POSTOFFICE_DATA (so a developer's setting never leaks in)."""
    env = {k: v for k, v in os.environ.items() if k != "POSTOFFICE_DATA"}
    env.update(extra)
    return env


class Cli:
    """Runs `postoffice --data DATA ...` as a subprocess, as a user would."""

    def __init__(self, data: Path) -> None:
        self.data = data

    def __call__(
        self,
        *args: str,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        with_data: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        command = [*postoffice_command(), *(["--data", str(self.data)] if with_data else []), *args]
        return subprocess.run(
            command,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(env) if env is not None else clean_env(),
            cwd=cwd,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        """Run a command that must succeed; its stdout."""
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, f"{args} failed: {result.stderr}"
        return result.stdout

    def fails(self, *args: str, stdin: str | None = None, code: int | None = None) -> str:
        """Run a command that must fail with one `postoffice: error:` line; that line."""
        result = self(*args, stdin=stdin)
        return assert_one_error_line(result, code)


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    assert result.returncode != 0, f"expected failure, got: {result.stdout}"
    if code is not None:
        assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one error line, got: {result.stderr!r}"
    assert lines[0].startswith("postoffice: error: "), lines[0]
    return lines[0]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """A CLI bound to a data folder that does not exist yet."""
    return Cli(tmp_path / "data")


@pytest.fixture(scope="session")
def _initialised_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # `init` (key generation, store creation) runs once per test process; tests get copies.
    data = tmp_path_factory.mktemp("template") / "data"
    Cli(data).ok("init", "--domain", DOMAIN)
    return data


@pytest.fixture
def data_dir(cli: Cli, _initialised_template: Path) -> Path:
    """A data folder initialised by the real `postoffice init --domain example.test`."""
    shutil.copytree(_initialised_template, cli.data)
    return cli.data


# -- the benchmarks' --quick form ----------------------------------------------------------------

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
BENCH_ROW = re.compile(r"^(.*\S)\s+(\d+\.\d)\s+(\S+)$")


def run_quick_bench(script: str) -> list[tuple[str, float, str]]:
    """Run `bench/<script> --quick`; its table as (row name, value, unit), every value > 0.

    No timing is asserted by the callers (numbers belong in docs/performance.md); the rows
    are, so that a workload silently dropped from a benchmark fails its smoke test.
    """
    result = subprocess.run(
        [sys.executable, str(BENCH_DIR / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [BENCH_ROW.match(line) for line in result.stdout.splitlines()]
    assert all(rows), result.stdout
    table = [(m[1], float(m[2]), m[3]) for m in rows if m]
    assert all(value > 0 for _, value, _ in table), result.stdout
    return table


# -- a running `serve` ----------------------------------------------------------------------------

LISTENING = re.compile(r"listener (\S+) (\S+): listening")


class ServeProcess:
    """A `postoffice serve` subprocess whose log lines (stderr) are collected as they come."""

    def __init__(self, command: list[str], env: Mapping[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else clean_env(),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = SERVE_TIMEOUT) -> str:
        """The first log line matching `pattern` (a regex), waiting for it if needed."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    log = "\n".join(self.lines)
                    raise AssertionError(f"no log line matching {pattern!r}; log:\n{log}")
                self._changed.wait(left)

    def wait_ready(self) -> None:
        # The server's own `ready`, not a worker's `worker ready`, in text or JSON format.
        self.wait_for(r' INFO server ready\b|"msg": "ready"')

    def address(self, name: str) -> tuple[str, int]:
        """(host, port) a listener actually bound (port 0 resolved)."""
        for line in self.lines:
            match = LISTENING.search(line)
            if match and match[1] == name:
                host, _, port = match[2].rpartition(":")
                return host.strip("[]"), int(port)
        raise AssertionError(f"listener {name} is not listening")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = SERVE_TIMEOUT) -> int:
        """Send `sig` and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def all_listeners_on_port_0() -> list[str]:
    args: list[str] = []
    for name in LISTENER_NAMES:
        args += ["--listen", f"{name}=127.0.0.1:0"]
    return args


StartServe = Callable[..., ServeProcess]


@pytest.fixture
def start_serve(data_dir: Path) -> Iterator[StartServe]:
    """Start `postoffice serve` with every listener on 127.0.0.1:0 plus `args`, waiting for
    `ready` unless wait=False.  Whatever is still running at teardown is killed."""
    started: list[ServeProcess] = []

    def start(*args: str, wait: bool = True) -> ServeProcess:
        command = [
            *postoffice_command(),
            "--data",
            str(data_dir),
            "serve",
            *all_listeners_on_port_0(),
            *args,
        ]
        process = ServeProcess(command)
        started.append(process)
        if wait:
            process.wait_ready()
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def server(start_serve: StartServe) -> Iterator[ServeProcess]:
    """A running `serve` (every listener on port 0); stopped with SIGTERM, which must exit 0."""
    process = start_serve()
    yield process
    assert process.stop() == 0, "\n".join(process.lines)


# -- a trivial protocol for the listener layer -------------------------------------------------


class EchoHandler:
    """Greets with `hello <session id> <pid> tls|plain`, then echoes lines until EOF.

    Registered by tests in place of a real protocol: it exercises binding, TLS, limits and
    shutdown of the listener layer without depending on any protocol's code.
    """

    def __init__(self, ctx: Context, listener: ListenerConfig) -> None:
        self.listener = listener

    async def handle(self, conn: Connection) -> None:
        mode = "tls" if conn.tls else "plain"
        conn.writer.write(f"hello {conn.session_id} {os.getpid()} {mode}\r\n".encode())
        await conn.writer.drain()
        while line := await conn.reader.readline():
            conn.writer.write(line)
            await conn.writer.drain()

    def refusal(self, reason: str) -> bytes:
        return f"busy {reason}\r\n".encode()


def set_config(data_dir: Path, section: str, key: str, value: str) -> None:
    """Set `key = value` (TOML text) in [section] of DATA/postoffice.toml (`init` writes every
    setting, so the line is there to replace)."""
    config = data_dir / "postoffice.toml"
    lines = config.read_text().splitlines()
    current = ""
    for index, line in enumerate(lines):
        if line.startswith("[") and line.rstrip().endswith("]"):
            current = line.strip()[1:-1]
        elif current == section and line.split("=", 1)[0].strip() == key:
            lines[index] = f"{key} = {value}"
            config.write_text("\n".join(lines) + "\n")
            return
    raise AssertionError(f"no {key} in [{section}]")
