"""The POP3 listeners against Debian's download tools, clients we did not write (.ci/run
installs them): fetchmail over pop3s (implicit TLS, certificate not checked: it is
self-signed at `init`) and getmail6 over plain POP3 on loopback.  Both download every
message and delete it from the server.  Each test is skipped only when its binary is missing.
"""

from __future__ import annotations

import os
import poplib
from pathlib import Path

from test_imap_sync_tools import require, run
from test_pop3 import BOB, PASSWORD, TIMEOUT, PopServer, message, pop

__all__ = ["pop"]  # the fixture of test_pop3, used here under the same name

# A line starting with "." exercises dot-stuffing on the way through each tool.
BODIES = [f"Message {n}.\r\n.dotted line {n}\r\n" for n in range(1, 4)]


def deliver_three(pop: PopServer) -> None:
    for n, body in enumerate(BODIES, 1):
        pop.deliver(message(f"tool test {n}", body))


def assert_drained(pop: PopServer) -> None:
    client = poplib.POP3(*pop.address(), timeout=TIMEOUT)
    client.user(BOB)
    client.pass_(PASSWORD)
    assert client.stat() == (0, 0)
    client.quit()


def assert_downloaded(messages: list[bytes]) -> None:
    assert len(messages) == 3
    for n, body in enumerate(BODIES, 1):
        [found] = [m for m in messages if f"Subject: tool test {n}".encode() in m]
        assert body.replace("\r\n", "\n").encode() in found.replace(b"\r\n", b"\n")


def test_fetchmail_downloads_and_deletes(pop: PopServer, tmp_path: Path) -> None:
    fetchmail = require("fetchmail")
    deliver_three(pop)
    out = tmp_path / "delivered"
    out.mkdir()
    host, port = pop.address("pop3s")
    rcfile = tmp_path / "fetchmailrc"
    # The MDA gets one message per run on stdin; each goes to a file of its own.
    rcfile.write_text(
        f"poll {host} service {port} protocol pop3 uidl\n"
        f'  user "{BOB}" password "{PASSWORD}"\n'
        "  ssl no sslcertck\n"
        f"  mda \"/bin/sh -c 'cat > {out}/$$'\"\n"
    )
    rcfile.chmod(0o600)
    run(
        fetchmail,
        "--nodetach",
        "--nosyslog",
        "--fetchall",
        "--fetchmailrc",
        str(rcfile),
        "--pidfile",
        str(tmp_path / "fetchmail.pid"),
        home=tmp_path,
    )
    assert_downloaded([path.read_bytes() for path in out.iterdir()])
    assert_drained(pop)


def test_getmail6_downloads_and_deletes(pop: PopServer, tmp_path: Path) -> None:
    getmail = require("getmail")
    deliver_three(pop)
    out = tmp_path / "delivered"
    out.mkdir()
    host, port = pop.address("pop3")
    config = tmp_path / "getmailrc"
    config.write_text(
        "[retriever]\n"
        "type = SimplePOP3Retriever\n"
        f"server = {host}\nport = {port}\n"
        f"username = {BOB}\npassword = {PASSWORD}\n"
        # An external MDA, not getmail's Maildir writer: that one refuses to run as root
        # (CI containers), while allow_root_commands is harmless for anyone else.
        "[destination]\n"
        "type = MDA_external\npath = /bin/sh\n"
        f"arguments = ('-c', 'cat > {out}/$$')\nallow_root_commands = true\n"
        "[options]\n"
        "delete = true\nread_all = true\nmessage_log_syslog = false\n"
    )
    os.chmod(config, 0o600)
    run(getmail, "--getmaildir", str(tmp_path), "--rcfile", str(config), home=tmp_path)
    assert_downloaded([path.read_bytes() for path in out.iterdir()])
    assert_drained(pop)
