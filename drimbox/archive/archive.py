"""The Native profile's archive: a durable file per instance plus its index, stored before any success is answered."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from drimbox.archive.attributes import InstanceAttributes, read_attributes
from drimbox.archive.errors import (
    SOP_CLASS_MISMATCH,
    SOP_INSTANCE_MISMATCH,
    ArchiveError,
    UnreadableDataset,
)
from drimbox.archive.index import ArchiveIndex, IndexEntry, InstanceFile
from drimbox.archive.query import Level, Match
from drimbox.archive.store import FileStore, Outcome, file_meta, relative_path, split_part10

LOG = logging.getLogger(__name__)

ARCHIVE_DIR = "archive"
INDEX_FILE = "index.sqlite"
_LOCK_STRIPES = 64


@dataclass(frozen=True)
class StoredInstance:
    """An instance the archive now holds durably.

    `outcome`: "new"; "unchanged" when identical bytes were already there (a retried store: the
    file is kept, re-synced and re-indexed); "replaced" when other bytes for the same SOP Instance
    UID were atomically replaced (the last store wins, even if it moves the instance to another series).
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    path: Path
    size: int
    outcome: Outcome
    patient_id: str = ""  # for the audit trail of who stored what (never logged)


class Archive:
    """Files under `root` and their index. Thread-safe; blocking methods run in the caller's thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = FileStore(root)
        self.files.open()
        self.index = ArchiveIndex(root / INDEX_FILE)
        # Two stores of the same SOP Instance UID must not interleave their write and index steps: not two threads
        # (the lock), nor two processes of the box ([http] workers: STOW-RS anywhere, C-STORE on the primary), the
        # stripe's lock file.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        (root / ".locks").mkdir(parents=True, exist_ok=True)
        self._lock_files = [
            os.open(root / ".locks" / f"{n:02d}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            for n in range(_LOCK_STRIPES)
        ]

    @classmethod
    def open(cls, var_dir: str | Path) -> Archive:
        """The archive of a box: `var_dir`/archive (BoxSettings.var_dir)."""
        return cls(Path(var_dir) / ARCHIVE_DIR)

    def close(self) -> None:
        self.index.close()
        for fd in self._lock_files:
            os.close(fd)
        self._lock_files = []

    @contextmanager
    def _locked(self, sop_uid: str) -> Iterator[None]:
        stripe = zlib.crc32(sop_uid.encode()) % _LOCK_STRIPES
        with self._locks[stripe]:
            fcntl.flock(self._lock_files[stripe], fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_files[stripe], fcntl.LOCK_UN)

    # -- writing (blocking: DIMSE threads, or asyncio.to_thread) --------------------------------

    def store(
        self,
        dataset: bytes,
        transfer_syntax: str,
        *,
        sop_class_uid: str | None = None,
        sop_uid: str | None = None,
        source_ae: str = "",
    ) -> StoredInstance:
        """Store an encoded data set (no File Meta) exactly as received; return once file and index are durable.

        `sop_class_uid` / `sop_uid` are the C-STORE command's: a data set that disagrees is refused.
        Raises ArchiveError (its `status` is the C-STORE failure status to answer).
        """
        attrs = read_attributes(dataset, transfer_syntax)
        if sop_uid is not None and attrs.sop_uid != sop_uid:
            raise UnreadableDataset(
                "SOP Instance UID of the data set differs from the command's", SOP_INSTANCE_MISMATCH
            )
        if sop_class_uid is not None and attrs.sop_class_uid not in ("", sop_class_uid):
            raise UnreadableDataset("SOP Class UID of the data set differs from the command's", SOP_CLASS_MISMATCH)
        if not attrs.sop_class_uid:
            if sop_class_uid is None:
                raise UnreadableDataset("SOP Class UID missing")
            attrs = dataclasses.replace(attrs, sop_class_uid=sop_class_uid)
        meta = file_meta(attrs.sop_class_uid, attrs.sop_uid, transfer_syntax, source_ae)
        return self._store(attrs, (meta, dataset))

    def store_part10(self, data: bytes, source_ae: str = "") -> StoredInstance:
        """Store a DICOM Part-10 file (STOW-RS): its data set bytes are kept, its File Meta rewritten."""
        meta, offset = split_part10(data)
        transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
        if not transfer_syntax:
            raise UnreadableDataset("File Meta Information has no Transfer Syntax UID")
        class_uid = str(meta.get("MediaStorageSOPClassUID", "")) or None
        instance_uid = str(meta.get("MediaStorageSOPInstanceUID", "")) or None
        return self.store(
            data[offset:], transfer_syntax, sop_class_uid=class_uid, sop_uid=instance_uid, source_ae=source_ae
        )

    def _store(self, attrs: InstanceAttributes, chunks: tuple[bytes, bytes]) -> StoredInstance:
        relative = relative_path(attrs.study_uid, attrs.series_uid, attrs.sop_uid)
        with self._locked(attrs.sop_uid):
            size, outcome = self.files.write(relative, chunks)
            # Only now is the file durable: the index may point at it.
            try:
                previous = self.index.add(IndexEntry(attrs, relative.as_posix(), size))
            except ArchiveError:
                if outcome == "new":
                    # Not acknowledged and not indexed: do not leave it taking space (the disk may be full).
                    self.files.remove(relative)
                raise
            if previous is not None:
                self.files.remove(previous)
        return StoredInstance(
            study_uid=attrs.study_uid,
            series_uid=attrs.series_uid,
            sop_uid=attrs.sop_uid,
            path=self.files.path(relative),
            size=size,
            outcome="replaced" if previous is not None else outcome,
            patient_id=attrs.patient_id,
        )

    def remove_instances(self, sop_uids: Iterable[str]) -> int:
        """Delete instances (an IOCM rejection): out of the index first, then their files. Returns how many."""
        paths = self.index.remove(sop_uids)
        for relative in paths:
            self.files.remove(relative)
        return len(paths)

    async def astore_part10(self, data: bytes, source_ae: str = "") -> StoredInstance:
        """store_part10 in a worker thread (STOW-RS on the event loop)."""
        return await asyncio.to_thread(self.store_part10, data, source_ae)

    # -- reading (async, for the event loop) ------------------------------------------------------

    async def search(
        self,
        level: Level,
        filters: Mapping[str, str],
        includefields: Iterable[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Match]:
        """QIDO-style search at 'study', 'series' or 'instance' level (see drimbox.archive.query).

        `filters` maps DICOM keywords to query values (exact, `*`/`?` wildcards, `A-B` date/time ranges,
        UID lists separated by backslash or comma). Raises QueryError naming a bad attribute or value.
        """
        return await self.index.asearch(level, filters, includefields, limit, offset)

    async def iter_instance_paths(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceFile]:
        """The files of a study, series or instance, in series and instance order (empty when unknown)."""
        return await self.index.ainstance_files(study_uid, series_uid, sop_uid)
