"""Instance-level C-FIND answers gathered once and kept a few seconds: every page of a QIDO result, asked one after
the other or side by side, and a search started ahead of its reader, cost the PACS one C-FIND."""

# A viewer lists a 1300-slice series in two QIDO pages (1000 answers at most each). Without this, the page at
# offset 1000 re-ran the whole C-FIND: Orthanc 1.10 takes 0.5-0.65 s for those 1300 answers (it reads each
# instance's file for Rows, Columns and the like), paid twice before the first image could be drawn. A search is
# gathered from its start, whoever reads it: readers follow its answers as they arrive (a page asked while the
# search runs does not start a second one), and what nobody has read yet is kept for the next page.
# Kept seconds, not minutes: a viewer reopening a series the box holds reads its metadata, not a QIDO, so longer
# would only delay a new instance on the PACS showing. The key holds the study's invalidation count
# (ProxyBackend.search): a publication replaced or withdrawn, or the operator emptying the cache, makes the
# answers stale at once, in every process.
# Only the IMAGE level: where a result outgrows a page, and whose answers no reader modifies (the scoped search
# rewrites series counts).

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Hashable

from pydicom.dataset import Dataset

# How long answers are reused: long enough for a client to ask its next page.
KEEP_SECONDS = 10.0
# At most this many answers are gathered and kept per query (memory bound); a wider search is read directly.
MAX_ANSWERS = 20_000
# At most this many queries' answers kept at once.
MAX_QUERIES = 16


class GatheringStopped(Exception):
    """The search being followed stopped before its last answer; `given` answers were handed on. `error`: what
    stopped it, None when it grew too wide to keep."""

    def __init__(self, given: int, error: Exception | None) -> None:
        super().__init__(f"the search stopped after {given} answers")
        self.given = given
        self.error = error


class _Gathering:
    """The answers of one search as they arrive, for the readers that follow it."""

    def __init__(self, answers: list[Dataset]) -> None:
        self.answers = answers
        self.complete = False
        self.error: Exception | None = None
        self.over = False  # every answer is in, or the gathering stopped (too wide to keep, or the search failed)
        self.ended = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []

    def wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def grown(self) -> None:
        """Until another answer arrives or the search is over."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


class SearchPages:
    """The complete answers of recent searches, and the searches whose answers are still being gathered."""

    def __init__(self, keep_seconds: float = KEEP_SECONDS) -> None:
        self.keep_seconds = keep_seconds
        self._kept: OrderedDict[Hashable, tuple[float, list[Dataset]]] = OrderedDict()
        self._gathering: dict[Hashable, _Gathering] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def kept(self, key: Hashable) -> list[Dataset] | None:
        """The complete answers of `key` from a search at most `keep_seconds` ago (waiting for one being finished)."""
        gathering = self._gathering.get(key)
        if gathering is not None:
            await gathering.ended.wait()
        found = self._kept.get(key)
        if found is None:
            return None
        if time.monotonic() - found[0] > self.keep_seconds:
            del self._kept[key]
            return None
        return found[1]

    def under_way(self, key: Hashable) -> bool:
        """Whether the answers of `key` are being gathered now."""
        return key in self._gathering

    def follow(self, key: Hashable) -> AsyncGenerator[Dataset, None] | None:
        """The answers of `key` from the first, each as soon as the search being gathered has it (then the kept
        ones); None when there is no such search. GatheringStopped when the gathering stops short: too wide to keep
        (the reader then asks the PACS itself for the rest), or failed."""
        gathering = self._gathering.get(key)
        if gathering is None:
            return None
        return self._follow(gathering)

    async def _follow(self, gathering: _Gathering) -> AsyncGenerator[Dataset, None]:
        at = 0
        while True:
            while at < len(gathering.answers):
                yield gathering.answers[at]
                at += 1
            if gathering.over:
                if not gathering.complete:
                    raise GatheringStopped(at, gathering.error)
                return
            await gathering.grown()

    def keep(self, key: Hashable, answers: list[Dataset]) -> None:
        self._kept[key] = (time.monotonic(), answers)
        self._kept.move_to_end(key)
        while len(self._kept) > MAX_QUERIES:
            self._kept.popitem(last=False)

    def finish(self, key: Hashable, answers: list[Dataset], rest: AsyncIterator[Dataset]) -> bool:
        """Gather the rest of a search (`answers` are those it gave so far) in the background, then keep them all:
        its reader has its page and left, or nobody reads it yet (a search started before it is asked for).

        False when the same search is being gathered already: the caller closes `rest` (C-CANCEL)."""
        if key in self._gathering:
            return False
        gathering = self._gathering[key] = _Gathering(answers)
        task = asyncio.create_task(self._gather(key, gathering, rest), name="qido-pages")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _gather(self, key: Hashable, gathering: _Gathering, rest: AsyncIterator[Dataset]) -> None:
        try:
            async for ds in rest:
                gathering.answers.append(ds)
                gathering.wake()
                if len(gathering.answers) > MAX_ANSWERS:
                    return  # too wide to keep: closing the search cancels it (C-CANCEL)
            gathering.complete = True
            self.keep(key, gathering.answers)
        except Exception as exc:
            gathering.error = exc  # its readers see it; not kept: the next reader asks the PACS itself
        finally:
            gathering.over = True
            if self._gathering.get(key) is gathering:
                del self._gathering[key]
            gathering.ended.set()
            gathering.wake()
            await close_answers(rest)


async def close_answers(iterator: AsyncIterator[Dataset]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
