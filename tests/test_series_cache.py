"""The series cache: one fill per series for every reader, LRU eviction by size, invalidation, no partial series,
and a disk that refuses files costing the readers nothing."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drimbox.state.series_cache import MEMORY_AHEAD, CachedInstance, SeriesCache, UncachedInstance


@dataclass(frozen=True)
class Item:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes


class Source:
    """A fake PACS retrieve that counts how often it is asked and whether it was closed."""

    def __init__(self, count: int, size: int = 1000, delay: float = 0.0, fail_after: int | None = None) -> None:
        self.count, self.size, self.delay, self.fail_after = count, size, delay, fail_after
        self.started = 0
        self.closed = 0
        self.sent = 0

    def __call__(self) -> AsyncIterator[Item]:
        return self._run()

    async def _run(self) -> AsyncIterator[Item]:
        self.started += 1
        try:
            for i in range(self.count):
                if self.fail_after is not None and i == self.fail_after:
                    raise ConnectionError("PACS went away")
                await asyncio.sleep(self.delay)
                self.sent += 1
                yield Item(
                    "1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{i}", "1.2.840.10008.1.2.1", bytes([i % 256]) * self.size
                )
        finally:
            self.closed += 1


async def read_all(cache: SeriesCache, series: str, source: Callable[[], AsyncIterator[Item]]) -> list[str]:
    return [i.sop_instance_uid async for i in cache.series("1.2", series, source)]


async def test_concurrent_readers_share_one_fill_and_later_reads_hit_the_cache(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        source = Source(20, delay=0.005)
        a, b = await asyncio.gather(read_all(cache, "S1", source), read_all(cache, "S1", source))
        assert a == b == [f"1.2.3.{i}" for i in range(20)]
        assert source.started == 1
        assert await read_all(cache, "S1", source) == a
        assert source.started == 1
        hit = await cache.cached("1.2", "S1")
        assert hit is not None and all(i.path.read_bytes() == bytes([n]) * 1000 for n, i in enumerate(hit))
    finally:
        cache.close()


async def test_one_instance_of_a_cached_series_is_looked_up_alone(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        assert await cache.cached("1.2", "S1", sop_uid="1.2.3.7") is None  # not cached yet: the caller retrieves
        await read_all(cache, "S1", Source(20))
        hit = await cache.cached("1.2", "S1", sop_uid="1.2.3.7")
        assert hit is not None and [i.sop_instance_uid for i in hit] == ["1.2.3.7"]
        assert hit[0].path.read_bytes() == bytes([7]) * 1000 and hit[0].size == 1000
        assert await cache.cached("1.2", "S1", sop_uid="1.2.3.99") == []  # cached series, no such instance
    finally:
        cache.close()


async def test_least_recently_used_series_are_evicted_to_fit(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=25_000, lru_resolution=0.0)  # every read counts, however close
    try:
        for name in ("A", "B"):
            await read_all(cache, name, Source(10))
        await cache.cached("1.2", "A")  # A is now more recent than B
        await read_all(cache, "C", Source(10))
        assert await cache.cached("1.2", "B") is None
        assert await cache.cached("1.2", "A") is not None and await cache.cached("1.2", "C") is not None
        assert not (tmp_path / "1.2" / "B").exists()
        assert (await cache.usage())["bytes"] <= 25_000
    finally:
        cache.close()


async def test_a_failed_retrieve_leaves_nothing_cached(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        with pytest.raises(ConnectionError):
            await read_all(cache, "S", Source(10, fail_after=4))
        assert await cache.cached("1.2", "S") is None and not await cache.holds("1.2", "S")
        assert not (tmp_path / "1.2" / "S").exists()
    finally:
        cache.close()


async def test_last_reader_leaving_cancels_the_fill(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        source = Source(1000, delay=0.01)
        stream = cache.series("1.2", "S", source)
        async for _ in stream:
            break
        await stream.aclose()
        for _ in range(100):
            if source.closed:
                break
            await asyncio.sleep(0.01)
        assert source.closed == 1 and source.sent < 1000
        assert await cache.cached("1.2", "S") is None
    finally:
        cache.close()


async def test_invalidation_forgets_the_study_and_survives_reopening(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    await read_all(cache, "S", Source(3))
    await cache.store_metadata("1.2", "S", "/dicom-web", b"{}")
    assert await cache.metadata("1.2", "S", "/dicom-web") == b"{}"
    cache.close()
    reopened = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        assert await reopened.cached("1.2", "S") is not None and await reopened.holds("1.2", "S")
        assert not await reopened.holds("1.2", "S", origin="abc")  # another source's copy of the series
        await reopened.invalidate_study("1.2")
        assert await reopened.cached("1.2", "S") is None and not await reopened.holds("1.2", "S")
        assert await reopened.metadata("1.2", "S", "/dicom-web") is None
    finally:
        reopened.close()


async def test_study_series_list_expires_and_is_invalidated(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        assert await cache.study_series("1.2", max_age=60) is None
        await cache.store_study_series("1.2", ["S1", "S2"])
        assert await cache.study_series("1.2", max_age=60) == ["S1", "S2"]
        assert await cache.study_series("1.2", max_age=-1) is None
        await cache.invalidate_study("1.2")
        assert await cache.study_series("1.2", max_age=60) is None
    finally:
        cache.close()


async def test_a_reader_arriving_while_an_abandoned_fill_cancels_gets_the_whole_series(tmp_path: Path) -> None:
    """Regression: it used to join the dying fill and end early without an error (a silently truncated series)."""
    cache = SeriesCache(tmp_path, 10**9)
    source = Source(10, delay=0.01)
    first = cache.series("1.2", "1.2.3", source)
    await anext(first)
    await first.aclose()  # the only reader leaves: the fill is cancelled
    again = [i.sop_instance_uid async for i in cache.series("1.2", "1.2.3", source)]
    assert len(again) == 10 and source.started == 2
    cache.close()


async def test_a_reader_that_wanted_one_instance_leaves_the_fill_running_to_the_cache(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        source = Source(30, delay=0.002)
        reader = cache.series("1.2", "S1", source, keep=True)
        first = await anext(reader)
        await reader.aclose()
        # The file just handed out stays readable, and the whole series ends up cached without a second retrieve.
        assert first.path.read_bytes() == bytes([0]) * 1000
        for _ in range(200):
            if await cache.cached("1.2", "S1") is not None:
                break
            await asyncio.sleep(0.01)
        assert await read_all(cache, "S1", source) == [f"1.2.3.{i}" for i in range(30)]
        assert source.started == 1 and source.sent == 30
    finally:
        cache.close()


# ------------------------------------------------------------------------------- a cache disk that refuses files


async def serve_all(
    cache: SeriesCache, study: str, series: str, source: Callable[[], AsyncIterator[Item]]
) -> list[Any]:
    return [i async for i in cache.serve_series(study, series, source)]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (a disk that really fills up), unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount")
    directory = tmp_path / "tiny"
    directory.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


async def test_a_full_disk_mid_series_serves_the_whole_series_from_memory_uncached(tiny_disk: Path) -> None:
    cache = SeriesCache(tiny_disk, max_bytes=10**9)
    try:
        source = Source(12, size=200_000)  # 2.4 MB on a 1 MB disk: the first files fit, then ENOSPC
        a, b = await asyncio.gather(serve_all(cache, "1.2", "S", source), serve_all(cache, "1.2", "S", source))
        expected = [bytes([n]) * 200_000 for n in range(12)]
        for got in (a, b):
            assert [i.sop_instance_uid for i in got] == [f"1.2.3.{n}" for n in range(12)]
            assert any(isinstance(i, CachedInstance) for i in got) and isinstance(got[-1], UncachedInstance)
            assert [i.data for i in got if isinstance(i, UncachedInstance)] == expected[
                -sum(isinstance(i, UncachedInstance) for i in got) :
            ]
        assert source.started == 1
        # Nothing kept, nothing half-written left: the space is free again for the next series.
        assert await cache.cached("1.2", "S") is None
        assert [p for p in tiny_disk.rglob("*") if p.is_file() and p.parent != tiny_disk] == []
        health = await cache.health()
        assert health["status"] == "degraded" and "ENOSPC" in health["last_write_error"], health
        small = Source(3, size=1000)
        assert len(await serve_all(cache, "1.2", "T", small)) == 3
        assert await cache.cached("1.2", "T") is not None
        assert (await cache.health())["status"] == "up"
    finally:
        cache.close()


async def test_a_refused_series_passes_from_memory_at_the_pace_of_its_slowest_reader(tmp_path: Path) -> None:
    (tmp_path / "1.2").write_bytes(b"")  # the study's directory cannot be made: every write is refused
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        source = Source(40, size=1000)
        got: list[bytes] = []
        async for n, instance in aenumerate(cache.serve_series("1.2", "S", source)):
            assert isinstance(instance, UncachedInstance)
            got.append(instance.data)
            await asyncio.sleep(0.002)
            # Backpressure: the PACS is never more than a few instances ahead of the reader.
            assert source.sent <= n + 1 + MEMORY_AHEAD, (n, source.sent)
        assert got == [bytes([n]) * 1000 for n in range(40)]
        assert await cache.cached("1.2", "S") is None
        assert (await cache.health())["status"] == "degraded"
        # A reader that cannot take bytes (the consumer's importer) gets a clean error, as before.
        with pytest.raises(OSError):
            await read_all(cache, "S2", Source(3))
    finally:
        cache.close()


async def test_a_reader_arriving_after_a_refused_fill_moved_on_gets_the_whole_series(tmp_path: Path) -> None:
    (tmp_path / "1.2").write_bytes(b"")
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        source = Source(20, size=100, delay=0.002)
        first = cache.serve_series("1.2", "S", source)
        taken = [await anext(first) for _ in range(10)]  # instances 0..9 dropped from memory once taken
        late = asyncio.create_task(serve_all(cache, "1.2", "S", source))
        rest = [i async for i in first]
        assert [i.sop_instance_uid for i in taken + rest] == [f"1.2.3.{n}" for n in range(20)]
        assert [i.sop_instance_uid for i in await late] == [f"1.2.3.{n}" for n in range(20)]
        assert source.started == 2
    finally:
        cache.close()


async def test_a_refused_fill_stops_when_its_last_reader_leaves_even_if_kept(tmp_path: Path) -> None:
    (tmp_path / "1.2").write_bytes(b"")
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        source = Source(1000, size=100, delay=0.001)
        reader = cache.serve_series("1.2", "S", source, keep=True)
        await anext(reader)
        await reader.aclose()
        for _ in range(200):
            if source.closed:
                break
            await asyncio.sleep(0.01)
        # Nothing would be cached: the rest of the series is not worth a retrieve nobody reads.
        assert source.closed == 1 and source.sent < 1000
    finally:
        cache.close()


async def aenumerate(items: AsyncIterator[Any]) -> AsyncIterator[tuple[int, Any]]:
    n = 0
    async for item in items:
        yield n, item
        n += 1


async def test_readers_following_a_fill_get_each_instance_s_own_bytes_from_memory_and_later_ones_the_file(
    tmp_path: Path,
) -> None:
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        source = Source(12, size=100_000, delay=0.002)
        following = [i async for i in cache.series("1.2", "S9", source)]
        # Sent from memory, exactly what the file holds; nothing kept once the fill is over.
        assert [i.data for i in following] == [bytes([n]) * 100_000 for n in range(12)]
        assert all(i.data == i.path.read_bytes() for i in following)
        later = [i async for i in cache.series("1.2", "S9", source)]
        assert source.started == 1 and [i.data for i in later] == [None] * 12
    finally:
        cache.close()
