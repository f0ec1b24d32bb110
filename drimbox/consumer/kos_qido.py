"""QIDO-RS answered from a KOS alone: its study, series and instances, never asking the source box."""

from __future__ import annotations

from pydicom.dataset import Dataset

from drimbox.dicomweb.backend import QidoQuery, QueryLevel
from drimbox.manifest import KosSeries, KosSummary
from drimbox.manifest.modality import SOP_CLASS_MODALITY

_STUDY, _SERIES, _SOP = 0x0020000D, 0x0020000E, 0x00080018


def kos_matches(kos: KosSummary, query: QidoQuery) -> list[Dataset]:
    """What the KOS references that matches the query's UIDs at its level (UIDs, counts): nothing else matches."""
    wanted = {tag: (query.value(tag) or "").split("\\") for tag in (_STUDY, _SERIES, _SOP)}
    if wanted[_STUDY] != [""] and kos.study_uid not in wanted[_STUDY]:
        return []
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
    return found


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
