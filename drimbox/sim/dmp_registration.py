"""Turns an accepted submission into registry records: UUIDs for symbolic ids, repository slots, columns."""

from __future__ import annotations

import copy
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from drimbox.sim.dmp_metadata import (
    RIM,
    AssociationIn,
    Code,
    DocumentEntryIn,
    RegistryObject,
    Submission,
    SubmissionSetIn,
    order_children,
    parse_cx,
)
from drimbox.xds import namespaces as ns

REFERENCE_ID_LIST = "urn:ihe:iti:xds:2013:referenceIdList"
_REF_ATTRS = ("id", "classifiedObject", "registryObject", "sourceObject", "targetObject")


@dataclass
class NewEntry:
    entry_uuid: str
    unique_id: str
    patient_key: str
    patient_id: str
    mime_type: str
    hash: str
    size: int
    xml: bytes
    data: bytes
    meta: dict[str, Any]
    # RPLC target as the source wrote it (entryUUID, or uniqueId as a DMP convenience), resolved by the store.
    replaces: str | None = None


@dataclass
class NewSubmissionSet:
    entry_uuid: str
    unique_id: str
    patient_key: str
    submission_time: str
    xml: bytes


@dataclass
class NewAssociation:
    id: str
    type: str
    source: str
    target: str
    slots: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class StatusUpdate:
    association_id: str
    target: str
    original: str
    new: str


@dataclass
class Registration:
    submission_set: NewSubmissionSet
    entries: list[NewEntry] = field(default_factory=list)
    associations: list[NewAssociation] = field(default_factory=list)
    updates: list[StatusUpdate] = field(default_factory=list)


def patient_key(cx: str) -> str:
    parsed = parse_cx(cx)
    return "" if parsed is None else f"{parsed[0]}|{parsed[1]}"


def is_uuid_urn(value: str) -> bool:
    if not value.startswith("urn:uuid:"):
        return False
    try:
        uuid.UUID(value[9:])
    except ValueError:
        return False
    return True


def _new_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def id_map(sub: Submission) -> dict[str, str]:
    """Symbolic id → registry UUID; ids that already are urn:uuid are kept (the source may assign them)."""
    mapping: dict[str, str] = {}
    objects: list[RegistryObject] = [*sub.submission_sets, *sub.entries, *sub.associations]
    for obj in objects:
        mapping[obj.id] = obj.id if is_uuid_urn(obj.id) else _new_id()
    return mapping


def _rewrite(element: etree._Element, mapping: dict[str, str]) -> None:
    """Replace symbolic references by UUIDs; nested Classifications/ExternalIdentifiers get their own."""
    for node in element.iter():
        if not isinstance(node.tag, str):
            continue
        for attr in _REF_ATTRS:
            value = node.get(attr)
            if value is None:
                continue
            if value in mapping:
                node.set(attr, mapping[value])
            elif attr == "id" and node is not element and not is_uuid_urn(value):
                node.set(attr, _new_id())


def _set_slot(element: etree._Element, name: str, value: str) -> None:
    for slot in element.findall(f"{{{RIM}}}Slot"):
        if slot.get("name") == name:
            element.remove(slot)
    slot = etree.Element(f"{{{RIM}}}Slot", name=name)
    etree.SubElement(etree.SubElement(slot, f"{{{RIM}}}ValueList"), f"{{{RIM}}}Value").text = value
    element.insert(0, slot)


def _registry_copy(obj: RegistryObject, mapping: dict[str, str], status: str) -> etree._Element:
    """The object as the registry keeps it: its loose Classifications nested, ids resolved, rim.xsd order."""
    element = copy.deepcopy(obj.element)
    for node in obj.loose:
        element.append(copy.deepcopy(node))
    _rewrite(element, mapping)
    # Indentation from the request would end up scattered once children are re-ordered.
    for node in element.iter():
        if node.tail is not None and not node.tail.strip():
            node.tail = None
        if len(node) and node.text is not None and not node.text.strip():
            node.text = None
    element.set("status", status)
    element.set("lid", element.get("id", ""))
    order_children(element)
    return element


def _code(c: Code) -> dict[str, str]:
    return {"code": c.code, "scheme": c.scheme, "display": c.display}


def entry_meta(entry: DocumentEntryIn) -> dict[str, Any]:
    """The JSON columns of an entry: what queries filter on and what inspection shows."""

    def one(scheme: str) -> dict[str, str] | None:
        codes = entry.codes(scheme)
        return _code(codes[0]) if codes else None

    return {
        "classCode": one(ns.DE_CLASS_CODE),
        "typeCode": one(ns.DE_TYPE_CODE),
        "formatCode": one(ns.DE_FORMAT_CODE),
        "practiceSettingCode": one(ns.DE_PRACTICE_SETTING_CODE),
        "healthcareFacilityTypeCode": one(ns.DE_HEALTHCARE_FACILITY_TYPE_CODE),
        "confidentialityCodes": [_code(c) for c in entry.codes(ns.DE_CONFIDENTIALITY_CODE)],
        "eventCodes": [_code(c) for c in entry.codes(ns.DE_EVENT_CODE)],
        "referenceIds": entry.slots.get(REFERENCE_ID_LIST, []),
        "authors": entry.authors(ns.DE_AUTHOR),
        "creationTime": entry.slot("creationTime"),
        "serviceStartTime": entry.slot("serviceStartTime"),
        "serviceStopTime": entry.slot("serviceStopTime"),
        "title": entry.title,
    }


def build_submission_set(ss: SubmissionSetIn, mapping: dict[str, str]) -> NewSubmissionSet:
    element = _registry_copy(ss, mapping, ns.STATUS_APPROVED)
    return NewSubmissionSet(
        entry_uuid=mapping[ss.id],
        unique_id=ss.external_id(ns.SS_UNIQUE_ID) or "",
        patient_key=patient_key(ss.external_id(ns.SS_PATIENT_ID) or ""),
        submission_time=ss.slot("submissionTime") or "",
        xml=etree.tostring(element),
    )


def build_association(a: AssociationIn, mapping: dict[str, str]) -> NewAssociation:
    return NewAssociation(
        id=mapping[a.id],
        type=a.type,
        source=mapping.get(a.source, a.source),
        target=mapping.get(a.target, a.target),
        slots={k: v for k, v in a.slots.items()},
    )


def build_registration(sub: Submission, documents: dict[str, bytes | None], repository_unique_id: str) -> Registration:
    """Records for a submission that passed every request-only rule (see dmp_rules)."""
    ss = sub.submission_set
    assert ss is not None
    mapping = id_map(sub)
    replaces = {a.source: a.target for a in sub.associations if a.type == ns.ASSOC_RPLC}
    reg = Registration(submission_set=build_submission_set(ss, mapping))
    for entry in sub.entries:
        data = documents.get(entry.id) or b""
        element = _registry_copy(entry, mapping, ns.STATUS_APPROVED)
        # The repository states where the document lives and, if the source left them out, its hash and size.
        _set_slot(element, "repositoryUniqueId", repository_unique_id)
        digest = hashlib.sha1(data).hexdigest()
        if entry.slot("hash") is None:
            _set_slot(element, "hash", digest)
        if entry.slot("size") is None:
            _set_slot(element, "size", str(len(data)))
        order_children(element)
        patient = entry.external_id(ns.DE_PATIENT_ID) or ""
        reg.entries.append(
            NewEntry(
                entry_uuid=mapping[entry.id],
                unique_id=entry.external_id(ns.DE_UNIQUE_ID) or "",
                patient_key=patient_key(patient),
                patient_id=patient,
                mime_type=entry.mime_type or "",
                hash=digest,
                size=len(data),
                xml=etree.tostring(element),
                data=data,
                meta=entry_meta(entry),
                replaces=replaces.get(entry.id),
            )
        )
    reg.associations = [build_association(a, mapping) for a in sub.associations]
    return reg
