"""The consumer's DICOMweb backend (/conso/dicom-web): each study served from the cache or its source box."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web
from pydicom.dataset import Dataset

from drimbox.audit.events import REFUSED, SUCCESS, AuditSink
from drimbox.audit.request import RecentAccesses, audit_request
from drimbox.consumer.auth import ConsumerAuth, ProfessionalLike
from drimbox.consumer.evidence import SeriesEvidence, dropped_event, only_referenced, origin_of
from drimbox.consumer.kos_qido import kos_matches
from drimbox.consumer.kos_read import read_kos
from drimbox.consumer.retrieval import (
    KOS_HEADER,
    STREAM_FROM,
    NotWhitelisted,
    RetrievedInstance,
    SourceRefused,
    SourceRetriever,
    StreamedInstance,
)
from drimbox.dicomweb.backend import BytesBody, ChunkBody, FileBody, NotFound, QidoQuery, StoredInstance
from drimbox.dicomweb.json_model import metadata_from_instances
from drimbox.manifest import KosError, KosSeries, KosSummary
from drimbox.state.series_cache import CachedInstance, SeriesCache
from drimbox.state.series_fill import follow

log = logging.getLogger(__name__)

# The query parameter a browser page (the viewer) uses to name the entitling KOS when it cannot set a header.
KOS_PARAM = "kos"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# An entitlement checked once (store, DMP) is trusted this long for the same professional and KOS.
GRANT_TTL = 300.0
# How long a professional's opened exam is shared between the box's processes (then the viewer names it again).
OPENED_KEPT = 24 * 3600.0
_KOS_CACHE = 256
# Fetch the next series of a study while one streams. Off: on loopback (2 cores, perf/consumer_retrieve.py) it
# gained nothing and cost CPU contention; worth measuring again between real centres, where latency dominates.
READ_AHEAD = False


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
# Called before the first answer of a request leaves (audit: success only once something is actually served).
_SERVING: contextvars.ContextVar[Callable[[], Awaitable[None]] | None] = contextvars.ContextVar(
    "drimbox_consumer_serving", default=None
)


class ConsumerBackend:
    """DicomwebBackend of the consumer: instances stream source → cache file → viewer, one fill per series.

    Who may see what: a request needs a logged-in professional (their PSC access token goes to the source)
    and a KOS that entitles the study: named by the request (`KOS-SOPInstanceUID` header or `?kos=`), or the
    exam the professional opened (`open`). A series already cached is served without asking the source
    again: the box trusts its own entitlement check (the DMP listed the KOS for a logged-in professional,
    and `check_exam` may ask the DMP again), as any caching DRIMbox must.

    What a KOS gets is its own evidence only: a series is cached per KOS and Retrieve URL (another KOS claiming
    the same UIDs, from another box or the same one, has its own copy and its own check by the source), an
    instance is kept only when the KOS references it and it says so itself (study, series, SOP Instance UID,
    patient), and what is served is what the KOS references.
    """

    def __init__(
        self,
        manifests: ManifestSource,
        cache: SeriesCache,
        retriever: SourceRetriever,
        *,
        check_exam: Callable[[ProfessionalLike, str], Awaitable[object]] | None = None,
        audit: Callable[[], AuditSink | None] | None = None,
        epoch: Path | None = None,
    ) -> None:
        self.manifests = manifests
        self.cache = cache
        self.retriever = retriever
        # (professional, KOS UID) → raises when that professional may not open it: ExamCatalog.exam fits.
        self.check_exam = check_exam
        # Where instances dropped during a fill (no request at hand) are recorded: app[AUDIT] at that moment.
        self.audit = audit
        self._kos: OrderedDict[str, KosSummary] = OrderedDict()
        self._patients: dict[str, frozenset[str]] = {}  # KOS UID → its patient's identifiers
        # (pro, study) → (until, kos_uid, epoch): per process; the epoch file voids it in every process at once.
        self._opened: dict[tuple[str, str], tuple[float, str, tuple[int, int]]] = {}
        self._epoch = _Epoch(epoch)
        self._prefetching: set[asyncio.Task[None]] = set()
        self._recent = RecentAccesses()

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
            kos, patients = await read_kos(found[1])  # read once by the exam list already, as a rule
        except KosError:
            raise NotFound("this exam's manifest cannot be read") from None
        self._kos[kos_uid], self._patients[kos_uid] = kos, patients
        while len(self._kos) > _KOS_CACHE:
            self._patients.pop(self._kos.popitem(last=False)[0], None)
        return kos

    async def open(self, pro: ProfessionalLike, kos_uid: str) -> KosSummary:
        """The professional opens an exam: check it (once per GRANT_TTL) and remember its study → KOS."""
        kos = await self.kos(kos_uid)
        key = (pro.id, kos.study_uid)
        known = self._opened.get(key)
        epoch = self._epoch.now()
        if known is None or known[1] != kos_uid or known[0] < time.monotonic() or known[2] != epoch:
            if self.check_exam is not None:
                await self.check_exam(pro, kos_uid)
            self._opened[key] = (time.monotonic() + GRANT_TTL, kos_uid, epoch)
            self._epoch.remember(key, kos_uid, epoch)
        return kos

    def forget_grants(self) -> None:
        """Every opened exam is checked again on its next request (an access rule changed, e.g. an opposition),
        in every process of the box ([http] workers): the epoch file changes."""
        self._opened.clear()
        self._epoch.bump()

    def opened(self, professional_id: str, study_uid: str) -> str | None:
        """The KOS through which this professional opened the study, if any (`open` re-checks it when stale)."""
        known = self._opened.get((professional_id, study_uid))
        if known is not None:
            return known[1]
        # Opened through another process of the box ([http] workers)? `open` checks it again in this one.
        return self._epoch.recall((professional_id, study_uid))

    def protect(self, routes: list[web.RouteDef], auth: ConsumerAuth) -> list[web.RouteDef]:
        """The DICOMweb routes, each needing a login and an entitling KOS; source refusals become JSON."""

        def wrap(handler: Handler) -> Handler:
            async def entitled(request: web.Request) -> web.StreamResponse:
                try:
                    grant = await self._grant(request, auth)
                except _Refusal as exc:
                    pro = await auth.current_professional(request)
                    await audit_request(
                        request,
                        "consumer.retrieve",
                        REFUSED,
                        professional=pro.id if pro else None,
                        study=request.match_info.get("study"),
                        status=exc.status,
                        reason=exc.reason,
                    )
                    return exc.response()
                series = request.match_info.get("series")
                kos = await self.kos(grant.kos_uid)

                async def record(outcome: str, **detail: str | int | None) -> None:
                    await audit_request(request, "consumer.retrieve", outcome, professional=grant.professional_id,
                                        patient=kos.patient_id or None, kos=grant.kos_uid,
                                        patient_name=kos.patient_name or None, study=request.match_info.get("study"),
                                        series=series, **detail)  # fmt: skip

                # Refused at once when the whitelist does not list a source this request may reach; success is written
                # only when something is served (before its first byte): a source that refuses or redirects is no
                # success.
                unlisted = await self._unlisted_source(kos, series)
                if unlisted is not None:
                    await record(REFUSED, status=unlisted.status, reason=unlisted.reason)
                    return _json(unlisted.status, unlisted.reason, str(unlisted))
                recorded = False

                async def serving() -> None:
                    nonlocal recorded
                    if not recorded:
                        recorded = True
                        if self._recent.first((grant.professional_id, grant.kos_uid, series)):  # per series, not frame
                            await record(SUCCESS)

                token, serving_token = _GRANT.set(grant), _SERVING.set(serving)
                try:
                    response: web.StreamResponse = await handler(request)
                    if response.status < 400:
                        await serving()  # an answer without instances (an empty search): still an access
                    return response
                except SourceRefused as exc:
                    await record(REFUSED, status=exc.status, reason="source_refused", source_reason=exc.reason)
                    return _json(exc.status, "source_refused", str(exc), source_status=exc.status,
                                 source_reason=exc.reason, source=exc.body)  # fmt: skip
                except NotWhitelisted as exc:  # refused or redirected on the way (the list changed meanwhile)
                    await record(REFUSED, status=exc.status, reason=exc.reason)
                    return _json(exc.status, exc.reason, str(exc))
                finally:
                    _GRANT.reset(token)
                    _SERVING.reset(serving_token)

            return entitled

        return [r if r.method == "OPTIONS" else web.RouteDef(r.method, r.path, wrap(r.handler), r.kwargs)
                for r in routes]  # fmt: skip

    async def _unlisted_source(self, kos: KosSummary, series_uid: str | None) -> NotWhitelisted | None:
        """The refusal when a source this request may fetch from (one series, or the whole exam) is not listed."""
        for series in kos.series:
            if series_uid not in (None, series.series_uid) or not series.retrieve_url:
                continue
            if not await self.retriever.whitelist.check(series.retrieve_url, "db"):
                host = series.retrieve_url.split("/", 3)[2] if series.retrieve_url.count("/") >= 2 else "?"
                return NotWhitelisted(f"the source {host[:80]} is not an endpoint of the ANS whitelist of DRIMboxes")
        return None

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
        found = kos_matches(kos, query)
        for ds in found[query.offset :]:
            await _serving()
            yield ds

    def _source(
        self, grant: Grant, url: str, evidence: SeriesEvidence
    ) -> Callable[[], AsyncIterator[RetrievedInstance | StreamedInstance]]:
        async def dropped(evidence: SeriesEvidence, reasons: dict[str, int]) -> None:
            await self._record_dropped(grant, url, evidence, reasons)

        def source() -> AsyncIterator[RetrievedInstance | StreamedInstance]:
            received = self.retriever.stream_series(
                url, access_token=grant.access_token, kos_uid=grant.kos_uid, stream_from=STREAM_FROM
            )
            return only_referenced(received, evidence, dropped)

        return source

    async def _record_dropped(self, grant: Grant, url: str, evidence: SeriesEvidence, reasons: dict[str, int]) -> None:
        """Audit what a source sent outside the KOS (the fill runs without a request: the sink is asked directly)."""
        sink = self.audit() if self.audit is not None else None
        if sink is None:
            return
        event = dropped_event(
            grant.professional_id, grant.kos_uid, self._kos.get(grant.kos_uid), url, evidence, reasons
        )
        try:
            await sink.record(event)
        except Exception as exc:  # the instances are dropped either way; the refusal's record is what failed
            log.error("audit trail: %s; dropped instances of series %s not recorded", exc, evidence.series_uid)

    def _evidence(self, kos: KosSummary, series: KosSeries) -> SeriesEvidence:
        return SeriesEvidence.of(kos, series, self._patients.get(kos.sop_instance_uid, frozenset()))

    def _series(self, kos: KosSummary, series_uid: str | None) -> list[KosSeries]:
        chosen = [s for s in kos.series if series_uid is None or s.series_uid == series_uid]
        if not chosen:
            raise NotFound("this exam's manifest does not reference this series")
        return chosen

    async def series_instances(
        self, grant: Grant, kos: KosSummary, series: KosSeries, *, keep: bool = False, growing: bool = False
    ) -> AsyncIterator[CachedInstance]:
        """One series of the exam, from the cache or fetched from its source with the grant's token.

        Each instance's file is complete when yielded, unless the caller takes `growing` ones: a large instance
        then comes as soon as its identity was checked, its file still being written (read it with follow()).
        """
        if not series.retrieve_url:
            raise NotFound("the manifest gives no Retrieve URL for this series")
        evidence = self._evidence(kos, series)
        source = self._source(grant, series.retrieve_url, evidence)
        origin = origin_of(series.retrieve_url, kos.sop_instance_uid)
        async for instance in self.cache.series(kos.study_uid, series.series_uid, source, keep=keep, origin=origin):
            # The copy is this KOS's own; filtered again all the same: nothing unreferenced is ever served.
            if instance.sop_instance_uid in evidence.sop_uids:
                if instance.growing is not None and not growing:
                    await instance.growing.whole()
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
        if sop_uid is not None and len(chosen) == 1 and chosen[0].retrieve_url:
            # A frame of a series already cached (the KOS references it: `chosen`): one row of the index, not the
            # whole series' (a viewer asks each of 1300 slices by instance).
            origin = origin_of(chosen[0].retrieve_url, kos.sop_instance_uid)
            hit = await self.cache.cached(study_uid, chosen[0].series_uid, origin=origin, sop_uid=sop_uid)
            if hit:
                await _serving()
                yield _stored(hit[0])
                return
        ahead: asyncio.Task[None] | None = None
        try:
            for n, series in enumerate(chosen):
                if READ_AHEAD and sop_uid is None and n + 1 < len(chosen):
                    # The next series starts arriving while this one streams: the source's PACS retrieve and the
                    # WAN round trips of one series overlap the other's transfer (one series ahead, on disk).
                    ahead = asyncio.create_task(self._drain(grant, kos, chosen[n + 1]))
                # One instance wanted (a viewer's first image, a thumbnail): the series fill goes on after it is
                # found, since the rest of the series is what the viewer asks for next.
                async for instance in self.series_instances(grant, kos, series, keep=sop_uid is not None, growing=True):
                    if sop_uid is not None and instance.sop_instance_uid != sop_uid:
                        continue
                    found = True
                    await _serving()
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
            if not series.retrieve_url:
                return False
            origin = origin_of(series.retrieve_url, kos.sop_instance_uid)
            if not await self.cache.holds(study_uid, series.series_uid, origin=origin):
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
            origin = origin_of(series.retrieve_url, kos.sop_instance_uid)  # kept with this KOS's copy of the series
            cached = await self.cache.metadata(study_uid, series.series_uid, base, origin=origin)
            if cached is None:
                instances = self.iter_instances(study_uid, series.series_uid)
                cached = b",".join([item async for item in metadata_from_instances(instances, base)])
                # Computed once per series: kept with the cached series (dropped with it on eviction).
                await self.cache.store_metadata(study_uid, series.series_uid, base, cached, origin=origin)
            await _serving()
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


class _Epoch:
    """Files the box's processes share about opened exams ([http] workers).

    The epoch file: replacing it voids the exams each process remembers as opened. Read on each request that names
    an exam (one stat(): its inode and time change at each bump), so an opposition recorded by one process closes
    the exams the others opened at once, not after GRANT_TTL. Beside it, `opened/`: which KOS each professional
    opened each study through (one small file each, written when the exam is checked), so a request naming only the
    study finds its exam whichever process opened it; older than OPENED_KEPT, they go at start.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.opened = path.with_name("opened") if path is not None else None
        if self.opened is not None:
            self._prune(self.opened)

    @staticmethod
    def _prune(directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            old = time.time() - OPENED_KEPT
            for entry in directory.iterdir():
                if entry.stat().st_mtime < old:
                    entry.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot prune %s: %s", directory, exc)

    def _file(self, key: tuple[str, str]) -> Path | None:
        if self.opened is None:
            return None
        return self.opened / hashlib.sha256("\0".join(key).encode()).hexdigest()[:40]

    def remember(self, key: tuple[str, str], kos_uid: str, epoch: tuple[int, int]) -> None:
        if (path := self._file(key)) is None:
            return
        try:
            fresh = path.with_name(f"{path.name}.{os.getpid()}")
            fresh.write_text(json.dumps({"kos": kos_uid, "epoch": list(epoch)}))
            os.replace(fresh, path)
        except OSError as exc:  # this process still knows it; another asks for the KOS once
            log.warning("cannot share an opened exam: %s", exc)

    def recall(self, key: tuple[str, str]) -> str | None:
        """The KOS another process recorded for this professional and study, unless an opposition came since."""
        if (path := self._file(key)) is None:
            return None
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(known, dict) or known.get("epoch") != list(self.now()):
            return None
        kos = known.get("kos")
        return kos if isinstance(kos, str) and kos else None

    def now(self) -> tuple[int, int]:
        if self.path is None:
            return (0, 0)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def bump(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = self.path.with_name(f"{self.path.name}.{os.getpid()}")
            fresh.write_bytes(os.urandom(8))
            os.replace(fresh, self.path)  # a new inode: never mistaken for the file a process read before
        except OSError as exc:  # this process forgot its grants; the others keep theirs up to GRANT_TTL
            log.error("cannot renew %s: %s; other processes re-check opened exams within %.0f s",
                      self.path, exc, GRANT_TTL)  # fmt: skip


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.extra = status, reason, extra

    def response(self) -> web.Response:
        return _json(self.status, self.reason, str(self), **self.extra)


def _json(status: int, reason: str, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, "reason": reason, "status": status, **extra}, status=status,
                             headers={"Cache-Control": "no-store"})  # fmt: skip


async def _serving() -> None:
    hook = _SERVING.get()
    if hook is not None:
        await hook()


def _stored(instance: CachedInstance) -> StoredInstance:
    growth = instance.growing
    body: FileBody | ChunkBody | BytesBody = FileBody(Path(instance.path), instance.size)
    if instance.data is not None:
        body = BytesBody(instance.data)  # just received, still in memory: not read back from its file
    elif growth is not None and not growth.done:
        # Sent as it is written: the viewer's first byte no longer waits for the whole of a large instance.
        body = ChunkBody(lambda: follow(instance.path, growth), instance.size)
    return StoredInstance(
        study_uid=instance.study_uid,
        series_uid=instance.series_uid,
        sop_class_uid=instance.sop_class_uid,
        sop_instance_uid=instance.sop_instance_uid,
        transfer_syntax_uid=instance.transfer_syntax_uid,
        body=body,
    )
