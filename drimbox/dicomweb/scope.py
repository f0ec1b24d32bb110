"""What one request may see of a study (the series and instances a KOS references), enforced around any backend."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from drimbox.dicomweb.backend import (
    DicomwebBackend,
    DicomwebError,
    IncompleteRetrieve,
    NotFound,
    QidoQuery,
    QueryLevel,
    StoredInstance,
)
from drimbox.dicomweb.wado import aclose

_STUDY_TAG = 0x0020000D
# A scoped QIDO reads past what it hides: the backend is asked for this many rows, the offset applied after.
_SCAN_LIMIT = 100_000
_SOP_KEY = "00080018"


@dataclass(frozen=True)
class Scope:
    """One study, and within it only these series, each with only these instances."""

    study: str
    series: Mapping[str, frozenset[str]]

    def series_to_read(self, study: str, series: str | None, sop: str | None) -> list[str]:
        """The series a request for this resource reads, in a stable order; NotFound for anything outside."""
        if study != self.study:
            raise NotFound("no such study here")
        if series is None:
            if sop is not None:
                raise NotFound("no such instance here")
            return sorted(self.series)
        allowed = self.series.get(series)
        if allowed is None or (sop is not None and sop not in allowed):
            raise NotFound("no such resource here")
        return [series]

    def admits(self, ds: Dataset, level: QueryLevel) -> bool:
        """Whether a QIDO answer row is inside the scope (a row that does not say where it belongs is not)."""
        if str(ds.get("StudyInstanceUID", self.study)) != self.study:
            return False
        if level is QueryLevel.STUDY:
            return True
        series = str(ds.get("SeriesInstanceUID", ""))
        if series not in self.series:
            return False
        return level is QueryLevel.SERIES or str(ds.get("SOPInstanceUID", "")) in self.series[series]


class _Unscoped:
    """The value of a request that no access layer has looked at (a wiring error: nothing is served)."""


UNSCOPED = _Unscoped()
# Set by the access layer for the request being served: a Scope, or None for full access (the operator).
_CURRENT: ContextVar[Scope | _Unscoped | None] = ContextVar("drimbox_dicomweb_scope", default=UNSCOPED)


@contextmanager
def serving(scope: Scope | None) -> Iterator[None]:
    """Within this block (and the tasks it starts), a ScopedBackend shows `scope` only; None shows everything."""
    token = _CURRENT.set(scope)
    try:
        yield
    finally:
        _CURRENT.reset(token)


class ScopedBackend:
    """A DicomwebBackend that filters another by the current request's Scope: every answer, whatever the route.

    QIDO rows, metadata items and retrieved instances outside the scope are dropped; naming a series or instance
    outside it is a 404. A study or series is read series by series, so a Proxy never retrieves what it hides.
    """

    def __init__(self, inner: DicomwebBackend) -> None:
        self.inner = inner

    @staticmethod
    def _scope() -> Scope | None:
        scope = _CURRENT.get()
        if isinstance(scope, _Unscoped):
            raise DicomwebError("this request was not checked by the access layer")
        return scope

    def admits(self, study_uid: str, series_uid: str | None, sop_uid: str | None) -> None:
        """NotFound when this request may not see the resource: what a 304 checks without reading anything."""
        scope = self._scope()
        if scope is not None:
            scope.series_to_read(study_uid, series_uid, sop_uid)

    def search(self, query: QidoQuery) -> AsyncIterator[Dataset]:
        scope = self._scope()
        return self.inner.search(query) if scope is None else self._search(scope, query)

    async def _search(self, scope: Scope, query: QidoQuery) -> AsyncIterator[Dataset]:
        study = query.value(_STUDY_TAG)
        if study is not None and study != scope.study:
            return
        skip = query.offset
        source = self.inner.search(dataclasses.replace(query, offset=0, limit=_SCAN_LIMIT))
        try:
            async for ds in source:
                if not scope.admits(ds, query.level):
                    continue
                if skip:
                    skip -= 1
                    continue
                if query.level is QueryLevel.SERIES and "NumberOfSeriesRelatedInstances" in ds:
                    # The PACS counts every instance of the series: the count must not betray those hidden.
                    allowed = len(scope.series[str(ds.SeriesInstanceUID)])
                    ds.NumberOfSeriesRelatedInstances = min(int(ds.NumberOfSeriesRelatedInstances or 0), allowed)
                yield ds
        finally:
            await aclose(source)

    def iter_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        scope = self._scope()
        if scope is None:
            return self.inner.iter_instances(study_uid, series_uid, sop_uid)
        return self._instances(scope, study_uid, series_uid, sop_uid)

    async def _instances(
        self, scope: Scope, study: str, series: str | None, sop: str | None
    ) -> AsyncIterator[StoredInstance]:
        yielded, completed, failed = 0, 0, 0
        for uid in scope.series_to_read(study, series, sop):
            allowed = scope.series[uid]
            source = self.inner.iter_instances(study, uid, sop)
            try:
                async for instance in source:
                    if instance.series_uid == uid and instance.sop_instance_uid in allowed:
                        yielded += 1
                        yield instance
            except NotFound:
                continue  # a series of the KOS no longer in the PACS: the others are still served
            except IncompleteRetrieve as exc:
                completed, failed = completed + exc.completed, failed + exc.failed
            finally:
                await aclose(source)
        if failed:
            raise IncompleteRetrieve(f"{failed} instance(s) could not be retrieved", completed=completed, failed=failed)
        if not yielded:
            raise NotFound("no such resource here")

    def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, base: str
    ) -> AsyncIterator[bytes]:
        scope = self._scope()
        if scope is None:
            return self.inner.metadata(study_uid, series_uid, sop_uid, base=base)
        return self._metadata(scope, study_uid, series_uid, sop_uid, base)

    async def _metadata(
        self, scope: Scope, study: str, series: str | None, sop: str | None, base: str
    ) -> AsyncIterator[bytes]:
        yielded, completed, failed = 0, 0, 0
        for uid in scope.series_to_read(study, series, sop):
            source = self.inner.metadata(study, uid, sop, base=base)
            try:
                async for blob in source:
                    kept = await asyncio.to_thread(_only, blob, scope.series[uid])
                    if kept:
                        yielded += 1
                        yield kept
            except NotFound:
                continue
            except IncompleteRetrieve as exc:
                completed, failed = completed + exc.completed, failed + exc.failed
            finally:
                await aclose(source)
        if failed:
            raise IncompleteRetrieve(f"{failed} instance(s) could not be read", completed=completed, failed=failed)
        if not yielded:
            raise NotFound("no such resource here")

    async def holds(self, study_uid: str, series_uid: str | None = None) -> bool:
        scope = self._scope()
        holds = getattr(self.inner, "holds", None)
        if holds is None:
            return True
        if scope is None:
            return bool(await holds(study_uid, series_uid))
        try:
            series = scope.series_to_read(study_uid, series_uid, None)
        except NotFound:
            return True  # answered at once: the metadata request then says 404
        for uid in series:
            if not await holds(study_uid, uid):
                return False
        return True


# The SOP Instance UID as json_model encodes it (compact, a UID's characters only).
_SOP_VALUE = re.compile(rb'"00080018":\{"vr":"UI","Value":\["([0-9.]*)"\]\}')


def _only(blob: bytes, allowed: frozenset[str]) -> bytes:
    """A metadata blob (DICOM JSON objects joined by commas) with only the allowed instances, b"" when none."""
    # Usually every instance is allowed (the KOS names the whole series): seen from the SOP Instance UIDs alone,
    # without decoding the blob (3.8 MB of JSON for 1300 slices: ~60 ms at each opening of the viewer). Every
    # "00080018" in the blob must be one that reads as allowed (also any in a nested item); else decoded and cut.
    found = _SOP_VALUE.findall(blob)
    if found and len(found) == blob.count(b'"00080018"') and all(uid.decode("ascii") in allowed for uid in found):
        return blob
    items: list[Any] = json.loads(b"[" + blob + b"]")
    kept = [item for item in items if _sop(item) in allowed]
    if len(kept) == len(items):
        return blob
    return b",".join(json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() for item in kept)


def _sop(item: Any) -> str:
    try:
        return str(item[_SOP_KEY]["Value"][0])
    except (KeyError, IndexError, TypeError):
        return ""
