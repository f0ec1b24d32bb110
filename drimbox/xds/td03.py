"""TD0.3 on the wire: setAuthorization (urn:si-dmp-habilitations) and its answer (xsd/DMP/habilitations.xsd)."""

from __future__ import annotations

from lxml import etree

from drimbox.xds.access import ADD, REMOVE, AccessFormatError, DeclareResult

HABILITATIONS_NS = "urn:si-dmp-habilitations"
_H = f"{{{HABILITATIONS_NS}}}"


def build_request(action: str = ADD, role: str | None = None) -> etree._Element:
    """setAuthorization: add (AJOUT) or remove (SUPPRESSION) the VIHF's professional's authorisation."""
    if action not in (ADD, REMOVE):
        raise ValueError(f"TD0.3 action must be {ADD} or {REMOVE}, got {action!r}")
    root = etree.Element(_H + "setAuthorization", nsmap={None: HABILITATIONS_NS})
    etree.SubElement(root, _H + "action").text = action
    if role:
        etree.SubElement(root, _H + "role").text = role
    return root


def parse_request(root: etree._Element) -> tuple[str, str | None]:
    """(action, role) of a schema-valid setAuthorization."""
    if root.tag != _H + "setAuthorization":
        raise AccessFormatError(f"expected setAuthorization, got {etree.QName(root).localname}")
    return (root.findtext(_H + "action") or "").strip(), (root.findtext(_H + "role") or "").strip() or None


def build_answer(status: str, context: str = "") -> etree._Element:
    root = etree.Element(_H + "setAuthorizationResponse", nsmap={None: HABILITATIONS_NS})
    etree.SubElement(root, _H + "status").text = status
    if context:
        etree.SubElement(root, _H + "context").text = context[:1024]
    return root


def parse_answer(root: etree._Element) -> DeclareResult:
    if root.tag != _H + "setAuthorizationResponse":
        raise AccessFormatError(f"expected setAuthorizationResponse, got {etree.QName(root).text}")
    status = (root.findtext(_H + "status") or "").strip()
    if not status:
        raise AccessFormatError("setAuthorizationResponse has no status")
    return DeclareResult(status, (root.findtext(_H + "context") or "").strip())
