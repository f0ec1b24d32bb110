"""The source box SIGKILLed at each stage of a publication: no acknowledged report lost, none published twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from tests.faults.harness import INS, approved, cases, load_exam, restart, send, wait_killed

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]

# Kill points reached before the ACK left the box: the RIS saw no AA and sends the message again.
BEFORE_ACK = {"intake.stored"}


@pytest.fixture(autouse=True)
def empty_pacs(orthanc: Any) -> None:
    orthanc.clear()


def deliver_across_kill(box: Any, message: bytes, kill_at: str) -> None:
    """Send `message`, see the box die at `kill_at`, restart it; retransmit as a RIS would if no AA came."""
    ack = send(box, message)
    wait_killed(box, kill_at)
    if kill_at.partition(":")[0] in BEFORE_ACK:
        assert ack is None, "the box acknowledged a message before reaching the kill point"
    else:
        assert ack == "AA"
    restart(box)
    if ack is None:
        assert send(box, message) == "AA"


# In `make test`: one kill before the AA, and the two replays that need the DMP's help to be recognised
# (tests/test_source_e2e.py already kills right after the AA).
@pytest.mark.parametrize(
    "kill_at",
    cases(
        ["intake.stored", "publish.registered"],
        ["mllp.ack_sent", "publish.found", "publish.kos_written", "publish.before_iti41"],
    ),
)
def test_publication_killed_mid_way_is_published_exactly_once(
    kill_at: str, orthanc: Any, armed_box: Any, sim: Any, tmp_path: Path
) -> None:
    load_exam(orthanc, tmp_path, "C")
    box = armed_box(orthanc, kill_at)
    deliver_across_kill(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-FAULT"), kill_at)
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published", (pub["last_error"], box.process.log())
    assert len(box.publications("ACN103")) == 1
    entries = sim.documents(INS)
    assert [e["uniqueId"] for e in entries] == [pub["kos_uid"]], entries
    assert entries[0]["status"].endswith("Approved")


@pytest.mark.parametrize(
    "kill_at",
    cases(
        ["publish.replaced"],
        ["publish.before_iti41:2", "publish.kos_written:2", "intake.stored:2", "mllp.ack_sent:2"],
    ),
)
def test_replacement_killed_mid_way_replaces_exactly_once(
    kill_at: str, orthanc: Any, armed_box: Any, sim: Any, tmp_path: Path
) -> None:
    load_exam(orthanc, tmp_path, "G1")
    box = armed_box(orthanc, kill_at)
    assert send(box, build_oru(build_cda(ANS_EXAMS["G1"]), control_id="G1")) == "AA"
    first = box.wait_state("ACN108", ("published",))
    maj = build_oru(build_cda(ANS_EXAMS["G1_MAJ"]), action="replace", control_id="G1-MAJ")
    deliver_across_kill(box, maj, kill_at)
    second = box.wait_state("ACN108", ("published", "failed", "rejected"))
    assert second["state"] == "published", (second["last_error"], box.process.log())
    assert [p["state"] for p in box.publications("ACN108")] == ["replaced", "published"]
    by_uid = {e["uniqueId"]: e for e in sim.documents(INS)}
    assert set(by_uid) == {first["kos_uid"], second["kos_uid"]}, by_uid
    assert by_uid[first["kos_uid"]]["status"].endswith("Deprecated")
    assert [e["uniqueId"] for e in approved(sim)] == [second["kos_uid"]]


@pytest.mark.parametrize("kill_at", cases(["withdraw.done"], ["intake.stored:2", "mllp.ack_sent:2"]))
def test_withdrawal_killed_mid_way_withdraws(
    kill_at: str, orthanc: Any, armed_box: Any, sim: Any, tmp_path: Path
) -> None:
    load_exam(orthanc, tmp_path, "I")
    box = armed_box(orthanc, kill_at)
    cda = build_cda(ANS_EXAMS["I"])
    assert send(box, build_oru(cda, control_id="I-1")) == "AA"
    pub = box.wait_state("ACN110", ("published",))
    deliver_across_kill(box, build_oru(cda, action="withdraw", control_id="I-2"), kill_at)
    done = box.wait_state("ACN110", ("withdrawn", "failed", "rejected"))
    assert done["state"] == "withdrawn", (done["last_error"], box.process.log())
    assert [p["state"] for p in box.publications("ACN110")] == ["withdrawn", "withdrawn"]
    entries = sim.documents(INS)
    assert [e["uniqueId"] for e in entries] == [pub["kos_uid"]] and approved(sim) == []
