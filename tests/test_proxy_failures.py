"""The Proxy profile when things go wrong mid-stream: the PACS dies, the client leaves."""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.studies import exam_c_study, write_study

pytestmark = [pytest.mark.orthanc, pytest.mark.box]

STUDY = "1.2.250.1.213.4.5.2.1.103"


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def settle(pid: int, baseline: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and threads(pid) > baseline:
        time.sleep(0.2)
    return threads(pid)


@pytest.fixture
def big_study(tmp_path: Path) -> list[Path]:
    spec = dataclasses.replace(exam_c_study(instances=300), rows=512, columns=512, series_count=1)
    return write_study(tmp_path / "big", spec)


def warmed_baseline(box: Any) -> int:
    """Thread count once the box's thread pools exist: one full retrieve and one left mid-stream (the pools grow
    to what each path needs and keep their threads), then an empty cache again."""
    conn, resp = open_stream(box)
    resp.read()
    conn.close()
    urllib.request.urlopen(box.operator_request("/api/cache", "DELETE"), timeout=30).close()
    conn, resp = open_stream(box)
    resp.read(64 * 1024)
    conn.close()
    assert box.process.proc is not None
    time.sleep(1.0)
    urllib.request.urlopen(box.operator_request("/api/cache", "DELETE"), timeout=30).close()
    time.sleep(0.5)
    return threads(box.process.proc.pid)


def open_stream(box: Any) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", box.http_port, timeout=60)
    conn.request(
        "GET",
        f"/dicom-web/studies/{STUDY}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    return conn, resp


def test_pacs_killed_mid_retrieve_ends_the_response_abnormally(
    orthanc_factory: Any, source_box: Any, big_study: list[Path]
) -> None:
    pacs = orthanc_factory()
    pacs.store_files(big_study)
    box = source_box(pacs, pacs={"timeout": 3.0})
    assert box.process.proc is not None
    pid = box.process.proc.pid
    baseline = warmed_baseline(box)
    conn, resp = open_stream(box)
    first = resp.read(64 * 1024)
    assert first
    pacs.process.kill()
    pacs.process.wait(10)
    body = first
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while chunk := resp.read(1024 * 1024):
            body += chunk
        raise ConnectionError("response ended")  # reached only if the body ended: check it is truncated
    conn.close()
    boundary = resp.getheader("Content-Type", "").split("boundary=")[-1].strip('"')
    assert not body.rstrip().endswith(f"--{boundary}--".encode()), "a truncated study must not look complete"
    # The box is still healthy, says the PACS is gone, and has leaked no thread.
    health = json.loads(urllib.request.urlopen(f"{box.url}/health", timeout=10).read())
    assert health["status"] == "up" and health["components"]["cache"]["series"] == 0
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{box.url}/dicom-web/studies/{STUDY}/series/{STUDY}.1", timeout=30)
    assert err.value.code == 503
    assert settle(pid, baseline) <= baseline


def test_client_leaving_mid_stream_cancels_and_nothing_partial_is_cached(
    orthanc_factory: Any, source_box: Any, big_study: list[Path]
) -> None:
    pacs = orthanc_factory()
    pacs.store_files(big_study)
    box = source_box(pacs)
    assert box.process.proc is not None
    pid = box.process.proc.pid
    baseline = warmed_baseline(box)
    conn, resp = open_stream(box)
    assert resp.read(64 * 1024)
    conn.sock.close()
    conn.close()
    assert settle(pid, baseline) <= baseline
    # Whatever the fill had reached, the next client gets the whole study.
    conn, resp = open_stream(box)
    body = resp.read()
    assert body.count(b"Content-Type: application/dicom") == len(big_study)
