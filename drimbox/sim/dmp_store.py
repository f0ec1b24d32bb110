"""Durable registry + repository of the simulated DMP: SQLite (synchronous=FULL) and fsynced files."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from drimbox.sim.dmp_registration import NewAssociation, NewSubmissionSet, Registration
from drimbox.sim.dmp_rules import (
    DEPRECATED_TARGET,
    DUPLICATE_IN_REGISTRY,
    METADATA,
    NON_IDENTICAL_HASH,
    PATIENT_MISMATCH,
    UNRESOLVED_REFERENCE,
    XdsError,
)
from drimbox.state.durable import write_atomic
from drimbox.xds import namespaces as ns

T = TypeVar("T")
UPDATE_ERROR = "XDSMetadataUpdateError"
UPDATE_OPERATION_ERROR = "XDSMetadataUpdateOperationError"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_uuid TEXT NOT NULL UNIQUE,
    unique_id TEXT NOT NULL UNIQUE,
    patient_key TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    status TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    submission_set TEXT NOT NULL,
    submission_time TEXT NOT NULL,
    repository_unique_id TEXT NOT NULL,
    file_name TEXT NOT NULL,
    meta TEXT NOT NULL,
    xml BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_patient ON entries (patient_key, status);
CREATE TABLE IF NOT EXISTS submission_sets (
    entry_uuid TEXT PRIMARY KEY,
    unique_id TEXT NOT NULL UNIQUE,
    patient_key TEXT NOT NULL,
    submission_time TEXT NOT NULL,
    xml BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS associations (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    slots TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS associations_source ON associations (source);
CREATE INDEX IF NOT EXISTS associations_target ON associations (target);
"""
_ENTRY_COLUMNS = (
    "entry_uuid, unique_id, patient_key, patient_id, status, mime_type, hash, size, submission_set, "
    "submission_time, repository_unique_id, file_name, meta, xml"
)
# The lifecycle allowed through ITI-57: IHE's Approved <-> Deprecated, the DMP's Archived, and Deleted as
# the end (the DMP does not bring a deleted document back).
_TRANSITIONS = {
    ns.STATUS_APPROVED: {ns.STATUS_DEPRECATED, ns.STATUS_ARCHIVED, ns.STATUS_DELETED},
    ns.STATUS_DEPRECATED: {ns.STATUS_APPROVED, ns.STATUS_DELETED},
    ns.STATUS_ARCHIVED: {ns.STATUS_APPROVED, ns.STATUS_DELETED},
}


@dataclass(frozen=True)
class StoredEntry:
    entry_uuid: str
    unique_id: str
    patient_key: str
    patient_id: str
    status: str
    mime_type: str
    hash: str
    size: int
    submission_set: str
    submission_time: str
    repository_unique_id: str
    file_name: str
    meta: dict[str, Any]
    xml: bytes


@dataclass(frozen=True)
class StoredAssociation:
    id: str
    type: str
    source: str
    target: str
    slots: dict[str, list[str]]


class DmpStore:
    """All access goes through one worker thread: SQLite stays single-threaded, check+write is atomic."""

    def __init__(self, root: Path, repository_unique_id: str) -> None:
        self.root = root
        self.documents = root / "documents"
        self.repository_unique_id = repository_unique_id
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmp-store")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self._run(self._open)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _open(self) -> None:
        self.documents.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.root / "dmp.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("DMP store is not open")
        return self._db

    # -- writes -------------------------------------------------------------------------------------

    async def register(self, reg: Registration) -> list[XdsError]:
        """Registry-state rules (duplicates, RPLC targets), then files and rows, all or nothing."""
        return await self._run(self._register, reg)

    def _register(self, reg: Registration) -> list[XdsError]:
        errors = self._check_submission_set(reg.submission_set)
        deprecate: list[str] = []
        for entry in reg.entries:
            row = self.db.execute(
                "SELECT hash, entry_uuid FROM entries WHERE unique_id = ? OR entry_uuid = ?",
                (entry.unique_id, entry.entry_uuid),
            ).fetchone()
            if row is not None and row[1] == entry.entry_uuid:
                errors.append(XdsError(METADATA, f"entryUUID {entry.entry_uuid} is already in the registry"))
            elif row is not None and row[0] == entry.hash:
                errors.append(XdsError(DUPLICATE_IN_REGISTRY, f"uniqueId {entry.unique_id} is already registered"))
            elif row is not None:
                errors.append(
                    XdsError(
                        NON_IDENTICAL_HASH,
                        f"uniqueId {entry.unique_id} is already registered with other content (hash {row[0]})",
                    )
                )
            if entry.replaces is None:
                continue
            target = self._find_entry(entry.replaces)
            if target is None:
                errors.append(
                    XdsError(UNRESOLVED_REFERENCE, f"RPLC targetObject {entry.replaces} is not in the registry")
                )
            elif target.status != ns.STATUS_APPROVED:
                errors.append(
                    XdsError(
                        DEPRECATED_TARGET,
                        f"RPLC targetObject {target.entry_uuid} has status {target.status}, not Approved",
                    )
                )
            elif target.patient_key != entry.patient_key:
                errors.append(
                    XdsError(PATIENT_MISMATCH, f"RPLC targetObject {target.entry_uuid} belongs to another patient")
                )
            else:
                deprecate.append(target.entry_uuid)
                for a in reg.associations:
                    if a.type == ns.ASSOC_RPLC and a.source == entry.entry_uuid:
                        a.target = target.entry_uuid
        if errors:
            return errors
        written: list[Path] = []
        try:
            for entry in reg.entries:
                written.append(self._write_file(f"{entry.entry_uuid[9:]}.bin", entry.data))
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self._insert_submission_set(reg.submission_set)
                for entry in reg.entries:
                    self.db.execute(
                        f"INSERT INTO entries ({_ENTRY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            entry.entry_uuid,
                            entry.unique_id,
                            entry.patient_key,
                            entry.patient_id,
                            ns.STATUS_APPROVED,
                            entry.mime_type,
                            entry.hash,
                            entry.size,
                            reg.submission_set.entry_uuid,
                            reg.submission_set.submission_time,
                            self.repository_unique_id,
                            written[reg.entries.index(entry)].name,
                            json.dumps(entry.meta),
                            entry.xml,
                        ),
                    )
                self._insert_associations(reg.associations)
                for uuid_ in deprecate:
                    self.db.execute("UPDATE entries SET status = ? WHERE entry_uuid = ?", (ns.STATUS_DEPRECATED, uuid_))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return []

    async def update_status(self, reg: Registration) -> list[XdsError]:
        """ITI-57: apply every availability-status change of the submission, or none."""
        return await self._run(self._update_status, reg)

    def _update_status(self, reg: Registration) -> list[XdsError]:
        errors = self._check_submission_set(reg.submission_set)
        for update in reg.updates:
            target = self._find_entry(update.target, by_unique_id=False)
            loc = f"Association[@id='{update.association_id}']"
            if target is None:
                errors.append(
                    XdsError(
                        UNRESOLVED_REFERENCE,
                        f"targetObject {update.target} is not a DocumentEntry of the registry",
                        loc,
                    )
                )
            elif target.patient_key != reg.submission_set.patient_key:
                errors.append(
                    XdsError(
                        PATIENT_MISMATCH,
                        f"DocumentEntry {update.target} belongs to another patient than the SubmissionSet",
                        loc,
                    )
                )
            elif target.status != update.original:
                errors.append(
                    XdsError(
                        UPDATE_ERROR,
                        f"OriginalStatus {update.original} is not the current status"
                        f" {target.status} of {update.target}",
                        loc,
                    )
                )
            elif update.new not in _TRANSITIONS.get(target.status, set()):
                errors.append(
                    XdsError(UPDATE_OPERATION_ERROR, f"status {target.status} cannot become {update.new}", loc)
                )
        if errors:
            return errors
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self._insert_submission_set(reg.submission_set)
            self._insert_associations(reg.associations)
            for update in reg.updates:
                self.db.execute("UPDATE entries SET status = ? WHERE entry_uuid = ?", (update.new, update.target))
        return []

    def _check_submission_set(self, ss: NewSubmissionSet) -> list[XdsError]:
        row = self.db.execute(
            "SELECT 1 FROM submission_sets WHERE unique_id = ? OR entry_uuid = ?",
            (ss.unique_id, ss.entry_uuid),
        ).fetchone()
        if row is None:
            return []
        return [
            XdsError(
                DUPLICATE_IN_REGISTRY,
                f"SubmissionSet uniqueId {ss.unique_id} (or its entryUUID) is already registered",
            )
        ]

    def _insert_submission_set(self, ss: NewSubmissionSet) -> None:
        self.db.execute(
            "INSERT INTO submission_sets (entry_uuid, unique_id, patient_key, submission_time, xml) VALUES (?,?,?,?,?)",
            (ss.entry_uuid, ss.unique_id, ss.patient_key, ss.submission_time, ss.xml),
        )

    def _insert_associations(self, associations: list[NewAssociation]) -> None:
        self.db.executemany(
            "INSERT INTO associations (id, type, source, target, slots) VALUES (?,?,?,?,?)",
            [(a.id, a.type, a.source, a.target, json.dumps(a.slots)) for a in associations],
        )

    def _write_file(self, name: str, data: bytes) -> Path:
        """Write, fsync, rename, fsync the directory: the file exists whole or not at all."""
        final = self.documents / name
        write_atomic(final, data, tmp=final.with_suffix(".tmp"))
        return final

    # -- reads --------------------------------------------------------------------------------------

    def _find_entry(self, ref: str, *, by_unique_id: bool = True) -> StoredEntry | None:
        found = self._entries("entry_uuid = ?", (ref,))
        if not found and by_unique_id:
            found = self._entries("unique_id = ?", (ref,))
        return found[0] if found else None

    def _entries(self, where: str, args: tuple[Any, ...]) -> list[StoredEntry]:
        rows = self.db.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE {where} ORDER BY seq", args).fetchall()
        return [
            StoredEntry(
                entry_uuid=r[0],
                unique_id=r[1],
                patient_key=r[2],
                patient_id=r[3],
                status=r[4],
                mime_type=r[5],
                hash=r[6],
                size=r[7],
                submission_set=r[8],
                submission_time=r[9],
                repository_unique_id=r[10],
                file_name=r[11],
                meta=json.loads(r[12]),
                xml=bytes(r[13]),
            )
            for r in rows
        ]

    async def entries(
        self,
        *,
        patient_key: str | None = None,
        entry_uuids: list[str] | None = None,
        unique_ids: list[str] | None = None,
    ) -> list[StoredEntry]:
        """Entries of one patient, or with these entryUUIDs or uniqueIds, or all; in submission order."""
        if patient_key is not None:
            return await self._run(self._entries, "patient_key = ?", (patient_key,))
        for column, values in (("entry_uuid", entry_uuids), ("unique_id", unique_ids)):
            if values is not None:
                marks = ",".join("?" * len(values)) or "NULL"
                return await self._run(self._entries, f"{column} IN ({marks})", tuple(values))
        return await self._run(self._entries, "1 = 1", ())

    async def associations(self, uuids: list[str]) -> list[StoredAssociation]:
        """Associations whose source or target is one of the given ids."""

        def query() -> list[StoredAssociation]:
            marks = ",".join("?" * len(uuids)) or "NULL"
            rows = self.db.execute(
                f"SELECT id, type, source, target, slots FROM associations "
                f"WHERE source IN ({marks}) OR target IN ({marks}) ORDER BY rowid",
                (*uuids, *uuids),
            ).fetchall()
            return [StoredAssociation(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

        return await self._run(query)

    async def read_document(self, entry: StoredEntry) -> bytes:
        return await self._run((self.documents / entry.file_name).read_bytes)
