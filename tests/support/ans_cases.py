"""The ANS homologation exams as cases run through one real source box (Orthanc as PACS, the simulator as DMP).

The messages come from a `Messages` source: the project's own samples (tests/test_ans_cases.py, runs on a fresh
clone) or the ANS files rebuilt from their excerpts (conformance/test_ans_suite.py). Each case states the outcome
the ANS test plan expects of a DRIMbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, ExamSpec, build_cda, build_mdm, build_omi_cancel, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message
from tests.support.fixtures_mesh import Sim, SourceBox
from tests.test_iocm import kos_instances, rejection_note, storescu, write

INS = "279035121518989"
ACCESSION_SCHEME = "urn:ihe:iti:xds:2013:accession"
# F's second study, as the second serviceEvent / inFulfillmentOf of CR_F name it.
F_SECOND = ANS_EXAMS["F"].other_studies[0]
# A report whose images never reach the PACS before its order is cancelled (not an ANS exam).
W_EARLY = dataclasses.replace(
    ANS_EXAMS["W"], name="W2", document_id="1.2.250.1.213.4.5.4.425",
    study_uid="1.2.250.1.213.4.5.2.1.125", accession="ACN125", order_id="OPN125",
)  # fmt: skip
# The ANS plain CT/XA exams: nothing special in their data, each must simply be published.
PLAIN = ("H", "J", "K", "L", "N", "R", "S", "V")


class Messages:
    """The HL7 messages of the cases, rebuilt from the samples (PID from the CDA's patient, as in the ANS files)."""

    def oru(self, exam: str, control_id: str, action: str = "publish") -> bytes:
        return self.report(ANS_EXAMS[exam], control_id, action)

    def report(self, exam: ExamSpec, control_id: str, action: str = "publish") -> bytes:
        return build_oru(build_cda(exam), action, control_id=control_id)  # type: ignore[arg-type]

    def mdm(self, exam: str, control_id: str) -> bytes:
        return build_mdm(build_cda(ANS_EXAMS[exam]), control_id=control_id)

    def foreign_pid(self, exam: str, control_id: str) -> bytes:
        """The exam's CDA in a message whose PID is the test patient PAT-TROIS's (exam C's)."""
        pid = next(s for s in build_oru(build_cda(ANS_EXAMS["C"])).split(b"\r") if s.startswith(b"PID|"))
        raw = self.oru(exam, control_id)
        return b"\r".join(pid if s.startswith(b"PID|") else s for s in raw.split(b"\r"))

    def cancel(self, control_id: str, accession: str = "ACN124", study_uid: str = "1.2.250.1.213.4.5.2.1.124") -> bytes:
        return build_omi_cancel(control_id=control_id, accession=accession, study_uid=study_uid)


@dataclasses.dataclass
class Mesh:
    box: SourceBox
    sim: Sim
    messages: Messages
    work: Path

    def send(self, raw: bytes) -> str:
        ack = asyncio.run(send_message("127.0.0.1", self.box.mllp_port, raw, timeout=30))
        msa = next(s for s in ack.decode("utf-8", "replace").split("\r") if s.startswith("MSA"))
        return msa.split("|")[1]

    def publications(self, study: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.box.operator_request(f"/api/publications?study={study}"), timeout=10) as r:
            result: list[dict[str, Any]] = json.loads(r.read())
        return result

    def wait(self, study: str, states: tuple[str, ...], index: int = -1, timeout: float = 60.0) -> dict[str, Any]:
        """The study's publication (by default the latest) once it reaches one of the states."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = self.publications(study)
            if len(last) >= (index + 1 if index >= 0 else -index) and last[index]["state"] in states:
                return last[index]
            time.sleep(0.1)
        raise AssertionError(f"publication of {study} never reached {states}: {last}\n{self.box.process.log()}")

    def published(self, study: str, index: int = -1) -> dict[str, Any]:
        pub = self.wait(study, ("published", "failed", "rejected", "cancelled", "withdrawn"), index)
        assert pub["state"] == "published", pub
        return pub

    def dmp_entry(self, kos_uid: str) -> dict[str, Any]:
        return next(d for d in self.sim.documents(INS) if d["uniqueId"] == kos_uid)

    def kos(self, kos_uid: str) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(self.sim.document_bytes(kos_uid)))


def pacs_studies() -> Iterator[ExamSpec]:
    """Every study the cases expect the PACS to hold (G2's and W2's are missing on purpose)."""
    for letter in ("C", "E", "F", "G1", "I", "U", "W", *PLAIN):
        yield ANS_EXAMS[letter]
    # Q's images are MR, whatever its CDA calls them.
    yield dataclasses.replace(ANS_EXAMS["Q"], modalities=(("MR", "Imagerie par résonance magnétique"),))
    f = ANS_EXAMS["F"]
    yield dataclasses.replace(f, name="F2", study_uid=F_SECOND.study_uid, accession=F_SECOND.accession)
    # M's images are filed under the INS's real owner (PAT-TROIS): the report's traits are another person's.
    c = ANS_EXAMS["C"]
    yield dataclasses.replace(ANS_EXAMS["M"], family=c.family, given=c.given, sex=c.sex, birth_date=c.birth_date)


def start_mesh(orthanc: Any, work: Path, messages: Messages) -> Iterator[Mesh]:
    """Load the studies, start one simulator and one source box; stop both afterwards."""
    orthanc.clear()
    for exam in pacs_studies():
        orthanc.store_files(write_study(work / f"study-{exam.name}", study_for_exam(exam, instances=2)))
    (work / "sim").mkdir()
    sim = Sim(work / "sim").start()
    box_dir = work / "box"
    box_dir.mkdir()
    # G2 waits for a study no PACS holds: a short window makes it fail within the suite.
    box = SourceBox(box_dir, sim.url, orthanc, publish={"waiting_window": 3.0, "waiting_interval": 0.5}).start()
    try:
        yield Mesh(box, sim, messages, work)
    finally:
        box.stop()
        sim.stop()


# ------------------------------------------------------------------------------------------------ the cases


def case_c_published_once_by_oru_or_mdm(m: Mesh) -> None:
    """C: the nominal report, by ORU^R01; the same document by MDM^T02 is the same publication."""
    assert m.send(m.messages.oru("C", "C-1")) == "AA"
    pub = m.published("1.2.250.1.213.4.5.2.1.103")
    assert m.send(m.messages.mdm("C", "C-2")) == "AA"
    time.sleep(0.5)
    assert [p["kos_uid"] for p in m.publications("1.2.250.1.213.4.5.2.1.103")] == [pub["kos_uid"]]
    assert m.dmp_entry(pub["kos_uid"])["status"].endswith("Approved")


def case_e_published(m: Mesh) -> None:
    assert m.send(m.messages.oru("E", "E-1")) == "AA"
    m.published("1.2.250.1.213.4.5.2.1.105")


def case_f_two_studies_each_get_a_kos_replaced_and_withdrawn_together(m: Mesh) -> None:
    """F: one report, two studies (ACN106 + ACN107): one KOS per study, each pointing to its own order."""
    f = ANS_EXAMS["F"]
    studies = [(f.study_uid, f.accession), (F_SECOND.study_uid, F_SECOND.accession)]
    assert m.send(m.messages.oru("F", "F-1")) == "AA"
    first = [m.published(uid) for uid, _ in studies]
    for pub, (uid, accession) in zip(first, studies, strict=True):
        assert (pub["study_uid"], pub["accession"], pub["document_id"]) == (uid, accession, f.document_id)
        kos = m.kos(pub["kos_uid"])
        assert kos.StudyInstanceUID == uid and kos.AccessionNumber == accession
        refs = m.dmp_entry(pub["kos_uid"])["referenceIds"]
        assert any(accession in r for r in refs) and any(uid in r for r in refs), refs
    # The PACS rejects an image of the second study (IOCM): that study's KOS alone is revised, with this report.
    series_uid, sops = next(iter(kos_instances(m.sim, first[1]["kos_uid"]).items()))
    note = write(rejection_note(F_SECOND.study_uid, {series_uid: sops[:1]}), m.work / "f-note.dcm")
    assert storescu(m.box.dicom_port, note).returncode == 0
    revised = m.published(F_SECOND.study_uid)
    assert revised["action"] == "revise" and revised["accession"] == F_SECOND.accession
    assert sops[0] not in [i for refs in kos_instances(m.sim, revised["kos_uid"]).values() for i in refs]
    assert m.kos(revised["kos_uid"]).AccessionNumber == F_SECOND.accession
    assert len(m.publications(f.study_uid)) == 1
    first[1] = revised
    # A new version of the report replaces both KOS.
    v2 = dataclasses.replace(f, document_id="1.2.250.1.213.4.5.4.4062", version=2)
    assert m.send(m.messages.report(v2, "F-2")) == "AA"
    second = [m.published(uid) for uid, _ in studies]
    for old, new in zip(first, second, strict=True):
        assert new["kos_uid"] != old["kos_uid"]
        assert m.dmp_entry(old["kos_uid"])["status"].endswith("Deprecated")
        assert m.dmp_entry(new["kos_uid"])["replaces"]
    # Its withdrawal withdraws both.
    assert m.send(m.messages.report(v2, "F-3", action="withdraw")) == "AA"
    for uid, _ in studies:
        assert m.wait(uid, ("withdrawn", "failed", "rejected"))["state"] == "withdrawn"
    assert not any(m.dmp_entry(p["kos_uid"])["status"].endswith("Approved") for p in first + second)


def case_g1_then_g1_maj_replaces_the_kos(m: Mesh) -> None:
    assert m.send(m.messages.oru("G1", "G1-1")) == "AA"
    g1 = m.published("1.2.250.1.213.4.5.2.1.108")
    assert m.send(m.messages.oru("G1_MAJ", "G1-2")) == "AA"
    maj = m.published("1.2.250.1.213.4.5.2.1.108")
    assert maj["kos_uid"] != g1["kos_uid"] and maj["document_id"] == "1.2.250.1.213.4.5.4.4072"
    assert m.dmp_entry(g1["kos_uid"])["status"].endswith("Deprecated")
    assert m.publications("1.2.250.1.213.4.5.2.1.108")[0]["state"] == "replaced"


def case_g2_unknown_study_is_acknowledged_and_never_published(m: Mesh) -> None:
    """G2: Study Instance UID 1.2.3.4.5.6.7.8.9, which no PACS holds: AA (the report is received), then the
    publication fails once the waiting window is over; nothing reaches the DMP."""
    before = len(m.sim.documents(INS))
    assert m.send(m.messages.oru("G2", "G2-1")) == "AA"
    pub = m.wait("1.2.3.4.5.6.7.8.9", ("failed", "published", "rejected"))
    assert pub["state"] == "failed" and "waiting window" in pub["last_error"], pub
    assert pub["kos_uid"] is None and len(m.sim.documents(INS)) == before


def case_plain_exams_are_published(m: Mesh) -> None:
    for letter in PLAIN:
        assert m.send(m.messages.oru(letter, f"{letter}-1")) == "AA", letter
    for letter in PLAIN:
        pub = m.published(ANS_EXAMS[letter].study_uid)
        assert pub["accession"] == ANS_EXAMS[letter].accession


def case_i_published_then_withdrawn(m: Mesh) -> None:
    assert m.send(m.messages.oru("I", "I-1")) == "AA"
    pub = m.published("1.2.250.1.213.4.5.2.1.110")
    assert m.send(m.messages.oru("I", "I-2", action="withdraw")) == "AA"
    assert m.wait("1.2.250.1.213.4.5.2.1.110", ("withdrawn", "failed", "rejected"))["state"] == "withdrawn"
    assert not m.dmp_entry(pub["kos_uid"])["status"].endswith("Approved")


def case_m_other_traits_under_the_same_ins_are_never_published(m: Mesh) -> None:
    """M: the test patient's INS with another person's name, sex and birth date (PID and CDA agree on them). The
    PACS files the study under the INS's owner: the publication is rejected. A PID disagreeing with its CDA is
    refused at once (AE)."""
    m_uid = ANS_EXAMS["M"].study_uid
    assert m.send(m.messages.foreign_pid("M", "M-1")) == "AE"
    assert m.publications(m_uid) == []
    assert m.send(m.messages.oru("M", "M-2")) == "AA"
    pub = m.wait(m_uid, ("rejected", "published", "failed"))
    assert pub["state"] == "rejected" and "Birth Date" in pub["last_error"], pub
    assert "20120125" not in pub["last_error"] and "19790328" not in pub["last_error"]


def case_q_modality_rm_is_published(m: Mesh) -> None:
    """Q: the CDA codes its modality "RM"; the images say MR. The DMP is told MR, a DICOM modality."""
    assert m.send(m.messages.oru("Q", "Q-1")) == "AA"
    pub = m.published("1.2.250.1.213.4.5.2.1.118")
    kos = m.kos(pub["kos_uid"])
    assert kos.StudyInstanceUID == "1.2.250.1.213.4.5.2.1.118"
    codes = {c["code"] for c in m.dmp_entry(pub["kos_uid"])["eventCodes"]}
    assert "MR" in codes and "RM" not in codes, codes


def case_u_published(m: Mesh) -> None:
    """U: published like any other (its IOCM object is played by tests/test_iocm.py)."""
    assert m.send(m.messages.oru("U", "U-1")) == "AA"
    m.published("1.2.250.1.213.4.5.2.1.122")


def case_w_order_cancel_withdraws_drops_and_records(m: Mesh) -> None:
    """W: OMI^O23, ORC-1 CA, IPC ACN124 / study ...124. The published KOS is withdrawn, the RIS gets AA."""
    w_uid = "1.2.250.1.213.4.5.2.1.124"
    assert m.send(m.messages.oru("W", "W-1")) == "AA"
    pub = m.published(w_uid)
    assert m.send(m.messages.cancel("W-2")) == "AA"
    cancel = m.wait(w_uid, ("withdrawn", "cancelled", "failed"))
    assert (cancel["action"], cancel["state"]) == ("cancel", "withdrawn"), cancel
    assert m.publications(w_uid)[0]["state"] == "withdrawn"
    assert not m.dmp_entry(pub["kos_uid"])["status"].endswith("Approved")
    # The same cancel again (a RIS re-sending it): acknowledged, nothing more happens.
    assert m.send(m.messages.cancel("W-3")) == "AA"
    assert len(m.publications(w_uid)) == 2
    # A cancel before the images arrive: the pending publication is dropped, the DMP never hears of it.
    assert m.send(m.messages.report(W_EARLY, "W-4")) == "AA"
    m.wait(W_EARLY.study_uid, ("waiting",))
    assert m.send(m.messages.cancel("W-5", W_EARLY.accession, W_EARLY.study_uid)) == "AA"
    dropped, record = m.publications(W_EARLY.study_uid)
    assert (dropped["state"], record["action"], record["state"]) == ("cancelled", "cancel", "cancelled")
    # An unknown study (G2's UID never reached a KOS): acknowledged and recorded.
    assert m.send(m.messages.cancel("W-6", "ACN999", "1.2.250.1.213.4.5.2.1.999")) == "AA"
    [unknown] = m.publications("1.2.250.1.213.4.5.2.1.999")
    assert (unknown["action"], unknown["state"]) == ("cancel", "cancelled") and "unknown" in unknown["last_error"]
    # A known study under another accession: that cancel is not for this study.
    assert m.send(m.messages.cancel("W-7", "ACN999", "1.2.250.1.213.4.5.2.1.103")) == "AE"
    assert m.publications("1.2.250.1.213.4.5.2.1.103")[-1]["state"] == "published"


CASES: list[Callable[[Mesh], None]] = [
    case_c_published_once_by_oru_or_mdm,
    case_e_published,
    case_f_two_studies_each_get_a_kos_replaced_and_withdrawn_together,
    case_g1_then_g1_maj_replaces_the_kos,
    case_g2_unknown_study_is_acknowledged_and_never_published,
    case_plain_exams_are_published,
    case_i_published_then_withdrawn,
    case_m_other_traits_under_the_same_ins_are_never_published,
    case_q_modality_rm_is_published,
    case_u_published,
    case_w_order_cancel_withdraws_drops_and_records,
]
case_ids = [c.__name__.removeprefix("case_") for c in CASES]
parametrize_cases = pytest.mark.parametrize("case", CASES, ids=case_ids)
