"""The Proxy's kept C-FIND answers: the rest of a search gathered once its reader has its page, bounded in size."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydicom.dataset import Dataset

from drimbox.source import qido_pages
from drimbox.source.qido_pages import SearchPages


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
