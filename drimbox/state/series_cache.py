"""Disk cache of retrieved series: bounded by size, LRU eviction, one fill feeding every concurrent reader.

Shared by the box's processes ([http] workers): the index is one SQLite file, a series is filled by one process at a
time (drimbox.state.locks), and a study's invalidation is counted in the index so a fill in another process
started before it is not kept.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard, cast

from drimbox import metrics
from drimbox.state.db import Database, transaction
from drimbox.state.fill_files import FillFiles, settle
from drimbox.state.locks import HeldLock, LockFiles
from drimbox.state.series_fill import (
    MEMORY_AHEAD,
    CachedInstance,
    Cursor,
    Fill,
    Growth,
    Received,
    SeriesInstance,
    Streamed,
    UncachedInstance,
    readers_within,
)

# What readers of the cache get (the consumer imports them from here).
__all__ = [
    "MEMORY_AHEAD",
    "CachedInstance",
    "Received",
    "SeriesCache",
    "SeriesInstance",
    "Streamed",
    "UncachedInstance",
]

log = logging.getLogger(__name__)
# Instances received and being written to the cache before the first of them is handed to readers: the disk's
# work overlaps the network's, and at most this many instances are held in memory on the way.
WRITES_AHEAD = 2

# `origin` says where a series came from: "" for the box's own PACS (the source side), a digest of the KOS and Retrieve
# URL on the consumer side, where two KOS may claim the same study and series UIDs and one must never answer for another.
SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    origin TEXT NOT NULL DEFAULT '',
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    last_access REAL NOT NULL,
    metadata BLOB,
    metadata_base TEXT,
    PRIMARY KEY (origin, study_uid, series_uid)
);
CREATE TABLE IF NOT EXISTS instances (
    origin TEXT NOT NULL DEFAULT '',
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    size INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (origin, study_uid, series_uid, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS series_lru ON series (last_access);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    series TEXT NOT NULL,
    fetched_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS generations (study_uid TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


class SeriesCache:
    """Complete series on disk under `directory/<study>/<series>/`, indexed in SQLite, at most `max_bytes`.

    A series enters the index only once it was retrieved completely, so a crash or a failed retrieve
    never leaves a partial series that later looks whole.
    """

    def __init__(self, directory: Path, max_bytes: int, *, lru_resolution: float = 10.0) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        # Seconds: reads of a series this close together count as one for the LRU order.
        self.lru_resolution = lru_resolution
        directory.mkdir(parents=True, exist_ok=True)
        _forget_index_without_origin(directory / "index.sqlite")
        self.db = Database(directory / "index.sqlite", SCHEMA)
        self._fills: dict[tuple[str, str, str], Fill] = {}
        self._locks = LockFiles(directory / ".fills")  # one fill per series across processes
        # Set when another process must do the retrieves (C-MOVE: source/primary_fills.py): called before a fill,
        # it returns once that process filled the series (then read from the index), or raises the fill's error.
        self.delegate: Callable[[str, str, str], Awaitable[None]] | None = None
        self._drops: set[asyncio.Task[None]] = set()
        # For /health: the last time the disk refused a cache file (or the index), and the last series kept.
        self.last_write_error: str | None = None
        self.last_write_error_at: float | None = None
        self.last_commit_at: float | None = None
        self._drop_orphans()

    def close(self) -> None:
        for fill in self._fills.values():
            if fill.task is not None:
                fill.task.cancel()
        for task in self._drops:
            task.cancel()  # what it would have removed is unindexed: _drop_orphans removes it at the next start
        self.db.close()

    def _drop_orphans(self) -> None:
        """Directories of series that never completed (crash mid-fill) are removed at start."""

        def known(conn: sqlite3.Connection) -> set[tuple[str, str]]:
            rows = conn.execute("SELECT origin, study_uid, series_uid FROM series")
            return {(r["study_uid"], _dir_name(r["series_uid"], r["origin"])) for r in rows}

        def indexed(conn: sqlite3.Connection, study_uid: str, name: str) -> bool:
            series_uid, _, origin = name.partition("~")
            row = conn.execute(
                "SELECT 1 FROM series WHERE origin = ? AND study_uid = ? AND series_uid = ?",
                (origin, study_uid, series_uid),
            ).fetchone()
            return row is not None

        complete = self.db.call(known)
        for study_dir in self.directory.iterdir():
            if not study_dir.is_dir() or study_dir.name.startswith("."):  # .fills: the lock files
                continue
            for series_dir in study_dir.iterdir():
                if (study_dir.name, series_dir.name) in complete:
                    continue
                # Another process of the box may be filling it (its lock held), or may just have committed it.
                lock = self._locks.try_acquire(study_dir.name, series_dir.name)
                if lock is None:
                    continue
                try:
                    if not self.db.call(lambda conn: indexed(conn, study_dir.name, series_dir.name)):  # noqa: B023
                        shutil.rmtree(series_dir, ignore_errors=True)
                finally:
                    lock.release()

    def _series_dir(self, study_uid: str, series_uid: str, origin: str = "") -> Path:
        return self.directory / study_uid / _dir_name(series_uid, origin)

    async def holds(self, study_uid: str, series_uid: str, *, origin: str = "") -> bool:
        """Whether the series is complete in the cache (its instances left unread: a warm 1300-instance series'
        rows and paths took 4 ms to build for every only-if-cached question)."""

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM series WHERE origin = ? AND study_uid = ? AND series_uid = ?",
                (origin, study_uid, series_uid),
            ).fetchone()
            return row is not None

        return await self.db.acall(work)

    async def cached(
        self, study_uid: str, series_uid: str, *, origin: str = "", sop_uid: str | None = None
    ) -> list[CachedInstance] | None:
        """The instances of a complete cached series (and the series becomes most recently used), or None.

        With `sop_uid`, only that instance ([] when the cached series lacks it): a viewer asks each of a series'
        1300 frames by instance, and loading the whole series' rows for each (10 ms) was most of a box's CPU.
        """
        base = self._series_dir(study_uid, series_uid, origin)
        key = (origin, study_uid, series_uid)

        def work(conn: sqlite3.Connection) -> list[CachedInstance] | None:
            row = conn.execute(
                "SELECT last_access FROM series WHERE origin = ? AND study_uid = ? AND series_uid = ?", key
            ).fetchone()
            if row is None:
                return None
            now = time.time()
            # Written only when older than lru_resolution: a warm series read by many clients (in several
            # processes) costs no write, no fsync and no wait on the index's write lock each time.
            if now - row["last_access"] >= self.lru_resolution:
                try:
                    conn.execute(
                        "UPDATE series SET last_access = ? WHERE origin = ? AND study_uid = ? AND series_uid = ?",
                        (now, *key),
                    )
                except sqlite3.OperationalError:
                    pass  # a full disk refuses the write: the LRU order is only a hint, the series is still served
            if sop_uid is None:
                rows = conn.execute(
                    "SELECT * FROM instances WHERE origin = ? AND study_uid = ? AND series_uid = ? ORDER BY position",
                    key,
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM instances WHERE origin = ? AND study_uid = ? AND series_uid = ? "
                    "AND sop_instance_uid = ?",
                    (*key, sop_uid),
                ).fetchall()
            return [
                CachedInstance(
                    study_uid,
                    series_uid,
                    r["sop_class_uid"],
                    r["sop_instance_uid"],
                    r["transfer_syntax_uid"],
                    base / f"{r['sop_instance_uid']}.dcm",
                    r["size"],
                )
                for r in rows
            ]

        return await self.db.acall(work)

    async def series(
        self,
        study_uid: str,
        series_uid: str,
        source: Callable[[], AsyncIterator[Received | Streamed]],
        *,
        keep: bool = False,
        origin: str = "",
    ) -> AsyncGenerator[CachedInstance, None]:
        """Every instance of the series as a cached file: from the cache, from a fill in progress, or from a new fill.

        Instances are yielded as they arrive. When the last reader leaves before the fill ends, the fill is
        cancelled (the source iterator is closed: C-CANCEL) and nothing of it is kept — unless a reader passed
        `keep` (it wants part of the series and will leave early on purpose): then the fill completes.
        A cache disk that refuses a file fails the fill (see serve_series for readers that take bytes instead).
        """
        async with aclosing(
            self._read(study_uid, series_uid, source, keep=keep, may_pass=False, origin=origin)
        ) as instances:
            async for instance in instances:
                if not isinstance(instance, CachedInstance):  # only when a serve_series fill is shared
                    raise OSError(errno.ENOSPC, "the cache disk refused the series")
                yield instance

    def serve_series(
        self,
        study_uid: str,
        series_uid: str,
        source: Callable[[], AsyncIterator[Received | Streamed]],
        *,
        keep: bool = False,
        origin: str = "",
    ) -> AsyncGenerator[SeriesInstance, None]:
        """As `series`, but a cache disk that refuses a file (full, failing) does not fail the readers: the rest of
        the series is handed on from memory as it arrives (UncachedInstance), and the series is not cached."""
        return self._read(study_uid, series_uid, source, keep=keep, may_pass=True, origin=origin)

    async def _read(
        self,
        study_uid: str,
        series_uid: str,
        source: Callable[[], AsyncIterator[Received | Streamed]],
        *,
        keep: bool,
        may_pass: bool,
        origin: str,
    ) -> AsyncGenerator[SeriesInstance, None]:
        key = (origin, study_uid, series_uid)
        while True:
            hit = await self.cached(study_uid, series_uid, origin=origin)
            if hit is not None:
                metrics.CACHE_HITS.inc()
                for cached in hit:
                    yield cached
                return
            fill = self._fills.get(key)
            if fill is None or fill.task is None:
                break
            if not (fill.abandoned or fill.base > 0):
                break
            # An abandoned fill: let it finish cancelling (C-CANCEL, its files removed) before starting anew.
            # A degraded fill that dropped its first instances: it cannot give them again; a new fill can.
            await asyncio.wait({fill.task})
        metrics.CACHE_MISSES.inc()
        if fill is None:
            fill = self._fills[key] = Fill(may_pass=may_pass)
            fill.task = asyncio.create_task(self._fill(key, fill, source), name=f"cache-fill-{series_uid}")
        cursor = Cursor()
        fill.cursors.add(cursor)
        fill.readers += 1
        fill.keep = fill.keep or keep
        try:
            while True:
                async with fill.changed:
                    while cursor.position >= fill.base + len(fill.instances) and not fill.done:
                        await fill.changed.wait()
                    ready = fill.instances[cursor.position - fill.base :]
                    finished, error, end = fill.done, fill.error, fill.base + len(fill.instances)
                for instance in ready:
                    yield fill.with_bytes(instance)
                    cursor.position += 1
                    fill.progress.set()
                if finished and cursor.position >= end:
                    if error is not None:
                        raise error
                    return
        finally:
            fill.readers -= 1
            fill.cursors.discard(cursor)
            fill.progress.set()
            # A degraded fill caches nothing: with nobody reading, finishing it (keep) would be wasted work.
            unwanted = fill.degraded or not (fill.keep or fill.received_all)
            if fill.readers == 0 and not fill.done and unwanted and fill.task is not None:
                fill.abandoned = True
                fill.task.cancel()

    async def _fill(
        self, key: tuple[str, str, str], fill: Fill, source: Callable[[], AsyncIterator[Received | Streamed]]
    ) -> None:
        origin, study_uid, series_uid = key
        directory = self._series_dir(study_uid, series_uid, origin)
        files = FillFiles(directory)
        total = 0
        lock: HeldLock | None = None
        retrieving = False  # the series' directory is this fill's to remove (never another process's)
        try:
            if self.delegate is not None:
                await self.delegate(origin, study_uid, series_uid)
            # Another process of the box filling this series: wait for its end (it holds the lock) rather than
            # retrieve the series a second time; the readers here get the series once it is complete.
            lock = await self._locks.acquire(study_uid, directory.name)
            generation = await self._generation_of(study_uid)
            hit = await self.cached(study_uid, series_uid, origin=origin)
            if hit is not None:  # filled by another process meanwhile
                async with fill.changed:
                    fill.instances.extend(hit)
                    fill.changed.notify_all()
                fill.received_all = True
                return
            retrieving = True
            try:
                await files.run(directory.mkdir, parents=True, exist_ok=True)
            except OSError as exc:
                self._write_failed(fill, series_uid, exc)
            seen: set[str] = set()
            received = source()
            # Each file is written in a thread while the next instance arrives, and handed to readers by a task of
            # its own as soon as it is written: awaiting each write before reading on left the source's connection
            # idle for the write's length at every instance. At most WRITES_AHEAD instances wait in memory.
            # A streamed instance is handed on as its CachedInstance at once (its file growing), after those before it.
            Entry = tuple[asyncio.Future[None] | None, Received | CachedInstance, Path]
            entries: asyncio.Queue[Entry | None] = asyncio.Queue(maxsize=WRITES_AHEAD)
            writes: set[asyncio.Future[None]] = set()

            async def publish(entry: Entry) -> None:
                nonlocal total
                write, item, path = entry
                if isinstance(item, CachedInstance):
                    total += item.size
                    async with fill.changed:
                        fill.instances.append(item)
                        fill.changed.notify_all()
                    return
                if write is not None:
                    try:
                        await write
                    except OSError as exc:
                        if not fill.degraded:
                            self._write_failed(fill, series_uid, exc)
                instance: SeriesInstance
                if fill.degraded:
                    instance = UncachedInstance(study_uid, series_uid, item.sop_class_uid, item.sop_instance_uid,
                                                item.transfer_syntax_uid, item.data)  # fmt: skip
                else:
                    total += len(item.data)
                    instance = CachedInstance(study_uid, series_uid, item.sop_class_uid, item.sop_instance_uid,
                                              item.transfer_syntax_uid, path, len(item.data))  # fmt: skip
                    fill.keep_hot(item.sop_instance_uid, item.data)
                async with fill.changed:
                    fill.instances.append(instance)
                    fill.changed.notify_all()
                if fill.degraded:
                    await readers_within(fill, MEMORY_AHEAD)

            async def publisher() -> None:
                while (entry := await entries.get()) is not None:
                    await publish(entry)
                    entries.task_done()

            publishing = asyncio.create_task(publisher())

            async def hand_on(entry: Entry | None) -> None:
                put = asyncio.ensure_future(entries.put(entry))
                try:
                    await asyncio.wait({put, publishing}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not put.done():  # cancelled, or the publisher stopped: no one will take it
                        put.cancel()
                if put.cancelled():
                    publishing.result()  # the publisher's error
                    raise RuntimeError("the cache's publisher stopped")

            try:
                async for item in received:
                    if item.sop_instance_uid in seen:
                        continue  # a PACS may send an instance twice; a reader must see it once
                    seen.add(item.sop_instance_uid)
                    path = directory / f"{item.sop_instance_uid}.dcm"
                    if _streamed(item):
                        if not (fill.may_pass or fill.degraded):
                            growing = CachedInstance(study_uid, series_uid, item.sop_class_uid, item.sop_instance_uid,
                                                     item.transfer_syntax_uid, path, item.size, Growth(item.size))  # fmt: skip
                            await self._stream(fill, series_uid, files, growing, item, hand_on)
                            continue
                        # Readers that may take bytes from memory get whole instances (a disk refusing mid-file
                        # could not be followed): gathered here, then as any received instance.
                        item = _Whole(item.sop_class_uid, item.sop_instance_uid, item.transfer_syntax_uid,
                                      item.head + b"".join([chunk async for chunk in item.rest()]))  # fmt: skip
                    item = cast(Received, item)  # not Streamed (_streamed's answer), or gathered whole just above
                    write = None
                    if not fill.degraded:
                        write = asyncio.ensure_future(files.run(_write, path, item.data))
                        writes.add(write)
                        write.add_done_callback(writes.discard)
                    await hand_on((write, item, path))
                    if fill.degraded:
                        # From memory, nothing is taken ahead of the readers: the publisher's backpressure alone
                        # (MEMORY_AHEAD) bounds what the source sends, as before the pipeline.
                        joined = asyncio.ensure_future(entries.join())
                        try:
                            await asyncio.wait({joined, publishing}, return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            joined.cancel()
                        if publishing.done():
                            publishing.result()
                await hand_on(None)
                await publishing
            finally:
                if not publishing.done():
                    publishing.cancel()
                await asyncio.gather(publishing, return_exceptions=True)
                # Closing the source at once is what sends C-CANCEL when the fill is abandoned.
                aclose = getattr(received, "aclose", None)
                if aclose is not None:
                    await aclose()
                # Writes still under way when the fill stops end before its files are removed.
                if writes:
                    await asyncio.gather(*writes, return_exceptions=True)
            fill.received_all = True
            if fill.degraded:
                # The files written before the disk refused one go only once every reader is past them.
                await readers_within(fill, 0)
                await files.remove()
            elif fill.instances:
                await self._commit_or_drop(fill, key, total, generation, files)
            else:
                await files.remove()
        except BaseException as exc:
            fill.error = exc if isinstance(exc, Exception) else None
            if retrieving:
                # Whatever the fill's tasks were awaiting when it failed or was cancelled: a write already in a
                # thread ends before the removal, one not yet begun writes nothing, and the removal itself runs
                # to its end even if the last reader's leaving cancels this task meanwhile.
                await files.remove()
            if not isinstance(exc, Exception):
                raise
        finally:
            if lock is not None:
                lock.release()  # after the commit: a process waiting for it finds the series indexed
            if self._fills.get(key) is fill:
                del self._fills[key]
            async with fill.changed:
                fill.done = True
                fill.forget_hot()  # readers still behind read the files, as from the cache
                fill.changed.notify_all()
        try:
            await self._evict()
        except (OSError, sqlite3.Error) as exc:
            log.warning("cache: eviction failed: %s", exc)

    async def _stream(
        self,
        fill: Fill,
        series_uid: str,
        files: FillFiles,
        instance: CachedInstance,
        item: Streamed,
        hand_on: Callable[[tuple[None, CachedInstance, Path] | None], Awaitable[None]],
    ) -> None:
        """Write a streamed instance to its file as it arrives, its readers following (instance.growing).

        The file exists before the instance is handed on; each piece is written in a thread while the next arrives,
        and counted on the Growth once on disk. A fill failing or cancelled midway fails the file's readers.
        """
        growth = instance.growing
        assert growth is not None
        try:
            # On the loop, not in a thread: a fill cancelled during the open would leave the file (and descriptor)
            # behind its removal.
            fd = files.create(instance.path)
        except OSError as exc:
            self._write_failed(fill, series_uid, exc)  # raises: only fills that may not pass stream
            raise
        try:
            await hand_on((None, instance, instance.path))
            pending: asyncio.Future[int] | None = None
            try:
                pending = asyncio.ensure_future(files.run(_write_all, fd, item.head))
                async for piece in item.rest():
                    written = await settle(pending)
                    growth.advance(written)
                    pending = asyncio.ensure_future(files.run(_write_all, fd, piece))
                growth.advance(await settle(pending))
                pending = None
            finally:
                if pending is not None:
                    # The descriptor closes after its write has ended, cancelled or not: a write still running
                    # in its thread would go to whatever file next took the descriptor's number.
                    await settle(asyncio.gather(pending, return_exceptions=True))
            if growth.written != growth.size:
                raise RuntimeError("a streamed instance ended before its size")
            growth.finish()
        except BaseException as exc:
            growth.finish(exc if isinstance(exc, Exception) else RuntimeError("the series' retrieve was stopped"))
            if isinstance(exc, OSError) and not fill.degraded:
                self._write_failed(fill, series_uid, exc)
            raise
        finally:
            await settle(asyncio.to_thread(os.close, fd))  # never dropped by a cancel: the descriptor would leak

    def _write_failed(self, fill: Fill, series_uid: str, exc: OSError) -> None:
        """The cache disk refused a file: degrade the fill (readers that take bytes) or fail it; logged once."""
        self.last_write_error = f"{errno.errorcode.get(exc.errno or 0, 'OSError')}: {exc.strerror or exc}"
        self.last_write_error_at = time.time()
        if not fill.may_pass:
            raise exc
        fill.degraded = True
        log.warning(
            "cache: cannot write series %s (%s): served from memory, not cached", series_uid, self.last_write_error
        )

    async def _commit_or_drop(
        self, fill: Fill, key: tuple[str, str, str], total: int, generation: int, files: FillFiles
    ) -> None:
        series_uid = key[2]
        kept = [i for i in fill.instances if isinstance(i, CachedInstance)]
        try:
            committed = await self._commit(key, kept, total, generation)
        except (OSError, sqlite3.Error) as exc:
            # The index is on the same disk: every reader had its instances, the series is just not kept.
            self.last_write_error = f"index: {exc}"
            self.last_write_error_at = time.time()
            log.warning("cache: cannot index series %s (%s): not cached", series_uid, exc)
            # Its files go once its readers have left: a reader still behind sends them from disk.
            task = asyncio.create_task(self._drop_when_read(fill, files))
            self._drops.add(task)
            task.add_done_callback(self._drops.discard)
            return
        if not committed:  # the study was invalidated (in any process) since the fill began: not kept
            await files.remove()
            return
        self.last_commit_at = time.time()

    async def _drop_when_read(self, fill: Fill, files: FillFiles) -> None:
        while fill.readers:
            fill.progress.clear()
            await fill.progress.wait()
        await files.remove()

    async def generation(self, study_uid: str) -> int:
        """How many times the study was invalidated, by any process: what was learnt of it before a change is stale."""
        return await self._generation_of(study_uid)

    async def _generation_of(self, study_uid: str) -> int:
        """How many times the study was invalidated (by any process): a fill keeps its series only if unchanged."""

        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT n FROM generations WHERE study_uid = ?", (study_uid,)).fetchone()
            return int(row["n"]) if row else 0

        return await self.db.acall(work)

    async def _commit(
        self, key: tuple[str, str, str], instances: list[CachedInstance], total: int, generation: int
    ) -> bool:
        """Index a filled series, unless its study was invalidated since `generation` (then False)."""
        origin = key[0]

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT n FROM generations WHERE study_uid = ?", (key[1],)).fetchone()
            if (int(row["n"]) if row else 0) != generation:
                return False
            conn.execute("DELETE FROM instances WHERE origin = ? AND study_uid = ? AND series_uid = ?", key)
            conn.executemany(
                "INSERT INTO instances (origin, study_uid, series_uid, sop_instance_uid, sop_class_uid, "
                "transfer_syntax_uid, size, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        origin,
                        i.study_uid,
                        i.series_uid,
                        i.sop_instance_uid,
                        i.sop_class_uid,
                        i.transfer_syntax_uid,
                        i.size,
                        n,
                    )
                    for n, i in enumerate(instances)
                ],
            )
            conn.execute(
                "INSERT OR REPLACE INTO series (origin, study_uid, series_uid, bytes, last_access) VALUES (?, ?, ?, ?, ?)",
                (*key, total, time.time()),
            )
            return True

        return await self.db.acall(lambda conn: transaction(conn, work))

    async def _evict(self) -> None:
        """Drop least recently used series until the cache fits in max_bytes."""

        def work(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
            used = conn.execute("SELECT COALESCE(SUM(bytes), 0) AS n FROM series").fetchone()["n"]
            victims: list[tuple[str, str, str]] = []
            if used <= self.max_bytes:
                return victims
            for row in conn.execute("SELECT origin, study_uid, series_uid, bytes FROM series ORDER BY last_access"):
                if used <= self.max_bytes:
                    break
                victims.append((row["origin"], row["study_uid"], row["series_uid"]))
                used -= row["bytes"]
            for key in victims:
                conn.execute("DELETE FROM series WHERE origin = ? AND study_uid = ? AND series_uid = ?", key)
                conn.execute("DELETE FROM instances WHERE origin = ? AND study_uid = ? AND series_uid = ?", key)
            return victims

        victims = await self.db.acall(lambda conn: transaction(conn, work))
        metrics.CACHE_EVICTIONS.inc(len(victims))
        for origin, study_uid, series_uid in victims:
            log.info("cache: evicted series %s", series_uid)
            await settle(asyncio.to_thread(shutil.rmtree, self._series_dir(study_uid, series_uid, origin), True))

    async def invalidate_study(self, study_uid: str) -> None:
        """Forget every cached series of a study (publication replaced or withdrawn); fills in flight are not kept."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO generations (study_uid, n) VALUES (?, 1) ON CONFLICT (study_uid) DO UPDATE SET n = n + 1",
                (study_uid,),
            )
            conn.execute("DELETE FROM series WHERE study_uid = ?", (study_uid,))
            conn.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
            conn.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,))

        await self.db.acall(lambda conn: transaction(conn, work))
        await settle(asyncio.to_thread(shutil.rmtree, self.directory / study_uid, True))

    async def clear(self) -> None:
        """Forget everything (operator action); fills in flight finish but are not kept."""

        def studies(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT study_uid FROM series UNION SELECT study_uid FROM studies").fetchall()
            return [r["study_uid"] for r in rows]

        for study_uid in await self.db.acall(studies):
            await self.invalidate_study(study_uid)

    async def study_series(self, study_uid: str, max_age: float) -> list[str] | None:
        """The series of a study as the PACS listed them less than `max_age` seconds ago, if known."""

        def work(conn: sqlite3.Connection) -> list[str] | None:
            row = conn.execute(
                "SELECT series FROM studies WHERE study_uid = ? AND fetched_at >= ?", (study_uid, time.time() - max_age)
            ).fetchone()
            return json.loads(row["series"]) if row else None

        return await self.db.acall(work)

    async def store_study_series(self, study_uid: str, series: list[str]) -> None:
        """Remember a study's series list: a warm study request then needs no C-FIND at all."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO studies (study_uid, series, fetched_at) VALUES (?, ?, ?)",
                (study_uid, json.dumps(series), time.time()),
            )

        await self._remember(work, "series list")

    async def metadata(self, study_uid: str, series_uid: str, base: str, *, origin: str = "") -> bytes | None:
        def work(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT metadata FROM series WHERE origin = ? AND study_uid = ? AND series_uid = ? AND metadata_base = ?",
                (origin, study_uid, series_uid, base),
            ).fetchone()
            return bytes(row["metadata"]) if row and row["metadata"] is not None else None

        return await self.db.acall(work)

    async def store_metadata(
        self, study_uid: str, series_uid: str, base: str, data: bytes, *, origin: str = ""
    ) -> None:
        """Keep a series' metadata JSON (computed once, served many times) while the series stays cached."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE series SET metadata = ?, metadata_base = ? WHERE origin = ? AND study_uid = ? AND series_uid = ?",
                (data, base, origin, study_uid, series_uid),
            )

        await self._remember(work, "metadata")

    async def _remember(self, work: Callable[[sqlite3.Connection], None], what: str) -> None:
        """Write something the cache can do without (a full disk refuses it): the answer is served anyway."""
        try:
            await self.db.acall(work)
        except sqlite3.OperationalError as exc:
            log.warning("cache: cannot keep a %s: %s", what, exc)

    async def usage(self) -> dict[str, int]:
        def work(conn: sqlite3.Connection) -> dict[str, int]:
            row = conn.execute("SELECT COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b FROM series").fetchone()
            return {"series": int(row["n"]), "bytes": int(row["b"]), "max_bytes": self.max_bytes}

        return await self.db.acall(work)

    async def health(self) -> dict[str, Any]:
        """/health's cache component: "degraded" while the disk's last refusal is newer than the last series kept."""
        failing = self.last_write_error_at is not None and (
            self.last_commit_at is None or self.last_commit_at < self.last_write_error_at
        )
        report: dict[str, Any] = {"status": "degraded" if failing else "up", **(await self.usage())}
        if self.last_write_error is not None:
            report["last_write_error"] = self.last_write_error
            report["last_write_error_at"] = self.last_write_error_at
        return report


def _dir_name(series_uid: str, origin: str) -> str:
    """The series' directory under its study: the UID alone for the box's own PACS, with its origin otherwise."""
    if origin and not origin.isalnum():
        raise ValueError("a cache origin is a digest (letters and digits)")
    return f"{series_uid}~{origin}" if origin else series_uid


def _forget_index_without_origin(path: Path) -> None:
    """An index written before series had an origin is dropped (a cache refills; its files go as orphans)."""
    if not path.exists():
        return
    conn = sqlite3.connect(path)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(series)")}
        if columns and "origin" not in columns:
            conn.executescript("DROP TABLE IF EXISTS series; DROP TABLE IF EXISTS instances;")
    finally:
        conn.close()


@dataclass(frozen=True, slots=True)
class _Whole:
    """A streamed instance gathered whole (a fill whose readers may take it from memory)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes


# Per class of fill item, whether it is Streamed: isinstance against a runtime Protocol walks the protocol's
# members at every call (Python 3.11), 8 % of a C-GET fill's CPU when asked for each of 1300 instances.
_STREAMED: dict[type, bool] = {}


def _streamed(item: object) -> TypeGuard[Streamed]:
    kind = type(item)
    known = _STREAMED.get(kind)
    if known is None:
        known = _STREAMED[kind] = isinstance(item, Streamed)
    return known


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


def _write(path: Path, data: bytes) -> None:
    # No fsync: the cache can always be refilled from the PACS, and the index only names complete series.
    tmp = path.with_suffix(".part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a half-written file would hold the space the disk lacks
        raise
