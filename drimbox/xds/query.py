"""ITI-18 registry stored queries for the DMP: AdhocQueryRequest building, AdhocQueryResponse parsing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lxml import etree

from drimbox.xds import namespaces as ns
from drimbox.xds.metadata import (
    MAX_VALUE,
    REF_ACCESSION,
    REF_STUDY_UID,
    REFERENCE_ID_LIST,
    Author,
    Code,
    MetadataError,
    R,
    ReferenceId,
    _check,
    _dtm,
    _slot,
    _sub,
)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _query_values(name: str, value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        if name.endswith(("TimeFrom", "TimeTo")):  # times are numbers in stored queries, not strings
            return _dtm(name, value)
        return [_check(f"query parameter {name}", _quote(value))]
    if not value:
        raise MetadataError(f"query parameter {name} has an empty list")
    # A list longer than one rim:Value is split over several Values, which the registry ORs together.
    chunks: list[list[str]] = [[]]
    for item in map(_quote, value):
        if chunks[-1] and len(",".join([*chunks[-1], item])) + 2 > MAX_VALUE:
            chunks.append([])
        chunks[-1].append(item)
    return [_check(f"query parameter {name}", "(" + ",".join(c) + ")") for c in chunks]


def build_stored_query(
    query_id: str, params: Mapping[str, str | Sequence[str]], return_type: str = "LeafClass"
) -> etree._Element:
    """ITI-18 payload (query:AdhocQueryRequest); a str is one quoted value, a list an OR-list `('a','b')`."""
    if return_type not in ("LeafClass", "ObjectRef"):
        raise MetadataError(f"returnType {return_type!r} is neither LeafClass nor ObjectRef")
    root = etree.Element(f"{{{ns.QUERY}}}AdhocQueryRequest", nsmap={"query": ns.QUERY, "rim": ns.RIM})
    _sub(root, f"{{{ns.QUERY}}}ResponseOption", {"returnType": return_type, "returnComposedObjects": "true"})
    query = _sub(root, R + "AdhocQuery", {"id": query_id})
    for name, value in params.items():
        if not name.startswith("$"):
            raise MetadataError(f"stored query parameter {name!r} must start with '$'")
        _slot(query, name, _query_values(name, value))
    return root


def find_documents_query(
    patient_id: str,
    statuses: Sequence[str] = (ns.STATUS_APPROVED,),
    *,
    type_codes: Sequence[Code] = (),
    class_codes: Sequence[Code] = (),
    format_codes: Sequence[Code] = (),
    event_codes: Sequence[Code] = (),
    extra: Mapping[str, str | Sequence[str]] | None = None,
    return_type: str = "LeafClass",
) -> etree._Element:
    """FindDocuments for one patient; codes OR within a list; `extra` adds other parameters as is."""
    params: dict[str, str | Sequence[str]] = {
        "$XDSDocumentEntryPatientId": patient_id,
        "$XDSDocumentEntryStatus": list(statuses),
    }
    by_name = {
        "$XDSDocumentEntryTypeCode": type_codes,
        "$XDSDocumentEntryClassCode": class_codes,
        "$XDSDocumentEntryFormatCode": format_codes,
        "$XDSDocumentEntryEventCodeList": event_codes,
    }
    for name, codes in by_name.items():
        if codes:
            params[name] = [c.to_query() for c in codes]
    params.update(extra or {})
    return build_stored_query(ns.Q_FIND_DOCUMENTS, params, return_type)


def find_by_reference_id_query(
    patient_id: str,
    reference_ids: Sequence[ReferenceId | str],
    statuses: Sequence[str] = (ns.STATUS_APPROVED,),
    return_type: str = "LeafClass",
) -> etree._Element:
    """FindDocumentsByReferenceId: the patient's entries carrying any of these accession/study/order ids."""
    refs = [r.to_cx() if isinstance(r, ReferenceId) else r for r in reference_ids]
    params = {"$XDSDocumentEntryPatientId": patient_id, "$XDSDocumentEntryStatus": list(statuses),
              "$XDSDocumentEntryReferenceIdList": refs}  # fmt: skip
    return build_stored_query(ns.Q_FIND_DOCUMENTS_BY_REFERENCE_ID, params, return_type)


def get_documents_query(
    *, entry_uuids: Sequence[str] = (), unique_ids: Sequence[str] = (), return_type: str = "LeafClass"
) -> etree._Element:
    """GetDocuments by entryUUIDs or by uniqueIds (exactly one of the two)."""
    if bool(entry_uuids) == bool(unique_ids):
        raise MetadataError("GetDocuments takes either entry UUIDs or unique ids, not both or neither")
    name = "$XDSDocumentEntryEntryUUID" if entry_uuids else "$XDSDocumentEntryUniqueId"
    return build_stored_query(ns.Q_GET_DOCUMENTS, {name: list(entry_uuids or unique_ids)}, return_type)


# ---------------------------------------------------------------------------------------- parsing


@dataclass
class DocumentEntryInfo:
    """A DocumentEntry as the registry returns it (ITI-18 LeafClass)."""

    entry_uuid: str
    unique_id: str
    patient_id: str
    status: str
    mime_type: str
    repository_unique_id: str | None = None
    home_community_id: str | None = None
    hash: str | None = None  # lowercase hex
    size: int | None = None
    creation_time: str | None = None
    service_start: str | None = None
    service_stop: str | None = None
    language: str | None = None
    title: str | None = None
    comments: str | None = None
    format_code: Code | None = None
    class_code: Code | None = None
    type_code: Code | None = None
    healthcare_facility_type: Code | None = None
    practice_setting: Code | None = None
    confidentiality_codes: list[Code] = field(default_factory=list)
    event_codes: list[Code] = field(default_factory=list)
    reference_ids: list[ReferenceId] = field(default_factory=list)
    authors: list[Author] = field(default_factory=list)
    legal_authenticator: str | None = None
    source_patient_id: str | None = None
    source_patient_info: list[str] = field(default_factory=list)

    @property
    def approved(self) -> bool:
        return self.status == ns.STATUS_APPROVED

    @property
    def is_kos(self) -> bool:
        return self.format_code is not None and self.format_code.code == ns.KOS_FORMAT_CODE[0]

    @property
    def study_uids(self) -> list[str]:
        return [r.value for r in self.reference_ids if r.kind == REF_STUDY_UID]

    @property
    def accession_numbers(self) -> list[ReferenceId]:
        return [r for r in self.reference_ids if r.kind == REF_ACCESSION]


def _slots(el: etree._Element) -> dict[str, list[str]]:
    return {
        s.get("name", ""): [v.text or "" for v in s.iterfind(f"{R}ValueList/{R}Value")] for s in el.iterfind(R + "Slot")
    }


def _first(slots: Mapping[str, list[str]], name: str) -> str | None:
    values = slots.get(name)
    return values[0] if values else None


def _text(el: etree._Element, tag: str) -> str | None:
    ls = el.find(f"{R}{tag}/{R}LocalizedString")
    return ls.get("value") if ls is not None else None


def _code(cl: etree._Element) -> Code:
    scheme = _first(_slots(cl), "codingScheme") or ""
    return Code(cl.get("nodeRepresentation", ""), scheme, _text(cl, "Name") or "")


def parse_document_entry(eo: etree._Element) -> DocumentEntryInfo:
    """One rim:ExtrinsicObject (from a query response, or from a submission) as a DocumentEntryInfo."""
    entry_uuid = eo.get("id", "")
    ext = {e.get("identificationScheme"): e.get("value", "") for e in eo.iterfind(R + "ExternalIdentifier")}
    unique_id, patient_id = ext.get(ns.DE_UNIQUE_ID), ext.get(ns.DE_PATIENT_ID)
    if not unique_id or not patient_id:
        raise MetadataError(f"DocumentEntry {entry_uuid} lacks XDSDocumentEntry.uniqueId or patientId")
    slots = _slots(eo)
    by_scheme: dict[str, list[etree._Element]] = {}
    for cl in eo.iterfind(R + "Classification"):
        by_scheme.setdefault(cl.get("classificationScheme", ""), []).append(cl)

    def one(scheme: str) -> Code | None:
        found = by_scheme.get(scheme)
        return _code(found[0]) if found else None

    size = _first(slots, "size")
    digest = _first(slots, "hash")
    authors = []
    for cl in by_scheme.get(ns.DE_AUTHOR, []):
        a = _slots(cl)
        authors.append(Author(_first(a, "authorPerson") or "", a.get("authorInstitution", []),
                              a.get("authorRole", []), a.get("authorSpecialty", [])))  # fmt: skip
    return DocumentEntryInfo(
        entry_uuid=entry_uuid,
        unique_id=unique_id,
        patient_id=patient_id,
        status=eo.get("status", ""),
        mime_type=eo.get("mimeType", ""),
        repository_unique_id=_first(slots, "repositoryUniqueId"),
        home_community_id=eo.get("home"),
        hash=digest.lower() if digest else None,
        size=int(size) if size and size.isascii() and size.isdigit() else None,  # isdigit() alone takes "²"
        creation_time=_first(slots, "creationTime"),
        service_start=_first(slots, "serviceStartTime"),
        service_stop=_first(slots, "serviceStopTime"),
        language=_first(slots, "languageCode"),
        title=_text(eo, "Name"),
        comments=_text(eo, "Description"),
        format_code=one(ns.DE_FORMAT_CODE),
        class_code=one(ns.DE_CLASS_CODE),
        type_code=one(ns.DE_TYPE_CODE),
        healthcare_facility_type=one(ns.DE_HEALTHCARE_FACILITY_TYPE_CODE),
        practice_setting=one(ns.DE_PRACTICE_SETTING_CODE),
        confidentiality_codes=[_code(c) for c in by_scheme.get(ns.DE_CONFIDENTIALITY_CODE, [])],
        event_codes=[_code(c) for c in by_scheme.get(ns.DE_EVENT_CODE, [])],
        reference_ids=[ReferenceId.parse(v) for v in slots.get(REFERENCE_ID_LIST, [])],
        authors=authors,
        legal_authenticator=_first(slots, "legalAuthenticator"),
        source_patient_id=_first(slots, "sourcePatientId"),
        source_patient_info=slots.get("sourcePatientInfo", []),
    )


def parse_document_entries(response: etree._Element) -> list[DocumentEntryInfo]:
    """The DocumentEntries of a query:AdhocQueryResponse (LeafClass); folders and associations are skipped."""
    return [parse_document_entry(eo) for eo in response.iterfind(f"{R}RegistryObjectList/{R}ExtrinsicObject")]


def parse_object_refs(response: etree._Element) -> list[str]:
    """The ids of a query:AdhocQueryResponse asked with returnType ObjectRef."""
    return [o.get("id", "") for o in response.iterfind(f"{R}RegistryObjectList/{R}ObjectRef")]
