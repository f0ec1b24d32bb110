"""TD0.2 / TD0.3 payloads: does the patient's DMP exist and may this professional access it; declare access."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

# drimbox's own wire format (xsd/DMP/access.xsd): the real DMP's TD0.2/TD0.3 messages are not in the
# public material; `[consumer] access_check = false` skips the check against a DMP that does not speak it.
ACCESS_NS = "urn:drimbox:dmp:access:1"
ACTION_TD02 = "urn:drimbox:dmp:access:1:TD0.2"
ACTION_TD02_RESPONSE = "urn:drimbox:dmp:access:1:TD0.2Response"
ACTION_TD03 = "urn:drimbox:dmp:access:1:TD0.3"
ACTION_TD03_RESPONSE = "urn:drimbox:dmp:access:1:TD0.3Response"
# Fault subcode (in ACCESS_NS) of a consultation refused for want of an access authorisation.
ACCESS_DENIED = "AccessDenied"

VALIDE, EXPIREE, INTERDITE, NON_EXISTANTE = "VALIDE", "EXPIREE", "INTERDITE", "NON_EXISTANTE"
AUTHORIZATIONS = frozenset({VALIDE, EXPIREE, INTERDITE, NON_EXISTANTE})
ADD, REMOVE = "AJOUT", "SUPPRESSION"
_A = f"{{{ACCESS_NS}}}"


class AccessFormatError(ValueError):
    """A TD0.2/TD0.3 message that does not have the expected shape."""


@dataclass(frozen=True)
class AccessStatus:
    """What the DMP says about one patient and one professional."""

    dmp_exists: bool
    authorization: str  # VALIDE, EXPIREE, INTERDITE, NON_EXISTANTE
    reason: str = ""

    @property
    def granted(self) -> bool:
        return self.dmp_exists and self.authorization == VALIDE


def _sub(parent: etree._Element, name: str, text: str) -> None:
    etree.SubElement(parent, _A + name).text = text


def _bool(value: bool) -> str:
    return "true" if value else "false"


def build_access_request(patient_id: str) -> etree._Element:
    """TD0.2 payload for the patient `INS^^^&OID&ISO^NH`."""
    root = etree.Element(_A + "PatientAccessRequest", nsmap={"acc": ACCESS_NS})
    _sub(root, "PatientId", patient_id)
    return root


def build_declare_request(patient_id: str, patient_informed: bool, action: str = ADD) -> etree._Element:
    """TD0.3 payload: add (AJOUT) or remove (SUPPRESSION) this professional's access authorisation."""
    if action not in (ADD, REMOVE):
        raise ValueError(f"TD0.3 action must be {ADD} or {REMOVE}, got {action!r}")
    root = etree.Element(_A + "DeclareAccessRequest", nsmap={"acc": ACCESS_NS})
    _sub(root, "PatientId", patient_id)
    _sub(root, "Action", action)
    _sub(root, "PatientInformed", _bool(patient_informed))
    return root


def build_status(element: str, status: AccessStatus) -> etree._Element:
    """A PatientAccessResponse or DeclareAccessResponse (for the simulator)."""
    root = etree.Element(_A + element, nsmap={"acc": ACCESS_NS})
    _sub(root, "DmpExists", _bool(status.dmp_exists))
    _sub(root, "Authorization", status.authorization)
    if status.reason:
        _sub(root, "Reason", status.reason[:512])
    return root


def _text(root: etree._Element, name: str) -> str:
    value = root.findtext(_A + name)
    if value is None:
        raise AccessFormatError(f"{etree.QName(root).localname} has no {name}")
    return value.strip()


def _parse_bool(value: str, what: str) -> bool:
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise AccessFormatError(f"{what} must be true or false, got {value!r}")


def parse_status(root: etree._Element) -> AccessStatus:
    """The AccessStatus of a PatientAccessResponse or DeclareAccessResponse."""
    if etree.QName(root).namespace != ACCESS_NS:
        raise AccessFormatError(f"unexpected answer {etree.QName(root).text}")
    authorization = _text(root, "Authorization")
    if authorization not in AUTHORIZATIONS:
        raise AccessFormatError(f"Authorization {authorization!r} is not one of {sorted(AUTHORIZATIONS)}")
    exists = _parse_bool(_text(root, "DmpExists"), "DmpExists")
    return AccessStatus(exists, authorization, (root.findtext(_A + "Reason") or "").strip())


@dataclass(frozen=True)
class DeclareRequest:
    patient_id: str
    action: str
    patient_informed: bool


def parse_access_request(root: etree._Element) -> str:
    """The PatientId of a (schema-valid) PatientAccessRequest."""
    return _text(root, "PatientId")


def parse_declare_request(root: etree._Element) -> DeclareRequest:
    """The fields of a (schema-valid) DeclareAccessRequest."""
    informed = _parse_bool(_text(root, "PatientInformed"), "PatientInformed")
    return DeclareRequest(_text(root, "PatientId"), _text(root, "Action"), informed)
