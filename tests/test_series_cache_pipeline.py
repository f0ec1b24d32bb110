"""The cache fill reads the source on while instances are written to disk, and hands each on once its file is whole."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import pytest

from drimbox.state import series_cache
from drimbox.state.series_cache import WRITES_AHEAD, CachedInstance, SeriesCache
from tests.test_series_cache import Source

WRITE_TIME = 0.02
T = TypeVar("T")


async def test_the_source_is_read_while_a_slow_disk_writes_and_readers_get_whole_files_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = series_cache._write

    def slow_write(path: Path, data: bytes) -> None:
        time.sleep(WRITE_TIME)  # a disk slower than the network
        slow(path, data)

    monkeypatch.setattr(series_cache, "_write", slow_write)
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    try:
        source = Source(10, size=1000, delay=WRITE_TIME)
        ahead = 0
        got: list[str] = []
        started = time.monotonic()
        async for n, instance in _enumerate(cache.series("1.2", "S", source)):
            assert isinstance(instance, CachedInstance)
            assert Path(instance.path).read_bytes() == bytes([n]) * 1000  # written whole before it is handed on
            ahead = max(ahead, source.sent - (n + 1))
            got.append(instance.sop_instance_uid)
        elapsed = time.monotonic() - started
        assert got == [f"1.2.3.{n}" for n in range(10)]
        # The source was read on during the writes (1 ahead at least), never more than the pipeline holds.
        assert 1 <= ahead <= WRITES_AHEAD + 1, ahead
        # Network and disk overlap: about 10 × 20 ms, not 10 × (20 + 20) ms.
        assert elapsed < 10 * 2 * WRITE_TIME * 0.8, elapsed
        assert await cache.cached("1.2", "S") is not None
    finally:
        cache.close()


async def _enumerate(items: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    n = 0
    async for item in items:
        yield n, item
        n += 1
