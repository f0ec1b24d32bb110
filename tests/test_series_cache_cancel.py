"""A fill stopped at any moment (its source cut off, its last reader leaving) leaves no file and no open descriptor,
whatever thread job it was awaiting: queued, taken by a thread, or done."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drimbox.state.series_cache import SeriesCache
from drimbox.state.series_fill import follow

SLICE = 4096


@dataclass(frozen=True)
class Whole:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes


class Cut:
    """A streamed instance whose source breaks off after two pieces (fits state.series_fill.Streamed)."""

    sop_class_uid = "1.2.840.10008.5.1.4.1.1.2"
    transfer_syntax_uid = "1.2.840.10008.1.2.1"

    def __init__(self, uid: str) -> None:
        self.sop_instance_uid = uid
        self.head = b"h" * SLICE
        self.size = 4 * SLICE

    async def rest(self) -> AsyncIterator[bytes]:
        for _ in range(2):
            await asyncio.sleep(0)
            yield b"r" * SLICE
        raise ConnectionError("the source broke the response off")


def streamed_then_cut() -> AsyncIterator[Any]:
    async def run() -> AsyncIterator[Any]:
        yield Whole(Cut.sop_class_uid, "1.2.3.0", Cut.transfer_syntax_uid, b"w" * SLICE)
        yield Cut("1.2.3.1")

    return run()


def received_then_cut() -> AsyncIterator[Any]:
    async def run() -> AsyncIterator[Any]:
        for n in range(3):
            await asyncio.sleep(0)
            yield Whole(Cut.sop_class_uid, f"1.2.3.{n}", Cut.transfer_syntax_uid, bytes([n]) * SLICE)
        raise ConnectionError("the source broke the response off")

    return run()


class HeldThreads(ThreadPoolExecutor):
    """The loop's default executor, each job held until the test starts it: the test chooses where a cancellation
    falls among the thread jobs of a fill. A job cancelled while held never runs, as in any pool."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.held: list[tuple[Future[Any], Callable[[], Any]]] = []
        self.gate = threading.Event()
        self.gate.set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        outer: Future[Any] = Future()
        self.held.append((outer, functools.partial(fn, *args, **kwargs)))
        return outer

    def start_next(self, *, gated: bool = False) -> Future[Any] | None:
        """Start the oldest held job in a thread (None if it was cancelled meanwhile); `gated`: the thread has
        taken it but waits for the gate before running it."""
        outer, work = self.held.pop(0)
        if not outer.set_running_or_notify_cancel():
            return None

        def run() -> None:
            if gated:
                self.gate.wait()
            try:
                outer.set_result(work())
            except BaseException as exc:
                outer.set_exception(exc)

        super().submit(run)
        return outer


def open_files() -> list[str]:
    """What this process's descriptors point at."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:
            pass  # the directory listing's own descriptor, closed since
    return found


async def until(condition: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(5):
            while not condition():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"waited 5 s for {what}") from None


async def stopped_after(tmp_path: Path, source: Callable[[], AsyncIterator[Any]], jobs: int, taken: bool) -> list[str]:
    """Run a fill whose reader leaves once `jobs` thread jobs have run, while the next one is held (`taken`: held
    after a thread took it, until the fill has done all it could without it), then let every job run: what of the
    series stays on disk or open."""
    threads = HeldThreads()
    asyncio.get_running_loop().set_default_executor(threads)
    cache = SeriesCache(tmp_path, max_bytes=10**9)
    leave = asyncio.Event()

    async def viewer() -> None:
        async with aclosing(cache.series("1.2", "S", source)) as instances:
            async for instance in instances:
                if instance.growing is not None:
                    try:
                        async for _ in follow(instance.path, instance.growing):
                            pass
                    except Exception:
                        pass  # the cut reaches the reader; it stays on the page a moment longer
            await leave.wait()

    reader = asyncio.create_task(viewer())
    try:
        await until(lambda: bool(cache._fills), "the fill's start")
        fill = next(iter(cache._fills.values()))
        assert fill.task is not None
        task = fill.task
        for _ in range(jobs):
            await until(lambda: bool(threads.held) or task.done(), "a job")
            if task.done():
                break
            started = threads.start_next()
            if started is not None:
                await asyncio.wait({asyncio.wrap_future(started)})
        await until(lambda: bool(threads.held) or task.done(), "a job")
        if taken and threads.held:
            threads.gate.clear()
            threads.start_next(gated=True)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        for _ in range(10):
            await asyncio.sleep(0)  # the fill's cancellation reaches the job it awaits (done callbacks, on the loop)
        idle = 0
        async with asyncio.timeout(5):
            while not task.done() or threads.held:
                if threads.held:
                    threads.start_next()
                    idle = 0
                elif idle > 20 and not threads.gate.is_set():
                    threads.gate.set()  # the job a thread took runs once the fill has done all it could without it
                else:
                    idle += 1
                await asyncio.sleep(0.001)
            threads.gate.set()
        threads.shutdown(wait=True)  # a job released last has ended
        assert await cache.cached("1.2", "S") is None
        series = tmp_path / "1.2"
        # The study's directory may stay (it is every series'); nothing of this series may: file or directory.
        left = [str(p.relative_to(series)) for p in series.rglob("*")] if series.exists() else []
        return left + [f"open {Path(f).name}" for f in open_files() if f.startswith(str(series))]
    finally:
        threads.gate.set()
        reader.cancel()
        cache.close()


@pytest.mark.parametrize("source", [streamed_then_cut, received_then_cut], ids=["streamed", "received"])
async def test_a_fill_stopped_between_any_two_thread_jobs_leaves_nothing_behind(
    tmp_path: Path, source: Callable[[], AsyncIterator[Any]]
) -> None:
    problems = {}
    for jobs in range(9):
        for taken in (False, True):
            if left := await stopped_after(tmp_path / f"{jobs}-{taken}", source, jobs, taken):
                problems[f"after {jobs} job(s), the next {'taken by a thread' if taken else 'queued'}"] = left
    assert problems == {}
