"""The ANS HL7 messages, rebuilt from the ANS data, sent to a real source box: the ACKs and outcomes the ANS expects."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conformance.ans import ANS_DATA, excerpt_cda_c, fill, message, needs_ans_data
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7 import send_message

pytestmark = [needs_ans_data, pytest.mark.orthanc, pytest.mark.sim, pytest.mark.box]

INS = "279035121518989"


def send(box: Any, raw: bytes) -> str:
    ack = asyncio.run(send_message("127.0.0.1", box.mllp_port, raw, timeout=30))
    return next(s for s in ack.decode().split("\r") if s.startswith("MSA")).split("|")[1]


@pytest.fixture
def box(orthanc: Any, source_box: Any, tmp_path: Path) -> Any:
    orthanc.clear()
    for exam in ("C", "E", "G1", "I"):
        orthanc.store_files(write_study(tmp_path / exam, study_for_exam(ANS_EXAMS[exam], instances=4)))
    return source_box(orthanc)


def test_ans_messages_get_the_expected_acks_and_outcomes(box: Any, sim: Any) -> None:
    # Each message gets its own MSH-10: the ANS files share one, and a re-sent MSH-10 is a duplicate.
    assert send(box, message("C/CR_C-ORU.excerpt.hl7", excerpt_cda_c(), b"20240912103001")) == "AA"
    assert send(box, message("E/CR_E-ORU.excerpt.hl7", build_cda(ANS_EXAMS["E"]), b"20240912103002")) == "AA"
    c = box.wait_state("ACN103", ("published", "failed", "rejected"))
    e = box.wait_state("ACN105", ("published", "failed", "rejected"))
    assert (c["state"], e["state"]) == ("published", "published"), (c, e)

    # G1 then the ANS G1_MAJ (a new version of the report, ORC NW): the new KOS replaces the first.
    assert send(box, build_oru(build_cda(ANS_EXAMS["G1"]), control_id="20240912103003")) == "AA"
    g1 = box.wait_state("ACN108", ("published",))
    assert send(box, message("G/CR_G1_MAJ-ORU.excerpt.hl7", build_cda(ANS_EXAMS["G1_MAJ"]), b"20240912103004")) == "AA"
    g1_maj = box.wait_state("ACN108", ("published", "failed", "rejected"))
    assert g1_maj["state"] == "published" and g1_maj["kos_uid"] != g1["kos_uid"]
    by_uid = {d["uniqueId"]: d for d in sim.documents(INS)}
    assert by_uid[g1["kos_uid"]]["status"].endswith("Deprecated")
    assert by_uid[g1_maj["kos_uid"]]["replaces"]

    # I published, then the ANS depublication (ORC CA / OBX D) withdraws it.
    assert send(box, build_oru(build_cda(ANS_EXAMS["I"]), control_id="20240912103005")) == "AA"
    i = box.wait_state("ACN110", ("published",))
    assert (
        send(box, message("I/CR_I_Depublication-ORU.excerpt.hl7", build_cda(ANS_EXAMS["I"]), b"20240912103006")) == "AA"
    )
    assert box.wait_state("ACN110", ("withdrawn", "failed", "rejected"))["state"] == "withdrawn"
    assert not {d["uniqueId"]: d for d in sim.documents(INS)}[i["kos_uid"]]["status"].endswith("Approved")

    # W: the OMI^O23 order cancel of a study this box never published is acknowledged and recorded
    # (conformance/test_ans_suite.py plays the withdrawal of a published one).
    assert send(box, fill((ANS_DATA / "hl7" / "W" / "CR_W_Suppression-OMI.hl7").read_bytes())) == "AA"
    [cancel] = box.publications("ACN124")
    assert (cancel["action"], cancel["state"], cancel["study_uid"]) == (
        "cancel",
        "cancelled",
        "1.2.250.1.213.4.5.2.1.124",
    )
