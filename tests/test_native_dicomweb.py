"""The Native profile: the box is the archive. storescu in, DICOMweb out, and reports published from it."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from drimbox.demo.samples.orthanc import storescu
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import exam_c_study, write_study
from drimbox.hl7.mllp import send_message

pytestmark = [pytest.mark.dcmtk, pytest.mark.box, pytest.mark.sim]

STUDY = "1.2.250.1.213.4.5.2.1.103"


def test_storescu_then_dicomweb_gives_identical_instances_and_reports_publish(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    box = source_box(orthanc, box={"profile": "native"})
    files = write_study(tmp_path / "study", exam_c_study(instances=10))
    storescu("127.0.0.1", box.dicom_port, "DRIMBOX", files)
    sent = {
        str(pydicom.dcmread(p).SOPInstanceUID): hashlib.sha256(pydicom.dcmread(p).PixelData).hexdigest() for p in files
    }

    client = DICOMwebClient(f"{box.url}/dicom-web")
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies()] == [STUDY]
    assert len(client.search_for_instances(STUDY)) == 10
    got = {str(ds.SOPInstanceUID): hashlib.sha256(ds.PixelData).hexdigest() for ds in client.retrieve_study(STUDY)}
    assert got == sent

    # The publication pipeline finds the images in the box's own archive.
    ack = asyncio.run(send_message("127.0.0.1", box.mllp_port, build_oru(build_cda(ANS_EXAMS["C"]), control_id="N-1")))
    assert b"MSA|AA" in ack
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published", pub
    kos = pydicom.dcmread(__import__("io").BytesIO(sim.document_bytes(pub["kos_uid"])))
    refs = {
        r.ReferencedSOPInstanceUID
        for s in kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for r in s.ReferencedSOPSequence
    }
    assert refs == set(sent)


def test_stow_rs_stores_durably_and_refuses_garbage(orthanc: Any, source_box: Any, tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    box = source_box(orthanc, box={"profile": "native"})
    files = write_study(tmp_path / "study", exam_c_study(instances=4))
    datasets = [pydicom.dcmread(p) for p in files]
    client = DICOMwebClient(f"{box.url}/dicom-web")
    receipt = client.store_instances(datasets)
    assert len(receipt.ReferencedSOPSequence) == 4
    assert "FailedSOPSequence" not in receipt
    got = {str(ds.SOPInstanceUID): ds.PixelData for ds in client.retrieve_study(STUDY)}
    assert got == {str(ds.SOPInstanceUID): ds.PixelData for ds in datasets}

    body = b"--XX\r\nContent-Type: application/dicom\r\n\r\nnot dicom at all\r\n--XX--\r\n"
    req = urllib.request.Request(
        f"{box.url}/dicom-web/studies",
        data=body,
        method="POST",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=XX'},
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 409
    failed = __import__("json").loads(err.value.read())["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"][0] >= 0xA000


def test_native_metadata_is_cached_but_never_stale(orthanc: Any, source_box: Any, tmp_path: Path) -> None:

    box = source_box(orthanc, box={"profile": "native"})
    spec = exam_c_study(instances=4)
    files = write_study(tmp_path / "study", spec)
    storescu("127.0.0.1", box.dicom_port, "DRIMBOX", files[:3])
    client = DICOMwebClient(f"{box.url}/dicom-web")
    first = client.retrieve_study_metadata(STUDY)
    assert len(first) == 3
    assert client.retrieve_study_metadata(STUDY) == first  # served again, from the cache
    storescu("127.0.0.1", box.dicom_port, "DRIMBOX", files[3:])
    assert len(client.retrieve_study_metadata(STUDY)) == 4


def test_native_only_if_cached_answers_computed_metadata_at_once(orthanc: Any, source_box: Any, tmp_path: Path) -> None:
    """The viewer's first question: metadata only if it is ready (504 rather than every file parsed first)."""
    import json
    import urllib.error
    import urllib.request

    box = source_box(orthanc, box={"profile": "native"})
    files = write_study(tmp_path / "study", exam_c_study(instances=4))
    storescu("127.0.0.1", box.dicom_port, "DRIMBOX", files)

    def status(path: str, only_if_cached: bool = True) -> int:
        headers = {"Accept": "application/dicom+json"} | ({"Cache-Control": "only-if-cached"} if only_if_cached else {})
        req = urllib.request.Request(f"{box.url}/dicom-web/studies/{STUDY}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    with urllib.request.urlopen(f"{box.url}/dicom-web/studies/{STUDY}/series", timeout=30) as resp:
        series = sorted(s["0020000E"]["Value"][0] for s in json.loads(resp.read()))
    assert len(series) == 2
    assert status("/metadata") == 504 and status(f"/series/{series[0]}/metadata") == 504
    assert status(f"/series/{series[0]}/metadata", only_if_cached=False) == 200
    assert status(f"/series/{series[0]}/metadata") == 200
    assert status("/metadata") == 504  # the other series' is not computed yet
    assert status(f"/series/{series[1]}/metadata", only_if_cached=False) == 200
    assert status("/metadata") == 200
    # A new instance in a series: its metadata must be computed again, so not "cached" any more.
    extra = write_study(tmp_path / "more", exam_c_study(instances=6))
    storescu("127.0.0.1", box.dicom_port, "DRIMBOX", [f for f in extra if f.name not in {p.name for p in files}])
    assert status("/metadata") == 504
