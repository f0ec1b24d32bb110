"""The ANS WADO-RS request samples, replayed against a Proxy box: 200 and every instance asked for."""

from __future__ import annotations

import http.client
import re
from pathlib import Path
from typing import Any

import pytest

from conformance.ans import ANS_DATA, needs_ans_data
from drimbox.demo.samples.studies import exam_c_study, write_study

pytestmark = [needs_ans_data, pytest.mark.orthanc, pytest.mark.box]

STUDY = "1.2.250.1.213.4.5.2.1.103"


def request_from_sample(name: str, path: str) -> dict[str, str]:
    """The sample's headers (Accept with its q-list and boundary=**, Authorization, KOS-SOPInstanceUID...)."""
    lines = (ANS_DATA / "validator-samples" / name).read_text().splitlines()
    assert lines[0].startswith("GET https://") and "/studies/" in lines[0]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _, value = line.partition(":")
            headers[key.strip()] = value.strip()
    headers.pop("Host", None)
    headers["Connection"] = "close"
    return headers


def parts(content_type: str, body: bytes) -> list[bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary, content_type
    chunks = body.split(b"--" + boundary.group(1).encode())
    return [c for c in chunks[1:] if not c.startswith(b"--")]


@pytest.mark.parametrize("sample", ["wado-rs-request-series.txt", "wado-rs-request-instance.txt"])
def test_ans_wado_rs_samples_are_served(orthanc: Any, source_box: Any, tmp_path: Path, sample: str) -> None:
    orthanc.clear()
    files = write_study(tmp_path / "study", exam_c_study(instances=8))
    orthanc.store_files(files)
    box = source_box(orthanc)
    series = f"{STUDY}.1"
    path = f"/dicom-web/studies/{STUDY}/series/{series}"
    expected = 4
    if "instance" in sample:
        path += f"/instances/{series}.1"
        expected = 1
    conn = http.client.HTTPConnection("127.0.0.1", box.http_port, timeout=60)
    conn.request("GET", path, headers=request_from_sample(sample, path))
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 200, body[:300]
    content_type = resp.getheader("Content-Type", "")
    assert content_type.startswith("multipart/related") and 'type="application/dicom"' in content_type
    assert "**" not in content_type  # a real, fresh boundary, not the client's placeholder
    assert len(parts(content_type, body)) == expected
