"""The consumer's DICOMweb backend (/conso/dicom-web): each study served from the cache or its source box."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web
from pydicom.dataset import Dataset

from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import RecentAccesses, audit_request
from drimbox.consumer.auth import ConsumerAuth, ProfessionalLike
from drimbox.consumer.exams import SOP_CLASS_MODALITY
from drimbox.consumer.retrieval import KOS_HEADER, NotWhitelisted, RetrievedInstance, SourceRefused, SourceRetriever
from drimbox.dicomweb.backend import FileBody, NotFound, QidoQuery, QueryLevel, StoredInstance
from drimbox.dicomweb.json_model import metadata_from_instances
from drimbox.manifest import KosError, KosSeries, KosSummary, parse_kos
from drimbox.state.series_cache import CachedInstance, SeriesCache

log = logging.getLogger(__name__)

# The query parameter a browser page (the viewer) uses to name the entitling KOS when it cannot set a header.
KOS_PARAM = "kos"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# An entitlement checked once (store, DMP) is trusted this long for the same professional and KOS.
GRANT_TTL = 300.0
_KOS_CACHE = 256
# Fetch the next series of a study while one streams. Off: on loopback (2 cores, perf/consumer_retrieve.py) it
# gained nothing and cost CPU contention; worth measuring again between real centres, where latency dominates.
READ_AHEAD = False
_STUDY, _SERIES, _SOP = 0x0020000D, 0x0020000E, 0x00080018


class ManifestSource(Protocol):
    """Where KOS bytes are found by KOS UID (consumer.store.ConsumerStore fits)."""

    async def manifest(self, kos_uid: str) -> tuple[str, bytes] | None: ...


@dataclass(frozen=True)
class Grant:
    """What one /conso/dicom-web request may use: the entitling KOS and the professional's access token."""

    professional_id: str
    kos_uid: str
    access_token: str


_GRANT: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("drimbox_consumer_grant", default=None)


class ConsumerBackend:
    """DicomwebBackend of the consumer: instances stream source → cache file → viewer, one fill per series.

    Who may see what: a request needs a logged-in professional (their PSC access token goes to the source)
    and a KOS that entitles the study: named by the request (`KOS-SOPInstanceUID` header or `?kos=`), or the
    exam the professional opened (`open`). A series already cached is served without asking the source
    again: the box trusts its own entitlement check (the DMP listed the KOS for a logged-in professional,
    and `check_exam` may ask the DMP again), as any caching DRIMbox must.
    """

    def __init__(
        self, manifests: ManifestSource, cache: SeriesCache, retriever: SourceRetriever, *,
        check_exam: Callable[[ProfessionalLike, str], Awaitable[object]] | None = None,
    ) -> None:
        self.manifests = manifests
        self.cache = cache
        self.retriever = retriever
        # (professional, KOS UID) → raises when that professional may not open it: ExamCatalog.exam fits.
        self.check_exam = check_exam
        self._kos: OrderedDict[str, KosSummary] = OrderedDict()
        self._opened: dict[tuple[str, str], tuple[float, str]] = {}  # (pro, study) → (until, kos_uid)
        self._prefetching: set[asyncio.Task[None]] = set()
        self._recent = RecentAccesses()

    @classmethod
    def open_in(cls, directory: Path, max_bytes: int, manifests: ManifestSource, retriever: SourceRetriever,
                **kwargs: Callable[[ProfessionalLike, str], Awaitable[object]] | None) -> ConsumerBackend:  # fmt: skip
        return cls(manifests, SeriesCache(directory, max_bytes), retriever, **kwargs)

    async def close(self) -> None:
        for task in list(self._prefetching):
            task.cancel()
        self.cache.close()
        await self.retriever.close()

    # --- entitlement ------------------------------------------------------------------------------------

    async def kos(self, kos_uid: str) -> KosSummary:
        """The parsed KOS the consumer store holds (NotFound when the exam list never fetched it)."""
        cached = self._kos.get(kos_uid)
        if cached is not None:
            self._kos.move_to_end(kos_uid)
            return cached
        found = await self.manifests.manifest(kos_uid)
        if found is None:
            raise NotFound("this box has not listed this exam's manifest: open the patient's exam list first")
        try:
            kos = await asyncio.to_thread(parse_kos, found[1])
        except KosError:
            raise NotFound("this exam's manifest cannot be read") from None
        self._kos[kos_uid] = kos
        while len(self._kos) > _KOS_CACHE:
            self._kos.popitem(last=False)
        return kos

    async def open(self, pro: ProfessionalLike, kos_uid: str) -> KosSummary:
        """The professional opens an exam: check it (once per GRANT_TTL) and remember its study → KOS."""
        kos = await self.kos(kos_uid)
        key = (pro.id, kos.study_uid)
        known = self._opened.get(key)
        if known is None or known[1] != kos_uid or known[0] < time.monotonic():
            if self.check_exam is not None:
                await self.check_exam(pro, kos_uid)
            self._opened[key] = (time.monotonic() + GRANT_TTL, kos_uid)
        return kos

    def forget_grants(self) -> None:
        """Every opened exam is checked again on its next request (an access rule changed, e.g. an opposition)."""
        self._opened.clear()

    def opened(self, professional_id: str, study_uid: str) -> str | None:
        """The KOS through which this professional opened the study, if any (`open` re-checks it when stale)."""
        known = self._opened.get((professional_id, study_uid))
        return known[1] if known is not None else None

    def protect(self, routes: list[web.RouteDef], auth: ConsumerAuth) -> list[web.RouteDef]:
        """The DICOMweb routes, each needing a login and an entitling KOS; source refusals become JSON."""

        def wrap(handler: Handler) -> Handler:
            async def entitled(request: web.Request) -> web.StreamResponse:
                try:
                    grant = await self._grant(request, auth)
                except _Refusal as exc:
                    pro = await auth.current_professional(request)
                    await audit_request(request, "consumer.retrieve", REFUSED, professional=pro.id if pro else None,
                                        study=request.match_info.get("study"), status=exc.status, reason=exc.reason)
                    return exc.response()
                series = request.match_info.get("series")
                if self._recent.first((grant.professional_id, grant.kos_uid, series)):  # once per series, not frame
                    kos = self._kos.get(grant.kos_uid)
                    await audit_request(request, "consumer.retrieve", SUCCESS, professional=grant.professional_id,
                                        patient=kos.patient_id if kos else None, kos=grant.kos_uid,
                                        patient_name=kos.patient_name if kos else None,
                                        study=request.match_info.get("study"), series=series)  # fmt: skip
                token = _GRANT.set(grant)
                try:
                    response: web.StreamResponse = await handler(request)
                    return response
                except SourceRefused as exc:
                    return _json(exc.status, "source_refused", str(exc), source_status=exc.status,
                                 source_reason=exc.reason, source=exc.body)  # fmt: skip
                except NotWhitelisted as exc:
                    return _json(exc.status, exc.reason, str(exc))
                finally:
                    _GRANT.reset(token)

            return entitled

        return [r if r.method == "OPTIONS" else web.RouteDef(r.method, r.path, wrap(r.handler), r.kwargs)
                for r in routes]  # fmt: skip

    async def _grant(self, request: web.Request, auth: ConsumerAuth) -> Grant:
        pro = await auth.current_professional(request)
        token = await auth.access_token(request) if pro is not None else None
        if pro is None or not token:
            raise _Refusal(401, "login_required", "log in with Pro Santé Connect first",
                           login_url=auth.login_url(request.path_qs))  # fmt: skip
        kos_uid = request.headers.get(KOS_HEADER) or request.query.get(KOS_PARAM) or ""
        study = request.match_info.get("study")
        try:
            if kos_uid:
                kos = await self.open(pro, kos_uid)
                if study is not None and study != kos.study_uid:
                    raise _Refusal(403, "kos_not_for_study", "this exam's manifest does not reference this study")
            elif study is not None:
                kos_uid = self.opened(pro.id, study) or ""
                if kos_uid:
                    await self.open(pro, kos_uid)  # checked again with the DMP once its GRANT_TTL has passed
            if not kos_uid:
                raise _Refusal(403, "kos_required", f"open the exam first, or send {KOS_HEADER}")
        except NotFound as exc:
            raise _Refusal(404, "exam_unknown", str(exc)) from None
        except _Refusal:
            raise
        except Exception as exc:  # the check_exam hook's refusal (e.g. the DMP no longer lists the KOS)
            status = getattr(exc, "status", 403)
            raise _Refusal(status if isinstance(status, int) else 403, "exam_refused", str(exc)) from None
        return Grant(pro.id, kos_uid, token)

    # --- DicomwebBackend --------------------------------------------------------------------------------

    async def _granted(self) -> tuple[Grant, KosSummary]:
        grant = _GRANT.get()
        if grant is None:
            raise NotFound("no exam is open in this request")
        return grant, await self.kos(grant.kos_uid)

    async def search(self, query: QidoQuery) -> AsyncIterator[Dataset]:
        """QIDO answered from the KOS itself (UIDs, counts): the source is not asked, nothing else matches."""
        _, kos = await self._granted()
        wanted = {tag: (query.value(tag) or "").split("\\") for tag in (_STUDY, _SERIES, _SOP)}
        if wanted[_STUDY] != [""] and kos.study_uid not in wanted[_STUDY]:
            return
        found: list[Dataset] = []
        if query.level is QueryLevel.STUDY:
            found.append(_study_ds(kos))
        for series in kos.series:
            if wanted[_SERIES] != [""] and series.series_uid not in wanted[_SERIES]:
                continue
            if query.level is QueryLevel.SERIES:
                found.append(_series_ds(kos, series))
            elif query.level is QueryLevel.IMAGE:
                for n, instance in enumerate(series.instances, 1):
                    if wanted[_SOP] == [""] or instance.sop_instance_uid in wanted[_SOP]:
                        found.append(_image_ds(kos, series, instance.sop_class_uid, instance.sop_instance_uid, n))
        for ds in found[query.offset:]:
            yield ds

    def _source(self, grant: Grant, url: str) -> Callable[[], AsyncIterator[RetrievedInstance]]:
        def source() -> AsyncIterator[RetrievedInstance]:
            return self.retriever.iter_series(url, access_token=grant.access_token, kos_uid=grant.kos_uid)

        return source

    def _series(self, kos: KosSummary, series_uid: str | None) -> list[KosSeries]:
        chosen = [s for s in kos.series if series_uid is None or s.series_uid == series_uid]
        if not chosen:
            raise NotFound("this exam's manifest does not reference this series")
        return chosen

    async def series_instances(
        self, grant: Grant, kos: KosSummary, series: KosSeries, *, keep: bool = False
    ) -> AsyncIterator[CachedInstance]:
        """One series of the exam, from the cache or fetched from its source with the grant's token."""
        if not series.retrieve_url:
            raise NotFound("the manifest gives no Retrieve URL for this series")
        source = self._source(grant, series.retrieve_url)
        async for instance in self.cache.series(kos.study_uid, series.series_uid, source, keep=keep):
            yield instance

    async def iter_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        grant, kos = await self._granted()
        if study_uid != kos.study_uid:
            raise NotFound("this exam's manifest does not reference this study")
        found = False
        chosen = [s for s in self._series(kos, series_uid)
                  if sop_uid is None or any(i.sop_instance_uid == sop_uid for i in s.instances)]  # fmt: skip
        ahead: asyncio.Task[None] | None = None
        try:
            for n, series in enumerate(chosen):
                if READ_AHEAD and sop_uid is None and n + 1 < len(chosen):
                    # The next series starts arriving while this one streams: the source's PACS retrieve and the
                    # WAN round trips of one series overlap the other's transfer (one series ahead, on disk).
                    ahead = asyncio.create_task(self._drain(grant, kos, chosen[n + 1]))
                # One instance wanted (a viewer's first image, a thumbnail): the series fill goes on after it is
                # found, since the rest of the series is what the viewer asks for next.
                async for instance in self.series_instances(grant, kos, series, keep=sop_uid is not None):
                    if sop_uid is not None and instance.sop_instance_uid != sop_uid:
                        continue
                    found = True
                    yield _stored(instance)
                    if sop_uid is not None:
                        return
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()  # the client left: nothing more is fetched for it
        if not found:
            raise NotFound("no such instance in this exam")

    async def _drain(self, grant: Grant, kos: KosSummary, series: KosSeries) -> None:
        try:
            async for _ in self.series_instances(grant, kos, series):
                pass
        except Exception:
            pass  # the reader that follows sees the same error from the shared fill

    async def holds(self, study_uid: str, series_uid: str | None = None) -> bool:
        """Whether the exam's series (or this one) are complete in the cache: served without the source box."""
        _, kos = await self._granted()
        if study_uid != kos.study_uid:
            return False
        chosen = [s for s in kos.series if series_uid is None or s.series_uid == series_uid]
        for series in chosen:
            if await self.cache.cached(study_uid, series.series_uid) is None:
                return False
        return bool(chosen)

    async def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, base: str
    ) -> AsyncIterator[bytes]:
        _, kos = await self._granted()
        if sop_uid is not None:
            async for item in metadata_from_instances(self.iter_instances(study_uid, series_uid, sop_uid), base):
                yield item
            return
        if study_uid != kos.study_uid:
            raise NotFound("this exam's manifest does not reference this study")
        for series in self._series(kos, series_uid):
            cached = await self.cache.metadata(study_uid, series.series_uid, base)
            if cached is None:
                instances = self.iter_instances(study_uid, series.series_uid)
                cached = b",".join([item async for item in metadata_from_instances(instances, base)])
                # Computed once per series: kept with the cached series (dropped with it on eviction).
                await self.cache.store_metadata(study_uid, series.series_uid, base, cached)
            yield cached

    # --- prefetch (consumer.prefetch) ----------------------------------------------------------------------

    def prefetch(self, professional_id: str, access_token: str, kos_uids: list[str], concurrency: int = 2) -> None:
        """Fill the cache with these exams in the background (errors only logged: prefetch is best effort)."""
        slots = asyncio.Semaphore(concurrency)

        async def one(kos_uid: str) -> None:
            async with slots:
                try:
                    kos = await self.kos(kos_uid)
                    grant = Grant(professional_id, kos_uid, access_token)
                    for series in kos.series:
                        async for _ in self.series_instances(grant, kos, series):
                            pass
                except Exception as exc:
                    log.info("prefetch of exam %s stopped: %s", kos_uid, type(exc).__name__)

        for kos_uid in kos_uids:
            task = asyncio.create_task(one(kos_uid), name=f"prefetch-{kos_uid}")
            self._prefetching.add(task)
            task.add_done_callback(self._prefetching.discard)


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.extra = status, reason, extra

    def response(self) -> web.Response:
        return _json(self.status, self.reason, str(self), **self.extra)


def _json(status: int, reason: str, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, "reason": reason, "status": status, **extra}, status=status,
                             headers={"Cache-Control": "no-store"})  # fmt: skip


def _study_ds(kos: KosSummary) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = kos.study_uid
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = kos.study_date, kos.study_time, kos.accession_number
    ds.StudyDescription = kos.study_description
    modalities = sorted({SOP_CLASS_MODALITY.get(i.sop_class_uid, "OT") for s in kos.series for i in s.instances})
    ds.ModalitiesInStudy = modalities
    ds.NumberOfStudyRelatedSeries = len(kos.series)
    ds.NumberOfStudyRelatedInstances = sum(len(s.instances) for s in kos.series)
    return ds


def _series_ds(kos: KosSummary, series: KosSeries) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = kos.study_uid, series.series_uid
    kinds = {SOP_CLASS_MODALITY.get(i.sop_class_uid, "OT") for i in series.instances}
    ds.Modality = kinds.pop() if len(kinds) == 1 else "OT"
    ds.NumberOfSeriesRelatedInstances = len(series.instances)
    return ds


def _image_ds(kos: KosSummary, series: KosSeries, sop_class: str, sop_uid: str, number: int) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = kos.study_uid, series.series_uid
    ds.SOPClassUID, ds.SOPInstanceUID, ds.InstanceNumber = sop_class, sop_uid, number
    return ds


def _stored(instance: CachedInstance) -> StoredInstance:
    return StoredInstance(
        study_uid=instance.study_uid, series_uid=instance.series_uid, sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_instance_uid, transfer_syntax_uid=instance.transfer_syntax_uid,
        body=FileBody(Path(instance.path), instance.size),
    )
