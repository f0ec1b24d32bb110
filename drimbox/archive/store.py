"""The archive's files: one Part-10 file per instance, made durable (fsync, rename, directory fsync) before it is indexed."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import struct
import threading
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path, PurePosixPath
from typing import Literal

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from drimbox.archive.errors import ArchiveFull, ArchiveUnavailable, UnreadableDataset
from drimbox.dimse.uid import is_lenient_uid
from drimbox.state.durable import fsync_dir

LOG = logging.getLogger(__name__)

INCOMING = ".incoming"
_PREAMBLE = b"\x00" * 128 + b"DICM"
_IMPLEMENTATION_VERSION = "DRIMBOX_010"
# Disk full or quota exceeded: the sender may retry later or elsewhere (status 0xA700).
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_KNOWN_DIRS_MAX = 10_000

# new: first copy; unchanged: identical bytes were already there (kept); replaced: different bytes replaced.
Outcome = Literal["new", "unchanged", "replaced"]


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    # File Meta elements are Explicit VR Little Endian; OB has a 4-byte length after 2 reserved bytes.
    if vr == b"OB":
        return struct.pack("<HH", 0x0002, element) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta(sop_class_uid: str, sop_uid: str, transfer_syntax: str, source_ae: str = "") -> bytes:
    """Preamble, 'DICM' and the File Meta Information group (PS3.10 7.1) for one instance.

    Encoded by hand: pydicom's FileMetaDataset costs a quarter of a millisecond per instance.
    """
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\0\1"),
            _meta_element(0x0002, b"UI", _padded(sop_class_uid, b"\0")),
            _meta_element(0x0003, b"UI", _padded(sop_uid, b"\0")),
            _meta_element(0x0010, b"UI", _padded(transfer_syntax, b"\0")),
            _meta_element(0x0012, b"UI", _padded(PYDICOM_IMPLEMENTATION_UID, b"\0")),
            _meta_element(0x0013, b"SH", _padded(_IMPLEMENTATION_VERSION, b" ")),
            _meta_element(0x0016, b"AE", _padded(source_ae.strip()[:16], b" ")) if source_ae.strip() else b"",
        )
    )
    return _PREAMBLE + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body


def split_part10(data: bytes) -> tuple[FileMetaDataset, int]:
    """The File Meta Information of a Part-10 file and the offset where its data set starts.

    Raises UnreadableDataset when `data` is not a Part-10 file (no 'DICM' or no group length).
    """
    if len(data) < 144 or data[128:132] != b"DICM":
        raise UnreadableDataset("not a DICOM Part-10 file (no DICM prefix)")
    # (0002,0000) File Meta Information Group Length, UL, always first and explicit VR.
    if data[132:138] != b"\x02\x00\x00\x00UL":
        raise UnreadableDataset("File Meta Information Group Length (0002,0000) missing")
    (group_length,) = struct.unpack_from("<I", data, 140)
    end = 144 + group_length
    if end > len(data):
        raise UnreadableDataset("File Meta Information longer than the file")
    try:
        meta = read_dataset(BytesIO(data[132:end]), False, True)
    except Exception as exc:
        raise UnreadableDataset(f"File Meta Information cannot be parsed ({type(exc).__name__})") from None
    return FileMetaDataset(meta), end


def relative_path(study_uid: str, series_uid: str, sop_uid: str) -> PurePosixPath:
    """Where an instance lives under the archive root; refuses anything but UIDs (no path tricks)."""
    for uid in (study_uid, series_uid, sop_uid):
        if not is_lenient_uid(uid):  # lenient: modalities and PACS send UIDs with leading zeros
            raise ValueError(f"not a valid UID: {uid!r}")
    return PurePosixPath(study_uid, series_uid, f"{sop_uid}.dcm")


def _write_all(fd: int, chunks: Sequence[bytes | memoryview]) -> int:
    views = [memoryview(c) for c in chunks if len(c)]
    total = sum(len(v) for v in views)
    while views:
        written = os.writev(fd, views)
        # A short write (signal, pipe-like file systems) leaves the rest for the next round.
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
    return total


def _same_content(path: Path, chunks: Sequence[bytes | memoryview], size: int) -> bool:
    try:
        if path.stat().st_size != size:
            return False
        with open(path, "rb") as fh:
            for chunk in chunks:
                if fh.read(len(chunk)) != chunk:
                    return False
        return True
    except OSError:
        return False


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that named this temporary file (<sop>.<pid>.<serial>.tmp) still runs, another than us."""
    parts = tmp.name.split(".")
    if len(parts) < 4 or not parts[-3].isdigit():
        return False
    pid = int(parts[-3])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class FileStore:
    """Files under `root`/<study>/<series>/<sop>.dcm; temporary files under `root`/.incoming."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / INCOMING
        # Directories whose existence has already been made durable: skip the mkdir/fsync next time.
        self._known_dirs: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._serial = itertools.count()

    def open(self) -> None:
        """Create the layout and remove temporary files a crash left behind (they were never acknowledged)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._ensure_dir(self.incoming)
            for leftover in self.incoming.iterdir():
                if not _writer_alive(leftover):  # another process of the box ([http] workers) may be writing it
                    leftover.unlink(missing_ok=True)
        except OSError as exc:
            raise self._error("cannot open the archive directory", exc) from None

    def path(self, relative: PurePosixPath | str) -> Path:
        return self.root / relative

    def write(self, relative: PurePosixPath, chunks: Sequence[bytes | memoryview]) -> tuple[int, Outcome]:
        """Make `chunks` the durable content of the file at `relative`; return its size and what happened.

        An existing file with the same bytes is kept (a retried store); different bytes replace it
        atomically. When this returns, file and directory entry are on disk.
        Raises ArchiveFull (disk full) or ArchiveUnavailable (any other I/O error).
        """
        final = self.root / relative
        size = sum(len(c) for c in chunks)
        try:
            existed = final.exists()
            if existed and _same_content(final, chunks, size):
                # The earlier copy may have been renamed but not yet synced when its writer was killed.
                fd = os.open(final, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                fsync_dir(final.parent)
                return size, "unchanged"
            self._ensure_dir(final.parent)
            # Unique without mkstemp's retries: one writer per SOP Instance UID at a time (Archive's
            # lock), a counter per process, the pid against a previous process's leftovers.
            tmp = self.incoming / f"{final.stem}.{os.getpid()}.{next(self._serial)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._error("cannot prepare the instance file", exc) from None
        try:
            try:
                _write_all(fd, chunks)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            try:
                os.replace(tmp, final)
            except FileNotFoundError:
                # The series directory was removed behind our back (cleanup by hand): make it again.
                self._known_dirs.discard(final.parent)
                self._ensure_dir(final.parent)
                os.replace(tmp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._error("cannot write the instance file", exc) from None
        return size, "replaced" if existed else "new"

    def remove(self, relative: PurePosixPath | str) -> None:
        """Delete a file (a replaced instance's old copy); a failure is logged, never raised."""
        path = self.root / relative
        try:
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
        except OSError as exc:
            LOG.warning("archive: could not remove %s: %s", relative, exc.strerror)

    def _ensure_dir(self, directory: Path) -> None:
        """Create `directory` and its missing parents under root, fsyncing each new entry's parent."""
        if directory in self._known_dirs:
            return
        with self._dirs_lock:
            missing: list[Path] = []
            current = directory
            while not current.is_dir():
                missing.append(current)
                if current == self.root:
                    break
                current = current.parent
            for path in reversed(missing):
                try:
                    path.mkdir()
                except FileExistsError:
                    pass
                # A new directory is durable only once its parent's entry is.
                fsync_dir(path.parent)
            if len(self._known_dirs) >= _KNOWN_DIRS_MAX:
                # Bounded memory on a long-running box; forgetting costs one stat per directory.
                self._known_dirs.clear()
            self._known_dirs.add(directory)

    def _error(self, what: str, exc: OSError) -> ArchiveFull | ArchiveUnavailable:
        detail = exc.strerror or type(exc).__name__
        if exc.errno in _FULL_ERRNOS:
            return ArchiveFull(f"{what}: {detail}")
        return ArchiveUnavailable(f"{what}: {detail}")
