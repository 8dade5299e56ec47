"""The exclusive POP3 maildrop lock (RFC 1939 §8), held across worker processes.

`flock` on one file per account under DATA/locks/pop3/: the kernel releases it when the
descriptor closes, so a session that ends any way at all (QUIT, dropped connection, a
killed worker) never leaves a stale lock behind.  A flock belongs to the open file
description, so two sessions in the same process exclude each other too.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class MaildropLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, data_dir: Path, account_id: int) -> MaildropLock | None:
        """The lock, or None when another session holds it; never waits."""
        folder = data_dir / "locks" / "pop3"
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / str(account_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
