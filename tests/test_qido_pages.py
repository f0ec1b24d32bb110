"""The Proxy's kept C-FIND answers: the rest of a search gathered once its reader has its page, bounded in size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydicom.dataset import Dataset

from drimbox.source import qido_pages
from drimbox.source.qido_pages import GatheringStopped, SearchPages


class Answers:
    """A C-FIND's answers as iter_find yields them, noting whether it was closed (C-CANCEL) and how far it went."""

    def __init__(self, n: int) -> None:
        self.n, self.sent, self.closed = n, 0, False

    async def run(self) -> AsyncIterator[Dataset]:
        try:
            for i in range(self.n):
                ds = Dataset()
                ds.InstanceNumber = i
                self.sent += 1
                yield ds
        finally:
            self.closed = True


async def test_the_rest_of_a_search_left_after_its_first_page_is_kept_for_the_next() -> None:
    pages, source = SearchPages(), Answers(30)
    answers = source.run()
    first = [await anext(answers) for _ in range(10)]
    assert pages.finish("q", list(first), answers)
    kept = await pages.kept("q")  # waits for the gathering
    assert kept is not None and [int(ds.InstanceNumber) for ds in kept] == list(range(30))
    assert source.closed and source.sent == 30
    assert await pages.kept("other") is None


async def test_a_search_too_wide_to_keep_is_cancelled_and_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qido_pages, "MAX_ANSWERS", 50)
    pages, source = SearchPages(), Answers(10_000)
    answers = source.run()
    first = [await anext(answers) for _ in range(10)]
    assert pages.finish("q", first, answers)
    assert await pages.kept("q") is None
    assert source.closed and source.sent <= 51


async def test_kept_answers_expire() -> None:
    pages = SearchPages(keep_seconds=0.0)
    pages.keep("q", [Dataset()])
    assert await pages.kept("q") is None


async def test_readers_follow_a_search_as_its_answers_arrive() -> None:
    pages, gate = SearchPages(), asyncio.Event()

    async def slow() -> AsyncIterator[Dataset]:
        for i in range(6):
            if i == 3:
                await gate.wait()  # the PACS pauses after three answers
            ds = Dataset()
            ds.InstanceNumber = i
            yield ds

    assert pages.follow("q") is None and not pages.under_way("q")
    assert pages.finish("q", [], slow())
    assert pages.under_way("q")
    first, second = pages.follow("q"), pages.follow("q")
    assert first is not None and second is not None
    # Both readers have the first answers before the search has ended.
    assert [int((await anext(first)).InstanceNumber) for _ in range(3)] == [0, 1, 2]
    assert int((await anext(second)).InstanceNumber) == 0
    gate.set()
    assert [int(ds.InstanceNumber) for ds in [ds async for ds in first]] == [3, 4, 5]
    assert [int(ds.InstanceNumber) for ds in [ds async for ds in second]] == [1, 2, 3, 4, 5]
    kept = await pages.kept("q")
    assert kept is not None and len(kept) == 6 and not pages.under_way("q")


async def test_a_reader_of_a_search_that_stops_short_is_told_how_far_it_got() -> None:
    pages = SearchPages()

    async def failing() -> AsyncIterator[Dataset]:
        yield Dataset()
        yield Dataset()
        raise ConnectionResetError("the PACS went away")

    assert pages.finish("q", [], failing())
    following = pages.follow("q")
    assert following is not None
    got = 0
    with pytest.raises(GatheringStopped) as stopped:
        async for _ in following:
            got += 1
    assert got == stopped.value.given == 2
    assert isinstance(stopped.value.error, ConnectionResetError)  # what the reader reports
    assert await pages.kept("q") is None  # not kept: the next reader asks the PACS itself
