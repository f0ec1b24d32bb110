"""Validation of XDS.b / ebRS 3.0 payloads against the OASIS and IHE schemas shipped in drimbox/xsd."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

from lxml import etree

from drimbox.xds.namespaces import XOP

XSD_DIR = Path(__file__).resolve().parent.parent / "xsd"


class SchemaError(ValueError):
    """An XML payload does not conform to its schema; the message carries the first errors with lines."""


@functools.cache
def _schema(name: str) -> etree.XMLSchema:
    # The IHE repository schema imports rim/rs/lcm/query by relative path, so one schema covers
    # ProvideAndRegister, Retrieve, AdhocQuery, SubmitObjects and RegistryResponse.
    main = {
        "xds": XSD_DIR / "IHE" / "XDS.b_DocumentRepository.xsd",
        "query": XSD_DIR / "ebRS" / "query.xsd",
        "lcm": XSD_DIR / "ebRS" / "lcm.xsd",
        "rs": XSD_DIR / "ebRS" / "rs.xsd",
        "hl7v3": XSD_DIR / "DMP" / "hl7v3-TD0.2.xsd",
        "habilitations": XSD_DIR / "DMP" / "habilitations.xsd",
    }[name]
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(main), parser))


_SCHEMA_BY_NS = {
    "urn:ihe:iti:xds-b:2007": "xds",
    "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0": "query",
    "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0": "lcm",
    "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0": "rs",
    # TD0.2 (HL7 v3 PRPA_IN201307UV02/PRPA_IN201308UV02) and TD0.3 (setAuthorization): see xsd/DMP/.
    "urn:hl7-org:v3": "hl7v3",
    "urn:si-dmp-habilitations": "habilitations",
}


def validate(element: etree._Element) -> None:
    """Validate one SOAP body payload (the child of soap:Body) against its schema; raise SchemaError."""
    ns = etree.QName(element).namespace or ""
    name = _SCHEMA_BY_NS.get(ns)
    if name is None:
        raise SchemaError(f"no schema for payload element {etree.QName(element).text}")
    # xs:base64Binary content may be an xop:Include in MTOM messages: validate with it emptied.
    candidate = element
    if element.find(f".//{{{XOP}}}Include") is not None:
        candidate = copy.deepcopy(element)
        for inc in candidate.findall(f".//{{{XOP}}}Include"):
            parent = inc.getparent()
            assert parent is not None
            parent.remove(inc)
    schema = _schema(name)
    if not schema.validate(candidate):
        errors = "; ".join(f"line {e.line}: {e.message}" for e in list(schema.error_log)[:5])
        raise SchemaError(f"{etree.QName(element).localname} does not conform to its schema: {errors}")


def safe_parser() -> etree.XMLParser:
    """An XML parser that never resolves entities, never reaches the network and refuses huge trees."""
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, huge_tree=False
    )


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML: DOCTYPE declarations are refused outright (no entities, no XXE)."""
    try:
        tree = etree.fromstring(data, safe_parser())
    except etree.XMLSyntaxError as exc:
        raise SchemaError(f"not well-formed XML: {exc}") from None
    docinfo = tree.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise SchemaError("XML with a DOCTYPE declaration is refused")
    return tree
