"""The series cache: one fill per series for every reader, LRU eviction by size, invalidation, no partial series."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from drimbox.state.series_cache import SeriesCache


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
                yield Item("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{i}", "1.2.840.10008.1.2.1", bytes([i % 256]) * self.size)
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


async def test_least_recently_used_series_are_evicted_to_fit(tmp_path: Path) -> None:
    cache = SeriesCache(tmp_path, max_bytes=25_000)
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
        assert await cache.cached("1.2", "S") is None
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
        assert await reopened.cached("1.2", "S") is not None
        await reopened.invalidate_study("1.2")
        assert await reopened.cached("1.2", "S") is None
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
