"""The consumer's SQLite state: pending launches, KOS manifests fetched from the DMP, who saw what and when."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drimbox.state.db import Database, transaction
from drimbox.state.migrations import Step
from drimbox.state.sql import Connection

_SCHEMA = """
CREATE TABLE IF NOT EXISTS launches (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS manifests (
    kos_uid TEXT PRIMARY KEY,
    patient_key TEXT NOT NULL,
    data BLOB NOT NULL,
    fetched REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS visits (
    professional TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    started REAL NOT NULL,
    last REAL NOT NULL,
    previous REAL,
    PRIMARY KEY (professional, patient_key)
);
CREATE TABLE IF NOT EXISTS seen (
    professional TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    kos_uid TEXT NOT NULL,
    first_seen REAL NOT NULL,
    PRIMARY KEY (professional, patient_key, kos_uid)
);
"""
# Step n is MIGRATIONS[n - 1]; only ever append.
MIGRATIONS: list[Step] = [_SCHEMA]
LAUNCH_ID = re.compile(r"^[A-Za-z0-9_-]{32}$")


@dataclass(frozen=True)
class Visit:
    """One consultation of a patient by a professional: when the previous one began, what is new since."""

    previous: float | None  # start of the previous consultation; None the first time
    new: frozenset[str]  # KOS UIDs first seen during this consultation


class ConsumerStore:
    """var_dir/consumer/consumer.sqlite; every call runs on the database thread."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, directory: Path, url: str = "") -> ConsumerStore:
        return cls(
            await asyncio.to_thread(Database, directory / "consumer.sqlite", MIGRATIONS, url=url, store="consumer")
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._db.close)

    # -- launches: the contextual call, kept server-side until the professional has logged in --------

    async def save_launch(self, data: dict[str, Any], ttl: float, now: float | None = None) -> str:
        """Store a launch under a new unguessable id; launches older than `ttl` are purged on the way."""
        launch_id = secrets.token_urlsafe(24)  # 32 characters, 192 random bits
        now = time.time() if now is None else now

        def write(conn: Connection) -> None:
            conn.execute("DELETE FROM launches WHERE created < ?", (now - ttl,))
            conn.execute("INSERT INTO launches VALUES (?, ?, ?)", (launch_id, now, json.dumps(data)))

        await self._db.acall(lambda c: transaction(c, write))
        return launch_id

    async def launch(self, launch_id: str, ttl: float, now: float | None = None) -> dict[str, Any] | None:
        """The launch's data, or None when unknown or older than `ttl`."""
        if not LAUNCH_ID.match(launch_id):
            return None
        now = time.time() if now is None else now
        row = await self._db.acall(
            lambda c: c.execute("SELECT created, data FROM launches WHERE id = ?", (launch_id,)).fetchone()
        )
        if row is None or row["created"] < now - ttl:
            return None
        data: dict[str, Any] = json.loads(row["data"])
        return data

    # -- manifests: a KOS never changes once published (a new version is a new KOS UID) ----------------

    async def manifest(self, kos_uid: str) -> tuple[str, bytes] | None:
        """(patient key `INS|OID`, KOS bytes) of a manifest already fetched, or None."""
        row = await self._db.acall(
            lambda c: c.execute("SELECT patient_key, data FROM manifests WHERE kos_uid = ?", (kos_uid,)).fetchone()
        )
        return None if row is None else (row["patient_key"], bytes(row["data"]))

    async def manifest_patient(self, kos_uid: str) -> str | None:
        row = await self._db.acall(
            lambda c: c.execute("SELECT patient_key FROM manifests WHERE kos_uid = ?", (kos_uid,)).fetchone()
        )
        return None if row is None else str(row["patient_key"])

    async def save_manifest(self, kos_uid: str, patient_key: str, data: bytes) -> None:
        await self._db.acall(lambda c: c.execute(
            "INSERT INTO manifests VALUES (?, ?, ?, ?) ON CONFLICT (kos_uid) DO NOTHING", (kos_uid, patient_key, data, time.time())))  # fmt: skip

    # -- visits: "new since you last opened this patient" -----------------------------------------------

    async def record_visit(
        self, professional: str, patient_key: str, kos_uids: Iterable[str], window: float, now: float | None = None
    ) -> Visit:
        """Count this request in the current consultation (or begin one after `window` idle seconds)."""
        now = time.time() if now is None else now
        uids = list(dict.fromkeys(kos_uids))

        def record(conn: Connection) -> Visit:
            row = conn.execute("SELECT started, last, previous FROM visits WHERE professional = ? AND patient_key = ?",
                               (professional, patient_key)).fetchone()  # fmt: skip
            if row is None:
                started, previous = now, None
            elif now - row["last"] > window:
                started, previous = now, row["started"]
            else:
                started, previous = row["started"], row["previous"]
            conn.execute("INSERT INTO visits VALUES (?, ?, ?, ?, ?) ON CONFLICT (professional, patient_key) DO UPDATE"
                         " SET started = excluded.started, last = excluded.last, previous = excluded.previous",
                         (professional, patient_key, started, now, previous))  # fmt: skip
            conn.executemany("INSERT INTO seen VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                             [(professional, patient_key, uid, now) for uid in uids])  # fmt: skip
            # Seen first since this consultation began: new, and still new when the page is reloaded.
            new = {
                r["kos_uid"]
                for r in conn.execute(
                    "SELECT kos_uid FROM seen WHERE professional = ? AND patient_key = ? AND first_seen >= ?",
                    (professional, patient_key, started),
                )
            }
            return Visit(previous, frozenset(new & set(uids)))

        return await self._db.acall(lambda c: transaction(c, record))
