"""The durable publication outbox: accepted HL7 reports, their publication jobs and their states."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drimbox.state.db import Database, transaction
from drimbox.state.instance import dead_local, instance_id
from drimbox.state.migrations import Step
from drimbox.state.sql import Connection, is_postgres, skip_locked

# States a publication goes through. `received` → (`waiting` | `retrying`)* → `published` | `failed`
# | `rejected`; a published one later becomes `replaced` (by a newer KOS) or `withdrawn`. A `revise` job (an
# IOCM rejection note from the PACS) ends `published` (a new KOS replaced the live one), `withdrawn` (nothing
# is left) or `unchanged` (the live KOS named none of the rejected instances). An order cancel (OMI^O23) turns
# the study's jobs that never reached the DMP `cancelled`; its own `cancel` job ends `withdrawn` (it withdrew the
# live KOS) or `cancelled` (nothing was live, or the study was unknown: the cancel is only recorded).
log = logging.getLogger(__name__)
ACTIVE_STATES = ("received", "waiting", "retrying")
TERMINAL_STATES = ("published", "failed", "rejected", "withdrawn", "replaced", "unchanged", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    control_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    raw BLOB NOT NULL,
    publication_id INTEGER,
    UNIQUE (sender, control_id)
);
CREATE TABLE IF NOT EXISTS publications (
    id INTEGER PRIMARY KEY,
    action TEXT NOT NULL,
    document_id TEXT NOT NULL,
    accession TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    kos_uid TEXT,
    entry_uuid TEXT,
    report TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    published_at REAL,
    window_start REAL NOT NULL,
    message_id INTEGER,
    UNIQUE (document_id, action, study_uid)
);
CREATE INDEX IF NOT EXISTS publications_study ON publications (study_uid);
CREATE INDEX IF NOT EXISTS publications_accession ON publications (accession);
CREATE INDEX IF NOT EXISTS publications_due ON publications (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS rejections (
    note_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    reason_code TEXT NOT NULL,
    sop_uids TEXT NOT NULL,
    received_at REAL NOT NULL,
    publication_id INTEGER,
    peer TEXT
);
CREATE INDEX IF NOT EXISTS rejections_study ON rejections (study_uid);
"""


def _legacy_columns(conn: Connection) -> None:
    """Columns added before the schema was versioned (a file of an earlier release): CREATE TABLE IF NOT EXISTS
    left its old tables as they were. A PostgreSQL store starts from step 1, which already has them."""
    if is_postgres(conn):
        return
    columns = {row["name"] for row in conn.execute("PRAGMA table_info(rejections)")}
    if "peer" not in columns:
        # Who sent the note ("AE@address"): the revision it causes is audited in that peer's name.
        conn.execute("ALTER TABLE rejections ADD COLUMN peer TEXT")
    columns = {row["name"] for row in conn.execute("PRAGMA table_info(publications)")}
    if "message_id" not in columns:
        # One report may name several studies (ANS exam F): one job per study, all keyed by the report's id, so
        # the table's uniqueness must include the study. SQLite cannot alter a constraint: rebuild the table.
        _rebuild_publications(conn)


def _rebuild_publications(conn: Connection) -> None:
    conn.execute("ALTER TABLE publications RENAME TO publications_old")
    create = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS publications") :]
    conn.execute(create[: create.index(");") + 2])
    kept = [row["name"] for row in conn.execute("PRAGMA table_info(publications_old)")]
    cols = ", ".join(kept)
    conn.execute(f"INSERT INTO publications ({cols}) SELECT {cols} FROM publications_old")
    conn.execute("DROP TABLE publications_old")  # its indexes go with it
    for statement in SCHEMA.split(";"):
        if "ON publications " in statement:
            conn.execute(statement)


# Several instances share one outbox: a job is claimed (who, until when) before it runs, the claim renewed while it
# runs and ended by its next state; a claim whose lease ran out (its instance died) is taken over. The KOS of a
# publication is kept here too, so that whichever instance replays the job resubmits the very same bytes.
CLAIMS = """
ALTER TABLE publications ADD COLUMN claimed_by TEXT;
ALTER TABLE publications ADD COLUMN lease_until REAL;
CREATE TABLE IF NOT EXISTS kos (
    uid TEXT PRIMARY KEY,
    publication_id INTEGER NOT NULL,
    data BLOB NOT NULL,
    created_at REAL NOT NULL
);
"""

# Step n is MIGRATIONS[n - 1]; only ever append.
MIGRATIONS: list[Step] = [SCHEMA, _legacy_columns, CLAIMS]


@dataclass(frozen=True)
class Publication:
    id: int
    action: str
    document_id: str
    accession: str
    study_uid: str
    state: str
    attempts: int
    last_error: str | None
    kos_uid: str | None
    entry_uuid: str | None
    report: dict[str, Any]
    created_at: float
    updated_at: float
    next_attempt_at: float
    published_at: float | None
    window_start: float

    def to_json(self) -> dict[str, Any]:
        """The shape served by GET /api/publications (no patient identity in it)."""
        return {
            "id": self.id,
            "action": self.action,
            "document_id": self.document_id,
            "accession": self.accession,
            "study_uid": self.study_uid,
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "kos_uid": self.kos_uid,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "next_attempt_at": _iso(self.next_attempt_at) if self.state in ACTIVE_STATES else None,
            "published_at": _iso(self.published_at) if self.published_at else None,
        }


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _row(row: Any) -> Publication:
    return Publication(
        id=row["id"],
        action=row["action"],
        document_id=row["document_id"],
        accession=row["accession"],
        study_uid=row["study_uid"],
        state=row["state"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        kos_uid=row["kos_uid"],
        entry_uuid=row["entry_uuid"],
        report=json.loads(row["report"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        next_attempt_at=row["next_attempt_at"],
        published_at=row["published_at"],
        window_start=row["window_start"],
    )


@dataclass(frozen=True)
class RejectionRecord:
    """An IOCM rejection note as the outbox keeps it: which instances, why, and who sent it ("AE@address")."""

    note_uid: str
    reason_code: str
    sop_uids: frozenset[str]
    peer: str


@dataclass(frozen=True)
class Accepted:
    publication_id: int
    duplicate: bool


@dataclass(frozen=True)
class Cancelled:
    """What an order cancel did to one study."""

    publication_id: int  # the `cancel` row
    duplicate: bool
    dropped: int  # jobs that never reached the DMP, now `cancelled`
    withdrawing: bool  # a `cancel` job is queued to withdraw the live KOS
    known: bool  # the box had a publication of this study


class OrderMismatch(Exception):
    """The box publishes this study under another accession number than the order cancel names."""


class Outbox:
    """Publications and the raw messages that caused them: one SQLite file, or a schema of a shared PostgreSQL."""

    def __init__(self, path: Path, *, url: str = "", lease: float = 60.0, instance: str = "") -> None:
        self.db = Database(path, MIGRATIONS, url=url, store="outbox")
        self.lease = lease
        self.instance = instance or instance_id()
        self.db.call(self._release_dead_local)

    def close(self) -> None:
        self.db.close()

    async def accept(
        self,
        *,
        sender: str,
        control_id: str,
        raw: bytes,
        action: str,
        document_id: str,
        accession: str,
        study_uid: str,
        report: dict[str, Any],
        other_studies: Sequence[tuple[str, str]] = (),
    ) -> Accepted:
        """Store a message and its publication jobs durably; a re-sent message or document is a duplicate.

        One job per study the report names: (study_uid, accession) first, then `other_studies`. Each runs, is
        replaced and is withdrawn on its own; `publication_id` is the first study's job.
        """

        def work(conn: Connection) -> Accepted:
            seen = conn.execute(
                "SELECT publication_id FROM messages WHERE sender = ? AND control_id = ?", (sender, control_id)
            ).fetchone()
            if seen is not None:
                return Accepted(publication_id=seen["publication_id"], duplicate=True)
            now = time.time()
            studies = list(dict.fromkeys([(study_uid, accession), *other_studies]))
            ids: list[int] = []
            created: list[int] = []
            for study, acc in studies:
                existing = conn.execute(
                    "SELECT id FROM publications WHERE document_id = ? AND action = ? AND study_uid = ?",
                    (document_id, action, study),
                ).fetchone()
                if existing is not None:
                    ids.append(int(existing["id"]))
                    continue
                inserted = conn.execute(
                    "INSERT INTO publications (action, document_id, accession, study_uid, state, report,"
                    " created_at, updated_at, next_attempt_at, window_start) VALUES (?, ?, ?, ?, 'received', ?, ?, ?, ?, ?)"
                    " RETURNING id",
                    (action, document_id, acc, study, json.dumps(report), now, now, now, now),
                ).fetchone()
                ids.append(int(inserted["id"]))
                created.append(ids[-1])
                if action == "withdraw":
                    # A withdrawal overtakes jobs of the same study that never reached the DMP. One with a KOS may
                    # have (an ITI-41 that timed out, a crash after the DMP answered): it runs first, then this.
                    conn.execute(
                        "UPDATE publications SET state = 'withdrawn', updated_at = ?,"
                        " last_error = 'withdrawn before it was published'"
                        " WHERE study_uid = ? AND id < ? AND state IN ('received', 'waiting', 'retrying')"
                        " AND kos_uid IS NULL",
                        (now, study, ids[-1]),
                    )
            message_id = conn.execute(
                "INSERT INTO messages (sender, control_id, received_at, raw, publication_id) VALUES (?, ?, ?, ?, ?)"
                " RETURNING id",
                (sender, control_id, now, raw, ids[0]),
            ).fetchone()["id"]
            # The other studies' jobs read the same message (raw_message follows message_id).
            for pub_id in created:
                if pub_id != ids[0]:
                    conn.execute("UPDATE publications SET message_id = ? WHERE id = ?", (message_id, pub_id))
            return Accepted(publication_id=ids[0], duplicate=not created)

        return await self.db.acall(lambda conn: transaction(conn, work))

    async def next_due(self, now: float, busy_studies: frozenset[str] = frozenset()) -> Publication | None:
        """Claim the oldest due job whose study has no older job still active (jobs of one study run in order),
        skipping studies this process is busy with and jobs another instance holds.

        The claim (this instance, lease until now + lease) keeps every other instance off the job until its next
        state ends it (`update(state=…)`) or its lease runs out (the instance died: another takes it over).
        """
        busy = sorted(busy_studies)
        not_busy = f" AND p.study_uid NOT IN ({', '.join('?' * len(busy))})" if busy else ""

        def work(conn: Connection) -> Publication | None:
            row = conn.execute(
                "SELECT p.* FROM publications p WHERE p.state IN ('received', 'waiting', 'retrying')"
                " AND p.next_attempt_at <= ? AND (p.claimed_by IS NULL OR p.lease_until < ?)"
                + not_busy
                + " AND NOT EXISTS (SELECT 1 FROM publications q WHERE q.study_uid = p.study_uid AND q.id < p.id"
                " AND q.state IN ('received', 'waiting', 'retrying'))"
                " ORDER BY p.next_attempt_at, p.id LIMIT 1" + skip_locked(conn),
                (now, now, *busy),
            ).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE publications SET claimed_by = ?, lease_until = ? WHERE id = ?",
                         (self.instance, now + self.lease, row["id"]))  # fmt: skip
            return _row(row)

        return await self.db.acall(lambda conn: transaction(conn, work))

    async def renew(self, pub_id: int) -> bool:
        """Extend this instance's claim on a running job; False when it no longer holds it."""

        def work(conn: Connection) -> bool:
            cur = conn.execute("UPDATE publications SET lease_until = ? WHERE id = ? AND claimed_by = ?",
                               (time.time() + self.lease, pub_id, self.instance))  # fmt: skip
            return bool(cur.rowcount)

        return await self.db.acall(work)

    def _release_dead_local(self, conn: Connection) -> None:
        """Claims of this host's processes that are gone (a crash, a kill): free at once, not after their lease."""
        host = self.instance.rpartition("/")[0]
        rows = conn.execute("SELECT DISTINCT claimed_by FROM publications WHERE claimed_by LIKE ?",
                            (host + "/%",)).fetchall()  # fmt: skip
        for holder in (str(r[0]) for r in rows):
            if dead_local(holder, self.instance):
                conn.execute("UPDATE publications SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = ?",
                             (holder,))  # fmt: skip

    async def next_wakeup(self) -> float | None:
        """When the next job may be claimed: its due time, or for a job an instance holds, its lease's end (a job
        running elsewhere is no reason to poll at once)."""

        def work(conn: Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(CASE WHEN claimed_by IS NOT NULL AND lease_until >= ? THEN lease_until"
                " ELSE next_attempt_at END) AS t FROM publications WHERE state IN ('received', 'waiting', 'retrying')",
                (time.time(),),
            ).fetchone()
            return float(row["t"]) if row and row["t"] is not None else None

        return await self.db.acall(work)

    async def update(self, pub_id: int, **fields: Any) -> None:
        """Set some columns of one publication (and its updated_at), durably."""
        allowed = {"state", "attempts", "last_error", "kos_uid", "entry_uuid", "next_attempt_at", "published_at"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"cannot update {sorted(set(fields) - allowed)}")
        fields["updated_at"] = time.time()
        if "state" in fields:  # the job's next state ends the claim that ran it
            fields["claimed_by"] = None
            fields["lease_until"] = None
        cols = ", ".join(f"{k} = ?" for k in fields)

        def work(conn: Connection) -> int:
            # Not over another instance's claim: this one lost the job (its lease ran out while it was cut off
            # from the database) and the instance that took it over writes the outcome.
            cur = conn.execute(f"UPDATE publications SET {cols} WHERE id = ? AND (claimed_by IS NULL OR claimed_by = ?)",
                               (*fields.values(), pub_id, self.instance))  # fmt: skip
            return int(cur.rowcount)

        if not await self.db.acall(work):
            log.warning("publication %d: not updated, another instance holds it now (or it is gone)", pub_id)

    async def save_kos(self, pub_id: int, kos_uid: str, data: bytes) -> None:
        """Record a job's KOS, its bytes with it: a replay on any instance resubmits exactly this one."""

        def work(conn: Connection) -> None:
            conn.execute("INSERT INTO kos (uid, publication_id, data, created_at) VALUES (?, ?, ?, ?)"
                         " ON CONFLICT (uid) DO NOTHING", (kos_uid, pub_id, data, time.time()))  # fmt: skip
            conn.execute("UPDATE publications SET kos_uid = ?, updated_at = ? WHERE id = ?",
                         (kos_uid, time.time(), pub_id))  # fmt: skip

        await self.db.acall(lambda conn: transaction(conn, work))

    async def kos_bytes(self, kos_uid: str) -> bytes | None:
        """The bytes of a KOS the outbox recorded (None for one made before they were kept here)."""

        def work(conn: Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM kos WHERE uid = ?", (kos_uid,)).fetchone()
            return bytes(row["data"]) if row else None

        return await self.db.acall(work)

    async def current_published(self, study_uid: str) -> Publication | None:
        """The KOS of this study that is live in the DMP now, if any."""

        def work(conn: Connection) -> Publication | None:
            row = conn.execute(
                "SELECT * FROM publications WHERE study_uid = ? AND state = 'published' AND kos_uid IS NOT NULL"
                " AND action != 'withdraw' ORDER BY published_at DESC, id DESC LIMIT 1",
                (study_uid,),
            ).fetchone()
            return _row(row) if row else None

        return await self.db.acall(work)

    async def get(self, pub_id: int) -> Publication | None:
        def work(conn: Connection) -> Publication | None:
            row = conn.execute("SELECT * FROM publications WHERE id = ?", (pub_id,)).fetchone()
            return _row(row) if row else None

        return await self.db.acall(work)

    async def search(self, *, accession: str | None = None, study_uid: str | None = None) -> list[Publication]:
        def work(conn: Connection) -> list[Publication]:
            clauses, args = [], []
            if accession is not None:
                clauses.append("accession = ?")
                args.append(accession)
            if study_uid is not None:
                clauses.append("study_uid = ?")
                args.append(study_uid)
            where = " WHERE " + " AND ".join(clauses) if clauses else ""
            rows = conn.execute(f"SELECT * FROM publications{where} ORDER BY id LIMIT 1000", args).fetchall()
            return [_row(r) for r in rows]

        return await self.db.acall(work)

    async def kos_uids(self) -> set[str]:
        """Every KOS UID a publication records, whatever its state (its file is what the box serves and replays)."""

        def work(conn: Connection) -> set[str]:
            rows = conn.execute("SELECT DISTINCT kos_uid FROM publications WHERE kos_uid IS NOT NULL").fetchall()
            return {str(r["kos_uid"]) for r in rows}

        return await self.db.acall(work)

    def requeue(self, accession: str) -> int:
        """Put every failed, rejected or waiting job of an accession back in the queue (operator action)."""

        def work(conn: Connection) -> int:
            now = time.time()
            cur = conn.execute(
                "UPDATE publications SET state = 'received', next_attempt_at = ?, updated_at = ?, window_start = ?"
                " WHERE accession = ? AND state IN ('failed', 'rejected', 'waiting', 'retrying')",
                (now, now, now, accession),
            )
            return int(cur.rowcount)

        return self.db.call(lambda conn: transaction(conn, work))

    async def retry(self, pub_id: int) -> str | None:
        """Queue one failed or rejected job again (the operator page); None when queued, else why not:
        "unknown", "not_retryable" (another state), "superseded" (a later job of the study exists, which must not
        be overtaken by an older report)."""

        def work(conn: Connection) -> str | None:
            row = conn.execute("SELECT study_uid, state FROM publications WHERE id = ?", (pub_id,)).fetchone()
            if row is None:
                return "unknown"
            if row["state"] not in ("failed", "rejected"):
                return "not_retryable"
            later = conn.execute("SELECT 1 FROM publications WHERE study_uid = ? AND id > ?",
                                 (row["study_uid"], pub_id)).fetchone()  # fmt: skip
            if later is not None:
                return "superseded"
            now = time.time()
            conn.execute("UPDATE publications SET state = 'received', next_attempt_at = ?, updated_at = ?,"
                         " window_start = ? WHERE id = ?", (now, now, now, pub_id))  # fmt: skip
            return None

        return await self.db.acall(lambda conn: transaction(conn, work))

    async def page(self, states: Sequence[str], limit: int, offset: int) -> tuple[list[Publication], int]:
        """The publications in `states` (all when empty), newest first, one page of them, and how many in all."""

        def work(conn: Connection) -> tuple[list[Publication], int]:
            where = f" WHERE state IN ({', '.join('?' * len(states))})" if states else ""
            total = conn.execute(f"SELECT COUNT(*) FROM publications{where}", tuple(states)).fetchone()[0]
            rows = conn.execute(f"SELECT * FROM publications{where} ORDER BY id DESC LIMIT ? OFFSET ?",
                                (*states, limit, offset)).fetchall()  # fmt: skip
            return [_row(r) for r in rows], int(total)

        return await self.db.acall(work)

    async def counts(self) -> dict[str, int]:
        def work(conn: Connection) -> dict[str, int]:
            rows = conn.execute("SELECT state, COUNT(*) AS n FROM publications GROUP BY state").fetchall()
            return {r["state"]: int(r["n"]) for r in rows}

        return await self.db.acall(work)

    def record_rejection(
        self, note_uid: str, study_uid: str, reason_code: str, sop_uids: frozenset[str], peer: str = ""
    ) -> Accepted | None:
        """Store an IOCM rejection note durably (blocking: the SCP thread calls it before answering success).

        When the study has a KOS live in the DMP, a `revise` job is queued in the same transaction; its report
        and HL7 message are the live publication's. None when nothing is published (yet): the rejected
        instances are then left out of the study's coming publication.
        """

        def work(conn: Connection) -> Accepted | None:
            seen = conn.execute("SELECT publication_id FROM rejections WHERE note_uid = ?", (note_uid,)).fetchone()
            if seen is not None:
                return Accepted(seen["publication_id"], duplicate=True) if seen["publication_id"] else None
            now = time.time()
            live = conn.execute(
                "SELECT * FROM publications WHERE study_uid = ? AND state = 'published' AND kos_uid IS NOT NULL"
                " AND action != 'withdraw' ORDER BY published_at DESC, id DESC LIMIT 1",
                (study_uid,),
            ).fetchone()
            pub_id: int | None = None
            if live is not None:
                raw = _raw_row(conn, int(live["id"]))
                pub_id = int(conn.execute(
                    "INSERT INTO publications (action, document_id, accession, study_uid, state, report,"
                    " created_at, updated_at, next_attempt_at, window_start)"
                    " VALUES ('revise', ?, ?, ?, 'received', ?, ?, ?, ?, ?) RETURNING id",
                    (f"iocm:{note_uid}", live["accession"], study_uid, live["report"], now, now, now, now),
                ).fetchone()["id"])  # fmt: skip
                if raw is not None:
                    conn.execute(
                        "INSERT INTO messages (sender, control_id, received_at, raw, publication_id)"
                        " VALUES ('IOCM', ?, ?, ?, ?)",
                        (note_uid, now, raw["raw"], pub_id),
                    )
            conn.execute(
                "INSERT INTO rejections (note_uid, study_uid, reason_code, sop_uids, received_at, publication_id, peer)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (note_uid, study_uid, reason_code, json.dumps(sorted(sop_uids)), now, pub_id, peer or None),
            )
            return Accepted(pub_id, duplicate=False) if pub_id is not None else None

        return self.db.call(lambda conn: transaction(conn, work))

    async def rejected_instances(self, study_uid: str) -> frozenset[str]:
        """Every SOP Instance UID of the study that a rejection note withdrew."""

        def work(conn: Connection) -> frozenset[str]:
            rows = conn.execute("SELECT sop_uids FROM rejections WHERE study_uid = ?", (study_uid,)).fetchall()
            return frozenset(uid for r in rows for uid in json.loads(r["sop_uids"]))

        return await self.db.acall(work)

    async def rejection_of(self, pub_id: int) -> RejectionRecord | None:
        """The IOCM note that queued this `revise` publication, if it is one."""

        def work(conn: Connection) -> RejectionRecord | None:
            row = conn.execute(
                "SELECT note_uid, reason_code, sop_uids, peer FROM rejections WHERE publication_id = ?", (pub_id,)
            ).fetchone()
            if row is None:
                return None
            return RejectionRecord(row["note_uid"], row["reason_code"], frozenset(json.loads(row["sop_uids"])),
                                   row["peer"] or "")  # fmt: skip

        return await self.db.acall(work)

    async def raw_message(self, pub_id: int) -> bytes | None:
        """The first HL7 message stored for a publication (the worker re-reads its report from it)."""

        def work(conn: Connection) -> bytes | None:
            row = _raw_row(conn, pub_id)
            return bytes(row["raw"]) if row else None

        return await self.db.acall(work)

    async def accept_cancel(
        self, *, sender: str, control_id: str, raw: bytes, studies: Sequence[tuple[str, str]]
    ) -> list[Cancelled]:
        """Store an order cancel (OMI^O23, ORC-1 CA) and act on it in one transaction, per (study_uid, accession).

        Jobs of the study that never reached the DMP are `cancelled` at once; when a KOS is live (or a job holding
        one may have reached the DMP), a `cancel` job is queued after them to withdraw it. A study this box never
        heard of is recorded (a `cancelled` row saying so). OrderMismatch if the box knows the study under
        another accession: that cancel is not for this study, and nothing is stored.
        """

        def work(conn: Connection) -> list[Cancelled]:
            seen = conn.execute(
                "SELECT publication_id FROM messages WHERE sender = ? AND control_id = ?", (sender, control_id)
            ).fetchone()
            if seen is not None:
                return [
                    Cancelled(int(seen["publication_id"]), duplicate=True, dropped=0, withdrawing=False, known=True)
                ]
            now = time.time()
            out: list[Cancelled] = []
            for study_uid, accession in dict.fromkeys(studies):
                others = conn.execute(
                    "SELECT DISTINCT accession FROM publications WHERE study_uid = ? AND action != 'cancel'",
                    (study_uid,),
                ).fetchall()
                if any(r["accession"] != accession for r in others):
                    raise OrderMismatch(study_uid)
                document_id = f"order-cancel:{accession}"
                existing = conn.execute(
                    "SELECT id FROM publications WHERE document_id = ? AND action = 'cancel' AND study_uid = ?",
                    (document_id, study_uid),
                ).fetchone()
                if existing is not None:  # the same order cancelled again under another MSH-10
                    out.append(Cancelled(int(existing["id"]), duplicate=True, dropped=0, withdrawing=False,
                                         known=bool(others)))  # fmt: skip
                    continue
                pub_id = int(conn.execute(
                    "INSERT INTO publications (action, document_id, accession, study_uid, state, report,"
                    " created_at, updated_at, next_attempt_at, window_start)"
                    " VALUES ('cancel', ?, ?, ?, 'received', ?, ?, ?, ?, ?) RETURNING id",
                    (document_id, accession, study_uid, json.dumps({"trigger": "O23"}), now, now, now, now),
                ).fetchone()["id"])  # fmt: skip
                dropped = conn.execute(
                    "UPDATE publications SET state = 'cancelled', updated_at = ?,"
                    " last_error = 'the order was cancelled (OMI^O23) before it was published'"
                    " WHERE study_uid = ? AND id < ? AND state IN ('received', 'waiting', 'retrying')"
                    " AND kos_uid IS NULL",
                    (now, study_uid, pub_id),
                ).rowcount
                live = conn.execute(
                    "SELECT 1 FROM publications WHERE study_uid = ? AND id < ? AND kos_uid IS NOT NULL"
                    " AND action != 'withdraw' AND (state = 'published' OR state IN ('received', 'waiting', 'retrying'))"
                    " LIMIT 1",
                    (study_uid, pub_id),
                ).fetchone()
                if live is None:
                    reason = "nothing of this study was live in the DMP" if others else "unknown study: cancel recorded"
                    conn.execute(
                        "UPDATE publications SET state = 'cancelled', last_error = ?, published_at = ? WHERE id = ?",
                        (reason, now, pub_id),
                    )
                out.append(Cancelled(pub_id, duplicate=False, dropped=dropped, withdrawing=live is not None,
                                     known=bool(others)))  # fmt: skip
            first = next((c.publication_id for c in out), None)
            conn.execute(
                "INSERT INTO messages (sender, control_id, received_at, raw, publication_id) VALUES (?, ?, ?, ?, ?)",
                (sender, control_id, now, raw, first),
            )
            return out

        return await self.db.acall(lambda conn: transaction(conn, work))


def _raw_row(conn: Connection, pub_id: int) -> Any | None:
    """The HL7 message of a job: its own, else (another study of the same report) the one it shares."""
    row: Any | None = conn.execute(
        "SELECT raw FROM messages WHERE publication_id = ? ORDER BY id LIMIT 1", (pub_id,)
    ).fetchone()
    if row is None:
        row = conn.execute(
            "SELECT m.raw FROM messages m JOIN publications p ON p.message_id = m.id WHERE p.id = ?", (pub_id,)
        ).fetchone()
    return row
