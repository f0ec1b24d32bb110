"""The document kinds the simulated DMP accepts (class/type/format/mime sets) and their content checks."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from drimbox.sim.dmp_metadata import DocumentEntryIn, parse_cx
from drimbox.xds import namespaces as ns

KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"

# (code, codingScheme) pairs.
CodePair = tuple[str, str]
ContentCheck = Callable[[bytes, DocumentEntryIn], "str | None"]


@dataclass(frozen=True)
class DocumentKind:
    """One accepted combination of classCode, typeCode, formatCode(s) and mimeType(s)."""

    name: str
    class_code: CodePair
    type_code: CodePair
    format_codes: frozenset[CodePair]
    mime_types: frozenset[str]
    # Returns a reason when the bytes contradict the metadata (InvalidDocumentContent), None when fine.
    content_check: ContentCheck | None = None


def check_kos(data: bytes, entry: DocumentEntryIn) -> str | None:
    """A KOS must be a DICOM Part-10 Key Object Selection whose SOP Instance UID is the XDS uniqueId."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return "the document is not a DICOM Part-10 file (no DICM prefix at offset 128)"
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except (InvalidDicomError, ValueError, EOFError, OSError, KeyError, TypeError) as exc:
        return f"the DICOM file cannot be read: {type(exc).__name__}"
    sop_class = str(getattr(ds, "SOPClassUID", ""))
    if sop_class != KOS_SOP_CLASS_UID:
        return f"SOP Class UID {sop_class or '(none)'} is not Key Object Selection Document {KOS_SOP_CLASS_UID}"
    unique_id = entry.external_id(ns.DE_UNIQUE_ID)
    sop_instance = str(getattr(ds, "SOPInstanceUID", ""))
    if unique_id is not None and sop_instance != unique_id:
        return "XDSDocumentEntry.uniqueId must equal the SOP Instance UID of the KOS (XDS-I.b)"
    patient = parse_cx(entry.external_id(ns.DE_PATIENT_ID) or "")
    if patient is not None and str(getattr(ds, "PatientID", "")) != patient[0]:
        # Said without the identifiers themselves: responses end up in client logs.
        return "Patient ID (0010,0020) of the KOS differs from XDSDocumentEntry.patientId"
    return None


KOS = DocumentKind(
    name="imaging manifest (KOS, XDS-I.b)",
    class_code=(ns.KOS_CLASS_CODE[0], ns.KOS_CLASS_CODE[1]),
    type_code=(ns.KOS_TYPE_CODE[0], ns.KOS_TYPE_CODE[1]),
    format_codes=frozenset({ns.KOS_FORMAT_CODE}),
    mime_types=frozenset({"application/dicom"}),
    content_check=check_kos,
)

# IHE DSG detached signature of the submission set, as in the ANS validator sample.
SUBMISSION_SIGNATURE = DocumentKind(
    name="submission set signature (IHE DSG)",
    class_code=("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN"),
    type_code=("E1762", "ASTM"),
    format_codes=frozenset({("http://www.w3.org/2000/09/xmldsig#", "URN")}),
    mime_types=frozenset({"text/xml"}),
)


def check_cda_report(data: bytes, entry: DocumentEntryIn) -> str | None:
    """A CR d'imagerie must be a CDA R2 report (LOINC 18748-4) of the entry's patient, its id the uniqueId."""
    from drimbox.hl7.cda import CdaError, parse_cda

    try:
        report = parse_cda(data)
    except CdaError as exc:
        return f"the document is not a readable CDA R2: {exc}"
    if report.document_code != REPORT_LOINC:
        return f"ClinicalDocument/code {report.document_code or '(none)'} is not {REPORT_LOINC} (CR d'imagerie)"
    unique_id = entry.external_id(ns.DE_UNIQUE_ID)
    if unique_id is not None and unique_id != report.document_id:
        return "XDSDocumentEntry.uniqueId must equal the CDA's ClinicalDocument/id (root^extension)"
    patient = parse_cx(entry.external_id(ns.DE_PATIENT_ID) or "")
    if patient is not None and report.ins != patient[0]:
        # Said without the identifiers themselves: responses end up in client logs.
        return "the CDA's patient INS differs from XDSDocumentEntry.patientId"
    return None


REPORT_LOINC = "18748-4"
CDA_FORMAT_SCHEME = "1.3.6.1.4.1.19376.1.2.3"
# The RIS's CDA imaging report (CR d'imagerie médicale). formatCode: a CDA R2 N1 whose body is a PDF is an
# IHE XDS-SD document (templateId 1.3.6.1.4.1.19376.1.2.20, as the ANS CR_C sample declares); a structured
# report takes the IHE RAD one. [unsure] neither was checked against the CI-SIS JDV J10 value set.
CDA_IMAGING_REPORT = DocumentKind(
    name="imaging report (CDA R2, CR d'imagerie)",
    class_code=("10", "1.2.250.1.213.1.1.4.1"),
    type_code=(REPORT_LOINC, "2.16.840.1.113883.6.1"),
    format_codes=frozenset(
        {
            ("urn:ihe:iti:xds-sd:pdf:2008", CDA_FORMAT_SCHEME),
            ("urn:ihe:rad:CDA:ImagingReportStructuredHeadings:2013", CDA_FORMAT_SCHEME),
        }
    ),
    mime_types=frozenset({"text/xml"}),
    content_check=check_cda_report,
)

DEFAULT_KINDS: tuple[DocumentKind, ...] = (KOS, CDA_IMAGING_REPORT, SUBMISSION_SIGNATURE)

# confidentialityCode values: HL7 Confidentiality (one required) plus the DMP's visibility flags.
HL7_CONFIDENTIALITY: frozenset[CodePair] = frozenset((c, ns.CONFIDENTIALITY_SCHEME) for c in ("N", "R", "V"))
DMP_VISIBILITY: frozenset[CodePair] = frozenset(
    (c, ns.DMP_CONFIDENTIALITY_SCHEME) for c in ("MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REPRESENTANTS_LEGAUX")
)
