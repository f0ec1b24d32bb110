"""ebRIM 3.0 metadata of the XDS-I.b KOS manifest for the DMP: ITI-41 submission and ITI-57 status update."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple

from lxml import etree

from drimbox.xds import namespaces as ns
from drimbox.xds.mtom import Attachment

R = f"{{{ns.RIM}}}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
MAX_VALUE = 256  # rim:LongName, the type of rim:Value, ExternalIdentifier@value and nodeRepresentation
MAX_TEXT = 1024  # rim:FreeFormText, the type of LocalizedString@value
KOS_MIME_TYPE = "application/dicom"
KOS_FORMAT_DISPLAY = "Document de références d'objets d'imagerie selon profil IHE RAD XDS-I"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
RPPS_OID = "1.2.250.1.71.4.2.1"  # national professional identifiers (IDNPS)
STRUCTURE_OID = "1.2.250.1.71.4.2.2"  # national structure identifiers (IDNST)
REF_ACCESSION = "urn:ihe:iti:xds:2013:accession"
REF_STUDY_UID = "urn:ihe:iti:xds:2016:studyInstanceUID"
REF_ORDER = "urn:ihe:iti:xds:2013:order"
REFERENCE_ID_LIST = "urn:ihe:iti:xds:2013:referenceIdList"
MODALITY_DISPLAY = {
    "CR": "Computed Radiography", "CT": "Computed Tomography", "DX": "Digital Radiography",
    "MG": "Mammography", "MR": "Magnetic Resonance", "NM": "Nuclear Medicine",
    "PT": "Positron emission tomography", "RF": "Radio Fluoroscopy", "US": "Ultrasound",
    "XA": "X-Ray Angiography", "OT": "Other",
}  # fmt: skip
# Objects that are not acquisitions (the KOS itself, presentation states, reports) are no event codes.
_NOT_ACQUISITION = frozenset({"KO", "PR", "SR", "DOC"})
_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_DTM = re.compile(r"^[0-9]{4}([0-9]{2}){0,5}$")
_CX_PATIENT = re.compile(r"^[^^&]+\^\^\^&[0-9.]+&ISO(\^[^^]*)*$")


class MetadataError(ValueError):
    """Metadata the registry would refuse; the message names the slot or attribute, never the value."""


class Code(NamedTuple):
    """A coded value: code, coding scheme (OID) and display name."""

    code: str
    scheme: str
    display: str = ""

    def to_query(self) -> str:
        """The `code^^scheme` form used in stored query parameters."""
        return f"{self.code}^^{self.scheme}"


# [unsure] The DMP contentTypeCode for an imaging manifest: the ANS sample's value, override per centre.
DEFAULT_CONTENT_TYPE = Code("04", "1.2.250.1.213.2.2", "Hospitalisation de jour")


def new_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def oid_from_uuid() -> str:
    """A fresh OID under 2.25 (ISO/IEC 9834-8), for submission set unique ids when no root is configured."""
    return f"2.25.{uuid.uuid4().int}"


def xds_time(moment: datetime) -> str:
    """XDS DTM in UTC (YYYYMMDDhhmmss); registries do not accept offsets."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")


_HL7_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_HL7_UNESCAPE = re.compile(r"\\([EFSTR])\\")


def hl7_escape(text: str) -> str:
    """Escape HL7 v2 delimiters inside one component (backslash first, so escapes are not escaped again)."""
    for raw, esc in _HL7_ESCAPES:
        text = text.replace(raw, esc)
    return text


def hl7_unescape(text: str) -> str:
    return _HL7_UNESCAPE.sub(lambda m: {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~"}[m.group(1)], text)


def cx(identifier: str, authority_oid: str, id_type: str) -> str:
    return f"{hl7_escape(identifier)}^^^&{authority_oid}&ISO^{id_type}"


def ins_cx(ins: str, oid: str = INS_TEST_OID) -> str:
    """The DMP patient id: `INS^^^&OID&ISO^NH`."""
    return cx(ins, oid, "NH")


def xcn(
    identifier: str,
    family: str = "",
    given: str = "",
    *,
    authority_oid: str = RPPS_OID,
    id_type: str = "IDNPS",
    name_type: str = "D",
) -> str:
    """An XCN person (authorPerson, legalAuthenticator): `id^family^given^^^^^^&OID&ISO^D^^^IDNPS`."""
    e = hl7_escape
    return f"{e(identifier)}^{e(family)}^{e(given)}^^^^^^&{authority_oid}&ISO^{name_type}^^^{id_type}"


def xon(name: str, identifier: str, *, authority_oid: str = STRUCTURE_OID, id_type: str = "IDNST") -> str:
    """An XON organisation (authorInstitution): `name^^^^^&OID&ISO^IDNST^^^id`."""
    return f"{hl7_escape(name)}^^^^^&{authority_oid}&ISO^{id_type}^^^{hl7_escape(identifier)}"


def patient_info_lines(ids: Sequence[str], family: str, given: str, birth_date: str, sex: str) -> list[str]:
    """sourcePatientInfo values: PID-3 (one per CX id), PID-5 (legal name), PID-7 (birth), PID-8 (sex)."""
    lines = [f"PID-3|{i}" for i in ids]
    lines.append(f"PID-5|{hl7_escape(family)}^{hl7_escape(given)}^^^^^L")
    if birth_date:
        lines.append(f"PID-7|{birth_date}")
    if sex:
        lines.append(f"PID-8|{sex}")
    return lines


@dataclass(frozen=True)
class ReferenceId:
    """One referenceIdList entry (CXi): accession number, Study Instance UID or order number."""

    value: str
    kind: str
    authority_oid: str = ""

    @classmethod
    def accession(cls, number: str, issuer_oid: str) -> ReferenceId:
        return cls(number, REF_ACCESSION, issuer_oid)

    @classmethod
    def study(cls, study_uid: str) -> ReferenceId:
        return cls(study_uid, REF_STUDY_UID)

    @classmethod
    def order(cls, number: str, issuer_oid: str) -> ReferenceId:
        return cls(number, REF_ORDER, issuer_oid)

    def to_cx(self) -> str:
        authority = f"&{self.authority_oid}&ISO" if self.authority_oid else ""
        return f"{hl7_escape(self.value)}^^^{authority}^{self.kind}"

    @classmethod
    def parse(cls, value: str) -> ReferenceId:
        parts = value.split("^")
        authority = parts[3].split("&") if len(parts) > 3 else []
        kind, oid = parts[4] if len(parts) > 4 else "", authority[1] if len(authority) > 1 else ""
        return cls(hl7_unescape(parts[0]), kind, oid)


@dataclass
class Author:
    """XDS author: XCN person, XON institutions, roles and specialties (as the DMP codes them)."""

    person: str = ""
    institutions: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    specialties: list[str] = field(default_factory=list)


KOS_CLASS = Code(*ns.KOS_CLASS_CODE)
KOS_TYPE = Code(*ns.KOS_TYPE_CODE)
KOS_FORMAT = Code(*ns.KOS_FORMAT_CODE, KOS_FORMAT_DISPLAY)


@dataclass
class KosDocumentEntry:
    """The DocumentEntry of one KOS manifest, as the source box publishes it to the DMP."""

    unique_id: str  # the KOS SOP Instance UID
    patient_id: str  # ins_cx(...)
    source_patient_id: str  # the local IPP as a CX
    source_patient_info: list[str]  # patient_info_lines(...)
    creation_time: str  # YYYYMMDDhhmmss, UTC
    service_start: str  # the DMP requires serviceStartTime (study date/time), UTC
    author: Author
    healthcare_facility_type: Code
    practice_setting: Code
    service_stop: str | None = None
    title: str = ns.KOS_TYPE_CODE[2]
    comments: str | None = None
    language: str = "fr-FR"
    masque_ps: bool = False
    invisible_patient: bool = False
    invisible_representants_legaux: bool = False
    modalities: list[str] = field(default_factory=list)  # DICOM modality codes (CT, MR, ...)
    regions: list[Code] = field(default_factory=list)  # as coded in the CDA, codeSystem included
    # [unsure] Region scheme: the DMP consumers query 1.2.250.1.213.1.1.5.695 but ANS samples also use
    # other systems. Default: keep each region's codeSystem from the CDA (what the report says), falling
    # back to 1.2.250.1.213.1.1.5.695; a non-empty value here forces one scheme for every region.
    region_scheme: str | None = None
    reference_ids: list[ReferenceId] = field(default_factory=list)
    legal_authenticator: str | None = None  # XCN
    hash: str | None = None  # SHA-1 hex of the KOS bytes; computed when None, checked when given
    size: int | None = None
    entry_uuid: str = field(default_factory=new_uuid)
    # The document's kind: a KOS unless set (the RIS's CDA report takes the CR-IMG codes, xds/report_entry.py).
    mime_type: str = KOS_MIME_TYPE
    class_code: Code = KOS_CLASS
    type_code: Code = KOS_TYPE
    format_code: Code = KOS_FORMAT

    @property
    def confidentiality_codes(self) -> list[Code]:
        codes = [Code("N", ns.CONFIDENTIALITY_SCHEME, "Normal")]
        flags = (
            (self.masque_ps, "MASQUE_PS", "Masqué aux professionnels de santé"),
            (self.invisible_patient, "INVISIBLE_PATIENT", "Non visible par le patient"),
            (self.invisible_representants_legaux, "INVISIBLE_REPRESENTANTS_LEGAUX",
             "Non visible par les représentants légaux du patient"),
        )  # fmt: skip
        codes += [Code(c, ns.DMP_CONFIDENTIALITY_SCHEME, d) for on, c, d in flags if on]
        return codes

    @property
    def event_codes(self) -> list[Code]:
        codes: list[Code] = []
        for m in dict.fromkeys(m.strip().upper() for m in self.modalities):
            if m and m not in _NOT_ACQUISITION:
                codes.append(Code(m, ns.MODALITY_SCHEME, MODALITY_DISPLAY.get(m, m)))
        for r in self.regions:
            scheme = self.region_scheme or r.scheme or ns.REGION_SCHEME
            code = Code(r.code, scheme, r.display)
            if code not in codes:
                codes.append(code)
        return codes


# The submission-set signature (IHE DSG) as the ANS validator sample describes its DocumentEntry.
SIGNATURE_MIME_TYPE = "text/xml"
SIGNATURE_CLASS_CODE = Code("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN", "Digital Signature")
SIGNATURE_TYPE_CODE = Code("E1762", "ASTM", "Full Document")
SIGNATURE_FORMAT_CODE = Code("http://www.w3.org/2000/09/xmldsig#", "URN", "Default Signature Style")
SIGNATURE_EVENT_CODE = Code("1.2.840.10065.1.12.1.14", "1.2.840.10065.1.12", "Source")
SIGNATURE_LANGUAGE = "art"  # ISO 639-2 "artificial languages", as in the sample
ASSOC_SIGNS = "urn:ihe:iti:2007:AssociationType:signs"


@dataclass(frozen=True)
class SubmissionSignature:
    """The signature document of one ITI-41 (see xds/signature.py) and the ids its DocumentEntry takes."""

    unique_id: str  # an OID
    xml: bytes
    entry_uuid: str = field(default_factory=new_uuid)


@dataclass
class SubmissionSet:
    """The SubmissionSet that carries one publication (ITI-41) or one status update (ITI-57)."""

    unique_id: str  # an OID
    source_id: str  # the box's source OID
    submission_time: str  # YYYYMMDDhhmmss, UTC
    author: Author
    patient_id: str
    content_type: Code = DEFAULT_CONTENT_TYPE
    title: str | None = None
    comments: str | None = None
    language: str = "fr-FR"
    entry_uuid: str = field(default_factory=new_uuid)


# ---------------------------------------------------------------------------------------- building


def _sub(parent: etree._Element, tag: str, attrib: Mapping[str, str] | None = None) -> etree._Element:
    return etree.SubElement(parent, tag, dict(attrib or {}))


def _check(what: str, value: str, limit: int = MAX_VALUE) -> str:
    if not value:
        raise MetadataError(f"{what} is empty")
    if len(value) > limit:
        raise MetadataError(f"{what} is {len(value)} characters long; the schema allows {limit}")
    return value


def _slot(parent: etree._Element, name: str, values: Iterable[str]) -> None:
    vals = list(values)
    if not vals:
        return
    value_list = _sub(_sub(parent, R + "Slot", {"name": name}), R + "ValueList")
    for v in vals:
        try:
            _sub(value_list, R + "Value").text = _check(f"slot {name}", v)
        except ValueError as exc:  # lxml refuses control characters
            raise MetadataError(f"slot {name}: {exc}") from None


def _dtm(name: str, value: str | None) -> list[str]:
    if value is None:
        return []
    if not _DTM.match(value):
        raise MetadataError(f"slot {name} must be a UTC time YYYY[MM[DD[hh[mm[ss]]]]]")
    return [value]


def _localized(parent: etree._Element, tag: str, text: str, lang: str) -> None:
    value = _check(f"{tag} of {parent.get('id')}", text, MAX_TEXT)
    attrs = {XML_LANG: lang, "charset": "UTF-8", "value": value}
    _sub(_sub(parent, R + tag), R + "LocalizedString", attrs)


def _classify(parent: etree._Element, scheme: str, code: Code, lang: str, what: str) -> None:
    attrs = {"id": new_uuid(), "classificationScheme": scheme, "classifiedObject": parent.get("id", ""),
             "nodeRepresentation": _check(f"{what} code", code.code)}  # fmt: skip
    cl = _sub(parent, R + "Classification", attrs)
    _slot(cl, "codingScheme", [_check(f"{what} codingScheme", code.scheme)])
    _localized(cl, "Name", code.display or code.code, lang)


def _author(parent: etree._Element, scheme: str, author: Author) -> None:
    if not author.person and not author.institutions:
        raise MetadataError(f"author of {parent.get('id')} needs authorPerson or authorInstitution")
    attrs = {"id": new_uuid(), "classificationScheme": scheme, "classifiedObject": parent.get("id", ""),
             "nodeRepresentation": ""}  # fmt: skip
    cl = _sub(parent, R + "Classification", attrs)
    _slot(cl, "authorPerson", [author.person] if author.person else [])
    _slot(cl, "authorInstitution", author.institutions)
    _slot(cl, "authorRole", author.roles)
    _slot(cl, "authorSpecialty", author.specialties)


def _external_id(parent: etree._Element, scheme: str, value: str, label: str, lang: str) -> None:
    attrs = {"id": new_uuid(), "identificationScheme": scheme, "registryObject": parent.get("id", ""),
             "value": _check(label, value)}  # fmt: skip
    _localized(_sub(parent, R + "ExternalIdentifier", attrs), "Name", label, lang)


def _association(rol: etree._Element, kind: str, source: str, target: str, slots: Mapping[str, str]) -> None:
    attrs = {"id": new_uuid(), "associationType": kind, "sourceObject": source, "targetObject": target}
    assoc = _sub(rol, R + "Association", attrs)
    for name, value in slots.items():
        _slot(assoc, name, [value])


def _check_ids(patient_id: str, unique_id: str, what: str) -> None:
    if not _CX_PATIENT.match(patient_id):
        raise MetadataError(f"{what}.patientId is not a CX of the form ID^^^&OID&ISO^NH")
    if len(unique_id) > 64 or not _OID.match(unique_id):
        raise MetadataError(f"{what}.uniqueId must be an OID of at most 64 characters")


def _submission_set(rol: etree._Element, ss: SubmissionSet) -> None:
    _check_ids(ss.patient_id, ss.unique_id, "XDSSubmissionSet")
    if not _OID.match(ss.source_id):
        raise MetadataError("XDSSubmissionSet.sourceId must be an OID")
    rp = _sub(rol, R + "RegistryPackage", {"id": ss.entry_uuid})
    _slot(rp, "submissionTime", _dtm("submissionTime", ss.submission_time))
    if ss.title:
        _localized(rp, "Name", ss.title, ss.language)
    if ss.comments:
        _localized(rp, "Description", ss.comments, ss.language)
    _author(rp, ns.SS_AUTHOR, ss.author)
    _classify(rp, ns.SS_CONTENT_TYPE_CODE, ss.content_type, ss.language, "contentTypeCode")
    _sub(
        rp,
        R + "Classification",
        {"id": new_uuid(), "classificationNode": ns.OBJ_SUBMISSION_SET, "classifiedObject": ss.entry_uuid},
    )
    _external_id(rp, ns.SS_UNIQUE_ID, ss.unique_id, "XDSSubmissionSet.uniqueId", ss.language)
    _external_id(rp, ns.SS_SOURCE_ID, ss.source_id, "XDSSubmissionSet.sourceId", ss.language)
    _external_id(rp, ns.SS_PATIENT_ID, ss.patient_id, "XDSSubmissionSet.patientId", ss.language)


def _document_entry(rol: etree._Element, e: KosDocumentEntry, sha1: str, size: int) -> None:
    _check_ids(e.patient_id, e.unique_id, "XDSDocumentEntry")
    lang = e.language
    eo = _sub(
        rol, R + "ExtrinsicObject", {"id": e.entry_uuid, "mimeType": e.mime_type, "objectType": ns.OBJ_DOCUMENT_ENTRY}
    )
    # rim.xsd: every Slot comes before Name, Description, Classification and ExternalIdentifier.
    _slot(eo, "creationTime", _dtm("creationTime", e.creation_time))
    _slot(eo, "hash", [sha1])
    _slot(eo, "languageCode", [e.language])
    _slot(eo, "legalAuthenticator", [e.legal_authenticator] if e.legal_authenticator else [])
    _slot(eo, "serviceStartTime", _dtm("serviceStartTime", e.service_start))
    _slot(eo, "serviceStopTime", _dtm("serviceStopTime", e.service_stop))
    _slot(eo, "size", [str(size)])
    _slot(eo, "sourcePatientId", [_check("sourcePatientId", e.source_patient_id)])
    _slot(eo, "sourcePatientInfo", e.source_patient_info)
    _slot(eo, REFERENCE_ID_LIST, [r.to_cx() for r in e.reference_ids])
    _localized(eo, "Name", e.title, lang)
    if e.comments:
        _localized(eo, "Description", e.comments, lang)
    _author(eo, ns.DE_AUTHOR, e.author)
    _classify(eo, ns.DE_CLASS_CODE, e.class_code, lang, "classCode")
    for code in e.confidentiality_codes:
        _classify(eo, ns.DE_CONFIDENTIALITY_CODE, code, lang, "confidentialityCode")
    for code in e.event_codes:
        _classify(eo, ns.DE_EVENT_CODE, code, lang, "eventCodeList")
    _classify(eo, ns.DE_FORMAT_CODE, e.format_code, lang, "formatCode")
    _classify(eo, ns.DE_HEALTHCARE_FACILITY_TYPE_CODE, e.healthcare_facility_type, lang, "healthcareFacilityTypeCode")
    _classify(eo, ns.DE_PRACTICE_SETTING_CODE, e.practice_setting, lang, "practiceSettingCode")
    _classify(eo, ns.DE_TYPE_CODE, e.type_code, lang, "typeCode")
    _external_id(eo, ns.DE_PATIENT_ID, e.patient_id, "XDSDocumentEntry.patientId", lang)
    _external_id(eo, ns.DE_UNIQUE_ID, e.unique_id, "XDSDocumentEntry.uniqueId", lang)


def signature_entry(rol: etree._Element, sig: SubmissionSignature, e: KosDocumentEntry, ss: SubmissionSet) -> None:
    """The signature's DocumentEntry: its own codes, the KOS's patient, author, setting and visibility."""
    if len(sig.unique_id) > 64 or not _OID.match(sig.unique_id):
        raise MetadataError("the signature's XDSDocumentEntry.uniqueId must be an OID of at most 64 characters")
    lang = e.language
    eo = _sub(
        rol,
        R + "ExtrinsicObject",
        {"id": sig.entry_uuid, "mimeType": SIGNATURE_MIME_TYPE, "objectType": ns.OBJ_DOCUMENT_ENTRY},
    )
    # Signed when submitted: creation and service times are the submission's.
    _slot(eo, "creationTime", _dtm("creationTime", ss.submission_time))
    _slot(eo, "hash", [hashlib.sha1(sig.xml).hexdigest()])
    _slot(eo, "languageCode", [SIGNATURE_LANGUAGE])
    _slot(eo, "legalAuthenticator", [e.legal_authenticator] if e.legal_authenticator else [])
    _slot(eo, "serviceStartTime", _dtm("serviceStartTime", ss.submission_time))
    _slot(eo, "serviceStopTime", _dtm("serviceStopTime", ss.submission_time))
    _slot(eo, "size", [str(len(sig.xml))])
    _slot(eo, "sourcePatientId", [_check("sourcePatientId", e.patient_id)])
    _slot(eo, REFERENCE_ID_LIST, [r.to_cx() for r in e.reference_ids])
    _localized(eo, "Name", SIGNATURE_EVENT_CODE.display, lang)
    _author(eo, ns.DE_AUTHOR, ss.author)
    _classify(eo, ns.DE_CLASS_CODE, SIGNATURE_CLASS_CODE, lang, "classCode")
    for code in e.confidentiality_codes:
        _classify(eo, ns.DE_CONFIDENTIALITY_CODE, code, lang, "confidentialityCode")
    _classify(eo, ns.DE_EVENT_CODE, SIGNATURE_EVENT_CODE, lang, "eventCodeList")
    _classify(eo, ns.DE_FORMAT_CODE, SIGNATURE_FORMAT_CODE, lang, "formatCode")
    _classify(eo, ns.DE_HEALTHCARE_FACILITY_TYPE_CODE, e.healthcare_facility_type, lang, "healthcareFacilityTypeCode")
    _classify(eo, ns.DE_PRACTICE_SETTING_CODE, e.practice_setting, lang, "practiceSettingCode")
    _classify(eo, ns.DE_TYPE_CODE, SIGNATURE_TYPE_CODE, lang, "typeCode")
    _external_id(eo, ns.DE_PATIENT_ID, e.patient_id, "XDSDocumentEntry.patientId", lang)
    _external_id(eo, ns.DE_UNIQUE_ID, sig.unique_id, "XDSDocumentEntry.uniqueId", lang)


def build_provide_and_register(
    entry: KosDocumentEntry,
    submission: SubmissionSet,
    document: bytes,
    replaces_entry_uuid: str | None = None,
    signature: SubmissionSignature | None = None,
) -> tuple[etree._Element, list[Attachment]]:
    """ITI-41 payload (xdsb:ProvideAndRegisterDocumentSetRequest), the KOS and its signature as attachments.

    The DMP refuses a submission without its signature; `signature` may be None only for tests of that refusal.
    """
    if entry.patient_id != submission.patient_id:
        raise MetadataError("XDSDocumentEntry.patientId differs from XDSSubmissionSet.patientId")
    sha1, size = hashlib.sha1(document).hexdigest(), len(document)
    if entry.hash is not None and entry.hash.lower() != sha1:
        raise MetadataError("XDSDocumentEntry.hash does not match the document bytes")
    if entry.size is not None and entry.size != size:
        raise MetadataError("XDSDocumentEntry.size does not match the document bytes")
    if replaces_entry_uuid is not None and not replaces_entry_uuid.startswith("urn:uuid:"):
        raise MetadataError("the replaced DocumentEntry must be named by its entryUUID (urn:uuid:...)")
    root = etree.Element(f"{{{ns.XDSB}}}ProvideAndRegisterDocumentSetRequest",
                         nsmap={"xdsb": ns.XDSB, "lcm": ns.LCM, "rim": ns.RIM})  # fmt: skip
    rol = _sub(_sub(root, f"{{{ns.LCM}}}SubmitObjectsRequest"), R + "RegistryObjectList")
    _submission_set(rol, submission)
    _document_entry(rol, entry, sha1, size)
    _association(rol, ns.ASSOC_HAS_MEMBER, submission.entry_uuid, entry.entry_uuid,
                 {"SubmissionSetStatus": "Original"})  # fmt: skip
    if signature is not None:
        signature_entry(rol, signature, entry, submission)
        _association(rol, ns.ASSOC_HAS_MEMBER, submission.entry_uuid, signature.entry_uuid,
                     {"SubmissionSetStatus": "Original"})  # fmt: skip
        _association(rol, ASSOC_SIGNS, signature.entry_uuid, submission.entry_uuid,
                     {"SubmissionSetStatus": "Original"})  # fmt: skip
    if replaces_entry_uuid is not None:
        _association(rol, ns.ASSOC_RPLC, entry.entry_uuid, replaces_entry_uuid, {})
    attachments = [Attachment(f"{uuid.uuid4().hex}@drimbox", document, entry.mime_type)]
    parts = [(entry.entry_uuid, attachments[0])]
    if signature is not None:
        attachments.append(Attachment(f"{uuid.uuid4().hex}@drimbox", signature.xml, SIGNATURE_MIME_TYPE))
        parts.append((signature.entry_uuid, attachments[1]))
    for entry_id, att in parts:
        doc = _sub(root, f"{{{ns.XDSB}}}Document", {"id": entry_id})
        _sub(doc, f"{{{ns.XOP}}}Include", {"href": f"cid:{att.content_id}"})
    return root, attachments


def build_update_status(
    entry_uuid: str,
    submission: SubmissionSet,
    new_status: str = ns.STATUS_DELETED,
    original_status: str = ns.STATUS_APPROVED,
) -> etree._Element:
    """ITI-57 payload (lcm:SubmitObjectsRequest) moving one DocumentEntry to `new_status`.

    The DMP deletes with `urn:asip:ci-sis:2010:StatusType:Deleted`; plain IHE registries deprecate.
    """
    if not entry_uuid.startswith("urn:uuid:"):
        raise MetadataError("ITI-57 names the DocumentEntry by its entryUUID (urn:uuid:...), not uniqueId")
    for what, status in (("NewStatus", new_status), ("OriginalStatus", original_status)):
        if not status.startswith("urn:"):
            raise MetadataError(f"{what} must be a status URN")
    root = etree.Element(f"{{{ns.LCM}}}SubmitObjectsRequest", nsmap={"lcm": ns.LCM, "rim": ns.RIM})
    rol = _sub(root, R + "RegistryObjectList")
    _submission_set(rol, submission)
    _association(rol, ns.ASSOC_UPDATE_AVAILABILITY_STATUS, submission.entry_uuid, entry_uuid,
                 {"OriginalStatus": original_status, "NewStatus": new_status})  # fmt: skip
    return root
