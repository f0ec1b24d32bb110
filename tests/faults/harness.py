"""Fault-suite helpers: source boxes armed with a kill point; sim, PACS and DICOMweb checks shared by the scenarios."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from drimbox.demo.samples.orthanc import OrthancServer, _die_with_parent, nodelay_env
from drimbox.demo.samples.reports import ANS_EXAMS
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message
from drimbox.state import faults
from tests.support.fixtures_mesh import Sim, SourceBox

INS = "279035121518989"
# `make faults` runs every stage several times; `make test` keeps a representative, bounded subset.
FULL = os.environ.get("DRIMBOX_FAULTS_FULL") == "1"
REPEAT = int(os.environ.get("DRIMBOX_FAULTS_REPEAT", "3")) if FULL else 1


def cases(ci: list[str], full_only: list[str]) -> list[Any]:
    """Parameters for a kill-point scenario: the CI subset, or every stage × REPEAT under `make faults`."""
    stages = ci + full_only if FULL else ci
    return [pytest.param(s, id=f"{s}-{r}" if REPEAT > 1 else s) for s in stages for r in range(REPEAT)]


def send(box: SourceBox, message: bytes, timeout: float = 30) -> str | None:
    """The MSA-1 code of the box's ACK, or None when the connection ended without one (the box died)."""
    try:
        ack = asyncio.run(send_message("127.0.0.1", box.mllp_port, message, timeout=timeout))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    msa = next(s for s in ack.decode("utf-8", "replace").split("\r") if s.startswith("MSA"))
    return msa.split("|")[1]


def wait_killed(box: SourceBox, stage: str, timeout: float = 30.0) -> None:
    """The box died by SIGKILL at exactly this kill point (not by some other crash)."""
    proc = box.process.proc
    assert proc is not None
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the box never reached {stage}:\n{box.process.log()}") from None
    assert code == -9, f"exit {code}, not SIGKILL:\n{box.process.log()}"
    assert f"SIGKILL at {stage.partition(':')[0]}" in box.process.log()


def restart(box: SourceBox) -> None:
    """Start the same box (same ports, same state) again, disarmed."""
    box.process.env = {}
    box.process.start()


def approved(sim: Sim, kos_uid: str | None = None) -> list[dict[str, Any]]:
    return [
        d
        for d in sim.documents(INS)
        if d["status"].endswith("Approved") and (kos_uid is None or d["uniqueId"] == kos_uid)
    ]


def sim_faults(sim: Sim, **pending: float) -> None:
    req = urllib.request.Request(
        f"{sim.url}/sim/dmp/faults",
        data=json.dumps(pending).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).close()


def load_exam(pacs: Any, tmp_path: Path, exam: str, instances: int = 4) -> None:
    pacs.store_files(write_study(tmp_path / f"study-{exam}", study_for_exam(ANS_EXAMS[exam], instances=instances)))


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def armed_box(tmp_path: Path, sim: Sim) -> Iterator[Callable[..., SourceBox]]:
    """armed_box(pacs, "stage[:n]" or None, **section_overrides) → a started source box with that kill point."""
    boxes: list[SourceBox] = []

    def make(pacs: Any, kill_at: str | None, /, **overrides: dict[str, Any]) -> SourceBox:
        if kill_at is not None:
            faults.parse(kill_at)  # a misspelt stage fails here, not as a box that never dies
        work = tmp_path / f"box{len(boxes)}"
        work.mkdir(exist_ok=True)  # a test may have prepared it (a small disk for the cache)
        overrides["publish"] = {"backoff_initial": 0.2, "backoff_max": 0.5, **overrides.get("publish", {})}
        box = SourceBox(work, sim.url, pacs, **overrides)
        box.process.env = {faults.ENV: kill_at} if kill_at else {}
        boxes.append(box)
        return box.start()

    yield make
    for box in boxes:
        box.stop()


def restart_orthanc(server: OrthancServer, timeout: float = 30.0) -> None:
    """Start a stopped Orthanc again on its own configuration (same ports, same storage)."""
    exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    with open(server.workdir / "orthanc.log", "ab") as log:
        server.process = subprocess.Popen(
            [exe, "--no-jobs", str(server.workdir / "orthanc.json")],
            cwd=server.workdir,
            env=nodelay_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"Orthanc did not restart:\n{server.log()[-3000:]}"
        try:
            server.rest("GET", "/system")
            with socket.create_connection((server.host, server.dicom_port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("Orthanc did not answer after its restart")


def study_parts(body: bytes, boundary: str) -> dict[str, str]:
    """SOP Instance UID → SHA-256 of the pixel data, for each instance of a complete multipart study."""
    end = f"\r\n--{boundary}--".encode()
    assert body.rstrip().endswith(end.strip()), "the multipart body is not terminated: truncated"
    parts = {}
    for chunk in body.split(f"--{boundary}".encode())[1:-1]:
        _, _, payload = chunk.partition(b"\r\n\r\n")
        ds = pydicom.dcmread(io.BytesIO(payload.removesuffix(b"\r\n")))
        parts[str(ds.SOPInstanceUID)] = hashlib.sha256(ds.PixelData).hexdigest()
    return parts


def file_parts(paths: list[Path]) -> dict[str, str]:
    """The same map for the files the PACS was loaded with."""
    out = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = hashlib.sha256(ds.PixelData).hexdigest()
    return out


def get_study(box: SourceBox, study_uid: str, timeout: float = 60) -> tuple[int, str, bytes]:
    """GET the whole study as multipart DICOM: (status, boundary, body); a dropped connection raises."""
    conn = http.client.HTTPConnection("127.0.0.1", box.http_port, timeout=timeout)
    try:
        conn.request(
            "GET",
            f"/dicom-web/studies/{study_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        resp = conn.getresponse()
        boundary = resp.getheader("Content-Type", "").split("boundary=")[-1].strip('"')
        return resp.status, boundary, resp.read()
    finally:
        conn.close()
