"""Building the DMP's response payloads: RegistryResponse, AdhocQueryResponse, RetrieveDocumentSetResponse."""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from drimbox.sim.dmp_rules import XdsError
from drimbox.sim.dmp_store import StoredAssociation, StoredEntry
from drimbox.xds import namespaces as ns
from drimbox.xds.schema import parse_xml

_RS = f"{{{ns.RS}}}"
_RIM = f"{{{ns.RIM}}}"
_XDSB = f"{{{ns.XDSB}}}"


def status_of(errors: list[XdsError], succeeded: int = 0) -> str:
    if not errors:
        return ns.STATUS_SUCCESS
    return ns.STATUS_PARTIAL if succeeded else ns.STATUS_FAILURE


def _error_list(parent: etree._Element, errors: Iterable[XdsError]) -> None:
    errors = list(errors)
    if not errors:
        return
    error_list = etree.SubElement(parent, f"{_RS}RegistryErrorList")
    for e in errors:
        node = etree.SubElement(
            error_list,
            f"{_RS}RegistryError",
            errorCode=e.code,
            codeContext=e.context,
            severity=ns.SEVERITY_ERROR,
        )
        if e.location:
            node.set("location", e.location)


def registry_response(errors: list[XdsError], status: str | None = None) -> etree._Element:
    root = etree.Element(f"{_RS}RegistryResponse", nsmap={"rs": ns.RS}, status=status or status_of(errors))
    _error_list(root, errors)
    return root


def entry_element(entry: StoredEntry) -> etree._Element:
    """The registered ExtrinsicObject with its current availability status."""
    element = parse_xml(entry.xml)
    element.set("status", entry.status)
    return element


def association_element(a: StoredAssociation) -> etree._Element:
    element = etree.Element(
        f"{_RIM}Association",
        nsmap={"rim": ns.RIM},
        id=a.id,
        associationType=a.type,
        sourceObject=a.source,
        targetObject=a.target,
    )
    for name, values in a.slots.items():
        slot = etree.SubElement(element, f"{_RIM}Slot", name=name)
        value_list = etree.SubElement(slot, f"{_RIM}ValueList")
        for v in values:
            etree.SubElement(value_list, f"{_RIM}Value").text = v
    return element


def object_ref(object_id: str) -> etree._Element:
    return etree.Element(f"{_RIM}ObjectRef", nsmap={"rim": ns.RIM}, id=object_id)


def adhoc_response(errors: list[XdsError], objects: list[etree._Element]) -> etree._Element:
    root = etree.Element(
        f"{{{ns.QUERY}}}AdhocQueryResponse",
        nsmap={"query": ns.QUERY, "rs": ns.RS, "rim": ns.RIM},
        status=status_of(errors, len(objects)),
    )
    _error_list(root, errors)
    object_list = etree.SubElement(root, f"{_RIM}RegistryObjectList")
    object_list.extend(objects)
    return root


def retrieve_response(
    errors: list[XdsError], documents: list[tuple[StoredEntry, str]], repository_unique_id: str
) -> etree._Element:
    """RetrieveDocumentSetResponse; each (entry, content id) becomes a DocumentResponse + xop:Include."""
    root = etree.Element(f"{_XDSB}RetrieveDocumentSetResponse", nsmap={"xdsb": ns.XDSB, "rs": ns.RS})
    root.append(registry_response(errors, status_of(errors, len(documents))))
    for entry, cid in documents:
        response = etree.SubElement(root, f"{_XDSB}DocumentResponse")
        etree.SubElement(response, f"{_XDSB}RepositoryUniqueId").text = repository_unique_id
        etree.SubElement(response, f"{_XDSB}DocumentUniqueId").text = entry.unique_id
        etree.SubElement(response, f"{_XDSB}mimeType").text = entry.mime_type
        document = etree.SubElement(response, f"{_XDSB}Document")
        etree.SubElement(document, f"{{{ns.XOP}}}Include", nsmap={"xop": ns.XOP}, href=f"cid:{cid}")
    return root
