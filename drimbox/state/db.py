"""SQLite access for one process: a single connection used from one worker thread, durable commits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class Database:
    """One SQLite file; every call runs on a dedicated thread so the event loop never waits on disk."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.stem}")
        self._lock = threading.Lock()
        self._conn = self._executor.submit(self._open, schema).result()

    def _open(self, schema: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.row_factory = sqlite3.Row
        # WAL with synchronous=FULL: a COMMIT returns only once the WAL is fsynced, which is what
        # lets us send an HL7 AA right after it.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(schema)
        return conn

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(connection) on the database thread and wait for it (for synchronous callers)."""
        return self._executor.submit(self._guarded, fn).result()

    async def acall(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run fn(connection) on the database thread without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, fn)

    def _guarded(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._conn)

    def close(self) -> None:
        def _close(conn: sqlite3.Connection) -> None:
            conn.close()

        try:
            self.call(_close)
        finally:
            self._executor.shutdown(wait=True)


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run fn inside BEGIN IMMEDIATE ... COMMIT, rolling back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result
