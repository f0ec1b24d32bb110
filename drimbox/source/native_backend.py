"""The Native profile's DICOMweb backend: QIDO from the archive's index, WADO straight from its files."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from io import BytesIO

import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from drimbox.archive.archive import Archive
from drimbox.archive.errors import ArchiveError, QueryError
from drimbox.archive.index import InstanceFile
from drimbox.archive.query import Level, Match
from drimbox.dicomweb.backend import FileBody, NotFound, QidoQuery, QueryLevel, StoredInstance
from drimbox.dicomweb.json_model import metadata_from_instances
from drimbox.dicomweb.params import BadRequest
from drimbox.dicomweb.stow import Stored, StoreRefused

_METADATA_SERIES = 256
_LEVELS: dict[QueryLevel, Level] = {
    QueryLevel.STUDY: "study",
    QueryLevel.SERIES: "series",
    QueryLevel.IMAGE: "instance",
}


def _dataset(match: Match) -> Dataset:
    ds = Dataset()
    for keyword, value in match.items():
        if value is None or value == "":
            continue
        try:
            if isinstance(value, list) and value and isinstance(value[0], dict):
                items = []
                for entry in value:
                    item = Dataset()
                    for k, v in entry.items():
                        setattr(item, k, v)
                    items.append(item)
                setattr(ds, keyword, items)
                continue
            setattr(ds, keyword, value)
        except (TypeError, ValueError):
            continue  # a value the dictionary VR refuses is left out rather than failing the search
    return ds


class NativeBackend:
    """Serves DICOMweb from the box's own archive (files + SQLite index)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        # Series metadata JSON, most recently used last: viewers ask /metadata again and again.
        self._metadata: OrderedDict[tuple[str, str, str], tuple[int, bytes]] = OrderedDict()

    async def search(self, query: QidoQuery) -> AsyncIterator[Dataset]:
        filters = {m.keyword: m.value for m in query.matches}
        includes = None if query.include_all else [m for m in (_keyword(t) for t in query.return_tags) if m]
        try:
            found = await self.archive.search(
                _LEVELS[query.level], filters, includes, limit=query.limit + 1, offset=query.offset
            )
        except QueryError as exc:
            raise BadRequest(str(exc)) from None
        for match in found:
            yield _dataset(match)

    async def iter_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        files = await self.archive.iter_instance_paths(study_uid, series_uid, sop_uid)
        if not files:
            raise NotFound("no such resource in the archive")
        for f in files:
            yield _stored(f)

    async def holds(self, study_uid: str, series_uid: str | None = None) -> bool:
        """Whether the series' (else the study's) metadata is computed already: a Cache-Control: only-if-cached
        request then gets it at once, and else a 504 rather than every file of the study parsed first."""
        files = await self.archive.iter_instance_paths(study_uid, series_uid, None)
        by_series: dict[str, list[InstanceFile]] = {}
        for f in files:
            by_series.setdefault(f.series_uid, []).append(f)
        ready = {(study, series): fingerprint for (study, series, _), (fingerprint, _) in self._metadata.items()}
        return bool(by_series) and all(
            ready.get((study_uid, series)) == hash(tuple((f.sop_uid, f.size) for f in members))
            for series, members in by_series.items()
        )

    async def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, base: str
    ) -> AsyncIterator[bytes]:
        files = await self.archive.iter_instance_paths(study_uid, series_uid, sop_uid)
        if not files:
            raise NotFound("no such resource in the archive")
        if sop_uid is not None:
            async for item in metadata_from_instances(_iter_stored(files), base):
                yield item
            return
        by_series: dict[str, list[InstanceFile]] = {}
        for f in files:
            by_series.setdefault(f.series_uid, []).append(f)
        for series, members in by_series.items():
            # The series' content (which instances, which sizes) keys its cached JSON: a store into the
            # series changes the key, so a stale answer is never served.
            key = (study_uid, series, base)
            fingerprint = hash(tuple((f.sop_uid, f.size) for f in members))
            cached = self._metadata.get(key)
            if cached is not None and cached[0] == fingerprint:
                self._metadata.move_to_end(key)
                yield cached[1]
                continue
            blob = b",".join([item async for item in metadata_from_instances(_iter_stored(members), base)])
            self._metadata[key] = (fingerprint, blob)
            if len(self._metadata) > _METADATA_SERIES:
                self._metadata.popitem(last=False)
            yield blob

    async def stow(self, data: bytes) -> Stored:
        """STOW-RS: one Part-10 instance, durably archived before the receipt names it."""
        try:
            header = await asyncio.to_thread(
                pydicom.dcmread, BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
            )
        except Exception as exc:  # pydicom raises many kinds on garbage
            raise StoreRefused(f"not a DICOM Part-10 instance: {exc.__class__.__name__}", 0xC000) from None
        sop_class = str(header.get("SOPClassUID", ""))
        sop_uid = str(header.get("SOPInstanceUID", ""))
        try:
            stored = await self.archive.astore_part10(data, source_ae="STOW-RS")
        except ArchiveError as exc:
            raise StoreRefused(str(exc), exc.status, sop_class, sop_uid) from None
        return Stored(stored.study_uid, stored.series_uid, sop_class, stored.sop_uid)

    async def invalidate_study(self, study_uid: str) -> None:
        """Nothing cached beyond the archive itself."""


def _stored(f: InstanceFile) -> StoredInstance:
    return StoredInstance(
        study_uid=f.study_uid,
        series_uid=f.series_uid,
        sop_class_uid=f.sop_class_uid,
        sop_instance_uid=f.sop_uid,
        transfer_syntax_uid=f.transfer_syntax_uid,
        # No size: a concurrent re-store of the instance may replace the file between index and read.
        body=FileBody(f.path, None),
    )


async def _iter_stored(files: list[InstanceFile]) -> AsyncIterator[StoredInstance]:
    for f in files:
        yield _stored(f)


def _keyword(tag: int) -> str:
    return keyword_for_tag(tag)
