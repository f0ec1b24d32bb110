"""Study Root C-FIND SCU: every instance of one study, with the patient and study attributes a KOS needs."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from drimbox.config import PacsSettings
from drimbox.dimse.network import DimseFailure, DimseUnavailable, associate

# DimseFailure and DimseUnavailable are re-exported: callers of the finder catch them from here.
__all__ = [
    "DimseFailure",
    "DimseUnavailable",
    "InstanceRef",
    "StudyInstances",
    "afind_study_instances",
    "echo",
    "find_study_instances",
]

LOG = logging.getLogger(__name__)

# pynetdicom builds its SOP class names at run time, invisible to mypy: name the UIDs here.
StudyRootQueryRetrieveInformationModelFind = UID("1.2.840.10008.5.1.4.1.2.2.1")
Verification = UID("1.2.840.10008.1.1")

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PENDING = (0xFF00, 0xFF01)

# Study- and patient-level return keys, asked at IMAGE level too (Orthanc and most PACS answer them there).
_STUDY_KEYS = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
)
_INSTANCE_KEYS = (
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
    "NumberOfFrames",
    "BodyPartExamined",
)
# Values that must agree across the instances of a study; a mismatch is reported, never silently merged.
_CHECKED_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber")


@dataclass(frozen=True)
class InstanceRef:
    """One instance as the PACS describes it."""

    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    instance_number: int | None = None
    number_of_frames: int | None = None
    body_part_examined: str = ""


@dataclass
class StudyInstances:
    """Patient and study attributes of one study, and every instance the PACS holds for it."""

    study_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    # From Issuer of Accession Number Sequence (0008,0051): Universal Entity ID and Local Namespace Entity ID.
    accession_issuer_oid: str = ""
    accession_issuer_local: str = ""
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    instances: list[InstanceRef] = field(default_factory=list)
    # Keywords (PatientID, AccessionNumber, ...) whose value differs between instances of the study.
    inconsistent: list[str] = field(default_factory=list)

    def by_series(self) -> dict[str, list[InstanceRef]]:
        """Instances grouped by Series Instance UID, in instance order."""
        groups: dict[str, list[InstanceRef]] = {}
        for inst in self.instances:
            groups.setdefault(inst.series_uid, []).append(inst)
        return groups

    @property
    def modalities(self) -> list[str]:
        """Distinct modalities of the study's series, in series order."""
        return list(dict.fromkeys(i.modality for i in self.instances if i.modality))


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    text = _text(ds, keyword)
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def _query(level: str, study_uid: str, series_uid: str = "") -> Dataset:
    ds = Dataset()
    # Ask for UTF-8 answers so names with accents survive whatever the PACS stores internally.
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study_uid
    for keyword in _STUDY_KEYS:
        setattr(ds, keyword, "")
    ds.IssuerOfAccessionNumberSequence = []
    if level in ("SERIES", "IMAGE"):
        ds.SeriesInstanceUID = series_uid
        ds.Modality = ""
        ds.SeriesNumber = ""
        ds.SeriesDescription = ""
        ds.BodyPartExamined = ""
    if level == "IMAGE":
        for keyword in _INSTANCE_KEYS:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return ds


def iter_answers(assoc: Association, query: Dataset) -> Iterator[Dataset]:
    """Yield each matching identifier; raise on failure status or on a lost association."""
    started = time.monotonic()
    for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        if "Status" not in status:
            # pynetdicom yields an empty status when the DIMSE time-out fired or the peer aborted.
            # pynetdicom aborts on its own time-out too: tell the two apart by the time spent waiting.
            timeout = assoc.dimse_timeout
            if timeout is not None and time.monotonic() - started >= timeout:
                raise DimseUnavailable(f"C-FIND: no response from the PACS within {timeout}s")
            # Orthanc, among others, aborts rather than answers when the calling AE may not query.
            calling = assoc.requestor.ae_title
            raise DimseUnavailable(f"C-FIND: the PACS dropped the association (does it know {calling}?)")
        code = int(status.Status)
        if code in _PENDING:
            if identifier is None:
                raise DimseFailure("C-FIND: the PACS sent an identifier that cannot be decoded", code)
            yield identifier
        elif code == 0x0000:
            return
        else:
            comment = _text(status, "ErrorComment")
            detail = f": {comment}" if comment else ""
            raise DimseFailure(f"C-FIND {query.QueryRetrieveLevel} failed{detail}", code)


def _issuer_of_accession(ds: Dataset) -> tuple[str, str]:
    seq = ds.get("IssuerOfAccessionNumberSequence")
    if not seq:
        return "", ""
    item = seq[0]
    return _text(item, "UniversalEntityID"), _text(item, "LocalNamespaceEntityID")


def _collect_instances(assoc: Association, study_uid: str) -> list[Dataset]:
    """IMAGE-level answers for the study: one relational query, else series by series."""
    try:
        return list(iter_answers(assoc, _query("IMAGE", study_uid)))
    except DimseFailure as first:
        # A strictly hierarchical PACS refuses a universal Series Instance UID at IMAGE level.
        LOG.info("IMAGE-level C-FIND refused (%s); querying series by series", first)
        try:
            series = [_text(s, "SeriesInstanceUID") for s in iter_answers(assoc, _query("SERIES", study_uid))]
            answers: list[Dataset] = []
            for series_uid in filter(None, series):
                answers.extend(iter_answers(assoc, _query("IMAGE", study_uid, series_uid)))
            return answers
        except DimseFailure:
            raise first from None


def _build(study_uid: str, answers: list[Dataset], study_level: Dataset | None) -> StudyInstances:
    first = answers[0]

    def pick(keyword: str) -> str:
        # The IMAGE-level answer wins; the STUDY-level one fills what the PACS left out there.
        if keyword in first or study_level is None:
            return _text(first, keyword)
        return _text(study_level, keyword)

    oid, local = _issuer_of_accession(first)
    if not (oid or local) and study_level is not None:
        oid, local = _issuer_of_accession(study_level)
    study = StudyInstances(
        study_uid=study_uid,
        patient_id=pick("PatientID"),
        issuer_of_patient_id=pick("IssuerOfPatientID"),
        patient_name=pick("PatientName"),
        patient_birth_date=pick("PatientBirthDate"),
        patient_sex=pick("PatientSex"),
        accession_number=pick("AccessionNumber"),
        accession_issuer_oid=oid,
        accession_issuer_local=local,
        study_date=pick("StudyDate"),
        study_time=pick("StudyTime"),
        study_id=pick("StudyID"),
        study_description=pick("StudyDescription"),
        referring_physician_name=pick("ReferringPhysicianName"),
    )
    seen: set[str] = set()
    for ds in answers:
        sop_uid = _text(ds, "SOPInstanceUID")
        if not sop_uid or sop_uid in seen:
            continue
        seen.add(sop_uid)
        study.instances.append(
            InstanceRef(
                series_uid=_text(ds, "SeriesInstanceUID"),
                sop_class_uid=_text(ds, "SOPClassUID"),
                sop_instance_uid=sop_uid,
                modality=_text(ds, "Modality"),
                series_number=_int(ds, "SeriesNumber"),
                series_description=_text(ds, "SeriesDescription"),
                instance_number=_int(ds, "InstanceNumber"),
                number_of_frames=_int(ds, "NumberOfFrames"),
                body_part_examined=_text(ds, "BodyPartExamined"),
            )
        )
    big = 1 << 62
    study.instances.sort(
        key=lambda i: (
            i.series_number if i.series_number is not None else big,
            i.series_uid,
            i.instance_number if i.instance_number is not None else big,
            i.sop_instance_uid,
        )
    )
    study.inconsistent = [
        kw for kw in _CHECKED_KEYS if len({_text(ds, kw) for ds in answers if kw in ds}) > 1
    ]
    return study


def find_study_instances(pacs: PacsSettings, calling_ae: str, study_uid: str) -> StudyInstances | None:
    """C-FIND every instance of `study_uid` on the PACS; None when the PACS holds none. Blocking.

    Raises DimseUnavailable (cannot reach or lost the PACS) or DimseFailure (the PACS refused the query).
    """
    if len(study_uid) > 64 or not _UID_RE.match(study_uid):
        # A wildcard here would turn a lookup into a listing of every study on the PACS.
        raise ValueError(f"Study Instance UID: not a valid UID: {study_uid!r}")
    contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
    with associate(pacs, calling_ae, contexts) as assoc:
        answers = [
            ds for ds in _collect_instances(assoc, study_uid)
            # Never let an answer for another study leak into this one, whatever the PACS's matching does.
            if _text(ds, "StudyInstanceUID") in ("", study_uid)
        ]
        if not answers:
            return None
        study_level = None
        if any(kw not in answers[0] for kw in _STUDY_KEYS):
            # Some PACS only return patient and study attributes at STUDY level.
            try:
                study_answers = list(iter_answers(assoc, _query("STUDY", study_uid)))
            except DimseFailure as exc:
                LOG.info("STUDY-level C-FIND refused (%s); keeping the IMAGE-level attributes", exc)
                study_answers = []
            study_level = study_answers[0] if study_answers else None
    return _build(study_uid, answers, study_level)


async def afind_study_instances(pacs: PacsSettings, calling_ae: str, study_uid: str) -> StudyInstances | None:
    """find_study_instances, run in a worker thread so the event loop never blocks on the network."""
    return await asyncio.to_thread(find_study_instances, pacs, calling_ae, study_uid)


def echo(pacs: PacsSettings, calling_ae: str) -> bool:
    """C-ECHO the PACS: True when it answers success; the reason for False is logged."""
    try:
        with associate(pacs, calling_ae, [build_context(Verification)]) as assoc:
            status = assoc.send_c_echo()
    except DimseUnavailable as exc:
        LOG.warning("C-ECHO %s: %s", pacs.ae_title, exc)
        return False
    if "Status" not in status:
        LOG.warning("C-ECHO %s: no response", pacs.ae_title)
        return False
    if int(status.Status) != 0x0000:
        LOG.warning("C-ECHO %s: status 0x%04X", pacs.ae_title, int(status.Status))
        return False
    return True
