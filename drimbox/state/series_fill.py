"""A series on its way into the cache: what has arrived, who reads it, and the pace of a fill that cannot write."""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, runtime_checkable


class Identified(Protocol):
    """An instance's identity as a fill source knows it before its bytes are on disk."""

    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def transfer_syntax_uid(self) -> str: ...


class Received(Identified, Protocol):
    """What a fill source yields: one instance's Part-10 bytes and identity (dimse.ReceivedInstance fits)."""

    @property
    def data(self) -> bytes: ...


@runtime_checkable
class Streamed(Identified, Protocol):
    """What a fill source may yield instead, for a large instance: its identity and first bytes, the rest to come.

    The source has checked what it must on `head` (the consumer: the KOS's evidence) before yielding it; the fill
    reads `rest` whole before asking for the next instance (consumer.retrieval.StreamedInstance fits).
    """

    @property
    def head(self) -> bytes: ...
    @property
    def size(self) -> int: ...
    def rest(self) -> AsyncIterator[bytes]: ...


class Growth:
    """A cache file still being written: how much of it is on disk, for readers that follow it as it grows."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.written = 0
        self.error: Exception | None = None
        self.done = False
        self._changed = asyncio.Event()

    def advance(self, n: int) -> None:
        self.written += n
        self._wake()

    def finish(self, error: Exception | None = None) -> None:
        self.done, self.error = True, error
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def beyond(self, position: int) -> int:
        """How many bytes are on disk, once more than `position` are or the file is whole; raises the fill's error."""
        while self.written <= position and not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error
        return self.written

    async def whole(self) -> None:
        """Return once the file is complete on disk (raises the fill's error)."""
        while not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error


async def follow(path: Path, growth: Growth, piece: int = 1024 * 1024) -> AsyncIterator[bytes]:
    """The bytes of a cache file as they are written, up to its full size."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # created before the instance was handed to any reader
    try:
        position = 0
        while position < growth.size:
            end = await growth.beyond(position)
            while position < end:
                # Read on the loop: these bytes were written a moment ago and sit in the page cache.
                data = os.pread(fd, min(piece, end - position), position)
                if not data:
                    raise OSError("the cache file is shorter than what was written to it")
                position += len(data)
                yield data
            if growth.done and position < growth.size:
                raise OSError("the cache file ended before its size")
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class CachedInstance:
    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    # Set while the file is still being written (a Streamed instance): read it with `follow`, or await its `whole`.
    growing: Growth | None = None
    # The file's bytes, still in memory from their arrival, for a reader keeping up with the fill (Fill.hot): sent
    # from there, the file need not be opened and read back.
    data: bytes | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class UncachedInstance:
    """An instance handed on from memory as it was received, because the cache disk refused it (full, failing)."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


SeriesInstance = CachedInstance | UncachedInstance

# A fill that cannot write to disk holds at most this many received instances that some reader has not taken yet;
# then it stops taking instances from the PACS until the slowest reader catches up. Backpressure rather than
# dropping and re-fetching: the retrieve's own queue already slows the PACS down (iter_retrieve), a re-fetch
# would cost a second retrieve of the series, and memory stays bounded by a few instances per series in flight.
MEMORY_AHEAD = 4
# What a fill keeps of the instances it received, once written, for its readers (see Fill.hot). Measured on the
# consumer's cold path: reading each file back cost a thread hop and a copy per instance. Readers further behind
# than this read the files, as from the cache.
HOT_BYTES = 8 * 1024 * 1024


class Cursor:
    """Where one reader of a fill is: the absolute position of the next instance it will take."""

    __slots__ = ("position",)

    def __init__(self) -> None:
        self.position = 0


@dataclass
class Fill:
    """A series being retrieved: what has arrived so far, and a condition readers wait on."""

    instances: list[SeriesInstance] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    done: bool = False
    error: BaseException | None = None
    readers: int = 0
    task: asyncio.Task[None] | None = None
    # Cancelled because every reader left: a new reader must not join it (it would end early, silently).
    abandoned: bool = False
    # Run to the end even when every reader has left: a reader wanted one instance of the series, and the
    # rest is what a viewer asks for next (cancelling would throw away a retrieve already paid for).
    keep: bool = False
    # The source is exhausted: only the commit is left, which a leaving reader must not interrupt.
    received_all: bool = False
    # Its readers accept instances from memory (serve_series): a write error degrades the fill instead of failing it.
    may_pass: bool = False
    # Writing to disk failed: instances now pass from memory and the series will not be cached.
    degraded: bool = False
    # Absolute position of instances[0]: a degraded fill drops what every reader has taken (bounded memory),
    # and a reader arriving then cannot start from the beginning of it.
    base: int = 0
    cursors: set[Cursor] = field(default_factory=set)
    # Set by readers as they take instances or leave: a degraded fill waits on it (backpressure).
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    # The latest received instances' bytes, kept after their files are written (at most HOT_BYTES, oldest dropped):
    # the readers following the fill closely send them from memory.
    hot: OrderedDict[str, bytes] = field(default_factory=OrderedDict)
    hot_bytes: int = 0

    def keep_hot(self, sop_instance_uid: str, data: bytes) -> None:
        if len(data) > HOT_BYTES:
            return
        self.hot[sop_instance_uid] = data
        self.hot_bytes += len(data)
        while self.hot_bytes > HOT_BYTES:
            _, dropped = self.hot.popitem(last=False)
            self.hot_bytes -= len(dropped)

    def with_bytes(self, instance: SeriesInstance) -> SeriesInstance:
        """The instance as a reader gets it: with its bytes when the fill still holds them."""
        if isinstance(instance, CachedInstance) and instance.growing is None:
            data = self.hot.get(instance.sop_instance_uid)
            if data is not None:
                return replace(instance, data=data)
        return instance

    def forget_hot(self) -> None:
        self.hot.clear()
        self.hot_bytes = 0


async def readers_within(fill: Fill, ahead: int) -> None:
    """Wait until every reader is at most `ahead` instances behind the fill, dropping what all of them took."""
    while fill.cursors:
        slowest = min(cursor.position for cursor in fill.cursors)
        if slowest > fill.base:
            del fill.instances[: slowest - fill.base]
            fill.base = slowest
        if fill.base + len(fill.instances) - slowest <= ahead:
            return
        fill.progress.clear()
        await fill.progress.wait()
