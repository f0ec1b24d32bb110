"""Two source instances on one PostgreSQL behind a real HAProxy: one SIGKILLed mid-burst, the other finishes the work.

The topology of docker/compose.ha.yaml with real processes: Orthanc as the PACS, the simulator as the DMP, two
`drimbox serve` source boxes sharing `[state] url` (PostgreSQL) and `[state] shared_dir`, HAProxy in front of their
HTTP and MLLP ports. The RIS sends a burst of reports through the balancer; one instance dies by SIGKILL in the middle
of a publication (a kill point, so the moment is exact); every acknowledged report must still end published with
exactly one KOS in the DMP, and images keep being served through the balancer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from drimbox.demo.samples.orthanc import storescu
from drimbox.demo.samples.reports import ANS_EXAMS, ExamSpec, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message
from drimbox.state import faults
from tests.faults.harness import INS
from tests.support.fixtures_haproxy import Balancer
from tests.support.fixtures_mesh import OPERATOR_TOKEN, Sim, SourceBox, get_json

pytestmark = [pytest.mark.orthanc, pytest.mark.sim, pytest.mark.box, pytest.mark.haproxy, pytest.mark.postgres]

BURST = 8


def burst_exams() -> list[ExamSpec]:
    """Distinct exams of the test patient (own study UID, accession, document id), so none is a duplicate."""
    return [
        dataclasses.replace(
            ANS_EXAMS["C"],
            study_uid=f"1.2.250.1.213.4.5.2.1.77{n}03",
            accession=f"HA{n}",
            document_id=f"1.2.250.1.213.4.5.4.77{n}03",
        )
        for n in range(BURST)
    ]


def send(port: int, message: bytes) -> str | None:
    try:
        ack = asyncio.run(send_message("127.0.0.1", port, message, timeout=30))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    msa = next(s for s in ack.decode("utf-8", "replace").split("\r") if s.startswith("MSA"))
    return msa.split("|")[1]


def publications(url: str, accession: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(
        f"{url}/api/publications?accession={accession}", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        result: list[dict[str, Any]] = json.loads(resp.read())
    return result


def wait_all_published(
    url: str, exams: list[ExamSpec], timeout: float, read: Callable[[], None] = lambda: None
) -> dict[str, dict[str, Any]]:
    """Poll the publications (through the balancer) until each ended; `read()` between polls (reads go on)."""
    deadline = time.monotonic() + timeout
    last: dict[str, list[dict[str, Any]]] = {}
    while time.monotonic() < deadline:
        read()
        last = {e.accession: publications(url, e.accession) for e in exams}
        if all(pubs and pubs[-1]["state"] in ("published", "failed", "rejected") for pubs in last.values()):
            return {acc: pubs[-1] for acc, pubs in last.items()}
        time.sleep(0.2)
    raise AssertionError(f"not every report was published in {timeout} s: {last}")


@pytest.fixture
def two_instances(
    tmp_path: Path, sim: Sim, orthanc: Any, postgres_url: str
) -> Iterator[Callable[..., tuple[SourceBox, SourceBox]]]:
    boxes: list[SourceBox] = []

    def make(kill_at: str | None, **overrides: dict[str, Any]) -> tuple[SourceBox, SourceBox]:
        shared = tmp_path / "shared"
        shared.mkdir(exist_ok=True)
        for name in ("a", "b"):
            work = tmp_path / name
            work.mkdir()
            box = SourceBox(
                work,
                sim.url,
                orthanc,
                state={"url": postgres_url, "shared_dir": str(shared)},
                http={"workers": 1},
                publish={"lease_seconds": 2.0, "backoff_initial": 0.2, "backoff_max": 0.5},
                **overrides,
            )
            box.process.env = {faults.ENV: kill_at} if name == "a" and kill_at else {}
            boxes.append(box)
        # One after the other: the first runs the migrations, the second finds them applied.
        for box in boxes:
            box.start()
        return boxes[0], boxes[1]

    yield make
    for box in boxes:
        box.stop()


@pytest.mark.parametrize("kill_at", ["publish.kos_written:2", "publish.registered:2"])
def test_sigkill_of_one_instance_mid_burst_loses_and_doubles_nothing(
    kill_at: str,
    tmp_path: Path,
    orthanc: Any,
    sim: Sim,
    two_instances: Callable[..., tuple[SourceBox, SourceBox]],
    haproxy: Callable[..., Balancer],
) -> None:
    orthanc.clear()
    exams = burst_exams()
    stored = {}
    for n, exam in enumerate(exams):
        files = write_study(tmp_path / f"study{n}", study_for_exam(exam, instances=2))
        orthanc.store_files(files)
        stored[exam.study_uid] = len(files)
    a, b = two_instances(kill_at)
    balancer = haproxy(http_backends=[a.http_port, b.http_port], mllp_backends=[a.mllp_port, b.mllp_port])

    # The burst, through the balancer's MLLP frontend (round robin: half of the connections reach each instance).
    # An instance killed while a message is on the wire gives no AA: the RIS sends it again, as it would.
    for n, exam in enumerate(exams):
        message = build_oru(build_cda(exam), control_id=f"HA-{n}")
        ack = send(balancer.mllp_port or 0, message)
        if ack is None:
            ack = send(balancer.mllp_port or 0, message)
        assert ack == "AA", (n, ack)

    # Instance a dies at its kill point (SIGKILL by the box itself, at exactly that stage of a publication).
    proc = a.process.proc
    assert proc is not None
    assert proc.wait(60) == -9, a.process.log()
    assert f"SIGKILL at {kill_at.partition(':')[0]}" in a.process.log()

    # Reads keep being served through the balancer while b finishes a's work after a's lease expires.
    reads: list[int] = []

    def read() -> None:  # a viewer's QIDO through the balancer, answered all along
        series = get_json(f"{balancer.url}/dicom-web/studies/{exams[0].study_uid}/series")
        reads.append(len(series))

    done = wait_all_published(balancer.url, exams, timeout=90, read=read)
    assert reads and all(n == reads[0] > 0 for n in reads), reads
    assert {acc: p["state"] for acc, p in done.items()} == {e.accession: "published" for e in exams}, (
        done,
        b.process.log(),
    )
    for exam in exams:
        assert len(publications(balancer.url, exam.accession)) == 1, exam.accession

    # Exactly one KOS per report in the DMP, the one each publication names.
    documents = sim.documents(INS)
    kos = sorted(d["uniqueId"] for d in documents if d["status"].endswith("Approved"))
    assert kos == sorted(p["kos_uid"] for p in done.values()), documents
    assert len(documents) == BURST, documents

    # Whole images through the balancer (b alone now), for a study a never retrieved as for one it did.
    client = DICOMwebClient(f"{balancer.url}/dicom-web")
    for exam in (exams[0], exams[-1]):
        assert len(client.retrieve_study(exam.study_uid)) == stored[exam.study_uid], exam.accession


def test_native_instances_share_one_archive(
    tmp_path: Path,
    orthanc: Any,
    sim: Sim,
    two_instances: Callable[..., tuple[SourceBox, SourceBox]],
    haproxy: Callable[..., Balancer],
) -> None:
    """A modality stores into one instance; once it is gone the other serves every image and publishes."""
    a, b = two_instances(None, box={"profile": "native"})
    balancer = haproxy(http_backends=[a.http_port, b.http_port], mllp_backends=[a.mllp_port, b.mllp_port])
    files = write_study(tmp_path / "study", study_for_exam(ANS_EXAMS["C"], instances=3))
    storescu("127.0.0.1", a.dicom_port, "DRIMBOX", files)
    sent = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p).PixelData for p in files}
    a.process.kill()

    assert send(balancer.mllp_port or 0, build_oru(build_cda(ANS_EXAMS["C"]), control_id="HA-N")) == "AA"
    done = wait_all_published(balancer.url, [ANS_EXAMS["C"]], timeout=60)
    assert done["ACN103"]["state"] == "published", (done, b.process.log())
    client = DICOMwebClient(f"{balancer.url}/dicom-web")
    got = {str(ds.SOPInstanceUID): ds.PixelData for ds in client.retrieve_study(ANS_EXAMS["C"].study_uid)}
    assert got == sent
