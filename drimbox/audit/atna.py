"""An audit record as an IHE ATNA / DICOM PS3.15 A.5 Audit Message (XML), for the syslog copy of the trail."""

from __future__ import annotations

from typing import Any

from lxml import etree

from drimbox.audit.events import FAILURE, PATIENT_ACTOR, REFUSED, SUCCESS

# EventOutcomeIndicator (PS3.15 A.5.1): 0 success, 4 minor failure (refused), 8 serious failure.
_OUTCOME = {SUCCESS: "0", REFUSED: "4", FAILURE: "8"}
# action prefix → (EventID code, its meaning, EventActionCode). DCM codes of PS3.16 CID 400.
_EVENTS: list[tuple[str, tuple[str, str, str]]] = [
    ("auth.", ("110114", "User Authentication", "E")),
    ("dmp.", ("110106", "Export", "C")),
    ("consumer.import", ("110107", "Import", "C")),
    ("consumer.exams", ("110112", "Query", "E")),
    ("", ("110103", "DICOM Instances Accessed", "R")),
]
# EventTypeCode for logins and logouts (DCM 110122 / 110123).
_AUTH_TYPES = {"auth.login": ("110122", "Login"), "auth.logout": ("110123", "Logout")}


def _coded(parent: etree._Element, tag: str, code: str, system: str, text: str) -> etree._Element:
    return etree.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text})


def audit_message(record: dict[str, Any], source_id: str) -> bytes:
    """The XML of one stored record (trail.py's fields): event, who, from where, the patient and the study."""
    action = str(record["action"])
    code, meaning, action_code = next(v for prefix, v in _EVENTS if action.startswith(prefix))
    if action.startswith("dmp.") and action != "dmp.register":
        action_code = "U"  # a replacement or a withdrawal updates what the DMP holds
    root = etree.Element("AuditMessage")
    event = etree.SubElement(root, "EventIdentification", {
        "EventActionCode": action_code, "EventDateTime": str(record["at"]),
        "EventOutcomeIndicator": _OUTCOME.get(str(record["outcome"]), "8"),
    })  # fmt: skip
    _coded(event, "EventID", code, "DCM", meaning)
    if action in _AUTH_TYPES:
        type_code, type_text = _AUTH_TYPES[action]
        _coded(event, "EventTypeCode", type_code, "DCM", type_text)
    else:
        _coded(event, "EventTypeCode", action, "drimbox", action)
    detail = record.get("detail") or {}
    if detail.get("reason"):
        etree.SubElement(event, "EventOutcomeDescription").text = str(detail["reason"])
    if record.get("professional"):
        person = etree.SubElement(root, "ActiveParticipant", {
            "UserID": str(record["professional"]), "UserIsRequestor": "true",
            **({"NetworkAccessPointID": str(record["source"]), "NetworkAccessPointTypeCode": "2"}
               if record.get("source") else {}),
        })  # fmt: skip
        _coded(person, "RoleIDCode", "110153", "DCM", "Source Role ID")
        if detail.get("actor") == PATIENT_ACTOR:  # the patient themself, their INS as UserID
            _coded(person, "RoleIDCode", "patient", "drimbox", "Patient")
    box = etree.SubElement(root, "ActiveParticipant", {"UserID": source_id, "UserIsRequestor": "false"})
    _coded(box, "RoleIDCode", "110152", "DCM", "Destination Role ID")
    etree.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    if record.get("patient"):
        patient = etree.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(record["patient"]), "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1",
        })  # fmt: skip
        _coded(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
        if record.get("patient_name"):
            etree.SubElement(patient, "ParticipantObjectName").text = str(record["patient_name"])
    if record.get("study"):
        study = etree.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(record["study"]), "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3",
        })  # fmt: skip
        _coded(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
    if record.get("kos"):
        kos = etree.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(record["kos"]), "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3",
        })  # fmt: skip
        # No DCM code names "a KOS's SOP Instance UID"; a local code says what the id is.
        _coded(kos, "ParticipantObjectIDTypeCode", "kos", "drimbox", "KOS SOP Instance UID")
    return bytes(etree.tostring(root, encoding="UTF-8", xml_declaration=False))
