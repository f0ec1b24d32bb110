"""Files that survive a power cut: write whole or not at all (temporary file, fsync, rename, fsync the directory)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, tmp: Path | None = None) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, on disk once this returns.

    `mode` applies to a new file (under the umask); `tmp` is the temporary file beside `path`, by default
    `.<name>.<pid>.tmp` so that two processes writing the same file do not share it. A failure removes it.
    """
    tmp = tmp or path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a file created, renamed or removed in it) to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
