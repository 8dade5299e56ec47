"""Fixtures for replaying scripted IMAP tests against a running `postoffice serve`.

One server per test module (and per xdist worker); every test gets accounts of its own, so
scripts that delete and recreate their mailboxes never see each other's.
"""

from __future__ import annotations

import itertools
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import DOMAIN, Cli, ServeProcess, all_listeners_on_port_0, postoffice_command

from .scripted import Account, Target, run_script


@dataclass
class ImapServer:
    host: str
    port: int
    cli: Cli
    numbers: Iterator[int] = field(default_factory=itertools.count)

    def new_account(self, hint: str) -> Account:
        """A fresh account named after `hint` (a script name) with a random password."""
        local = re.sub(r"[^a-z0-9]+", "-", hint.lower()).strip("-")[:40] or "user"
        address = f"{local}-{next(self.numbers)}@{DOMAIN}"
        password = secrets.token_urlsafe(12)
        self.cli.ok("user", "add", address, "--password-stdin", stdin=password + "\n")
        return Account(address, password)


@pytest.fixture(scope="module")
def imap_server(
    tmp_path_factory: pytest.TempPathFactory, _initialised_template: Path
) -> Iterator[ImapServer]:
    # Skipped only while the IMAP front-end is not written; once it imports, a listener that
    # does not listen fails loudly in `address` below.
    pytest.importorskip("postoffice.imap.handler", reason="postoffice.imap is not built yet")
    data = tmp_path_factory.mktemp("imap") / "data"
    shutil.copytree(_initialised_template, data)
    process = ServeProcess(
        [*postoffice_command(), "--data", str(data), "serve", *all_listeners_on_port_0()]
    )
    try:
        process.wait_ready()
        host, port = process.address("imap")
        yield ImapServer(host, port, Cli(data))
    finally:
        process.kill()


Replay = Callable[[Path], None]


@pytest.fixture
def replay(imap_server: ImapServer) -> Replay:
    """Run one script file against the server with new accounts: passes, skips or fails."""

    def run(path: Path) -> None:
        user = imap_server.new_account(path.name)
        user2 = imap_server.new_account(path.name + "-2")
        result = run_script(path, Target(imap_server.host, imap_server.port, user, user2))
        if result.outcome == "skip":
            pytest.skip(result.detail)
        if result.outcome == "fail":
            pytest.fail(f"{path.name}: {result.detail}", pytrace=False)

    return run
