"""The Proxy profile's DICOMweb backend: QIDO → C-FIND, WADO → C-GET/C-MOVE through the series cache."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from drimbox.config import Settings
from drimbox.dicomweb.backend import (
    BytesBody,
    FileBody,
    IncompleteRetrieve,
    NotFound,
    QidoQuery,
    QueryLevel,
    StoredInstance,
    Unavailable,
)
from drimbox.dicomweb.json_model import metadata_from_instances
from drimbox.dimse.network import DimseFailure, DimseUnavailable
from drimbox.dimse.qido_find import iter_find
from drimbox.dimse.retrieve import ReceivedInstance, RetrieveOutcome, iter_retrieve
from drimbox.dimse.uid import is_lenient_uid
from drimbox.source.qido_pages import GatheringStopped, SearchPages, close_answers
from drimbox.state.series_cache import SeriesCache, SeriesInstance

STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SERIES_NUMBER = 0x00200011


def _identifier(query: QidoQuery) -> Dataset:
    """The C-FIND identifier of a QIDO query: matching keys with their values, return keys empty."""
    ds = Dataset()
    ds.QueryRetrieveLevel = query.level.value
    for tag in query.return_tags:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue  # a private or unknown tag cannot be asked of a PACS
        ds.add_new(tag, vr.split(" or ")[0], None)
    for match in query.matches:
        if match.vr == "SQ":
            continue
        ds.add_new(match.tag, match.vr, match.value)
    return ds


class ProxyBackend:
    """Serves DICOMweb from the PACS behind the box. Nothing of a study is held in memory: each instance goes
    PACS → cache file → HTTP as it arrives, and later requests for the series are served from the cache.
    A cache disk that refuses files (full) does not cut a retrieve: the series then goes PACS → memory → HTTP,
    a few instances at a time (SeriesCache.serve_series), uncached."""

    def __init__(self, settings: Settings, cache: SeriesCache) -> None:
        self.settings = settings
        self.cache = cache
        # Instance-level C-GETs in flight: a viewer asks an instance's metadata and its frame at the same time.
        self._direct: dict[tuple[str, str, str], asyncio.Task[ReceivedInstance | None]] = {}
        self._metadata: dict[tuple[str, str, str], asyncio.Task[bytes]] = {}
        # Readers of a series fill left running by a request that got its instance elsewhere (see _one_instance).
        self._background: set[asyncio.Task[StoredInstance | None]] = set()
        self.pages = SearchPages()

    # ---------------------------------------------------------------------------------------- QIDO

    async def search(self, query: QidoQuery) -> AsyncIterator[Dataset]:
        key = await self._search_key(query)
        skip = query.offset
        if key is not None:
            # Gathered whatever this reader does, and followed: a client's next page (or the same page asked twice,
            # or pages asked side by side) joins the search under way, or reads what it kept, rather than running a
            # second C-FIND beside it; a reader that leaves with its page leaves the rest gathered for the next.
            await self.gather(query)
            following = self.pages.follow(key)
            if following is None:
                # Kept already, or the gathering ended between the two lines above (a short search does).
                kept = await self.pages.kept(key)
                if kept is not None:
                    for ds in kept[query.offset :]:
                        yield ds
                    return
            else:
                given = 0
                try:
                    async with aclosing(following):
                        async for ds in following:
                            given += 1
                            if given > query.offset:
                                yield ds
                    return
                except GatheringStopped as stopped:
                    if stopped.error is not None:
                        raise _pacs_error(stopped.error) from None
                    skip = max(query.offset, stopped.given)  # too wide to keep: the rest asked directly
        answers = iter_find(self.settings.pacs, self.settings.dicom.ae_title, _identifier(query))
        count = 0
        try:
            async for ds in answers:
                count += 1
                if count > skip:
                    yield ds
        except (DimseUnavailable, DimseFailure) as exc:
            raise _pacs_error(exc) from None
        finally:
            await close_answers(answers)

    async def gather(self, query: QidoQuery) -> None:
        """Ask the PACS now for what `query` will find, its answers kept where that same search (any page of it)
        finds them, as they arrive and for a few seconds after: for a search about to come (the viewer's, once its
        page has loaded)."""
        key = await self._search_key(query)
        if key is None or self.pages.under_way(key) or await self.pages.kept(key) is not None:
            return
        answers = iter_find(self.settings.pacs, self.settings.dicom.ae_title, _identifier(query))
        self.pages.finish(key, [], answers)

    async def _find_series(self, study_uid: str) -> list[str]:
        """The study's series by Series Number (0 for those without one; as the PACS lists them where equal), as
        the viewer orders them."""
        query = QidoQuery(level=QueryLevel.SERIES, matches=(),
                          return_tags=frozenset({SERIES_INSTANCE_UID, SERIES_NUMBER}))  # fmt: skip
        identifier = _identifier(query)
        identifier.StudyInstanceUID = study_uid
        found: dict[str, float] = {}
        try:
            async for ds in iter_find(self.settings.pacs, self.settings.dicom.ae_title, identifier):
                uid = str(ds.get("SeriesInstanceUID", ""))
                if uid and uid not in found:
                    found[uid] = _number(ds)
        except (DimseUnavailable, DimseFailure) as exc:
            raise _pacs_error(exc) from None
        return sorted(found, key=found.__getitem__)  # stable: equal numbers keep the PACS's order

    async def _search_key(self, query: QidoQuery) -> tuple[QidoQuery, int] | None:
        """Where the answers of an instance search within one study are kept: the query without its page, and the
        study's invalidation count (a change to the study makes what was kept unreachable)."""
        study = query.value(STUDY_INSTANCE_UID)
        if query.level is not QueryLevel.IMAGE or study is None or not is_lenient_uid(study):
            return None
        return dataclasses.replace(query, offset=0, limit=0), await self.cache.generation(study)

    async def series_of(self, study_uid: str) -> list[str]:
        """The study's series in the viewer's order (by Series Number), from the cache while it is fresh (study_ttl),
        else a C-FIND."""
        known = await self.cache.study_series(study_uid, self.settings.cache.study_ttl)
        if known is not None:
            return known
        series = await self._find_series(study_uid)
        if series:
            await self.cache.store_study_series(study_uid, series)
        return series

    # ---------------------------------------------------------------------------------------- WADO

    def _source(
        self, study_uid: str, series_uid: str, outcome: RetrieveOutcome
    ) -> Callable[[], AsyncIterator[ReceivedInstance]]:
        def source() -> AsyncIterator[ReceivedInstance]:
            return iter_retrieve(self.settings.pacs, self.settings.dicom, study_uid, series_uid, outcome=outcome)

        return source

    async def _series_instances(
        self, study_uid: str, series_uid: str, *, keep: bool = False
    ) -> AsyncGenerator[SeriesInstance, None]:
        outcome = RetrieveOutcome()
        count = 0
        source = self._source(study_uid, series_uid, outcome)
        try:
            # aclosing: a request that leaves early must leave the fill at once (reader count, C-CANCEL), not
            # whenever the garbage collector finalises the generator.
            async with aclosing(self.cache.serve_series(study_uid, series_uid, source, keep=keep)) as instances:
                async for instance in instances:
                    count += 1
                    yield instance
        except DimseUnavailable as exc:
            raise Unavailable(f"PACS unavailable: {exc}") from None
        except DimseFailure as exc:
            if count:
                raise IncompleteRetrieve(
                    f"retrieve from the PACS ended early: {exc}", completed=count, failed=max(1, outcome.failed)
                ) from None
            raise Unavailable(f"PACS retrieve failed: {exc}") from None
        if outcome.failed and count:
            raise IncompleteRetrieve(
                "some instances could not be retrieved from the PACS", completed=count, failed=outcome.failed
            )

    async def iter_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        if sop_uid is not None and series_uid is not None:
            hit = await self.cache.cached(study_uid, series_uid, sop_uid=sop_uid)
            if hit is None:
                yield await self._one_instance(study_uid, series_uid, sop_uid)
                return
            if not hit:
                raise NotFound("no such instance in the PACS")
            yield _stored(hit[0])
            return
        series_list = [series_uid] if series_uid else await self.series_of(study_uid)
        if not series_list:
            raise NotFound("no such study in the PACS")
        found = False
        for series in series_list:
            # One instance wanted: the series fill goes on after it is found (the rest is what comes next).
            async with aclosing(self._series_instances(study_uid, series, keep=sop_uid is not None)) as instances:
                async for instance in instances:
                    if sop_uid is not None and instance.sop_instance_uid != sop_uid:
                        continue
                    found = True
                    yield _stored(instance)
                    if sop_uid is not None:
                        return
        if not found:
            raise NotFound("no such instance in the PACS" if sop_uid else "no such series in the PACS")

    async def _one_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> StoredInstance:
        """One instance of a series not in the cache: from the series fill or from a C-GET of its own, the first.

        The fill (kept running to its end: the rest of the series is what a viewer asks next) may reach this
        instance late (Orthanc sends a series last instance first, and a viewer opens on the middle one); an
        instance-level C-GET alongside it answers in milliseconds. Both failing: the fill's error is the answer.
        """
        from_fill = asyncio.create_task(self._from_fill(study_uid, series_uid, sop_uid))
        pending: set[asyncio.Task[Any]] = {from_fill}
        # C-GET only: two C-MOVEs in flight to the box could not both be told apart by a PACS that leaves out
        # the Move Originator fields (store_scp.py routes by SOP Instance UID then), the same instance in each.
        if self.settings.pacs.retrieve == "c-get":
            pending.add(self._direct_retrieve(study_uid, series_uid, sop_uid))
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda t: t is not from_fill):  # the cached file rather than memory
                    if task.cancelled() or task.exception() is not None:
                        continue
                    found = task.result()
                    if isinstance(found, ReceivedInstance):
                        return _received(study_uid, series_uid, found)
                    if isinstance(found, StoredInstance):
                        return found
            error = from_fill.exception() if not from_fill.cancelled() else None
            raise error if error is not None else NotFound("no such instance in the PACS")
        finally:
            if not from_fill.done():
                # Left to end by itself (its instance arrives in the fill, or the fill fails), not cancelled: the
                # direct C-GET can answer before this reader has even started the series fill, and cancelling it
                # then would leave the series never fetched. Once joined, the fill goes on anyway (keep=True).
                self._background.add(from_fill)
                from_fill.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[StoredInstance | None]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # a failed fill is reported to the requests that read it, not here

    async def _from_fill(self, study_uid: str, series_uid: str, sop_uid: str) -> StoredInstance | None:
        async with aclosing(self._series_instances(study_uid, series_uid, keep=True)) as instances:
            async for instance in instances:
                if instance.sop_instance_uid == sop_uid:
                    return _stored(instance)
        return None

    def _direct_retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> asyncio.Task[ReceivedInstance | None]:
        """The instance-level C-GET (or C-MOVE) of one instance, shared by the requests that want it meanwhile."""
        key = (study_uid, series_uid, sop_uid)
        task = self._direct.get(key)
        if task is None:
            task = asyncio.create_task(self._retrieve_one(study_uid, series_uid, sop_uid), name=f"get-{sop_uid}")
            self._direct[key] = task

            def forget(done: asyncio.Task[ReceivedInstance | None]) -> None:
                self._direct.pop(key, None)
                if not done.cancelled():
                    done.exception()  # seen here: the fill's error is the one reported, not this one

            task.add_done_callback(forget)
        return task

    async def _retrieve_one(self, study_uid: str, series_uid: str, sop_uid: str) -> ReceivedInstance | None:
        received = iter_retrieve(self.settings.pacs, self.settings.dicom, study_uid, series_uid, sop_uid=sop_uid)
        async with aclosing(received) as items:
            async for item in items:
                if item.sop_instance_uid == sop_uid:
                    return item
        return None

    async def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, base: str
    ) -> AsyncIterator[bytes]:
        if sop_uid is not None:
            async for item in metadata_from_instances(self.iter_instances(study_uid, series_uid, sop_uid), base):
                yield item
            return
        series_list = [series_uid] if series_uid else await self.series_of(study_uid)
        if not series_list:
            raise NotFound("no such study in the PACS")
        for series in series_list:
            cached = await self.cache.metadata(study_uid, series, base)
            if cached is None:
                # Shielded: a client that leaves (a viewer closed once its first image is painted) must not throw
                # away the series' metadata half computed; the next opening of the series then needs it at once.
                cached = await asyncio.shield(self._series_metadata(study_uid, series, base))
            # One blob per series: the routes join items with commas into one JSON array.
            yield cached

    def _series_metadata(self, study_uid: str, series_uid: str, base: str) -> asyncio.Task[bytes]:
        """The series' metadata computed once (the requests that want it meanwhile share it), then kept."""
        key = (study_uid, series_uid, base)
        task = self._metadata.get(key)
        if task is None:

            async def compute() -> bytes:
                instances = self.iter_instances(study_uid, series_uid)
                blob = b",".join([item async for item in metadata_from_instances(instances, base)])
                # Kept only if the series made it into the cache (a complete retrieve).
                await self.cache.store_metadata(study_uid, series_uid, base, blob)
                return blob

            task = self._metadata[key] = asyncio.create_task(compute(), name=f"metadata-{series_uid}")

            def forget(done: asyncio.Task[bytes]) -> None:
                self._metadata.pop(key, None)
                if not done.cancelled():
                    done.exception()  # retrieved here when every request has left: no "never retrieved" warning

            task.add_done_callback(forget)
        return task

    async def holds(self, study_uid: str, series_uid: str | None = None) -> bool:
        """Whether the series (else every series of the study) is complete in the cache: served without the PACS."""
        # The study's series list is itself cached (study_ttl): a warm study costs no C-FIND here.
        series = [series_uid] if series_uid else await self.series_of(study_uid)
        if not series:
            return False
        for uid in series:
            if not await self.cache.holds(study_uid, uid):
                return False
        return True

    async def invalidate_study(self, study_uid: str) -> None:
        await self.cache.invalidate_study(study_uid)


def _pacs_error(exc: Exception) -> Exception:
    """What a DICOMweb client is told of a C-FIND that failed: the PACS unreachable or refusing is a 503."""
    if isinstance(exc, DimseUnavailable):
        return Unavailable(f"PACS unavailable: {exc}")
    if isinstance(exc, DimseFailure):
        return Unavailable(f"PACS C-FIND failed: {exc}")
    return exc


def _number(ds: Dataset) -> float:
    """A series' Series Number, 0 when it has none or an unreadable one (the viewer orders them so)."""
    try:
        return float(ds.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        return 0.0


def _stored(instance: SeriesInstance) -> StoredInstance:
    # From memory: an instance the cache could not write, or one just written that the fill still holds.
    body = BytesBody(instance.data) if instance.data is not None else FileBody(instance.path, instance.size)
    return StoredInstance(
        study_uid=instance.study_uid,
        series_uid=instance.series_uid,
        sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_instance_uid,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        body=body,
    )


def _received(study_uid: str, series_uid: str, item: ReceivedInstance) -> StoredInstance:
    return StoredInstance(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_class_uid=item.sop_class_uid,
        sop_instance_uid=item.sop_instance_uid,
        transfer_syntax_uid=item.transfer_syntax_uid,
        body=BytesBody(item.data),
    )
