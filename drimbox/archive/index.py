"""The archive's SQLite index: patient/study, series and instance attributes for QIDO and C-FIND, and each file's place."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from drimbox.archive.attributes import InstanceAttributes
from drimbox.archive.errors import ArchiveFull, ArchiveUnavailable
from drimbox.archive.query import Level, Match, Query, compile_query, row_to_match
from drimbox.state.db import Database, transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS study (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL DEFAULT '',
    issuer_of_patient_id TEXT NOT NULL DEFAULT '',
    patient_name TEXT NOT NULL DEFAULT '',
    patient_birth_date TEXT NOT NULL DEFAULT '',
    patient_sex TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    study_time TEXT NOT NULL DEFAULT '',
    accession_number TEXT NOT NULL DEFAULT '',
    accession_issuer_oid TEXT NOT NULL DEFAULT '',
    accession_issuer_local TEXT NOT NULL DEFAULT '',
    study_id TEXT NOT NULL DEFAULT '',
    study_description TEXT NOT NULL DEFAULT '',
    referring_physician_name TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS study_patient_id ON study(patient_id);
CREATE INDEX IF NOT EXISTS study_date ON study(study_date);
CREATE INDEX IF NOT EXISTS study_accession ON study(accession_number);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES study(study_uid),
    modality TEXT NOT NULL DEFAULT '',
    series_number INTEGER,
    series_description TEXT NOT NULL DEFAULT '',
    body_part_examined TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instance (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL REFERENCES study(study_uid),
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    number_of_frames INTEGER,
    rows INTEGER,
    columns INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    stored_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instance_series ON instance(series_uid);
CREATE INDEX IF NOT EXISTS instance_study ON instance(study_uid);
"""

_STUDY_COLUMNS = (
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "accession_number",
    "accession_issuer_oid",
    "accession_issuer_local",
    "study_id",
    "study_description",
    "referring_physician_name",
)
_SERIES_COLUMNS = ("modality", "series_number", "series_description", "body_part_examined")


def _upsert(table: str, key: str, columns: tuple[str, ...]) -> str:
    # The latest instance updates its study and series, but an instance that lacks an attribute
    # (empty) does not erase the value another instance of the study gave.
    names = (key, *columns)
    updates = ", ".join(
        f"{c} = CASE WHEN excluded.{c} IS NULL OR excluded.{c} = '' THEN {table}.{c} ELSE excluded.{c} END"
        for c in columns
    )
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        f" ON CONFLICT({key}) DO UPDATE SET {updates}"
    )


_UPSERT_STUDY = _upsert("study", "study_uid", _STUDY_COLUMNS)
_UPSERT_SERIES = _upsert("series", "series_uid", ("study_uid", *_SERIES_COLUMNS))
_UPSERT_INSTANCE = """
INSERT INTO instance (sop_uid, series_uid, study_uid, sop_class_uid, instance_number, number_of_frames,
                      rows, columns, transfer_syntax_uid, path, size, stored_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(sop_uid) DO UPDATE SET
    series_uid = excluded.series_uid, study_uid = excluded.study_uid, sop_class_uid = excluded.sop_class_uid,
    instance_number = excluded.instance_number, number_of_frames = excluded.number_of_frames,
    rows = excluded.rows, columns = excluded.columns, transfer_syntax_uid = excluded.transfer_syntax_uid,
    path = excluded.path, size = excluded.size, stored_at = excluded.stored_at
"""


@dataclass(frozen=True)
class IndexEntry:
    """What the index records for one stored instance: its attributes and its file (relative to the root)."""

    attributes: InstanceAttributes
    path: str
    size: int


@dataclass(frozen=True)
class InstanceFile:
    """One archived instance's file, for the retrieve side (WADO-RS, C-GET/C-MOVE SCP).

    `size` is the size when indexed; readers use the size of the file they open, which a
    concurrent re-store of the same instance may have replaced.
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int


def _record(conn: sqlite3.Connection, entry: IndexEntry) -> str | None:
    """Insert or replace one instance; return the path of the file it replaces, if that was another file."""
    a = entry.attributes
    previous = conn.execute(
        "SELECT path, series_uid, study_uid FROM instance WHERE sop_uid = ?", (a.sop_uid,)
    ).fetchone()
    conn.execute(_UPSERT_STUDY, (a.study_uid, *(getattr(a, c) for c in _STUDY_COLUMNS)))
    conn.execute(_UPSERT_SERIES, (a.series_uid, a.study_uid, *(getattr(a, c) for c in _SERIES_COLUMNS)))
    conn.execute(
        _UPSERT_INSTANCE,
        (
            a.sop_uid,
            a.series_uid,
            a.study_uid,
            a.sop_class_uid,
            a.instance_number,
            a.number_of_frames,
            a.rows,
            a.columns,
            a.transfer_syntax_uid,
            entry.path,
            entry.size,
            time.time(),
        ),
    )
    if previous is None:
        return None
    if previous["series_uid"] != a.series_uid:
        # The instance moved (a corrected series or study): drop what it leaves empty.
        conn.execute(
            "DELETE FROM series WHERE series_uid = ? AND NOT EXISTS (SELECT 1 FROM instance WHERE series_uid = ?)",
            (previous["series_uid"], previous["series_uid"]),
        )
        conn.execute(
            "DELETE FROM study WHERE study_uid = ? AND NOT EXISTS (SELECT 1 FROM series WHERE study_uid = ?)",
            (previous["study_uid"], previous["study_uid"]),
        )
    return str(previous["path"]) if previous["path"] != entry.path else None


def _index_error(exc: sqlite3.Error) -> ArchiveFull | ArchiveUnavailable:
    if isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return ArchiveFull("index: disk full")
    return ArchiveUnavailable(f"index: {type(exc).__name__}")


class ArchiveIndex:
    """The index database. Writes from concurrent stores are grouped into one transaction (group commit)."""

    def __init__(self, path: Path) -> None:
        self.root = path.parent
        self._db = Database(path, SCHEMA)
        # Python's upper() folds accented letters too, which SQLite's built-in upper() leaves alone.
        self._db.call(lambda conn: conn.create_function("upper_text", 1, _upper, deterministic=True))
        self._pending: list[tuple[IndexEntry, Future[str | None]]] = []
        self._pending_lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def add(self, entry: IndexEntry) -> str | None:
        """Record an instance durably (the COMMIT is fsynced); return the path of a replaced older file.

        Blocking: call it from a worker thread. Raises ArchiveFull or ArchiveUnavailable.
        """
        done: Future[str | None] = Future()
        with self._pending_lock:
            self._pending.append((entry, done))
        # The flush drains every entry waiting at that moment: concurrent stores share one fsync.
        # Ours was queued before our flush was submitted, so it is done once that flush returns.
        self._db.call(self._flush)
        return done.result()

    def _flush(self, conn: sqlite3.Connection) -> None:
        with self._pending_lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        results: list[str | None] = []

        def apply(c: sqlite3.Connection) -> None:
            for entry, _ in batch:
                results.append(_record(c, entry))

        try:
            transaction(conn, apply)
        except sqlite3.Error as exc:
            error = _index_error(exc)
            for _, done in batch:
                done.set_exception(error)
            return
        for (_, done), old in zip(batch, results, strict=True):
            done.set_result(old)

    def remove(self, sop_uids: Iterable[str]) -> list[str]:
        """Forget instances (IOCM rejection), and their series and study once empty; return their file paths.

        Blocking. Goes through the same database thread as add(), so it is ordered with the stores.
        """
        uids = sorted(set(sop_uids))

        def work(conn: sqlite3.Connection) -> list[str]:
            paths: list[str] = []
            for uid in uids:
                row = conn.execute("SELECT path FROM instance WHERE sop_uid = ?", (uid,)).fetchone()
                if row is not None:
                    paths.append(row["path"])
                    conn.execute("DELETE FROM instance WHERE sop_uid = ?", (uid,))
            conn.execute(
                "DELETE FROM series WHERE NOT EXISTS (SELECT 1 FROM instance i WHERE i.series_uid = series.series_uid)"
            )
            conn.execute(
                "DELETE FROM study WHERE NOT EXISTS (SELECT 1 FROM series s WHERE s.study_uid = study.study_uid)"
            )
            return paths

        try:
            return self._db.call(lambda conn: transaction(conn, work))
        except sqlite3.Error as exc:
            raise _index_error(exc) from None

    def search(
        self,
        level: Level,
        filters: Mapping[str, str],
        includefields: Iterable[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Match]:
        """Matches at `level` (see query.compile_query); blocking. Raises QueryError for a bad query."""
        return self._db.call(_search(compile_query(level, filters, includefields, limit, offset)))

    async def asearch(
        self,
        level: Level,
        filters: Mapping[str, str],
        includefields: Iterable[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Match]:
        """search() on the database thread, without blocking the event loop."""
        return await self._db.acall(_search(compile_query(level, filters, includefields, limit, offset)))

    def instance_files(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceFile]:
        """Files of a study, series or instance in series then instance order; blocking."""
        return self._db.call(_files(self.root, study_uid, series_uid, sop_uid))

    async def ainstance_files(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceFile]:
        """instance_files() on the database thread, without blocking the event loop."""
        return await self._db.acall(_files(self.root, study_uid, series_uid, sop_uid))


def _search(query: Query) -> Callable[[sqlite3.Connection], list[Match]]:
    def run(conn: sqlite3.Connection) -> list[Match]:
        return [row_to_match(query.fields, tuple(row)) for row in conn.execute(query.sql, query.params)]

    return run


def _files(
    root: Path, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> Callable[[sqlite3.Connection], list[InstanceFile]]:
    sql = (
        "SELECT i.study_uid, i.series_uid, i.sop_uid, i.sop_class_uid, i.transfer_syntax_uid, i.path, i.size"
        " FROM instance i JOIN series se ON se.series_uid = i.series_uid WHERE i.study_uid = ?"
    )
    params: list[str] = [study_uid]
    if series_uid is not None:
        sql += " AND i.series_uid = ?"
        params.append(series_uid)
    if sop_uid is not None:
        sql += " AND i.sop_uid = ?"
        params.append(sop_uid)
    sql += (
        " ORDER BY se.series_number IS NULL, se.series_number, i.series_uid,"
        " i.instance_number IS NULL, i.instance_number, i.sop_uid"
    )

    def run(conn: sqlite3.Connection) -> list[InstanceFile]:
        return [InstanceFile(r[0], r[1], r[2], r[3], r[4], root / r[5], int(r[6])) for r in conn.execute(sql, params)]

    return run


def _upper(value: object) -> str | None:
    return value.upper() if isinstance(value, str) else None
