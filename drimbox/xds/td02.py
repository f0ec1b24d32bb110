"""TD0.2 on the wire: HL7 v3 PRPA_IN201307UV02 (test d'existence) and PRPA_IN201308UV02 (xsd/DMP/hl7v3-TD0.2.xsd)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from lxml import etree

from drimbox.xds.access import AUTHORIZATIONS, INTERDITE, NON_EXISTANTE, AccessFormatError, AccessStatus

HL7_NS = "urn:hl7-org:v3"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
INTERACTION_ROOT = "2.16.840.1.113883.1.6"
REQUEST_INTERACTION = "PRPA_IN201307UV02"
ANSWER_INTERACTION = "PRPA_IN201308UV02"
DMP_DEVICE_OID = "1.2.250.1.213.4.1.1.1"  # the DMP as receiver (sender of the answer)
REASON_TEST_EXST = ("TEST_EXST", "1.2.250.1.213.1.1.4.11", "Test d'existence de dossier")
# INS assigning authorities the DMP takes in patientIdentifier: INS-NIR, INS-NIA and their test ranges.
INS_OIDS = frozenset({"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"})
# The sending software's device id. drimbox has no registered OID: a fixed UUID-derived one (2.25 arc, ISO/IEC
# 9834-8) names it; each message and query is then identified by this root and a fresh UUID extension.
DRIMBOX_DEVICE_OID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:drimbox:device").int)
QUERY_OK, QUERY_NOT_FOUND = "OK", "NF"
KEYWORD_AUTHORIZATION, KEYWORD_TREATING = "AUTORISATION", "STATUT_MT"
_V = f"{{{HL7_NS}}}"
_NIL = f"{{{XSI_NS}}}nil"
_TYPE = f"{{{XSI_NS}}}type"


class Td02Refused(Exception):
    """The DMP answered TD0.2 with acknowledgement AE/AR (code and text of its acknowledgementDetail)."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(f"{code}: {text}" if text else code)
        self.code = code
        self.text = text


def _el(parent: etree._Element, name: str, text: str | None = None, **attrs: str | None) -> etree._Element:
    element = etree.SubElement(parent, _V + name, {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        element.text = text
    return element


def _now(now: dt.datetime | None) -> str:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y%m%d%H%M%S")


def _device(parent: etree._Element, role: str, type_code: str, oid: str, name: str) -> None:
    device = _el(_el(parent, role, typeCode=type_code), "device", classCode="DEV", determinerCode="INSTANCE")
    _el(device, "id", root=oid)
    _el(device, "softwareName", name)


def _wrapper(name: str, now: dt.datetime | None, processing: str, ack: str) -> etree._Element:
    root = etree.Element(_V + name, {"ITSVersion": "XML_1.0"}, nsmap={None: HL7_NS, "xsi": XSI_NS})
    _el(root, "id", root=DRIMBOX_DEVICE_OID if name == REQUEST_INTERACTION else DMP_DEVICE_OID,
        extension=str(uuid.uuid4()))  # fmt: skip
    _el(root, "creationTime", value=_now(now))
    _el(root, "interactionId", root=INTERACTION_ROOT, extension=name)
    _el(root, "processingCode", code=processing)
    _el(root, "processingModeCode", code="T")
    _el(root, "acceptAckCode", code=ack)
    return root


def split_cx(patient_id: str) -> tuple[str, str]:
    """(INS, OID) of `INS^^^&OID&ISO^NH`; ValueError when it is not one."""
    parts = patient_id.split("^")
    authority = parts[3].split("&") if len(parts) >= 4 else []
    if not parts[0] or len(authority) != 3 or authority[0] or not authority[1] or authority[2] != "ISO":
        raise ValueError("the patient id must be the INS as INS^^^&OID&ISO^NH")
    return parts[0], authority[1]


def build_request(ins: str, oid: str, *, now: dt.datetime | None = None) -> etree._Element:
    """PRPA_IN201307UV02 asking whether the patient INS (assigning authority `oid`) has a DMP."""
    root = _wrapper(REQUEST_INTERACTION, now, "D", "AL")
    _device(root, "receiver", "RCV", DMP_DEVICE_OID, "DMP")
    _device(root, "sender", "SND", DRIMBOX_DEVICE_OID, "drimbox")
    _el(root, "attentionLine").set(_NIL, "true")
    control = _el(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    code, system, display = REASON_TEST_EXST
    _el(control, "reasonCode", code=code, codeSystem=system, displayName=display)
    query = _el(control, "queryByParameter")
    _el(query, "queryId", root=DRIMBOX_DEVICE_OID + ".2", extension=str(uuid.uuid4()))
    _el(query, "statusCode", code="new")
    params = _el(query, "parameterList")
    _el(params, "dataSource").set(_NIL, "true")
    identifier = _el(params, "patientIdentifier")
    _el(identifier, "value", root=oid, extension=ins)
    _el(identifier, "semanticsText", "Patient.id")
    return root


@dataclass(frozen=True)
class Td02Request:
    """What the DMP reads in a schema-valid PRPA_IN201307UV02."""

    message_id: tuple[str, str]
    ins: str
    oid: str
    query: etree._Element  # queryByParameter, echoed in the answer


def parse_request(root: etree._Element) -> Td02Request:
    """The parts of a schema-valid PRPA_IN201307UV02 the DMP acts on; AccessFormatError when they are wrong."""
    interaction = root.find(_V + "interactionId")
    if interaction is None or (interaction.get("root"), interaction.get("extension")) != (
        INTERACTION_ROOT, REQUEST_INTERACTION):  # fmt: skip
        raise AccessFormatError(f"interactionId must be {INTERACTION_ROOT} / {REQUEST_INTERACTION}")
    value = root.find(f"{_V}controlActProcess/{_V}queryByParameter/{_V}parameterList/{_V}patientIdentifier/{_V}value")
    query = root.find(f"{_V}controlActProcess/{_V}queryByParameter")
    msg_id = root.find(_V + "id")
    assert value is not None and query is not None and msg_id is not None  # the schema requires them
    ins, oid = value.get("extension") or "", value.get("root") or ""
    if oid not in INS_OIDS:
        raise AccessFormatError(f"patientIdentifier root {oid} is not an INS assigning authority")
    if not (ins.isdigit() and len(ins) == 15):
        raise AccessFormatError("patientIdentifier extension must be the 15-digit INS")
    return Td02Request((msg_id.get("root") or "", msg_id.get("extension") or ""), ins, oid, query)


def _attention(root: etree._Element, keyword: str, value_type: str, **value: str | None) -> None:
    line = _el(root, "attentionLine")
    _el(line, "keyWordText", keyword, code=keyword)
    _el(line, "value", **value).set(_TYPE, value_type)


def build_answer(request: Td02Request, status: AccessStatus | None, *, now: dt.datetime | None = None,
                 error: tuple[str, str] | None = None) -> etree._Element:  # fmt: skip
    """PRPA_IN201308UV02: `status` None with `error` (code, text) answers AE; dmp_exists False answers NF."""
    root = _wrapper(ANSWER_INTERACTION, now, "P", "NE")
    _device(root, "receiver", "RCV", request.message_id[0] or DRIMBOX_DEVICE_OID, "LPS")
    _device(root, "sender", "SND", DMP_DEVICE_OID, "DMP")
    if status is not None and status.dmp_exists:
        _attention(root, KEYWORD_AUTHORIZATION, "CV", code=status.authorization)
        _attention(root, KEYWORD_TREATING, "BL", value="true" if status.treating_physician else "false")
    ack = _el(root, "acknowledgement")
    _el(ack, "typeCode", code="AE" if status is None else "AA")
    _el(_el(ack, "targetMessage"), "id", root=request.message_id[0], extension=request.message_id[1] or None)
    if status is None:
        code, text = error or ("DMPError", "")
        detail = _el(ack, "acknowledgementDetail", typeCode="E")
        _el(detail, "code", code=code)
        _el(detail, "text", text[:512])
        return root
    control = _el(root, "controlActProcess", classCode="CACT", moodCode="EVN")
    _el(control, "code", code="PRPA_TE201308UV02", codeSystem=INTERACTION_ROOT)
    if status.dmp_exists:
        event = _el(_el(control, "subject", typeCode="SUBJ"), "registrationEvent", classCode="REG", moodCode="EVN")
        _el(event, "statusCode", code="active")
        patient = _el(_el(event, "subject1", typeCode="SBJ"), "patient", classCode="PAT")
        _el(patient, "id", root=request.oid, extension=request.ins)
        _el(patient, "statusCode", code="active")
    query_ack = _el(control, "queryAck")
    query_id = request.query.find(_V + "queryId")
    assert query_id is not None
    _el(query_ack, "queryId", root=query_id.get("root") or "", extension=query_id.get("extension"))
    _el(query_ack, "queryResponseCode", code=QUERY_OK if status.dmp_exists else QUERY_NOT_FOUND)
    control.append(etree.fromstring(etree.tostring(request.query)))
    return root


def _line(root: etree._Element, keyword: str) -> etree._Element | None:
    for line in root.iterchildren(_V + "attentionLine"):
        key = line.find(_V + "keyWordText")
        if key is not None and (key.get("code") or (key.text or "").strip()) == keyword:
            return line.find(_V + "value")
    return None


def parse_answer(root: etree._Element, ins: str) -> AccessStatus:
    """The AccessStatus of a PRPA_IN201308UV02 about patient `ins`; Td02Refused on AE/AR."""
    if root.tag != _V + ANSWER_INTERACTION:
        raise AccessFormatError(f"expected {ANSWER_INTERACTION}, got {etree.QName(root).text}")
    ack_type = root.find(f"{_V}acknowledgement/{_V}typeCode")
    if ack_type is None:
        raise AccessFormatError("the answer has no acknowledgement")
    if ack_type.get("code") != "AA":
        detail = root.find(f"{_V}acknowledgement/{_V}acknowledgementDetail")
        code = detail.find(_V + "code") if detail is not None else None
        text = detail.findtext(_V + "text") if detail is not None else None
        raise Td02Refused((code.get("code") if code is not None else None) or str(ack_type.get("code")),
                          (text or "").strip())  # fmt: skip
    response = root.find(f"{_V}controlActProcess/{_V}queryAck/{_V}queryResponseCode")
    answered = response.get("code") if response is not None else None
    if answered == QUERY_NOT_FOUND:
        return AccessStatus(False, NON_EXISTANTE)
    if answered != QUERY_OK:
        raise AccessFormatError(f"queryResponseCode {answered!r}: expected {QUERY_OK} or {QUERY_NOT_FOUND}")
    patient_ids = root.iterfind(
        f"{_V}controlActProcess/{_V}subject/{_V}registrationEvent/{_V}subject1/{_V}patient/{_V}id"
    )
    if not any(p.get("extension") == ins for p in patient_ids):
        raise AccessFormatError("the answer is not about the patient asked for")
    value = _line(root, KEYWORD_AUTHORIZATION)
    authorization = (value.get("code") or "").strip() if value is not None else ""
    # The reference DRIMbox's front end compares with "INTERDIT": read that spelling as the DMP's INTERDITE.
    authorization = INTERDITE if authorization == "INTERDIT" else authorization
    if authorization not in AUTHORIZATIONS:
        raise AccessFormatError(f"attentionLine {KEYWORD_AUTHORIZATION} {authorization!r} is not one of "
                                f"{sorted(AUTHORIZATIONS)}")  # fmt: skip
    treating = _line(root, KEYWORD_TREATING)
    return AccessStatus(True, authorization, treating_physician=treating is not None
                        and (treating.get("value") or "").strip() == "true")  # fmt: skip
