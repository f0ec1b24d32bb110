"""Instance-level C-FIND answers kept a few seconds, so a client paging through a QIDO result asks the PACS once."""

# A viewer lists a 1300-slice series in two QIDO pages (1000 answers at most each). Without this, the page at
# offset 1000 re-ran the whole C-FIND: Orthanc 1.10 takes 0.5-0.65 s for those 1300 answers (it reads each
# instance's file for Rows, Columns and the like), paid twice before the first image could be drawn.
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
from collections.abc import AsyncIterator, Hashable

from pydicom.dataset import Dataset

# How long answers are reused: long enough for a client to ask its next page.
KEEP_SECONDS = 10.0
# At most this many answers are gathered after the first reader left, and kept per query (memory bound).
MAX_ANSWERS = 20_000
# At most this many queries' answers kept at once.
MAX_QUERIES = 16


class SearchPages:
    """The complete answers of recent searches, and the searches whose rest is still being gathered."""

    def __init__(self, keep_seconds: float = KEEP_SECONDS) -> None:
        self.keep_seconds = keep_seconds
        self._kept: OrderedDict[Hashable, tuple[float, list[Dataset]]] = OrderedDict()
        self._gathering: dict[Hashable, asyncio.Task[None]] = {}

    async def kept(self, key: Hashable) -> list[Dataset] | None:
        """The complete answers of `key` from a search at most `keep_seconds` ago (waiting for one being finished)."""
        pending = self._gathering.get(key)
        if pending is not None:
            await asyncio.wait({pending})
        found = self._kept.get(key)
        if found is None:
            return None
        if time.monotonic() - found[0] > self.keep_seconds:
            del self._kept[key]
            return None
        return found[1]

    def keep(self, key: Hashable, answers: list[Dataset]) -> None:
        self._kept[key] = (time.monotonic(), answers)
        self._kept.move_to_end(key)
        while len(self._kept) > MAX_QUERIES:
            self._kept.popitem(last=False)

    def finish(self, key: Hashable, answers: list[Dataset], rest: AsyncIterator[Dataset]) -> bool:
        """The reader left with `answers`: gather the rest of `rest` in the background, then keep them all.

        False when the same search is being gathered already: the caller closes `rest` (C-CANCEL)."""
        if key in self._gathering:
            return False
        task = asyncio.create_task(self._gather(key, answers, rest), name="qido-pages")
        self._gathering[key] = task
        task.add_done_callback(lambda done: self._gathered(key, done))
        return True

    async def _gather(self, key: Hashable, answers: list[Dataset], rest: AsyncIterator[Dataset]) -> None:
        try:
            async for ds in rest:
                answers.append(ds)
                if len(answers) > MAX_ANSWERS:
                    return  # too wide to keep: closing the search cancels it (C-CANCEL)
            self.keep(key, answers)
        finally:
            await close_answers(rest)

    def _gathered(self, key: Hashable, task: asyncio.Task[None]) -> None:
        self._gathering.pop(key, None)
        if not task.cancelled():
            task.exception()  # a failed search is simply not kept: the next page asks the PACS itself


async def close_answers(iterator: AsyncIterator[Dataset]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()
