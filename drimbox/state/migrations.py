"""Versioned schema steps per store, recorded in its schema_migrations table and applied once, under a lock."""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence

from drimbox.state.sql import Connection, is_postgres, postgres_ddl, statements

log = logging.getLogger(__name__)

# A step is a schema script written for SQLite (translated for PostgreSQL) or a function of the connection (for
# what a script cannot say, e.g. a table SQLite must rebuild). Step n is migrations[n - 1]: only ever append.
Step = str | Callable[[Connection], None]


def apply(conn: Connection, store: str, migrations: Sequence[Step]) -> list[int]:
    """Bring the store's schema to the last step; returns the versions applied now (none when up to date).

    One transaction: concurrently starting instances queue behind PostgreSQL's advisory lock (SQLite's BEGIN
    IMMEDIATE), the second finds the steps recorded and applies nothing.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        if is_postgres(conn):
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_lock_key(store),))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {store}")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at "
                     + ("DOUBLE PRECISION" if is_postgres(conn) else "REAL") + " NOT NULL)")  # fmt: skip
        done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        applied: list[int] = []
        for version, step in enumerate(migrations, start=1):
            if version in done:
                continue
            if isinstance(step, str):
                for statement in statements(step):
                    conn.execute(postgres_ddl(statement) if is_postgres(conn) else statement)
            else:
                step(conn)
            conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, time.time()))
            applied.append(version)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if applied:
        log.info("%s: schema steps %s applied", store, applied)
    return applied


def _lock_key(store: str) -> int:
    # A stable 32-bit key per store (hash() is salted per process), in a range no other user of locks picks.
    return 0x6472_0000_0000 + zlib.crc32(store.encode())
