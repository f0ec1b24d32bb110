"""A patient's access in the syslog copy of the trail (IHE ATNA): the patient is the requesting participant."""

from __future__ import annotations

from lxml import etree

from drimbox.audit.atna import audit_message

INS = "279035121518989"


def test_a_patient_access_names_the_patient_as_the_requester() -> None:
    record = {"seq": 1, "at": "2026-12-06T02:00:00.000000Z", "action": "patient.exam", "outcome": "success",
              "professional": INS, "patient": INS, "patient_name": "PAT-TROIS^DOMINIQUE", "study": "1.2.3",
              "kos": "1.2.3.9", "source": "127.0.0.1", "detail": {"actor": "patient"}}  # fmt: skip
    root = etree.fromstring(audit_message(record, "DRIMBOX"))
    requester = root.find("ActiveParticipant[@UserIsRequestor='true']")
    assert requester is not None and requester.get("UserID") == INS
    roles = [c.get("csd-code") for c in requester.findall("RoleIDCode")]
    assert roles == ["110153", "patient"]
    # A professional's access says nothing of a patient role.
    root = etree.fromstring(audit_message({**record, "professional": "810001234567", "detail": {}}, "DRIMBOX"))
    requester = root.find("ActiveParticipant[@UserIsRequestor='true']")
    assert requester is not None and [c.get("csd-code") for c in requester.findall("RoleIDCode")] == ["110153"]
