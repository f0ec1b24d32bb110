"""The DMP's acceptance rules for an ITI-41 submission, each breach reported with its IHE error code."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from drimbox.sim.dmp_kinds import DMP_VISIBILITY, HL7_CONFIDENTIALITY, DocumentKind
from drimbox.sim.dmp_metadata import DocumentEntryIn, RegistryObject, Submission, SubmissionSetIn, parse_cx
from drimbox.xds import namespaces as ns

DMP_REPOSITORY_UNIQUE_ID = "1.2.250.1.213.4.1.1.1"
INS_TEST_OID = "1.2.250.1.213.1.4.10"
ASSOC_SIGNS = "urn:ihe:iti:2007:AssociationType:signs"

# Error codes (IHE ITI TF-3 Table 4.2.4.1-2, plus the ebRS UnresolvedReferenceException).
METADATA = "XDSRegistryMetadataError"
UNKNOWN_PATIENT = "XDSUnknownPatientId"
PATIENT_MISMATCH = "XDSPatientIdDoesNotMatch"
MISSING_DOCUMENT = "XDSMissingDocument"
MISSING_METADATA = "XDSMissingDocumentMetadata"
NON_IDENTICAL_HASH = "XDSNonIdenticalHash"
NON_IDENTICAL_SIZE = "XDSNonIdenticalSize"
DUPLICATE_IN_MESSAGE = "XDSRegistryDuplicateUniqueIdInMessage"
DUPLICATE_IN_REGISTRY = "XDSDuplicateUniqueIdInRegistry"
INVALID_CONTENT = "InvalidDocumentContent"
UNRESOLVED_REFERENCE = "UnresolvedReferenceException"
DEPRECATED_TARGET = "XDSRegistryDeprecatedDocumentError"

# Slots the DMP requires on every DocumentEntry, and slots that take exactly one value.
REQUIRED_ENTRY_SLOTS = ("creationTime", "languageCode", "sourcePatientId", "serviceStartTime")
SINGLE_VALUED_SLOTS = frozenset(
    {
        "creationTime",
        "languageCode",
        "sourcePatientId",
        "serviceStartTime",
        "serviceStopTime",
        "hash",
        "size",
        "legalAuthenticator",
        "repositoryUniqueId",
        "submissionTime",
        "URI",
    }
)
TIME_SLOTS = ("creationTime", "serviceStartTime", "serviceStopTime", "submissionTime")
_DTM = re.compile(r"^\d{4}(\d{2}){0,5}$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")
_SHA1 = re.compile(r"^[0-9A-Fa-f]{40}$")
# Single coded attributes of a DocumentEntry: (scheme, XDS name).
_SINGLE_CODES = (
    (ns.DE_CLASS_CODE, "classCode"),
    (ns.DE_TYPE_CODE, "typeCode"),
    (ns.DE_FORMAT_CODE, "formatCode"),
    (ns.DE_HEALTHCARE_FACILITY_TYPE_CODE, "healthcareFacilityTypeCode"),
    (ns.DE_PRACTICE_SETTING_CODE, "practiceSettingCode"),
)


@dataclass(frozen=True)
class XdsError:
    """One RegistryError: errorCode, codeContext (names the slot or value), location (the object)."""

    code: str
    context: str
    location: str = ""


class KnownPatients:
    """Patients whose DMP exists in the simulator, keyed by (INS, assigning authority OID)."""

    def __init__(self, patients: Iterable[str]) -> None:
        self._keys: set[tuple[str, str]] = set()
        for p in patients:
            key = parse_cx(p) if "^" in p else (p, INS_TEST_OID)
            if key is None:
                raise ValueError(f"sim.patients: {p!r} is neither an INS nor an HL7 CX id^^^&OID&ISO^NH")
            self._keys.add(key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys


def where(obj: RegistryObject, kind: str, detail: str = "") -> str:
    return f"{kind}[@id='{obj.id}']{detail}"


def _slot_errors(obj: RegistryObject, kind: str, required: Iterable[str]) -> list[XdsError]:
    errors = [
        XdsError(METADATA, f"slot {name} is missing", where(obj, kind, f"/Slot[@name='{name}']"))
        for name in required
        if not obj.slots.get(name) or not obj.slots[name][0]
    ]
    for name in obj.duplicate_slots:
        errors.append(XdsError(METADATA, f"slot {name} appears more than once", where(obj, kind)))
    for name, values in obj.slots.items():
        loc = where(obj, kind, f"/Slot[@name='{name}']")
        if name in SINGLE_VALUED_SLOTS and len(values) > 1:
            errors.append(XdsError(METADATA, f"slot {name} takes a single value, got {len(values)}", loc))
        if name in TIME_SLOTS and values and not _DTM.match(values[0]):
            errors.append(
                XdsError(METADATA, f"slot {name} value {values[0]!r} is not a UTC YYYY[MM[DD[hh[mm[ss]]]]]", loc)
            )
    return errors


def _patient_errors(value: str | None, what: str, loc: str, patients: KnownPatients) -> list[XdsError]:
    if not value:
        return [XdsError(UNKNOWN_PATIENT, f"{what} is missing", loc)]
    key = parse_cx(value)
    if key is None:
        return [XdsError(METADATA, f"{what} {value!r} is not an HL7 CX id^^^&OID&ISO", loc)]
    if key not in patients:
        return [XdsError(UNKNOWN_PATIENT, f"{what} {value} has no DMP in this registry", loc)]
    return []


def _author_errors(obj: RegistryObject, scheme: str, kind: str) -> list[XdsError]:
    authors = obj.authors(scheme)
    if not any(a.get("authorPerson") or a.get("authorInstitution") for a in authors):
        return [XdsError(METADATA, "author (authorPerson or authorInstitution) is missing", where(obj, kind))]
    return []


def check_submission_set(ss: SubmissionSetIn, patients: KnownPatients) -> list[XdsError]:
    kind = "RegistryPackage"
    errors = _slot_errors(ss, kind, ("submissionTime",))
    errors += _author_errors(ss, ns.SS_AUTHOR, kind)
    content = ss.codes(ns.SS_CONTENT_TYPE_CODE)
    if len(content) != 1 or not content[0].code or not content[0].scheme:
        errors.append(XdsError(METADATA, "contentTypeCode (code and codingScheme) is required once", where(ss, kind)))
    for scheme, name in ((ns.SS_UNIQUE_ID, "uniqueId"), (ns.SS_SOURCE_ID, "sourceId")):
        if not ss.external_id(scheme):
            errors.append(XdsError(METADATA, f"XDSSubmissionSet.{name} is missing", where(ss, kind)))
    errors += _patient_errors(ss.external_id(ns.SS_PATIENT_ID), "XDSSubmissionSet.patientId", where(ss, kind), patients)
    return errors


def _kind_errors(entry: DocumentEntryIn, kinds: tuple[DocumentKind, ...]) -> list[XdsError]:
    """formatCode, classCode, typeCode and mimeType must each be accepted, and together form one kind."""
    loc = where(entry, "ExtrinsicObject")
    got = {name: entry.codes(scheme) for scheme, name in _SINGLE_CODES[:3]}
    pairs = {name: (c[0].code, c[0].scheme) for name, c in got.items() if len(c) == 1}
    accepted = {
        "classCode": {k.class_code for k in kinds},
        "typeCode": {k.type_code for k in kinds},
        "formatCode": {f for k in kinds for f in k.format_codes},
    }
    errors = []
    for name, pair in pairs.items():
        if pair not in accepted[name]:
            allowed = ", ".join(sorted(f"{c}^^{s}" for c, s in accepted[name]))
            errors.append(XdsError(METADATA, f"{name} {pair[0]}^^{pair[1]} is not accepted (accepted: {allowed})", loc))
    if errors or len(pairs) < 3:
        return errors
    kind = next((k for k in kinds if k.type_code == pairs["typeCode"]), None)
    if kind is None:  # pragma: no cover - the typeCode was accepted above, so a kind has it
        return errors
    if pairs["classCode"] != kind.class_code:
        errors.append(
            XdsError(
                METADATA,
                f"classCode must be {kind.class_code[0]}^^{kind.class_code[1]} for typeCode {kind.type_code[0]}",
                loc,
            )
        )
    if pairs["formatCode"] not in kind.format_codes:
        errors.append(
            XdsError(
                METADATA,
                f"formatCode {pairs['formatCode'][0]} does not fit typeCode {kind.type_code[0]}",
                loc,
            )
        )
    if entry.mime_type not in kind.mime_types:
        errors.append(
            XdsError(
                METADATA,
                f"mimeType {entry.mime_type!r} is not accepted for {kind.name}:"
                f" use {' or '.join(sorted(kind.mime_types))}",
                loc,
            )
        )
    return errors


def kind_of(entry: DocumentEntryIn, kinds: tuple[DocumentKind, ...]) -> DocumentKind | None:
    types = entry.codes(ns.DE_TYPE_CODE)
    if len(types) != 1:
        return None
    return next((k for k in kinds if k.type_code == (types[0].code, types[0].scheme)), None)


def check_entry(
    entry: DocumentEntryIn, ss_patient: str | None, patients: KnownPatients, kinds: tuple[DocumentKind, ...]
) -> list[XdsError]:
    kind_name = "ExtrinsicObject"
    loc = where(entry, kind_name)
    errors = _slot_errors(entry, kind_name, REQUIRED_ENTRY_SLOTS)
    if entry.object_type != ns.OBJ_DOCUMENT_ENTRY:
        errors.append(XdsError(METADATA, f"objectType {entry.object_type!r} is not a stable DocumentEntry", loc))
    if not entry.mime_type:
        errors.append(XdsError(METADATA, "mimeType is missing", loc))
    if not entry.title:
        errors.append(XdsError(METADATA, "title (Name) is missing", loc))
    unique_id = entry.external_id(ns.DE_UNIQUE_ID)
    if not unique_id or len(unique_id) > 128:
        errors.append(XdsError(METADATA, "XDSDocumentEntry.uniqueId is missing or longer than 128 characters", loc))
    patient = entry.external_id(ns.DE_PATIENT_ID)
    errors += _patient_errors(patient, "XDSDocumentEntry.patientId", loc, patients)
    if patient and ss_patient and parse_cx(patient) != parse_cx(ss_patient):
        errors.append(
            XdsError(PATIENT_MISMATCH, "XDSDocumentEntry.patientId differs from XDSSubmissionSet.patientId", loc)
        )
    language = entry.slot("languageCode")
    if language and not _LANGUAGE.match(language):
        errors.append(XdsError(METADATA, f"slot languageCode value {language!r} is not an RFC 5646 tag", loc))
    source_patient = entry.slot("sourcePatientId")
    if source_patient and parse_cx(source_patient) is None:
        errors.append(XdsError(METADATA, "slot sourcePatientId is not an HL7 CX id^^^&OID&ISO", loc))
    if (h := entry.slot("hash")) is not None and not _SHA1.match(h):
        errors.append(XdsError(METADATA, f"slot hash {h!r} is not a SHA-1 in hexadecimal", loc))
    if (size := entry.slot("size")) is not None and not (size.isascii() and size.isdigit()):
        errors.append(XdsError(METADATA, f"slot size {size!r} is not a number of bytes", loc))
    for scheme, name in _SINGLE_CODES:
        codes = entry.codes(scheme)
        if len(codes) != 1:
            errors.append(XdsError(METADATA, f"{name} is required once, found {len(codes)}", loc))
        elif not codes[0].code or not codes[0].scheme:
            errors.append(XdsError(METADATA, f"{name} needs a nodeRepresentation and a codingScheme slot", loc))
    errors += _confidentiality_errors(entry, loc)
    for code in entry.codes(ns.DE_EVENT_CODE):
        if not code.code or not code.scheme:
            errors.append(
                XdsError(METADATA, "eventCodeList item needs a nodeRepresentation and a codingScheme slot", loc)
            )
    errors += _author_errors(entry, ns.DE_AUTHOR, kind_name)
    return errors + _kind_errors(entry, kinds)


def _confidentiality_errors(entry: DocumentEntryIn, loc: str) -> list[XdsError]:
    pairs = [(c.code, c.scheme) for c in entry.codes(ns.DE_CONFIDENTIALITY_CODE)]
    errors = [
        XdsError(METADATA, f"confidentialityCode {c}^^{s} is not in the DMP value set", loc)
        for c, s in pairs
        if (c, s) not in HL7_CONFIDENTIALITY | DMP_VISIBILITY
    ]
    if sum(1 for p in pairs if p in HL7_CONFIDENTIALITY) != 1:
        errors.append(
            XdsError(METADATA, f"confidentialityCode needs exactly one N, R or V^^{ns.CONFIDENTIALITY_SCHEME}", loc)
        )
    return errors


def check_document(entry: DocumentEntryIn, data: bytes | None, kinds: tuple[DocumentKind, ...]) -> list[XdsError]:
    """The attached bytes must exist and agree with the hash and size slots (when the source gave them)."""
    loc = where(entry, "ExtrinsicObject")
    uid = entry.external_id(ns.DE_UNIQUE_ID) or entry.id
    if data is None:
        return [
            XdsError(
                MISSING_DOCUMENT,
                f"document {uid} is described but not attached (xdsb:Document id={entry.id!r})",
                loc,
            )
        ]
    errors = []
    digest = hashlib.sha1(data).hexdigest()
    if (h := entry.slot("hash")) and _SHA1.match(h) and h.lower() != digest:
        errors.append(
            XdsError(
                NON_IDENTICAL_HASH,
                f"slot hash {h} differs from the SHA-1 {digest} of the attached document {uid}",
                loc,
            )
        )
    if (size := entry.slot("size")) and size.isascii() and size.isdigit() and int(size) != len(data):
        errors.append(
            XdsError(
                NON_IDENTICAL_SIZE,
                f"slot size {size} differs from the {len(data)} bytes attached for {uid}",
                loc,
            )
        )
    kind = kind_of(entry, kinds)
    if not errors and kind is not None and kind.content_check is not None:
        reason = kind.content_check(data, entry)
        if reason:
            errors.append(XdsError(INVALID_CONTENT, f"{uid}: {reason}", loc))
    return errors


def check_associations(sub: Submission, ss: SubmissionSetIn, kinds: tuple[DocumentKind, ...]) -> list[XdsError]:
    entries = {e.id: e for e in sub.entries}
    members: set[str] = set()
    replaced_by: dict[str, str] = {}
    errors = []
    for a in sub.associations:
        loc = where(a, "Association")
        if a.type == ns.ASSOC_HAS_MEMBER:
            if a.source != ss.id or a.target not in entries:
                errors.append(
                    XdsError(
                        METADATA,
                        "HasMember must link the SubmissionSet to a DocumentEntry of this submission",
                        loc,
                    )
                )
            elif a.slot("SubmissionSetStatus") != "Original":
                errors.append(XdsError(METADATA, "HasMember needs slot SubmissionSetStatus = Original", loc))
            else:
                members.add(a.target)
        elif a.type == ns.ASSOC_RPLC:
            if a.source not in entries:
                errors.append(XdsError(METADATA, "RPLC sourceObject must be a DocumentEntry of this submission", loc))
            elif a.target in entries or a.target == ss.id:
                errors.append(XdsError(METADATA, "RPLC targetObject must be a document already in the registry", loc))
            elif a.source in replaced_by:
                errors.append(XdsError(METADATA, f"DocumentEntry {a.source} replaces more than one document", loc))
            else:
                replaced_by[a.source] = a.target
        elif a.type == ASSOC_SIGNS:
            source = entries.get(a.source)
            signature = source is not None and (k := kind_of(source, kinds)) is not None and not k.content_check
            if not signature or a.target != ss.id:
                errors.append(XdsError(METADATA, "signs must link a signature DocumentEntry to the SubmissionSet", loc))
        else:
            errors.append(XdsError(METADATA, f"associationType {a.type} is not accepted by the DMP", loc))
    for entry_id in entries.keys() - members:
        errors.append(
            XdsError(
                METADATA,
                f"DocumentEntry {entry_id} is not a member (HasMember) of the SubmissionSet",
                where(ss, "RegistryPackage"),
            )
        )
    return errors


def check_provide_and_register(
    sub: Submission,
    documents: dict[str, bytes | None],
    patients: KnownPatients,
    kinds: tuple[DocumentKind, ...],
) -> list[XdsError]:
    """Every rule that needs only the request (the registry-state rules live in the store)."""
    errors = [XdsError(METADATA, f"{what} is not accepted in a DMP submission") for what in sub.unexpected]
    errors += [XdsError(METADATA, f"{what} names no object of this submission") for what in sub.misplaced]
    ss = sub.submission_set
    if ss is None:
        return [
            *errors,
            XdsError(METADATA, f"exactly one SubmissionSet is required, found {len(sub.submission_sets)}"),
        ]
    if not sub.entries:
        errors.append(XdsError(METADATA, "the submission holds no DocumentEntry", where(ss, "RegistryPackage")))
    ids = [o.id for o in (ss, *sub.entries, *sub.associations)]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        errors.append(XdsError(METADATA, f"id {dup!r} is used by more than one object"))
    errors += check_submission_set(ss, patients)
    ss_patient = ss.external_id(ns.SS_PATIENT_ID)
    unique_ids = [ss.external_id(ns.SS_UNIQUE_ID)] + [e.external_id(ns.DE_UNIQUE_ID) for e in sub.entries]
    for dup in sorted({u for u in unique_ids if u and unique_ids.count(u) > 1}):
        errors.append(XdsError(DUPLICATE_IN_MESSAGE, f"uniqueId {dup} is used more than once in the submission"))
    for entry in sub.entries:
        errors += check_entry(entry, ss_patient, patients, kinds)
        errors += check_document(entry, documents.get(entry.id), kinds)
    described = {e.id for e in sub.entries}
    for doc_id in documents.keys() - described:
        errors.append(XdsError(MISSING_METADATA, f"xdsb:Document id={doc_id!r} has no DocumentEntry"))
    return errors + check_associations(sub, ss, kinds)
