"""Exclusive locks that hold across worker processes: the POP3 maildrop (RFC 1939 §8) and
the one process that runs the outbound queue.

`flock` on one file under DATA/locks/: the kernel releases it when the descriptor closes,
so a holder that ends any way at all (QUIT, dropped connection, a killed worker) never
leaves a stale lock behind.  A flock belongs to the open file description, so two holders
in the same process exclude each other too.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class FileLock:
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def try_acquire(cls, path: Path) -> FileLock | None:
        """The lock, or None when someone else holds it; never waits."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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


def maildrop_lock(data_dir: Path, account_id: int) -> FileLock | None:
    return FileLock.try_acquire(data_dir / "locks" / "pop3" / str(account_id))


def queue_lock(data_dir: Path) -> FileLock | None:
    return FileLock.try_acquire(data_dir / "locks" / "queue")
