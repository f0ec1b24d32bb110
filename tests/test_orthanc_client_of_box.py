"""Orthanc's DICOMweb plugin as a client of the box: a second Orthanc pulls a study through the Proxy box."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.studies import exam_c_study, write_study

pytestmark = [pytest.mark.orthanc, pytest.mark.box]

STUDY = "1.2.250.1.213.4.5.2.1.103"


def test_second_orthanc_retrieves_a_study_through_the_box(
    orthanc: Any, orthanc_factory: Any, source_box: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    orthanc.store_files(write_study(tmp_path / "study", exam_c_study(instances=6)))
    box = source_box(orthanc)
    peer = orthanc_factory()
    if not peer.dicomweb:
        pytest.skip("orthanc-dicomweb plugin missing")
    peer.clear()
    peer.rest("PUT", "/dicom-web/servers/box", {"Url": f"{box.url}/dicom-web/"})
    answer = peer.rest("POST", "/dicom-web/servers/box/retrieve", {"Resources": [{"Study": STUDY}]})
    assert answer is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(peer.instances()) < 6:
        time.sleep(0.2)
    assert sorted(peer.instances()) == sorted(orthanc.instances())
