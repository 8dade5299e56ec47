"""Message blobs: the raw RFC 5322 bytes, stored once, named by their SHA-256 (DESIGN §3).

A blob is written to a temporary file, fsync'd, renamed into place and its directory
fsync'd, so a name that exists always holds the complete content and survives a crash.
An S3-compatible backend will offer the same methods.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from postoffice.files import fsync_dir


def blob_name(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Hashing takes ~0.6 ms per MiB here: above this, a thread keeps other sessions moving.
_HASH_INLINE_MAX = 1024 * 1024


async def hash_off_loop(data: bytes) -> str:
    """blob_name() without holding up the event loop for a large message."""
    if len(data) <= _HASH_INLINE_MAX:
        return blob_name(data)
    return await asyncio.to_thread(blob_name, data)


def _older_than(path: Path, cutoff: float) -> bool:
    # put() renames temporary files and the sweeper deletes blobs while a listing runs.
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


class FileBlobStore:
    """Blobs as files under `root/ab/<sha256>`; all methods block, so call them off-loop.

    One level of 256 folders: deep enough for millions of files per folder level on any
    modern filesystem, shallow enough that a new blob rarely creates (and fsyncs) a folder.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        sha256 = blob_name(data)
        final = self.path(sha256)
        try:
            # Refresh the age the sweeper looks at, so a blob about to be referenced again
            # is not taken for an old orphan.
            os.utime(final)
            return sha256
        except FileNotFoundError:
            pass  # new content, or swept just now: write it
        if not final.parent.exists():
            final.parent.mkdir(exist_ok=True)
            # A new directory entry is durable only once its parent is fsync'd too.
            fsync_dir(self.root)
        tmp = self._tmp / f"{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return sha256

    def get(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def read(self, sha256: str, limit: int | None) -> bytes:
        """The blob, or its first `limit` bytes."""
        if limit is None:
            return self.get(sha256)
        with self.path(sha256).open("rb") as blob:
            return blob.read(limit)

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def delete(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def iter_names(self, min_age_seconds: float) -> Iterator[str]:
        """Names of blobs (and abandoned temporary files) untouched for min_age_seconds."""
        cutoff = time.time() - min_age_seconds
        for first in self.root.iterdir():
            if len(first.name) != 2 or not first.is_dir():
                continue
            for blob in first.iterdir():
                if _older_than(blob, cutoff):
                    yield blob.name
        for tmp in self._tmp.iterdir():
            if _older_than(tmp, cutoff):
                tmp.unlink(missing_ok=True)

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
