"""Work one process of the box does at a time ([http] workers): a lock file per piece of work (fcntl.flock).

A series fill (state/series_cache.py): the process holding the series' lock retrieves it; another process wanting
the series waits for the lock, then finds the series in the shared index (or, when that fill failed or was
abandoned, fills it itself). An import job (consumer/importer.py): the process running it holds its lock. The kernel
releases the lock of a process that dies, so a killed process never blocks the work.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from pathlib import Path

# How often a process waiting for another's work tries the lock again.
POLL_INTERVAL = 0.05


class HeldLock:
    """A lock, held: release() removes the file (the next filler makes a new one) and lets go of it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlinked while still held: a process that opened the old file sees it is gone once it gets the lock.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


class LockFiles:
    """The lock files in one directory, one per piece of work (named by `parts`: a series' study and directory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, parts: tuple[str, ...]) -> Path:
        # Hashed: a flat directory, and a name of fixed length whatever the UIDs' length.
        return self.directory / f"{hashlib.sha256('/'.join(parts).encode()).hexdigest()[:40]}.lock"

    def try_acquire(self, *parts: str) -> HeldLock | None:
        """The lock if no process holds it now, else None."""
        path = self._path(parts)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                return HeldLock(path, fd)
            os.close(fd)  # the holder released (and removed) it between open and flock: try the new file

    async def acquire(self, *parts: str) -> HeldLock:
        """The lock, waiting while another process holds it (cancellable: the wait is a poll)."""
        while (lock := self.try_acquire(*parts)) is None:
            await asyncio.sleep(POLL_INTERVAL)
        return lock
