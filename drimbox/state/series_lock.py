"""One fill per series across the box's processes: a lock file per series (fcntl.flock) in the cache directory.

The process holding a series' lock is the one retrieving it; another process wanting the series waits for the lock,
then finds the series in the shared index (or, when that fill failed or was abandoned, fills it itself). The kernel
releases the lock of a process that dies, so a killed filler never blocks the series.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
from pathlib import Path

# How often a process waiting for another's fill tries the lock again.
POLL_INTERVAL = 0.05


class SeriesLock:
    """A series' lock, held: release() removes the file (the next filler makes a new one) and lets go of it."""

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


class SeriesLocks:
    """The lock files of one cache directory, one per series (its study and its directory name), under .fills/."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory / ".fills"
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, study_uid: str, name: str) -> Path:
        # Hashed: a flat directory, and a name of fixed length whatever the UIDs' length.
        return self.directory / f"{hashlib.sha256(f'{study_uid}/{name}'.encode()).hexdigest()[:40]}.lock"

    def try_acquire(self, study_uid: str, name: str) -> SeriesLock | None:
        """The series' lock if no process holds it now, else None."""
        path = self._path(study_uid, name)
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
                return SeriesLock(path, fd)
            os.close(fd)  # the holder released (and removed) it between open and flock: try the new file

    async def acquire(self, study_uid: str, name: str) -> SeriesLock:
        """The series' lock, waiting while another process holds it (cancellable: the wait is a poll)."""
        while (lock := self.try_acquire(study_uid, name)) is None:
            await asyncio.sleep(POLL_INTERVAL)
        return lock
