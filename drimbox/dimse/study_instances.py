"""Study Root C-FIND SCU: every instance of one study, with the patient and study attributes a KOS needs."""

# On drimbox's upper layer (find_scu.py) with pooled associations; answers are read with identifier.RawAnswer,
# only the values the KOS needs: as fast as dcmtk findscu on one association (figures in perf/dimse_find.py).
# Orthanc is the floor: it answers from its index only when every key is one of its "main DICOM tags";
# SOP Class UID and the two issuers are not, so it reads each instance's stored JSON (the same query for
# SOP Instance UID alone takes ≈ 15 ms). Nothing here can win that back without asking less.

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import closing
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID

from drimbox import metrics
from drimbox.config import PacsSettings
from drimbox.dimse import identifier
from drimbox.dimse.find_scu import STUDY_ROOT_FIND, c_find, check_response, parse_answer, run_find
from drimbox.dimse.identifier import RawAnswer, tag
from drimbox.dimse.message import C_ECHO_RSP, IMPLICIT_VR_LITTLE_ENDIAN, SUCCESS, VERIFICATION, c_echo_rq
from drimbox.dimse.network import DimseFailure, DimseUnavailable
from drimbox.dimse.pdu import AssociateRQ, ProposedContext
from drimbox.dimse.pool import AssociationPool, default_pool
from drimbox.dimse.uid import is_lenient_uid
from drimbox.dimse.ul import MAX_PDU_LENGTH, Association, next_message_id

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

# Named SOP classes, for the callers and tests that propose them with pynetdicom.
StudyRootQueryRetrieveInformationModelFind = UID(STUDY_ROOT_FIND)
Verification = UID(VERIFICATION)

# Study- and patient-level return keys, asked at IMAGE level too (Orthanc and most PACS answer them there).
STUDY_KEYS = (
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
INSTANCE_KEYS = (
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
_T = {keyword: tag(keyword) for keyword in (*STUDY_KEYS, *INSTANCE_KEYS, "StudyInstanceUID")}
_STUDY_TAGS = tuple(_T[k] for k in STUDY_KEYS)
_ISSUER_OF_ACCESSION = tag("IssuerOfAccessionNumberSequence")
_UNIVERSAL_ENTITY_ID = tag("UniversalEntityID")
_LOCAL_NAMESPACE_ENTITY_ID = tag("LocalNamespaceEntityID")


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


def _query(level: str, study_uid: str, series_uid: str = "") -> bytes:
    ds = Dataset()
    # Ask for UTF-8 answers so names with accents survive whatever the PACS stores internally.
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = study_uid
    for keyword in STUDY_KEYS:
        setattr(ds, keyword, "")
    ds.IssuerOfAccessionNumberSequence = []
    if level in ("SERIES", "IMAGE"):
        ds.SeriesInstanceUID = series_uid
        ds.Modality = ""
        ds.SeriesNumber = ""
        ds.SeriesDescription = ""
        ds.BodyPartExamined = ""
    if level == "IMAGE":
        for keyword in INSTANCE_KEYS:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return identifier.encode(ds)


def _answers(assoc: Association, level: str, study_uid: str, series_uid: str = "") -> list[RawAnswer]:
    with closing(c_find(assoc, _query(level, study_uid, series_uid), level)) as answers:
        return [parse_answer(a, level, assoc.peer) for a in answers]


def _issuer_of_accession(answer: RawAnswer) -> tuple[str, str]:
    items = answer.items(_ISSUER_OF_ACCESSION)
    if not items:
        return "", ""
    return items[0].text(_UNIVERSAL_ENTITY_ID), items[0].text(_LOCAL_NAMESPACE_ENTITY_ID)


def _collect_instances(assoc: Association, study_uid: str) -> list[RawAnswer]:
    """IMAGE-level answers for the study: one relational query, else series by series."""
    try:
        return _answers(assoc, "IMAGE", study_uid)
    except DimseFailure as first:
        # A strictly hierarchical PACS refuses a universal Series Instance UID at IMAGE level.
        LOG.info("IMAGE-level C-FIND refused (%s); querying series by series", first)
        try:
            series = [a.text(_T["SeriesInstanceUID"]) for a in _answers(assoc, "SERIES", study_uid)]
            answers: list[RawAnswer] = []
            for series_uid in filter(None, series):
                answers.extend(_answers(assoc, "IMAGE", study_uid, series_uid))
            return answers
        except DimseFailure:
            raise first from None


def _build(study_uid: str, answers: list[RawAnswer], study_level: RawAnswer | None) -> StudyInstances:
    first = answers[0]

    def pick(keyword: str) -> str:
        # The IMAGE-level answer wins; the STUDY-level one fills what the PACS left out there.
        element = _T[keyword]
        if element in first or study_level is None:
            return first.text(element)
        return study_level.text(element)

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
    for answer in answers:
        sop_uid = answer.text(_T["SOPInstanceUID"])
        if not sop_uid or sop_uid in seen:
            continue
        seen.add(sop_uid)
        study.instances.append(
            InstanceRef(
                series_uid=answer.text(_T["SeriesInstanceUID"]),
                sop_class_uid=answer.text(_T["SOPClassUID"]),
                sop_instance_uid=sop_uid,
                modality=answer.text(_T["Modality"]),
                series_number=answer.number(_T["SeriesNumber"]),
                series_description=answer.text(_T["SeriesDescription"]),
                instance_number=answer.number(_T["InstanceNumber"]),
                number_of_frames=answer.number(_T["NumberOfFrames"]),
                body_part_examined=answer.text(_T["BodyPartExamined"]),
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
    study.inconsistent = [kw for kw in _CHECKED_KEYS if len({a.text(_T[kw]) for a in answers if _T[kw] in a}) > 1]
    return study


def _find(assoc: Association, study_uid: str) -> tuple[list[RawAnswer], RawAnswer | None]:
    """The study's IMAGE-level answers and, when those lack patient or study keys, its STUDY-level answer."""
    answers = [
        a
        for a in _collect_instances(assoc, study_uid)
        # Never let an answer for another study leak into this one, whatever the PACS's matching does.
        if a.text(_T["StudyInstanceUID"]) in ("", study_uid)
    ]
    if not answers or all(element in answers[0] for element in _STUDY_TAGS):
        return answers, None
    # Some PACS only return patient and study attributes at STUDY level.
    try:
        study_answers = _answers(assoc, "STUDY", study_uid)
    except DimseFailure as exc:
        LOG.info("STUDY-level C-FIND refused (%s); keeping the IMAGE-level attributes", exc)
        study_answers = []
    return answers, study_answers[0] if study_answers else None


def find_study_instances(
    pacs: PacsSettings, calling_ae: str, study_uid: str, *, pool: AssociationPool | None = None
) -> StudyInstances | None:
    """C-FIND every instance of `study_uid` on the PACS; None when the PACS holds none. Blocking.

    Runs on an association from `pool` (default: the process's), given back for the next query.
    Raises DimseUnavailable (cannot reach or lost the PACS) or DimseFailure (the PACS refused the query).
    """
    if not is_lenient_uid(study_uid):  # lenient: the study as the PACS holds it, leading zeros included
        # A wildcard here would turn a lookup into a listing of every study on the PACS.
        raise ValueError(f"Study Instance UID: not a valid UID: {study_uid!r}")
    answers, study_level = run_find(pool or default_pool, pacs, calling_ae, lambda a: _find(a, study_uid))
    return _build(study_uid, answers, study_level) if answers else None


async def afind_study_instances(
    pacs: PacsSettings, calling_ae: str, study_uid: str, *, pool: AssociationPool | None = None
) -> StudyInstances | None:
    """find_study_instances, run in a worker thread so the event loop never blocks on the network."""
    return await asyncio.to_thread(find_study_instances, pacs, calling_ae, study_uid, pool=pool)


def echo(pacs: PacsSettings, calling_ae: str) -> bool:
    """C-ECHO the PACS on a new association (what `drimbox check` verifies): True when it answers success.

    The reason for False is logged. Timed and counted (drimbox_dimse_*{operation="C-ECHO"}).
    """
    started = time.perf_counter()
    answered = _echo(pacs, calling_ae)
    metrics.observe_dimse("C-ECHO", started, None if answered else DimseUnavailable("no success"))
    return answered


def _echo(pacs: PacsSettings, calling_ae: str) -> bool:
    contexts = [ProposedContext(1, VERIFICATION, (IMPLICIT_VR_LITTLE_ENDIAN,))]
    request = AssociateRQ(pacs.ae_title, calling_ae, contexts, max_length=MAX_PDU_LENGTH)
    try:
        assoc = Association.request(pacs.host, pacs.port, request, pacs.timeout)
    except DimseUnavailable as exc:
        LOG.warning("C-ECHO %s: %s", pacs.ae_title, exc)
        return False
    try:
        if 1 not in assoc.contexts:
            raise DimseUnavailable(f"{assoc.peer} does not accept Verification")
        message_id = next_message_id()
        assoc.send(1, c_echo_rq(message_id))
        if not assoc.wait_readable(pacs.timeout):
            raise DimseUnavailable(f"no response within {pacs.timeout:g}s")
        command = assoc.receive().command
        check_response(command, C_ECHO_RSP, message_id, assoc.peer)
    except DimseUnavailable as exc:
        assoc.abort()
        LOG.warning("C-ECHO %s: %s", pacs.ae_title, exc)
        return False
    assoc.release()
    if command.status != SUCCESS:
        LOG.warning("C-ECHO %s: status 0x%04X", pacs.ae_title, command.status or 0)
        return False
    return True
