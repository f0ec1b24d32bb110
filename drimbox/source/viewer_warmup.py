"""What opening a report link starts before the viewer asks: the KOS's evidence, the first series' instance list."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from drimbox.dicomweb.backend import QidoQuery, QueryLevel
from drimbox.dicomweb.qido import parse_query

log = logging.getLogger(__name__)

# The instance list the viewer asks first (viewer/dicomweb.js, instances()): the same fields, so the same search.
VIEWER_INSTANCE_FIELDS = "00200013,00280008,00200032,00200037"


class Evidence(Protocol):
    """What the warm-up asks of the source's access checks (access.SourceAccess fits)."""

    def prepare(self, kos_uid: str) -> None: ...

    async def kos_series(self, kos_uid: str) -> frozenset[str]: ...


class Searches(Protocol):
    """What it asks of a Proxy's backend (proxy_backend.ProxyBackend fits)."""

    async def series_of(self, study_uid: str) -> list[str]: ...

    async def holds(self, study_uid: str, series_uid: str | None = None) -> bool: ...

    async def gather(self, query: QidoQuery) -> None: ...


class ViewerWarmUp:
    """Between a report link's redirect and the viewer's first request lie a page and its scripts (100-200 ms on
    loopback, several round trips on a real line). On a Proxy box the viewer then waits for the instance list of its
    first series, a C-FIND of 0.4 s for 1300 instances on Orthanc: asked when the link opens, it is under way or
    done by then. Not when the box holds that series (the viewer then reads its metadata, no list). A wasted C-FIND when the viewer never comes; nothing served that the viewer's own checks would not
    serve (the answers are kept where its search, checked as usual, finds them)."""

    def __init__(self, evidence: Evidence | None, searches: Searches | None) -> None:
        self.evidence = evidence
        self.searches = searches
        self._tasks: set[asyncio.Task[None]] = set()

    def opened(self, study_uid: str, kos_uid: str) -> None:
        """A report link to `study_uid`, published as `kos_uid`, has just opened for a professional."""
        if self.evidence is not None and kos_uid:
            self.evidence.prepare(kos_uid)
        if self.searches is not None:
            task = asyncio.create_task(self._first_series(study_uid, kos_uid), name=f"viewer-warmup-{study_uid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _first_series(self, study_uid: str, kos_uid: str) -> None:
        assert self.searches is not None
        try:
            # The viewer lists the series the KOS admits, by Series Number, and opens the first.
            listed = await self.evidence.kos_series(kos_uid) if self.evidence is not None and kos_uid else None
            ordered = await self.searches.series_of(study_uid)
            first = next((uid for uid in ordered if listed is None or uid in listed), None)
            if first is None or await self.searches.holds(study_uid, first):
                return  # held: the viewer reads the series' metadata from the cache, it asks for no list
            params = [("includefield", VIEWER_INSTANCE_FIELDS)]
            await self.searches.gather(parse_query(QueryLevel.IMAGE, params, study_uid=study_uid, series_uid=first))
        except Exception as exc:  # only time is lost: the viewer's own requests ask again and report errors
            log.debug("viewer warm-up of a report link stopped: %s", type(exc).__name__)
