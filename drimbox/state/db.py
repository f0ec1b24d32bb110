"""A store's database for one process: one connection used from one worker thread, durable commits.

SQLite (a file under var_dir, the embedded default) or PostgreSQL (`[state] url`, shared by several instances, one
schema per store). psycopg is used synchronously on the same dedicated thread: the stores keep one `fn(conn)` shape
for both backends, a transaction stays a plain function, and the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from drimbox.state import migrations as _migrations
from drimbox.state.sql import Connection, SqliteConnection

T = TypeVar("T")
C = TypeVar("C")
log = logging.getLogger(__name__)


class Database:
    """One store; every call runs on a dedicated thread so the event loop never waits on disk or network.

    `schema` is either a script (applied as is at every open: the archive and cache indexes) or the store's
    versioned migrations (drimbox.state.migrations); `applied` then lists the steps this open applied.
    """

    def __init__(self, path: Path, schema: str | Sequence[_migrations.Step], *, url: str = "", store: str = "") -> None:
        self.path = path
        self.url = url
        self.store = store or path.stem
        self.applied: list[int] = []
        if not url:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"db-{self.store}")
        self._lock = threading.Lock()
        self._schema = schema
        self._conn: Any = self._executor.submit(self._open).result()

    @property
    def dialect(self) -> str:
        return "postgresql" if self.url else "sqlite"

    def _open(self) -> Any:
        if self.url:
            from drimbox.state import postgres  # psycopg is loaded only by boxes that use it

            conn: Any = postgres.connect(self.url, self.store)
        else:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0, factory=SqliteConnection
            )
            conn.row_factory = sqlite3.Row
            # WAL with synchronous=FULL: a COMMIT returns only once the WAL is fsynced, which is what
            # lets us send an HL7 AA right after it.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        if isinstance(self._schema, str):
            conn.executescript(self._schema)
        else:
            self.applied = _migrations.apply(conn, self.store, self._schema)
        return conn

    # fn takes Any: the stores write against drimbox.state.sql.Connection, the SQLite-only indexes against sqlite3's.
    def call(self, fn: Callable[[Any], T]) -> T:
        """Run fn(connection) on the database thread and wait for it (for synchronous callers)."""
        return self._executor.submit(self._guarded, fn).result()

    async def acall(self, fn: Callable[[Any], T]) -> T:
        """Run fn(connection) on the database thread without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, fn)

    def _guarded(self, fn: Callable[[Any], T]) -> T:
        with self._lock:
            if not self.url:
                return fn(self._conn)
            return self._pg_call(fn)

    def _pg_call(self, fn: Callable[[Connection], T]) -> T:
        from drimbox.state import postgres

        if self._conn is None or self._conn.broken:
            self._reconnect()
        try:
            return fn(cast(Connection, self._conn))
        except Exception as exc:
            if not postgres.is_disconnect(exc, self._conn):
                raise
            # The server restarted under us: whatever transaction fn had open died with the connection (rolled
            # back), so running fn once more on a new connection is safe.
            log.warning("%s: database connection lost (%s); reconnecting", self.store, type(exc).__name__)
            self._reconnect()
            return fn(cast(Connection, self._conn))

    def _reconnect(self) -> None:
        from drimbox.state import postgres

        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
        self._conn = postgres.connect(self.url, self.store)

    def close(self) -> None:
        def _close(conn: Any) -> None:
            if conn is not None:
                conn.close()

        try:
            self._executor.submit(lambda: _close(self._conn)).result()
        finally:
            self._executor.shutdown(wait=True)


def transaction(conn: C, fn: Callable[[C], T]) -> T:
    """Run fn inside BEGIN IMMEDIATE ... COMMIT (a plain BEGIN on PostgreSQL), rolling back on any exception."""
    c = cast(Connection, conn)
    c.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        c.execute("ROLLBACK")
        raise
    c.execute("COMMIT")
    return result
