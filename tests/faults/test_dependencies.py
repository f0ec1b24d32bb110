"""The source box while its dependencies fail: the DMP down or slow, the PACS down or frozen. It recovers by itself."""

from __future__ import annotations

import dataclasses
import http.client
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, Action, build_cda, build_oru
from drimbox.demo.samples.studies import exam_c_study, write_study
from tests.faults.harness import FULL, INS, approved, load_exam, restart_orthanc, send, sim_faults, wait_for
from tests.test_proxy_failures import STUDY, open_stream, settle, threads, warmed_baseline

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]


def test_dmp_down_then_back_publishes_once_and_keeps_publishing(
    orthanc: Any, armed_box: Any, sim: Any, tmp_path: Path
) -> None:
    pacs = orthanc
    pacs.clear()
    load_exam(pacs, tmp_path, "C")
    box = armed_box(pacs, None)
    sim.stop()
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-DMP-DOWN")) == "AA"
    wait_for(lambda: box.publications("ACN103")[0]["attempts"] >= 2, 30, "two failed attempts")
    pub = box.publications("ACN103")[0]
    assert pub["state"] == "retrying" and "ITI-41" in pub["last_error"], pub
    sim.start()
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published", pub["last_error"]
    assert [e["uniqueId"] for e in sim.documents(INS)] == [pub["kos_uid"]]
    if FULL:  # nobody had to restart or poke the box: the next report goes straight through
        load_exam(pacs, tmp_path, "E")
        assert send(box, build_oru(build_cda(ANS_EXAMS["E"]), control_id="E-AFTER")) == "AA"
        assert box.wait_state("ACN105", ("published", "failed", "rejected"))["attempts"] == 1


@pytest.mark.parametrize("action", ["publish", *(["replace", "withdraw"] if FULL else [])])
def test_dmp_slower_than_the_timeout_is_not_done_twice(
    action: Action, orthanc: Any, armed_box: Any, sim: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    exam, accession = {"publish": ("C", "ACN103"), "replace": ("G1", "ACN108"), "withdraw": ("I", "ACN110")}[action]
    load_exam(orthanc, tmp_path, exam)
    box = armed_box(orthanc, None, dmp={"timeout": 1.0})
    cda = build_cda(ANS_EXAMS[exam])
    first = None
    if action != "publish":
        assert send(box, build_oru(cda, control_id=f"{exam}-1")) == "AA"
        first = box.wait_state(accession, ("published",))
        if action == "replace":
            cda = build_cda(ANS_EXAMS["G1_MAJ"])
    # The DMP does the work but answers after the box gave up: the box must recognise it, not do it again.
    sim_faults(sim, delay=1, delay_seconds=2.5)
    assert send(box, build_oru(cda, action=action, control_id=f"{exam}-SLOW")) == "AA"
    done = box.wait_state(accession, ("published", "withdrawn", "failed", "rejected"), timeout=30)
    assert done["state"] == ("withdrawn" if action == "withdraw" else "published"), (
        done["last_error"],
        box.process.log(),
    )
    assert done["attempts"] == 2, done  # the timed-out attempt, then the one that found it done
    assert "no answer" in box.process.log()
    entries = {e["uniqueId"]: e for e in sim.documents(INS)}
    if action == "publish":
        assert list(entries) == [done["kos_uid"]] and len(approved(sim)) == 1
    elif action == "replace":
        assert first is not None and set(entries) == {first["kos_uid"], done["kos_uid"]}
        assert [e["uniqueId"] for e in approved(sim)] == [done["kos_uid"]]
    else:
        assert first is not None and list(entries) == [first["kos_uid"]] and approved(sim) == []


def test_withdrawal_while_a_timed_out_publication_waits_to_retry_withdraws_it(
    orthanc: Any, armed_box: Any, sim: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "I")
    box = armed_box(orthanc, None, dmp={"timeout": 1.0}, publish={"backoff_initial": 2.5, "backoff_max": 2.5})
    sim_faults(sim, delay=1, delay_seconds=2.0)
    cda = build_cda(ANS_EXAMS["I"])
    assert send(box, build_oru(cda, control_id="I-SLOW")) == "AA"
    box.wait_state("ACN110", ("retrying",), timeout=15)
    # The KOS is in the DMP, but the box only knows it asked: the withdrawal must not take it for never sent.
    assert [e["uniqueId"] for e in approved(sim)] == [box.publications("ACN110")[0]["kos_uid"]]
    assert send(box, build_oru(cda, action="withdraw", control_id="I-WITHDRAW")) == "AA"
    done = box.wait_state("ACN110", ("withdrawn", "failed", "rejected"), timeout=30)
    assert done["state"] == "withdrawn", (done["last_error"], box.process.log())
    assert approved(sim) == [], "the KOS stayed published in the DMP after its withdrawal"


@pytest.mark.parametrize("outage", ["stopped", *(["frozen"] if FULL else [])])
def test_pacs_down_during_publication_waits_then_publishes(
    outage: str, orthanc_factory: Any, armed_box: Any, sim: Any, tmp_path: Path
) -> None:
    pacs = orthanc_factory()
    load_exam(pacs, tmp_path, "C")
    box = armed_box(pacs, None, pacs={"timeout": 2.0})
    if outage == "stopped":
        pacs.stop()
    else:
        pacs.process.send_signal(signal.SIGSTOP)  # connections are accepted, nothing answers
    try:
        assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-PACS-DOWN")) == "AA"
        wait_for(lambda: box.publications("ACN103")[0]["attempts"] >= 2, 30, "two failed attempts")
        pub = box.publications("ACN103")[0]
        assert pub["state"] == "retrying" and "PACS" in pub["last_error"], pub
        assert sim.documents(INS) == []
    finally:
        if outage == "frozen":
            pacs.process.send_signal(signal.SIGCONT)
    if outage == "stopped":
        restart_orthanc(pacs)
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published", pub["last_error"]
    assert [e["uniqueId"] for e in sim.documents(INS)] == [pub["kos_uid"]]


@pytest.fixture
def two_big_series(tmp_path: Path) -> list[Path]:
    """Exam C as two series of ~20 MB: more than the socket buffers hold, so the second series is still to be
    fetched from the PACS while a client reads the first."""
    spec = dataclasses.replace(exam_c_study(instances=80), rows=512, columns=512)
    return write_study(tmp_path / "big", spec)


def test_pacs_frozen_mid_retrieve_ends_the_response_within_the_timeout(
    orthanc_factory: Any, armed_box: Any, two_big_series: list[Path]
) -> None:
    pacs = orthanc_factory()
    pacs.store_files(two_big_series)
    box = armed_box(pacs, None, pacs={"timeout": 2.0})
    assert box.process.proc is not None
    pid = box.process.proc.pid
    baseline = warmed_baseline(box)
    conn, resp = open_stream(box)
    body = resp.read(64 * 1024)
    pacs.process.send_signal(signal.SIGSTOP)
    try:
        frozen_at = time.monotonic()
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            while chunk := resp.read(1024 * 1024):
                body += chunk
            raise ConnectionError("response ended")  # reached only if the body ended: check it is truncated
        ended_after = time.monotonic() - frozen_at
        conn.close()
        boundary = resp.getheader("Content-Type", "").split("boundary=")[-1].strip('"')
        assert not body.rstrip().endswith(f"--{boundary}--".encode()), "a truncated study must not look complete"
        assert ended_after < 2.0 + 6.0, f"the response hung {ended_after:.1f} s on a frozen PACS"
        # A request while the PACS is still frozen: a JSON 503, in time, not a hang.
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{box.url}/dicom-web/studies/{STUDY}/series/{STUDY}.2", timeout=30)
        assert err.value.code == 503 and err.value.headers.get_content_type() == "application/json"
        assert time.monotonic() - started < 2.0 + 6.0
    finally:
        pacs.process.send_signal(signal.SIGCONT)
    assert settle(pid, baseline) <= baseline, f"{threads(pid)} threads left, {baseline} before"
    conn, resp = open_stream(box)
    assert resp.read().count(b"Content-Type: application/dicom") == len(two_big_series)
    conn.close()
