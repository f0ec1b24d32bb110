"""Where the audit trail's records live: its SQLite file (the default) or the `audit` schema of `[state] url`."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from drimbox.state import migrations
from drimbox.state.sql import Connection, SqliteConnection, is_postgres

# Append-only at the database level too: the box itself never updates or deletes a record. Someone with the
# database can drop these triggers; the hash chain is what then shows the change.
_SQLITE = [
    """CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at TEXT NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL,
    professional TEXT, patient TEXT, patient_name TEXT, study TEXT, kos TEXT, source TEXT,
    detail TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit(at)",
    """CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END""",
]
_POSTGRES = [
    """CREATE TABLE IF NOT EXISTS audit (
    seq BIGINT PRIMARY KEY, at TEXT NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL,
    professional TEXT, patient TEXT, patient_name TEXT, study TEXT, kos TEXT, source TEXT,
    detail TEXT NOT NULL, prev TEXT NOT NULL, hash TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit(at)",
    """CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$""",
    """CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
]


def _create(conn: Connection) -> None:
    for statement in _POSTGRES if is_postgres(conn) else _SQLITE:
        conn.execute(statement)


# Step n is MIGRATIONS[n - 1]; only ever append.
MIGRATIONS: list[migrations.Step] = [_create]

# Every writer of the chain takes this lock (PostgreSQL) in the transaction that reads the head and appends after it.
CHAIN_LOCK = 0x6472_A0D1_7000


def open_writer(path: Path, url: str = "") -> Any:
    """The writer's connection, schema brought up to date; SQLite: WAL with FULL sync, as a recorded event must
    survive a power cut (PostgreSQL: its commit is durable by default)."""
    conn = _connect(path, url)
    migrations.apply(conn, "audit", MIGRATIONS)
    return conn


def migrate(path: Path, url: str = "") -> list[int]:
    """Bring the trail's schema up to date (`drimbox migrate`): the steps applied now."""
    conn = _connect(path, url)
    try:
        return migrations.apply(conn, "audit", MIGRATIONS)
    finally:
        conn.close()


def _connect(path: Path, url: str) -> Any:
    conn: Any
    if url:
        from drimbox.state import postgres

        conn = postgres.connect(url, "audit")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, factory=SqliteConnection)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    return conn


def open_reader(path: Path, url: str = "") -> Any:
    """A read-only view for `drimbox audit export/verify` (the box may be running)."""
    if url:
        from drimbox.state import postgres

        return postgres.connect(url, "audit")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, factory=SqliteConnection)


def lock_chain(conn: Connection) -> None:
    """Inside the writing transaction: one writer at a time across instances (SQLite's BEGIN IMMEDIATE already is)."""
    if is_postgres(conn):
        conn.execute("SELECT pg_advisory_xact_lock(?)", (CHAIN_LOCK,))
