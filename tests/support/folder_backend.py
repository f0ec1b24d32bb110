"""A DicomwebBackend over a directory of Part-10 files indexed at start: the tests' reference backend."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from drimbox.dicomweb.backend import FileBody, NotFound, QidoQuery, QueryLevel, StoredInstance
from drimbox.dicomweb.json_model import BULK_THRESHOLD, instance_json_bytes, raw_elements
from drimbox.dicomweb.qido import SERIES_INSTANCE_UID, STUDY_INSTANCE_UID, element_matches

log = logging.getLogger(__name__)

# Attributes a study / series record holds (Patient, General Study, General Series modules, in short).
_STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDescription",
    "TimezoneOffsetFromUTC",
    "InstitutionName",
)
_SERIES_KEYWORDS = (
    "SpecificCharacterSet",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
    "Laterality",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
    "TimezoneOffsetFromUTC",
)


@dataclass
class _Instance:
    path: Path
    size: int
    header: Dataset  # read with defer_size: large values stay on disk
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    number: int
    series_number: int


@dataclass
class _Series:
    uid: str
    instances: dict[str, _Instance] = field(default_factory=dict)

    def ordered(self) -> list[_Instance]:
        return sorted(self.instances.values(), key=lambda i: (i.number, i.sop_uid))

    @property
    def number(self) -> int:
        return next(iter(self.instances.values())).series_number


@dataclass
class _Study:
    uid: str
    series: dict[str, _Series] = field(default_factory=dict)

    def ordered(self) -> list[_Series]:
        return sorted(self.series.values(), key=lambda s: (s.number, s.uid))

    def instances(self) -> list[_Instance]:
        return [i for s in self.ordered() for i in s.ordered()]


def _read_index(root: Path) -> dict[str, _Study]:
    studies: dict[str, _Study] = {}
    seen: set[str] = set()
    skipped = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, defer_size=BULK_THRESHOLD)
            ts = str(ds.file_meta.TransferSyntaxUID)
            study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            sop_class = str(ds.SOPClassUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError):
            skipped += 1
            continue
        if sop in seen:  # the same instance twice: serve one, so a response never carries a UID twice
            continue
        seen.add(sop)
        number, series_number = ds.get("InstanceNumber"), ds.get("SeriesNumber")
        entry = _Instance(
            path,
            path.stat().st_size,
            ds,
            study,
            series,
            sop,
            sop_class,
            ts,
            int(number) if number else 0,
            int(series_number) if series_number else 0,
        )
        studies.setdefault(study, _Study(study)).series.setdefault(series, _Series(series)).instances[sop] = entry
    log.info("folder backend: %d instances indexed under %s, %d files skipped", len(seen), root, skipped)
    return studies


def _copy(header: Dataset, keywords: Iterable[str] | None = None) -> Dataset:
    """The small attributes of `header` (all of them, or those named) in a new data set."""
    out = Dataset()
    if keywords is not None:
        for keyword in keywords:
            if keyword in header:
                out[keyword] = header[keyword]
        return out
    for elem in raw_elements(header):
        if isinstance(elem, RawDataElement) and elem.value is None:
            continue  # deferred: large binary, never part of a search answer
        out[elem.tag] = header[elem.tag]
    return out


def _merge(target: Dataset, source: Dataset) -> Dataset:
    for elem in source:
        if elem.tag not in target:
            target[elem.tag] = elem
    return target


class FolderBackend:
    """Serves every Part-10 file under a directory; `reindex()` after files change."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._studies: dict[str, _Study] = {}
        self._json: dict[tuple[str, str], bytes] = {}
        # pydicom converts raw elements in place on first access: one thread at a time touches the headers.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, root: Path) -> FolderBackend:
        backend = cls(root)
        await backend.reindex()
        return backend

    async def reindex(self) -> None:
        studies = await asyncio.to_thread(_read_index, self.root)
        async with self._lock:
            self._studies, self._json = studies, {}

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for st in self._studies.values() for s in st.series.values())

    def _study_record(self, study: _Study) -> Dataset:
        instances = study.instances()
        record = _copy(instances[0].header, _STUDY_KEYWORDS)
        modalities = sorted({str(i.header.get("Modality", "")) for i in instances} - {""})
        record.ModalitiesInStudy = modalities
        record.NumberOfStudyRelatedSeries = len(study.series)
        record.NumberOfStudyRelatedInstances = len(instances)
        return record

    def _series_record(self, series: _Series) -> Dataset:
        record = _copy(series.ordered()[0].header, _SERIES_KEYWORDS)
        record.NumberOfSeriesRelatedInstances = len(series.instances)
        return record

    @staticmethod
    def _matches(query: QidoQuery, record: Dataset, below: list[_Instance]) -> bool:
        """Each key on the record when it has the attribute, else on any instance below (relational)."""
        for match in query.matches:
            if match.tag in record:
                if not element_matches(match, record[match.tag].value, query.fuzzy):
                    return False
            elif not any(
                element_matches(match, i.header[match.tag].value if match.tag in i.header else None, query.fuzzy)
                for i in below
            ):
                return False
        return True

    def _search(self, query: QidoQuery) -> list[Dataset]:
        found: list[Dataset] = []
        wanted = query.offset + query.limit + 1
        skipped = 0
        # UID keys narrow the walk at once (a thumbnail asks for one series among many studies).
        study_uids = (query.value(STUDY_INSTANCE_UID) or "").split("\\")
        series_uids = set(filter(None, (query.value(SERIES_INSTANCE_UID) or "").split("\\")))
        studies = list(self._studies.values())
        if any(study_uids):
            studies = [self._studies[u] for u in study_uids if u in self._studies]
        for study in studies:
            study_record: Dataset | None = None
            all_series = study.ordered() if query.level is not QueryLevel.STUDY else [None]
            for series in [s for s in all_series if s is None or not series_uids or s.uid in series_uids]:
                candidates: list[tuple[Dataset, list[_Instance]]]
                if series is None:
                    study_record = self._study_record(study)
                    candidates = [(study_record, study.instances())]
                elif query.level is QueryLevel.SERIES:
                    study_record = study_record or self._study_record(study)
                    candidates = [(_merge(self._series_record(series), study_record), series.ordered())]
                else:
                    study_record = study_record or self._study_record(study)
                    series_record = self._series_record(series)
                    candidates = [
                        (_merge(_merge(_copy(i.header), series_record), study_record), [i]) for i in series.ordered()
                    ]
                for record, below in candidates:
                    if not self._matches(query, record, below):
                        continue
                    if skipped < query.offset:
                        skipped += 1
                        continue
                    found.append(record)
                    if len(found) >= wanted:
                        return found
        return found

    async def search(self, query: QidoQuery) -> AsyncIterator[Dataset]:
        async with self._lock:
            found = await asyncio.to_thread(self._search, query)
        for ds in found:
            yield ds

    def _select(self, study_uid: str, series_uid: str | None, sop_uid: str | None) -> list[_Instance]:
        study = self._studies.get(study_uid)
        if study is None:
            raise NotFound("no such study")
        if series_uid is None:
            return study.instances()
        series = study.series.get(series_uid)
        if series is None:
            raise NotFound("no such series in this study")
        if sop_uid is None:
            return series.ordered()
        instance = series.instances.get(sop_uid)
        if instance is None:
            raise NotFound("no such instance in this series")
        return [instance]

    async def iter_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        for i in self._select(study_uid, series_uid, sop_uid):
            yield StoredInstance(
                i.study_uid, i.series_uid, i.sop_class_uid, i.sop_uid, i.transfer_syntax_uid, FileBody(i.path, i.size)
            )

    async def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, base: str
    ) -> AsyncIterator[bytes]:
        selected = self._select(study_uid, series_uid, sop_uid)
        missing = [i for i in selected if (i.sop_uid, base) not in self._json]
        if missing:
            async with self._lock:
                encoded = await asyncio.to_thread(lambda: [instance_json_bytes(i.header, base) for i in missing])
                self._json.update({(i.sop_uid, base): data for i, data in zip(missing, encoded, strict=True)})
        for i in selected:
            yield self._json[(i.sop_uid, base)]
