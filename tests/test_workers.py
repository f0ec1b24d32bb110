"""[http] workers = 2: a real source box's processes share its port, its publications, its series fills and its metrics."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from drimbox.config import Settings, load_settings
from tests.support.drim_flow import publish_exam
from tests.test_metrics import scrape, total

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:  # a fresh connection each time (Connection: close)
        data: bytes = resp.read()
    return data


def processes(box: Any, requests: int = 30) -> dict[int, bool]:
    """pid → primary, of the processes that answered `requests` /health requests, each on a new connection."""
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: json.loads(get(f"{box.url}/health"))["process"], range(requests)))
    return {a["pid"]: a["primary"] for a in answers}


def wait_for_processes(box: Any, wanted: int, gone: set[int], timeout: float = 20.0) -> dict[int, bool]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = processes(box, 24)
        if len(seen) == wanted and not (set(seen) & gone):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"not {wanted} new processes after {timeout} s: {seen}\n{box.process.log()}")


def test_two_workers_serve_one_box(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    orthanc.clear()
    box = source_box(orthanc, http={"workers": 2})
    seen = wait_for_processes(box, 2, set())
    assert sorted(seen.values()) == [False, True], seen  # both answer; one is the primary
    before = scrape(box)
    assert len(processes(box)) >= 1  # 30 more /health, counted below

    # The report goes in through the primary's MLLP listener; its worker publishes it, once.
    pub = publish_exam(orthanc, box, tmp_path, exam="C")
    assert len(sim.documents()) == 1  # one KOS in the DMP
    assert len(box.publications(pub["accession"])) == 1

    # A cold series asked by 8 clients at once, on both processes: one retrieve at the PACS, all served whole.
    study = pub["study_uid"]
    series = json.loads(get(f"{box.url}/dicom-web/studies/{study}/series"))[0]["0020000E"]["Value"][0]
    instances = json.loads(get(f"{box.url}/dicom-web/studies/{study}/series/{series}/instances"))
    sops = [i["00080018"]["Value"][0].encode() for i in instances]
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda _: get(f"{box.url}/dicom-web/studies/{study}/series/{series}"), range(8)))
    assert all(all(sop in body for sop in sops) for body in bodies)
    after = scrape(box)
    retrieves = sum(
        total(after, "drimbox_dimse_calls_total", operation=op)
        - total(before, "drimbox_dimse_calls_total", operation=op)
        for op in ("C-GET", "C-MOVE")
    )
    assert retrieves == 1, after["drimbox_dimse_calls_total"]
    # /metrics is the whole box's, whichever process answers: every /health above is counted.
    health = total(after, "drimbox_http_requests_total", route="/health") - total(
        before, "drimbox_http_requests_total", route="/health"
    )
    assert health == 30
    assert total(after, "drimbox_publications", state="published") == 1


def test_a_dead_process_is_restarted_and_sigterm_stops_all(orthanc: Any, source_box: Any) -> None:
    box = source_box(orthanc, http={"workers": 2})
    seen = wait_for_processes(box, 2, set())
    primary = next(pid for pid, is_primary in seen.items() if is_primary)
    other = next(pid for pid, is_primary in seen.items() if not is_primary)
    os.kill(other, signal.SIGKILL)
    now = wait_for_processes(box, 2, {other})
    assert now.get(primary)
    os.kill(primary, signal.SIGKILL)  # the primary's listeners come back with a new primary
    now = wait_for_processes(box, 2, {other, primary})
    assert sorted(now.values()) == [False, True]
    health = json.loads(get(f"{box.url}/health"))
    assert health["status"] == "up"
    assert "restarted" in box.process.log()

    assert box.process.proc is not None
    box.process.proc.send_signal(signal.SIGTERM)
    assert box.process.proc.wait(30) == 0
    for pid in now:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_default_to_the_cpus_and_tests_to_one(tmp_path: Path) -> None:
    assert Settings().http.workers == 0
    assert 1 <= Settings().http.worker_count() <= len(os.sched_getaffinity(0))  # a container's quota may cut it
    from drimbox.demo.samples.processes import write_config

    written = load_settings(write_config(tmp_path / "box.toml", {"box": {"var_dir": str(tmp_path)}}), env={})
    assert written.http.worker_count() == 1  # the boxes tests, the demo and perf start: one process unless asked


def test_native_archive_shared_by_two_workers(orthanc: Any, source_box: Any, tmp_path: Path) -> None:
    """C-STORE into the primary, STOW-RS of the same instances on any process at once: one archive, whole."""
    import hashlib

    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from drimbox.demo.samples.orthanc import storescu
    from drimbox.demo.samples.studies import exam_c_study, write_study

    box = source_box(orthanc, box={"profile": "native"}, http={"workers": 2})
    files = write_study(tmp_path / "study", exam_c_study(instances=6))
    storescu("127.0.0.1", box.dicom_port, "DRIMBOX", files[:3])
    datasets = [pydicom.dcmread(p) for p in files]

    def stow(_: int) -> int:
        receipt = DICOMwebClient(f"{box.url}/dicom-web").store_instances(datasets)
        return len(receipt.ReferencedSOPSequence)

    with ThreadPoolExecutor(4) as pool:  # the same instances four times at once, over both processes
        assert list(pool.map(stow, range(4))) == [6] * 4
    sent = {str(ds.SOPInstanceUID): hashlib.sha256(ds.PixelData).hexdigest() for ds in datasets}
    study = str(datasets[0].StudyInstanceUID)
    answered: set[str] = set()
    for _ in range(8):
        request = urllib.request.Request(f"{box.url}/dicom-web/studies/{study}/instances",
                                         headers={"Accept": "application/dicom+json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as resp:
            answered.add(resp.headers["X-Drimbox-Process"])
            assert {i["00080018"]["Value"][0] for i in json.loads(resp.read())} == set(sent)
    got = DICOMwebClient(f"{box.url}/dicom-web").retrieve_study(study)
    assert {str(ds.SOPInstanceUID): hashlib.sha256(ds.PixelData).hexdigest() for ds in got} == sent
    incoming = box.work / "box-var" / "archive" / ".incoming"
    assert not list(incoming.iterdir())  # no temporary file left behind
    assert answered <= {"0", "1"}


def test_c_move_fills_go_through_the_primary(orthanc: Any, source_box: Any, tmp_path: Path) -> None:
    """A C-MOVE's instances reach the primary's DICOM listener only: the other process has the primary fill the
    series, then serves it from the shared cache. Many clients at once on both processes: one C-MOVE, all served."""
    from drimbox.demo.samples.studies import exam_c_study, write_study

    orthanc.clear()
    orthanc.store_files(write_study(tmp_path / "study", exam_c_study(instances=8)))
    box = source_box(orthanc, http={"workers": 2}, pacs={"retrieve": "c-move"})
    orthanc.add_modality("DRIMBOX", "127.0.0.1", box.dicom_port)
    wait_for_processes(box, 2, set())
    study = orthanc.rest("GET", f"/studies/{orthanc.rest('GET', '/studies')[0]}")["MainDicomTags"]["StudyInstanceUID"]
    series = json.loads(get(f"{box.url}/dicom-web/studies/{study}/series"))[0]["0020000E"]["Value"][0]
    instances = json.loads(get(f"{box.url}/dicom-web/studies/{study}/series/{series}/instances"))
    sops = [i["00080018"]["Value"][0].encode() for i in instances]
    before = scrape(box)
    answered: set[str] = set()

    def read(_: int) -> bytes:
        with urllib.request.urlopen(f"{box.url}/dicom-web/studies/{study}/series/{series}", timeout=60) as resp:
            answered.add(resp.headers["X-Drimbox-Process"])
            data: bytes = resp.read()
        return data

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(read, range(8)))
    assert all(all(sop in body for sop in sops) for body in bodies)
    after = scrape(box)
    moves = total(after, "drimbox_dimse_calls_total", operation="C-MOVE") - total(
        before, "drimbox_dimse_calls_total", operation="C-MOVE"
    )
    assert moves == 1, after["drimbox_dimse_calls_total"]
    assert "1" in answered  # the other process served clients: through the primary's fill
