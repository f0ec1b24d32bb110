"""What the consumer keeps of the access rules: the patient's opposition from launches, emergency accesses granted."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from drimbox.state.db import Database, transaction
from drimbox.state.migrations import Step
from drimbox.state.sql import Connection

_SCHEMA = """
CREATE TABLE IF NOT EXISTS consent (
    patient_key TEXT PRIMARY KEY,
    opposed INTEGER NOT NULL,
    professional TEXT NOT NULL,
    recorded REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS applied_launches (
    launch_id TEXT PRIMARY KEY,
    applied REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS emergencies (
    professional TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    granted REAL NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (professional, patient_key)
);
"""
# Step n is MIGRATIONS[n - 1]; only ever append.
MIGRATIONS: list[Step] = [_SCHEMA]


@dataclass(frozen=True)
class Emergency:
    reason: str
    expires: float


class AccessStore:
    """var_dir/consumer/access.sqlite; every call runs on the database thread."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, directory: Path, url: str = "") -> AccessStore:
        return cls(await asyncio.to_thread(Database, directory / "access.sqlite", MIGRATIONS, url=url, store="access"))

    async def close(self) -> None:
        await asyncio.to_thread(self._db.close)

    async def apply_launch(
        self, launch_id: str, patient_key: str, opposed: bool, professional: str, *, record: bool = True
    ) -> bool | None:
        """Record the consent state a launch carries, once per launch: reloading an old launch's page does not
        undo what a newer launch from the software said. With `record` false the launch is only marked as seen
        (its professional may not record an opposition). Returns whether the patient was opposed before this
        launch, None when the launch had already been applied."""
        now = time.time()

        def write(conn: Connection) -> bool | None:
            if conn.execute("SELECT 1 FROM applied_launches WHERE launch_id = ?", (launch_id,)).fetchone():
                return None
            conn.execute("INSERT INTO applied_launches VALUES (?, ?)", (launch_id, now))
            row = conn.execute("SELECT opposed FROM consent WHERE patient_key = ?", (patient_key,)).fetchone()
            if record:
                conn.execute("INSERT INTO consent VALUES (?, ?, ?, ?) ON CONFLICT (patient_key) DO UPDATE SET"
                             " opposed = excluded.opposed, professional = excluded.professional,"
                             " recorded = excluded.recorded",
                             (patient_key, int(opposed), professional, now))  # fmt: skip
            return bool(row and row[0])

        result: bool | None = await self._db.acall(lambda c: transaction(c, write))
        return result

    async def opposed(self, patient_key: str) -> bool:
        """Whether the latest launch for this patient said they oppose the consultation of their DMP."""
        row = await self._db.acall(
            lambda c: c.execute("SELECT opposed FROM consent WHERE patient_key = ?", (patient_key,)).fetchone()
        )
        return bool(row and row[0])

    async def grant_emergency(self, professional: str, patient_key: str, reason: str, ttl: float) -> None:
        now = time.time()
        await self._db.acall(lambda c: c.execute(
            "INSERT INTO emergencies VALUES (?, ?, ?, ?, ?) ON CONFLICT (professional, patient_key) DO UPDATE"
            " SET reason = excluded.reason, granted = excluded.granted, expires = excluded.expires",
            (professional, patient_key, reason, now, now + ttl)))  # fmt: skip

    async def end_emergency(self, professional: str, patient_key: str) -> None:
        await self._db.acall(lambda c: c.execute(
            "DELETE FROM emergencies WHERE professional = ? AND patient_key = ?", (professional, patient_key)))  # fmt: skip

    async def emergency(self, professional: str, patient_key: str) -> Emergency | None:
        """The emergency access in force for this professional and patient, if any."""
        row = await self._db.acall(lambda c: c.execute(
            "SELECT reason, expires FROM emergencies WHERE professional = ? AND patient_key = ? AND expires > ?",
            (professional, patient_key, time.time())).fetchone())  # fmt: skip
        return Emergency(row[0], row[1]) if row else None
