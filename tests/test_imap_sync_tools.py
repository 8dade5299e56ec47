"""The IMAP listener against Debian's mail tools, clients we did not write (.ci/run installs
them): isync's `mbsync` and `offlineimap` mirroring a mailbox to a Maildir and back, and `mutt`
reading and deleting in batch mode.  Each test is skipped only when its binary is missing.

All of them talk plain IMAP on loopback, where LOGIN without TLS is allowed by default, so
no tool has to be told to trust the self-signed certificate.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import imapclient
import pytest

import test_imap_clients as clients
from test_imap_clients import BOB, PASSWORD, MailServer, flag_set, text_message, uid_of, wire

# The fixture of test_imap_clients, used here under the same name.
mail = clients.mail

TUID = re.compile(rb"^X-TUID: \S+\n", re.MULTILINE)
TOOL_TIMEOUT = 30.0  # seconds for one run of a tool; each takes about one


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian: .ci/run installs it)")
    return path


def run(*argv: str, home: Path) -> subprocess.CompletedProcess[str]:
    """Run a tool with its own HOME, so no dotfile of the developer's is read or written."""
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        env={"PATH": os.environ["PATH"], "HOME": str(home), "LC_ALL": "C.UTF-8"},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"{argv[0]} exited {result.returncode}:\n{result.stderr}"
    return result


def local_form(message: bytes) -> bytes:
    """A message as the tools store it in a Maildir: LF line ends."""
    return message.replace(b"\r\n", b"\n")


def maildir(folder: Path) -> dict[Path, bytes]:
    """Every message file of a Maildir folder (new/ and cur/) with its bytes, less the
    `X-TUID` header mbsync writes into some copies to find them again after a crash."""
    return {
        path: TUID.sub(b"", path.read_bytes())
        for sub in ("new", "cur")
        for path in (folder / sub).iterdir()
    }


def maildir_flags(path: Path) -> str:
    """The flag letters of a Maildir file name (`...:2,FS` -> "FS")."""
    return path.name.rpartition(":2,")[2]


def file_of(folder: Path, content: bytes) -> Path:
    [path] = [path for path, data in maildir(folder).items() if data == content]
    return path


def set_local_flags(path: Path, letters: str) -> None:
    """Change a message's flags the way a Maildir reader does: rename it into cur/."""
    base = path.name.rpartition(":2,")[0] or path.name
    path.rename(path.parent.parent / "cur" / f"{base}:2,{letters}")


def seed(client: imapclient.IMAPClient) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """Two messages in Bob's INBOX, the first one flagged: (uid, bytes) for each."""
    keep = wire(
        text_message("kept on the server", "This one stays.\n", date="Mon, 01 Jan 2024 09:00 +0000")
    )
    doomed = wire(text_message("deleted on the server", "This one goes.\n"))
    [keep_uid] = uid_of(client.append("INBOX", keep, flags=[b"\\Flagged"]), "APPENDUID")
    [doomed_uid] = uid_of(client.append("INBOX", doomed), "APPENDUID")
    return (keep_uid, keep), (doomed_uid, doomed)


def local_message(subject: str) -> bytes:
    return local_form(wire(text_message(subject, "Written offline.\n", sender=BOB)))


def assert_second_sync(
    client: imapclient.IMAPClient, folder: Path, keep: bytes, subject: str
) -> None:
    """After a sync that carried a local new message, a local \\Seen and a server-side
    deletion: the server has the new message and the flag, the Maildir lost the deleted one."""
    client.noop()
    [uploaded] = client.search(["SUBJECT", subject])
    body = client.fetch([uploaded], ["BODY.PEEK[TEXT]"])[uploaded][b"BODY[TEXT]"]
    assert body == b"Written offline.\r\n"
    [kept] = client.search(["SUBJECT", "kept on the server"])
    assert flag_set(client.get_flags([kept])[kept]) == {b"\\Flagged", b"\\Seen"}
    local = maildir(folder)
    assert sorted(local.values()) == sorted([local_form(keep), local_message(subject)])
    assert maildir_flags(file_of(folder, local_form(keep))) == "FS"


def delete_on_server(client: imapclient.IMAPClient, uid: int) -> None:
    client.add_flags([uid], [b"\\Deleted"])
    client.uid_expunge([uid])


# -- mbsync ----------------------------------------------------------------------------------


def mbsync_config(tmp_path: Path, address: tuple[str, int]) -> Path:
    host, port = address
    local = tmp_path / "Mail"
    local.mkdir()
    config = tmp_path / "mbsyncrc"
    # SSLType: isync 1.4's name; 1.5 calls it TLSType and still reads the old one.
    config.write_text(
        f"IMAPAccount postoffice\n"
        f"Host {host}\nPort {port}\nUser {BOB}\nPass {PASSWORD}\n"
        f"SSLType None\nAuthMechs LOGIN\nTimeout 10\n\n"
        f"IMAPStore remote\nAccount postoffice\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\nSubFolders Verbatim\n\n"
        f"Channel inbox\nFar :remote:\nNear :local:\nPatterns INBOX\n"
        f"Create Both\nExpunge Both\nSyncState *\nSync All\n"
    )
    return config


def test_mbsync_both_ways(mail: MailServer, tmp_path: Path) -> None:
    mbsync = require("mbsync")
    client = mail.client()
    (_, keep), (doomed_uid, doomed) = seed(client)
    config = mbsync_config(tmp_path, mail.address())
    folder = tmp_path / "Mail" / "INBOX"

    run(mbsync, "-c", str(config), "-a", home=tmp_path)
    local = maildir(folder)
    assert sorted(local.values()) == sorted([local_form(keep), local_form(doomed)])
    assert maildir_flags(file_of(folder, local_form(keep))) == "F"

    (folder / "new" / "1700000000.offline.host").write_bytes(local_message("made by mbsync"))
    set_local_flags(file_of(folder, local_form(keep)), "FS")
    delete_on_server(client, doomed_uid)
    run(mbsync, "-c", str(config), "-a", home=tmp_path)
    assert_second_sync(client, folder, keep, "made by mbsync")


# -- offlineimap -----------------------------------------------------------------------------


def offlineimap_config(tmp_path: Path, address: tuple[str, int]) -> Path:
    host, port = address
    config = tmp_path / "offlineimaprc"
    config.write_text(
        f"[general]\naccounts = postoffice\nmetadata = {tmp_path}/metadata\n\n"
        f"[Account postoffice]\nlocalrepository = local\nremoterepository = remote\n\n"
        f"[Repository local]\ntype = Maildir\nlocalfolders = {tmp_path}/Mail\n\n"
        f"[Repository remote]\ntype = IMAP\nremotehost = {host}\nremoteport = {port}\n"
        f"remoteuser = {BOB}\nremotepass = {PASSWORD}\nssl = no\nstarttls = no\n"
        f'folderfilter = lambda name: name == "INBOX"\n'
    )
    return config


def test_offlineimap_both_ways(mail: MailServer, tmp_path: Path) -> None:
    offlineimap = require("offlineimap")
    client = mail.client()
    (_, keep), (doomed_uid, doomed) = seed(client)
    config = offlineimap_config(tmp_path, mail.address())
    folder = tmp_path / "Mail" / "INBOX"
    command = (offlineimap, "-c", str(config), "-o", "-u", "quiet")

    run(*command, home=tmp_path)
    local = maildir(folder)
    assert sorted(local.values()) == sorted([local_form(keep), local_form(doomed)])
    assert maildir_flags(file_of(folder, local_form(keep))) == "F"

    (folder / "new" / "1700000000.offline.host:2,").write_bytes(
        local_message("made by offlineimap")
    )
    set_local_flags(file_of(folder, local_form(keep)), "FS")
    delete_on_server(client, doomed_uid)
    run(*command, home=tmp_path)
    assert_second_sync(client, folder, keep, "made by offlineimap")


# -- mutt ------------------------------------------------------------------------------------


def run_in_pty(argv: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run a full-screen program on a pseudo-terminal until it exits: (exit code, screen)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + TOOL_TIMEOUT
    try:
        while process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(leader, 65536)
                except OSError:  # EIO: the program closed the terminal
                    break
        code = process.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(leader)
    return code, screen


def muttrc(tmp_path: Path, address: tuple[str, int]) -> Path:
    host, port = address
    config = tmp_path / "muttrc"
    config.write_text(
        f'set folder = "imap://{host}:{port}/"\n'
        f'set spoolfile = "+INBOX"\n'
        f'set imap_user = "{BOB}"\n'
        f'set imap_pass = "{PASSWORD}"\n'
        "set ssl_starttls = no\n"
        "set ssl_force_tls = no\n"
        # Nothing may leave the machine and no question may wait for a key.
        'set sendmail = "/bin/false"\n'
        'set record = ""\n'
        'set header_cache = ""\n'
        'set message_cachedir = ""\n'
        "set move = no\nset quit = yes\nset delete = yes\nset wait_key = no\n"
        "set pipe_decode = no\nset sort = date-sent\n"
    )
    return config


def test_mutt_reads_and_deletes(mail: MailServer, tmp_path: Path) -> None:
    mutt = require("mutt")
    client = mail.client()
    (keep_uid, keep), _ = seed(client)
    # Mutt's index is sorted by Date: the kept message (older) comes first.
    saved = tmp_path / "piped.eml"
    keys = (
        f"<first-entry><pipe-message>cat > {saved}<enter>"
        "<next-entry><delete-message><sync-mailbox><quit>"
    )
    code, screen = run_in_pty(
        [mutt, "-n", "-F", str(muttrc(tmp_path, mail.address())), "-e", f"push '{keys}'"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TERM": "vt100"},
    )
    assert code == 0, screen.decode(errors="replace")
    assert saved.read_bytes() == local_form(keep)
    client.noop()
    assert client.search() == [keep_uid]
    # Piping is not reading: the message stays unseen.
    assert b"\\Seen" not in client.get_flags([keep_uid])[keep_uid]
