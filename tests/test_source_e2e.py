"""The source flow end to end, with real processes: RIS report over MLLP → Orthanc C-FIND → KOS → simulated DMP."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_mdm, build_omi_cancel, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message
from tests.support.fixtures_mesh import get_json

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]

INS = "279035121518989"


@pytest.fixture(autouse=True)
def empty_pacs(orthanc: Any) -> None:
    """The session's Orthanc starts each test empty: these tests own what the PACS holds."""
    orthanc.clear()


def send(box: Any, message: bytes) -> str:
    ack = asyncio.run(send_message("127.0.0.1", box.mllp_port, message, timeout=30))
    msa = next(s for s in ack.decode("utf-8", "replace").split("\r") if s.startswith("MSA"))
    return msa.split("|")[1]


def load_exam(orthanc: Any, tmp_path: Path, exam: str, instances: int = 6) -> None:
    orthanc.store_files(write_study(tmp_path / f"study-{exam}", study_for_exam(ANS_EXAMS[exam], instances=instances)))


def dciodvfy_errors(path: Path, profile: bool) -> list[str]:
    cmd = ["dciodvfy", *(["-profile", "IHEXDSIManifest"] if profile else []), str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_exam_c_is_published_with_a_valid_kos(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    load_exam(orthanc, tmp_path, "C")
    box = source_box(orthanc)
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-1")) == "AA"
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published", pub
    docs = [d for d in sim.documents(INS) if d["uniqueId"] == pub["kos_uid"]]
    assert len(docs) == 1 and docs[0]["status"].endswith("Approved")
    kos_path = tmp_path / "kos.dcm"
    kos_path.write_bytes(sim.document_bytes(pub["kos_uid"]))
    assert dciodvfy_errors(kos_path, profile=False) == []
    assert dciodvfy_errors(kos_path, profile=True) == []
    health = get_json(f"{box.url}/health")
    assert health["status"] == "up" and health["components"]["outbox"]["publications"] == {"published": 1}


def test_mdm_t02_exam_e_is_published(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    load_exam(orthanc, tmp_path, "E")
    box = source_box(orthanc)
    assert send(box, build_mdm(build_cda(ANS_EXAMS["E"]), trigger="T02", control_id="E-1")) == "AA"
    assert box.wait_state("ACN105", ("published", "failed", "rejected"))["state"] == "published"


def test_resent_message_is_acknowledged_and_published_once(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    load_exam(orthanc, tmp_path, "C")
    box = source_box(orthanc)
    oru = build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-DUP")
    assert send(box, oru) == "AA"
    assert send(box, oru) == "AA"
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-DUP-2")) == "AA"
    box.wait_state("ACN103", ("published",))
    assert len(box.publications("ACN103")) == 1
    assert len([d for d in sim.documents(INS) if d["status"].endswith("Approved")]) == 1


def test_replacement_g1_maj_replaces_the_published_kos(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    load_exam(orthanc, tmp_path, "G1")
    box = source_box(orthanc)
    assert send(box, build_oru(build_cda(ANS_EXAMS["G1"]), control_id="G1")) == "AA"
    first = box.wait_state("ACN108", ("published",))
    maj = build_oru(build_cda(ANS_EXAMS["G1_MAJ"]), action="replace", control_id="G1-MAJ")
    assert send(box, maj) == "AA"
    second = box.wait_state("ACN108", ("published", "failed", "rejected"))
    assert second["state"] == "published" and second["kos_uid"] != first["kos_uid"], second
    by_uid = {d["uniqueId"]: d for d in sim.documents(INS)}
    assert by_uid[first["kos_uid"]]["status"].endswith("Deprecated")
    assert by_uid[second["kos_uid"]]["status"].endswith("Approved")
    assert box.publications("ACN108")[0]["state"] == "replaced"


def test_depublication_i_withdraws_the_kos(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    load_exam(orthanc, tmp_path, "I")
    box = source_box(orthanc)
    cda = build_cda(ANS_EXAMS["I"])
    assert send(box, build_oru(cda, control_id="I-1")) == "AA"
    pub = box.wait_state("ACN110", ("published",))
    assert send(box, build_oru(cda, action="withdraw", control_id="I-2")) == "AA"
    done = box.wait_state("ACN110", ("withdrawn", "failed", "rejected"))
    assert done["state"] == "withdrawn", done
    assert all(p["state"] == "withdrawn" for p in box.publications("ACN110"))
    entry = next(d for d in sim.documents(INS) if d["uniqueId"] == pub["kos_uid"])
    assert not entry["status"].endswith("Approved")


def test_omi_order_cancel_withdraws_the_published_kos(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    load_exam(orthanc, tmp_path, "W", instances=3)
    box = source_box(orthanc)
    assert send(box, build_oru(build_cda(ANS_EXAMS["W"]), control_id="W-1")) == "AA"
    pub = box.wait_state("ACN124", ("published", "failed", "rejected"))
    assert pub["state"] == "published", pub
    assert send(box, build_omi_cancel(control_id="W-2")) == "AA"
    cancel = box.wait_state("ACN124", ("withdrawn", "cancelled", "failed"))
    assert (cancel["action"], cancel["state"]) == ("cancel", "withdrawn"), cancel
    assert [p["state"] for p in box.publications("ACN124")] == ["withdrawn", "withdrawn"]
    entry = next(d for d in sim.documents(INS) if d["uniqueId"] == pub["kos_uid"])
    assert not entry["status"].endswith("Approved")


def test_accession_mismatch_is_rejected_with_a_reason(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    spec = study_for_exam(ANS_EXAMS["C"], instances=3, accession="OTHER-ACN")
    orthanc.store_files(write_study(tmp_path / "study", spec))
    box = source_box(orthanc)
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-MISMATCH")) == "AA"
    pub = box.wait_state("ACN103", ("published", "rejected", "failed"))
    assert pub["state"] == "rejected" and "accession" in pub["last_error"]
    assert sim.documents(INS) == []


def test_report_before_images_waits_then_publishes(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    box = source_box(orthanc)
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-EARLY")) == "AA"
    assert box.wait_state("ACN103", ("waiting",))["state"] == "waiting"
    load_exam(orthanc, tmp_path, "C")
    assert box.wait_state("ACN103", ("published",))["state"] == "published"


def test_sigkill_right_after_the_ack_publishes_exactly_once(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    load_exam(orthanc, tmp_path, "C")
    box = source_box(orthanc, publish={"backoff_initial": 0.2, "backoff_max": 0.5})
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-KILL")) == "AA"
    box.process.kill()
    box.process.start()
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published"
    assert len([d for d in sim.documents(INS) if d["status"].endswith("Approved")]) == 1


def test_dmp_down_then_back_publishes_after_it_returns(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    load_exam(orthanc, tmp_path, "C")
    sim.stop()
    box = source_box(orthanc)
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-DOWN")) == "AA"
    pub = box.wait_state("ACN103", ("retrying",))
    assert pub["attempts"] >= 1 and pub["last_error"]
    sim.start()
    assert box.wait_state("ACN103", ("published",), timeout=60)["state"] == "published"
    assert len(sim.documents(INS)) == 1


def test_hostile_hl7_is_refused_and_the_box_keeps_serving(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    import base64
    import socket

    load_exam(orthanc, tmp_path, "C")
    box = source_box(orthanc)
    good_cda = build_cda(ANS_EXAMS["C"])
    evil_cda = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>' + good_cda.split(b"?>", 1)[1]
    assert send(box, build_oru(evil_cda, control_id="EVIL-1")) == "AE"
    not_b64 = build_oru(good_cda, control_id="EVIL-2").replace(base64.b64encode(good_cda)[:40], b"!!!not base64!!!")
    assert send(box, not_b64) == "AE"
    assert send(box, b"PID|||123\rOBX|1|ED") == "AR"
    # A client that opens a frame and never finishes it, and one that sends bytes outside any frame.
    stuck = socket.create_connection(("127.0.0.1", box.mllp_port))
    stuck.sendall(b"\x0bMSH|^~\\&|half a message")
    junk = socket.create_connection(("127.0.0.1", box.mllp_port))
    junk.sendall(b"GET / HTTP/1.1\r\n\r\n")
    try:
        assert send(box, build_oru(good_cda, control_id="GOOD-1")) == "AA"
        assert box.wait_state("ACN103", ("published",))["state"] == "published"
        assert len(box.publications("ACN103")) == 1
    finally:
        stuck.close()
        junk.close()


def test_dmp_busy_is_retried_with_backoff_until_it_accepts(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    import json
    import urllib.request

    load_exam(orthanc, tmp_path, "C")
    req = urllib.request.Request(
        f"{sim.url}/sim/dmp/faults",
        data=json.dumps({"busy": 2, "unavailable": 1}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).close()
    box = source_box(orthanc)
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-BUSY")) == "AA"
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"), timeout=60)
    assert pub["state"] == "published" and pub["attempts"] == 4, pub
    assert len(sim.documents(INS)) == 1
