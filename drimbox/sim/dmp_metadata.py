"""Server-side reading of ebRIM 3.0 submissions (ITI-41, ITI-57) into typed objects, apart from the client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from drimbox.xds import namespaces as ns

RIM = ns.RIM
_SLOT = f"{{{RIM}}}Slot"
_CLASSIFICATION = f"{{{RIM}}}Classification"
_EXTERNAL_ID = f"{{{RIM}}}ExternalIdentifier"
_LOCALIZED = f"{{{RIM}}}LocalizedString"


@dataclass(frozen=True)
class Code:
    """A coded value: Classification nodeRepresentation, its codingScheme slot and its display name."""

    code: str
    scheme: str
    display: str = ""

    @property
    def key(self) -> str:
        return f"{self.code}^^{self.scheme}"


@dataclass
class RegistryObject:
    """What every submitted object carries: its id, slots, name, classifications and external identifiers."""

    element: etree._Element
    id: str
    slots: dict[str, list[str]]
    duplicate_slots: list[str]
    title: str | None
    classifications: list[etree._Element]
    external_ids: dict[str, list[str]]
    # Top-level Classification/ExternalIdentifier elements that name this object (not nested in it).
    loose: list[etree._Element]

    def slot(self, name: str) -> str | None:
        values = self.slots.get(name)
        return values[0] if values else None

    def codes(self, scheme: str) -> list[Code]:
        return [code_of(c) for c in self.classifications if c.get("classificationScheme") == scheme]

    def authors(self, scheme: str) -> list[dict[str, list[str]]]:
        return [slots_of(c)[0] for c in self.classifications if c.get("classificationScheme") == scheme]

    def external_id(self, scheme: str) -> str | None:
        values = self.external_ids.get(scheme)
        return values[0] if values else None


@dataclass
class DocumentEntryIn(RegistryObject):
    mime_type: str | None = None
    object_type: str | None = None


@dataclass
class SubmissionSetIn(RegistryObject):
    pass


@dataclass
class AssociationIn(RegistryObject):
    type: str = ""
    source: str = ""
    target: str = ""


@dataclass
class Submission:
    """The content of a SubmitObjectsRequest, sorted by kind; `unexpected` lists objects the DMP refuses."""

    submission_sets: list[SubmissionSetIn] = field(default_factory=list)
    entries: list[DocumentEntryIn] = field(default_factory=list)
    associations: list[AssociationIn] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misplaced: list[str] = field(default_factory=list)

    @property
    def submission_set(self) -> SubmissionSetIn | None:
        return self.submission_sets[0] if len(self.submission_sets) == 1 else None


def slots_of(element: etree._Element) -> tuple[dict[str, list[str]], list[str]]:
    """Direct Slot children as name → values, and the names that occur more than once."""
    slots: dict[str, list[str]] = {}
    duplicates: list[str] = []
    for slot in element.findall(_SLOT):
        name = slot.get("name", "")
        values = [(v.text or "").strip() for v in slot.findall(f"{{{RIM}}}ValueList/{{{RIM}}}Value")]
        if name in slots:
            duplicates.append(name)
            slots[name].extend(values)
        else:
            slots[name] = values
    return slots, duplicates


def localized(element: etree._Element, child: str) -> str | None:
    """The value of the first LocalizedString of the Name or Description child, or None if absent."""
    node = element.find(f"{{{RIM}}}{child}/{_LOCALIZED}")
    return None if node is None else node.get("value", "")


def code_of(classification: etree._Element) -> Code:
    slots, _ = slots_of(classification)
    scheme = slots.get("codingScheme") or [""]
    return Code(classification.get("nodeRepresentation", ""), scheme[0], localized(classification, "Name") or "")


def _common(element: etree._Element, extra: dict[str, etree._Element]) -> dict[str, Any]:
    """Read the common parts; `extra` holds the top-level Classifications/ExternalIdentifiers naming it."""
    slots, duplicates = slots_of(element)
    classifications = list(element.findall(_CLASSIFICATION))
    eis = list(element.findall(_EXTERNAL_ID))
    for node in extra.values():
        (classifications if node.tag == _CLASSIFICATION else eis).append(node)
    external: dict[str, list[str]] = {}
    for ei in eis:
        external.setdefault(ei.get("identificationScheme", ""), []).append(ei.get("value", ""))
    return {
        "element": element,
        "id": element.get("id", ""),
        "slots": slots,
        "duplicate_slots": duplicates,
        "title": localized(element, "Name"),
        "classifications": classifications,
        "external_ids": external,
        "loose": list(extra.values()),
    }


def parse_submission(request: etree._Element) -> Submission:
    """Sort the RegistryObjectList of a SubmitObjectsRequest into submission set, entries, associations."""
    sub = Submission()
    rol = request.find(f"{{{RIM}}}RegistryObjectList")
    if rol is None:
        return sub
    children = [c for c in rol if isinstance(c.tag, str)]
    # IHE lets Classifications and ExternalIdentifiers sit at top level, naming their object by attribute.
    loose: dict[str, dict[str, etree._Element]] = {}
    for child in children:
        if child.tag == _CLASSIFICATION:
            target = child.get("classifiedObject", "")
        elif child.tag == _EXTERNAL_ID:
            target = child.get("registryObject", "")
        else:
            continue
        loose.setdefault(target, {})[child.get("id", str(len(loose)))] = child
    ss_ids = {
        c.get("classifiedObject", "")
        for c in rol.iter(_CLASSIFICATION)
        if c.get("classificationNode") == ns.OBJ_SUBMISSION_SET
    }
    for child in children:
        local = etree.QName(child).localname
        extra = loose.get(child.get("id", ""), {})
        if local == "RegistryPackage":
            if child.get("id", "") in ss_ids:
                sub.submission_sets.append(SubmissionSetIn(**_common(child, extra)))
            else:
                sub.unexpected.append(f"RegistryPackage {child.get('id', '')!r} (folders are not accepted)")
        elif local == "ExtrinsicObject":
            sub.entries.append(
                DocumentEntryIn(
                    **_common(child, extra),
                    mime_type=child.get("mimeType"),
                    object_type=child.get("objectType"),
                )
            )
        elif local == "Association":
            sub.associations.append(
                AssociationIn(
                    **_common(child, extra),
                    type=child.get("associationType", ""),
                    source=child.get("sourceObject", ""),
                    target=child.get("targetObject", ""),
                )
            )
        elif child.tag in (_CLASSIFICATION, _EXTERNAL_ID):
            continue
        else:
            sub.unexpected.append(f"{local} {child.get('id', '')!r}")
    known = {o.id for o in (*sub.submission_sets, *sub.entries, *sub.associations)}
    for target, nodes in loose.items():
        if target not in known:
            sub.misplaced.extend(f"{etree.QName(n).localname} {n.get('id', '')!r} → {target!r}" for n in nodes.values())
    for obj in (*sub.submission_sets, *sub.entries):
        for node in obj.element:
            attr = "classifiedObject" if node.tag == _CLASSIFICATION else "registryObject"
            if node.tag in (_CLASSIFICATION, _EXTERNAL_ID) and node.get(attr) not in (None, obj.id):
                sub.misplaced.append(f"{etree.QName(node).localname} {node.get('id', '')!r} inside {obj.id!r}")
    return sub


def parse_cx(value: str) -> tuple[str, str] | None:
    """(id, assigning authority OID) of an HL7 CX `id^^^&OID&ISO[^type]`, or None when malformed."""
    parts = value.split("^")
    if len(parts) < 4 or not parts[0]:
        return None
    authority = parts[3].split("&")
    if len(authority) != 3 or authority[0] or not authority[1] or authority[2] != "ISO":
        return None
    return parts[0], authority[1]


def order_children(element: etree._Element) -> None:
    """Put the children of a RegistryObject in rim.xsd order (Slot, Name, ..., ExternalIdentifier)."""
    rank = {
        "Slot": 0,
        "Name": 1,
        "Description": 2,
        "VersionInfo": 3,
        "Classification": 4,
        "ExternalIdentifier": 5,
        "ContentVersionInfo": 6,
    }
    children = [c for c in element if isinstance(c.tag, str)]
    for c in element:
        element.remove(c)
    for c in sorted(children, key=lambda c: rank.get(etree.QName(c).localname, 7)):
        element.append(c)
