"""A fill's files on disk: written by thread jobs, removed once, and never created or written again after that."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class FilesRemoved(RuntimeError):
    """A write to a fill's files that began after they were removed: refused, so that nothing comes back."""


async def settle(job: Awaitable[T]) -> T:
    """The result of `job` once it has ended, even when the awaiting task is cancelled meanwhile (then the
    cancellation is raised, after the job's end).

    A thread cannot be stopped, and `await asyncio.to_thread(...)` cancelled before the thread took the job drops
    the job: a removal dropped leaves the files on disk, a close dropped leaks the descriptor, and a close that does
    not wait for a write still running hands its descriptor number to the next file opened while the write goes on.
    """
    future = asyncio.ensure_future(job)
    interrupted: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.wait({future})  # unlike awaiting it, a cancelled wait leaves the job alone
        except asyncio.CancelledError as exc:
            interrupted = exc
    if interrupted is not None:
        if not future.cancelled():
            future.exception()  # seen: the cancellation is what the caller gets
        raise interrupted
    return future.result()


class FillFiles:
    """The directory one fill writes its series into, and the thread jobs that write it.

    The removal is the last word on the directory: it waits for the jobs already running, and a job that starts
    after it creates and writes nothing (FilesRemoved). A fill cancelled by its last reader's leaving, or failed by
    its source, cannot leave a file behind whatever its tasks were awaiting at that moment.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._state = threading.Condition()
        self._running = 0
        self._removed = False

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """fn in a thread, unless the files were removed by then."""
        return await asyncio.to_thread(self._job, functools.partial(fn, *args, **kwargs))

    def _job(self, work: Callable[[], T]) -> T:
        with self._state:
            if self._removed:
                raise FilesRemoved("the fill's files were removed")
            self._running += 1
        try:
            return work()
        finally:
            with self._state:
                self._running -= 1
                self._state.notify_all()

    def create(self, path: Path) -> int:
        """A descriptor open for writing on a new file of the fill (on the loop: creating an empty file takes
        microseconds, and the file exists before the call returns)."""
        with self._state:
            if self._removed:
                raise FilesRemoved("the fill's files were removed")
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)

    async def remove(self) -> None:
        """Remove the directory once the jobs running in it have ended; it is done when this returns, also when
        the awaiting task is cancelled meanwhile (its lock is released after: no other process fills it sooner)."""
        await settle(asyncio.to_thread(self._remove))

    def _remove(self) -> None:
        with self._state:
            self._removed = True
            while self._running:
                self._state.wait()
        shutil.rmtree(self.directory, ignore_errors=True)
