"""Build the XDS-I.b imaging manifest: a DICOM Key Object Selection document made from a C-FIND."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

import drimbox
from drimbox.dimse.study_instances import InstanceRef, StudyInstances

KOS_SOP_CLASS = UID("1.2.840.10008.5.1.4.1.1.88.59")
INS_ISSUER = "ASIP-SANTE-INS-NIR"
# OID of the test INS (the ANS test patient); production INS-NIR is 1.2.250.1.213.1.4.8.
TEST_INS_OID = "1.2.250.1.213.1.4.10"
_OID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*\.?$")


class KosError(ValueError):
    """A KOS cannot be built from what we were given, or bytes are not a usable KOS; the message says why."""


@dataclass(frozen=True)
class Code:
    """A coded concept: Code Value, Coding Scheme Designator, Code Meaning."""

    value: str
    scheme: str
    meaning: str


MANIFEST_TITLE = Code("113030", "DCM", "Manifest")
KEY_OBJECT_DESCRIPTION = Code("113012", "DCM", "Key Object Description")

# Code system OIDs (as CDA reports give them) → DICOM Coding Scheme Designators (PS3.16 Table 8-1).
CODING_SCHEMES = {
    "2.16.840.1.113883.6.1": "LN",
    "2.16.840.1.113883.6.96": "SCT",
    "1.2.840.10008.2.16.4": "DCM",
    # Not in PS3.16: declared in the KOS's Coding Scheme Identification Sequence.
    "1.2.250.1.213.2.5": "CCAM",
}
_SCHEME_OIDS = {designator: oid for oid, designator in CODING_SCHEMES.items()}
_DICOM_SCHEMES = {"LN", "SCT", "DCM", "SRT"}


@dataclass(kw_only=True)
class KosRequest:
    """What the report and the box's configuration say about the manifest to build."""

    ins: str
    ins_oid: str = TEST_INS_OID
    # Local patient identifier (IPP) and its assigning authority, added to Other Patient IDs when known.
    ipp: str = ""
    ipp_issuer: str = ""
    ipp_oid: str = ""
    accession: str
    # Issuer OIDs are written as Universal Entity ID, type ISO.
    accession_issuer: str = ""
    placer_order: str = ""
    placer_order_issuer: str = ""
    filler_order: str = ""
    filler_order_issuer: str = ""
    requested_procedure_id: str = ""
    # "" = procedure_meaning.
    requested_procedure_description: str = ""
    # Requested Procedure Code; the scheme is a DICOM designator (LN, CCAM) or a code system OID.
    procedure_code: str = ""
    procedure_scheme: str = ""
    procedure_meaning: str = ""
    # Text of the TEXT (113012, DCM, "Key Object Description") item; "" leaves the item out.
    description: str = ""
    public_url: str
    retrieve_ae_title: str
    retrieve_location_uid: str
    uid_root: str
    institution_name: str = ""
    manufacturer: str = "drimbox"
    # "+HHMM" / "-HHMM"; "" takes the offset of `now` (local time when `now` is naive or not given).
    timezone_offset: str = ""
    series_number: int = 999
    # Set these to rebuild the same document (e.g. a retry after a crash); "" mints new UIDs under uid_root.
    sop_instance_uid: str = ""
    series_instance_uid: str = ""


def new_uid(uid_root: str) -> str:
    """A new UID under `uid_root` (at most 64 characters)."""
    root = uid_root if uid_root.endswith(".") else uid_root + "."
    if not _OID_RE.match(root) or len(root) > 48:
        # 16 digits left for the random part keep two mints from ever colliding in practice.
        raise KosError(f"uid_root: must be a numeric OID of at most 47 characters, got {uid_root!r}")
    return str(generate_uid(prefix=root))


def is_image_sop_class(sop_class_uid: str) -> bool:
    """True for image storage SOP classes (referenced as IMAGE in TID 2010), False otherwise (COMPOSITE)."""
    name = UID(sop_class_uid).name
    return "Image Storage" in name


def procedure_code(req: KosRequest) -> Code | None:
    """The request's procedure code, its scheme made a DICOM designator; None when there is none."""
    if not req.procedure_code:
        return None
    scheme = req.procedure_scheme
    if _OID_RE.match(scheme):
        # An OID DICOM has no designator for: a local ("99") designator, its OID declared in the KOS.
        scheme = CODING_SCHEMES.get(scheme, "99DRIMBOX")
    return Code(req.procedure_code, scheme or "99DRIMBOX", req.procedure_meaning or req.procedure_code)


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def _iso_issuer(oid: str) -> Dataset:
    item = Dataset()
    item.UniversalEntityID = oid
    item.UniversalEntityIDType = "ISO"
    return item


def _tz_offset(now: datetime, configured: str) -> str:
    if configured:
        if not re.fullmatch(r"[+-](0\d|1[0-4])[0-5]\d", configured):
            raise KosError(f"timezone_offset: expected +HHMM or -HHMM, got {configured!r}")
        return configured
    offset = now.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def _patient(ds: Dataset, study: StudyInstances, req: KosRequest) -> None:
    # Name, birth date and sex are copied as the images carry them: the KOS must match its images.
    ds.PatientName = study.patient_name
    ds.PatientID = req.ins
    ds.IssuerOfPatientID = INS_ISSUER
    ds.IssuerOfPatientIDQualifiersSequence = [_iso_issuer(req.ins_oid)]
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    ins = Dataset()
    ins.PatientID = req.ins
    ins.IssuerOfPatientID = INS_ISSUER
    ins.TypeOfPatientID = "TEXT"
    ins.IssuerOfPatientIDQualifiersSequence = [_iso_issuer(req.ins_oid)]
    others = [ins]
    if req.ipp:
        ipp = Dataset()
        ipp.PatientID = req.ipp
        if req.ipp_issuer:
            ipp.IssuerOfPatientID = req.ipp_issuer
        ipp.TypeOfPatientID = "TEXT"
        if req.ipp_oid:
            ipp.IssuerOfPatientIDQualifiersSequence = [_iso_issuer(req.ipp_oid)]
        others.append(ipp)
    ds.OtherPatientIDsSequence = others


def _study(ds: Dataset, study: StudyInstances, req: KosRequest) -> None:
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyID = study.study_id
    # The report's accession (checked against the PACS's by the caller) is the one the DMP indexes.
    ds.AccessionNumber = req.accession
    if req.accession_issuer:
        ds.IssuerOfAccessionNumberSequence = [_iso_issuer(req.accession_issuer)]
    if study.study_description:
        ds.StudyDescription = study.study_description


def _referenced_request(study: StudyInstances, req: KosRequest) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = study.study_uid
    item.AccessionNumber = req.accession
    if req.accession_issuer:
        item.IssuerOfAccessionNumberSequence = [_iso_issuer(req.accession_issuer)]
    item.ReferencedStudySequence = []
    item.RequestedProcedureDescription = req.requested_procedure_description or req.procedure_meaning
    code = procedure_code(req)
    item.RequestedProcedureCodeSequence = [_code_item(code)] if code else []
    item.RequestedProcedureID = req.requested_procedure_id
    item.PlacerOrderNumberImagingServiceRequest = req.placer_order
    if req.placer_order_issuer:
        item.OrderPlacerIdentifierSequence = [_iso_issuer(req.placer_order_issuer)]
    item.FillerOrderNumberImagingServiceRequest = req.filler_order
    if req.filler_order_issuer:
        item.OrderFillerIdentifierSequence = [_iso_issuer(req.filler_order_issuer)]
    return item


def retrieve_url(public_url: str, study_uid: str, series_uid: str) -> str:
    """The WADO-RS URL of a series on this (source) box, as written in the KOS."""
    return f"{public_url.rstrip('/')}/dicom-web/studies/{study_uid}/series/{series_uid}"


def _sop_ref(inst: InstanceRef) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = inst.sop_class_uid
    item.ReferencedSOPInstanceUID = inst.sop_instance_uid
    return item


def _evidence(study: StudyInstances, req: KosRequest) -> Dataset:
    series_items = []
    for series_uid, instances in study.by_series().items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        # IHE XDS-I.b wants the DIMSE and the web addresses together; the ANS reference has only the URL.
        series.RetrieveAETitle = req.retrieve_ae_title
        series.RetrieveLocationUID = req.retrieve_location_uid
        series.RetrieveURL = retrieve_url(req.public_url, study.study_uid, series_uid)
        series.ReferencedSOPSequence = [_sop_ref(inst) for inst in instances]
        series_items.append(series)
    item = Dataset()
    item.StudyInstanceUID = study.study_uid
    item.ReferencedSeriesSequence = series_items
    return item


def _content(study: StudyInstances, req: KosRequest) -> list[Dataset]:
    items: list[Dataset] = []
    if req.description:
        text = Dataset()
        text.RelationshipType = "CONTAINS"
        text.ValueType = "TEXT"
        text.ConceptNameCodeSequence = [_code_item(KEY_OBJECT_DESCRIPTION)]
        text.TextValue = req.description
        items.append(text)
    # Same instances, same order as the evidence: the two sets must be equal.
    for instances in study.by_series().values():
        for inst in instances:
            ref = Dataset()
            ref.RelationshipType = "CONTAINS"
            ref.ValueType = "IMAGE" if is_image_sop_class(inst.sop_class_uid) else "COMPOSITE"
            ref.ReferencedSOPSequence = [_sop_ref(inst)]
            items.append(ref)
    return items


def _check(study: StudyInstances, req: KosRequest) -> None:
    if not study.instances:
        raise KosError(f"study {study.study_uid}: no instance to reference")
    for key, value in (
        ("ins", req.ins),
        ("retrieve_ae_title", req.retrieve_ae_title),
        ("retrieve_location_uid", req.retrieve_location_uid),
        ("public_url", req.public_url),
    ):
        if not value:
            raise KosError(f"KosRequest.{key}: required")
    given = (("sop_instance_uid", req.sop_instance_uid), ("series_instance_uid", req.series_instance_uid))
    for key, uid in given:
        if uid and not UID(uid).is_valid:
            raise KosError(f"KosRequest.{key}: not a valid UID: {uid!r}")
    for inst in study.instances:
        if not (inst.series_uid and inst.sop_class_uid and inst.sop_instance_uid):
            raise KosError(
                f"study {study.study_uid}: instance {inst.sop_instance_uid or '?'} lacks its series, "
                "SOP class or SOP instance UID"
            )


def build_kos(study: StudyInstances, req: KosRequest, now: datetime | None = None) -> Dataset:
    """The KOS manifest (PS3.3 A.35.4, IHE XDS-I.b, DRIM-M) referencing every instance of `study`."""
    _check(study, req)
    # A naive `now` is taken as local time, like the default.
    now = datetime.now().astimezone() if now is None else now if now.tzinfo else now.astimezone()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_uid = req.sop_instance_uid or new_uid(req.uid_root)
    ds = Dataset()
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate = date
    ds.InstanceCreationTime = time
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = UID(sop_uid)
    ds.TimezoneOffsetFromUTC = _tz_offset(now, req.timezone_offset)
    _patient(ds, study, req)
    _study(ds, study, req)
    # Key Object Document Series: the manifest lives in a series of its own.
    ds.Modality = "KO"
    ds.SeriesInstanceUID = req.series_instance_uid or new_uid(req.uid_root)
    ds.SeriesNumber = req.series_number
    ds.SeriesDate = date
    ds.SeriesTime = time
    ds.ReferencedPerformedProcedureStepSequence = []
    # General Equipment
    ds.Manufacturer = req.manufacturer
    if req.institution_name:
        ds.InstitutionName = req.institution_name
    ds.SoftwareVersions = drimbox.__version__
    # Key Object Document
    ds.InstanceNumber = 1
    ds.ContentDate = date
    ds.ContentTime = time
    ds.ReferencedRequestSequence = [_referenced_request(study, req)]
    ds.CurrentRequestedProcedureEvidenceSequence = [_evidence(study, req)]
    # SR Document Content: TID 2010 root
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code_item(MANIFEST_TITLE)]
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = [template]
    ds.ContentSequence = _content(study, req)
    code = procedure_code(req)
    if code is not None and code.scheme not in _DICOM_SCHEMES:
        scheme = Dataset()
        scheme.CodingSchemeDesignator = code.scheme
        given = req.procedure_scheme
        oid = given if _OID_RE.match(given) else _SCHEME_OIDS.get(code.scheme, "")
        if oid:
            scheme.CodingSchemeUID = oid
        ds.CodingSchemeIdentificationSequence = [scheme]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = KOS_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = req.retrieve_ae_title
    return ds


def kos_to_bytes(ds: Dataset) -> bytes:
    """The Part-10 file (Explicit VR Little Endian) of a KOS made by build_kos."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def identity_mismatches(study: StudyInstances, req: KosRequest) -> list[str]:
    """Why the PACS's study does not match the report (empty when it does); the texts carry no values."""
    problems = [f"{kw} differs between the instances of the study on the PACS" for kw in study.inconsistent]
    if study.accession_number and study.accession_number != req.accession:
        problems.append("AccessionNumber (0008,0050) on the PACS differs from the report's accession number")
    if study.accession_issuer_oid and req.accession_issuer and study.accession_issuer_oid != req.accession_issuer:
        problems.append("Issuer of Accession Number (0008,0051) on the PACS differs from the report's")
    if study.patient_id and study.patient_id not in {req.ins, req.ipp} - {""}:
        problems.append("PatientID (0010,0020) on the PACS is neither the report's INS nor its IPP")
    return problems
