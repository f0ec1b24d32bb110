"""The perf suite's emulated WAN link (perf/wan.py): it delivers about its bandwidth and RTT, a box serves through it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.studies import exam_c_study, write_study
from perf.wan import PREFIX, Profile, WanLink, namespaces_work
from perf.wan_check import byte_server, measure_link

pytestmark = [pytest.mark.wan]

# Small enough to stay a few seconds, slow enough that the shaping (not the 2 shared cores) sets the pace.
SMOKE = Profile("smoke", mbit_s=20, rtt_ms=60)


@pytest.fixture(scope="module", autouse=True)
def namespaces() -> None:
    if os.geteuid() != 0:
        pytest.skip("the WAN link needs root (ip netns, tc)")
    reason = namespaces_work()
    if reason:
        pytest.skip(reason)


def _leftovers(name: str) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return [line for line in (netns + links).splitlines() if name in line]


def test_the_link_delivers_about_its_bandwidth_and_rtt_and_nothing_is_left_after() -> None:
    with byte_server() as port, WanLink(SMOKE) as link:
        got = measure_link(link, port, mb=2.5, pings=5)
        name = link.netns
    # Wide bounds (shared cores), but a link that did not shape (loopback runs at GB/s) or did not delay fails.
    assert 0.6 <= got["rate_ratio"] <= 1.1, got
    assert 0.9 <= got["rtt_ratio"] <= 2.0, got
    assert got["new_connection_ms"] >= 1.8 * SMOKE.rtt_ms, got  # the handshake's round trip, then the request's
    assert _leftovers(name) == []


def test_the_namespace_only_reaches_the_host_through_the_link() -> None:
    with byte_server() as port, WanLink(SMOKE) as link:
        direct = subprocess.run(
            link.inside(["curl", "-s", "-o", "/dev/null", "--max-time", "2", f"http://127.0.0.1:{port}/ping"]),
            capture_output=True,
            check=False,
        )
        assert direct.returncode != 0  # the host's loopback is not the namespace's


def test_a_failure_inside_the_link_still_removes_it() -> None:
    with pytest.raises(RuntimeError), WanLink(SMOKE) as link:
        name = link.netns
        raise RuntimeError("a benchmark failed")
    assert _leftovers(name) == []
    assert name.startswith(PREFIX)


@pytest.mark.orthanc
@pytest.mark.box
@pytest.mark.sim
def test_a_study_from_a_box_arrives_whole_through_the_link_at_the_link_pace(
    orthanc: Any, source_box: Any, tmp_path: Path
) -> None:
    spec = dataclasses.replace(exam_c_study(instances=20, rows=256, columns=256), study_uid="1.2.250.1.999.15.7")
    files = write_study(tmp_path / "study", spec)
    orthanc.store_files(files)
    box = source_box(orthanc)
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    body = tmp_path / "study.multipart"
    with WanLink(SMOKE) as link:
        link.share(box.http_port)  # the same URL in the namespace as on the host, across the link
        url = f"{box.url}/dicom-web/studies/{spec.study_uid}"
        started = time.monotonic()
        out = subprocess.run(
            link.inside(["curl", "-s", "-o", str(body), "--max-time", "60", "-H", f"Accept: {accept}",
                         "-w", "%{http_code} %{size_download}", url]),
            capture_output=True, text=True, timeout=70, check=True,
        ).stdout  # fmt: skip
        elapsed = time.monotonic() - started
    code, size = out.split()
    assert code == "200"
    data = body.read_bytes()
    assert data.count(b"\r\nContent-Type: application/dicom") == 20
    assert int(size) >= sum(p.stat().st_size for p in files)
    limit = SMOKE.limit_s(int(size), 2)
    assert 0.9 * limit <= elapsed <= 3 * limit + 2, (elapsed, limit)
