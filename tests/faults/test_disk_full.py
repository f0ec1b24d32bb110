"""Full disks: the Proxy cache (served uncached from memory, nothing partial kept) and the KOS directory (retry)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import exam_c_study, study_for_exam, write_study
from tests.faults.harness import INS, file_parts, get_study, load_exam, send, study_parts, wait_for

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]

BIG_STUDY = "1.2.250.1.213.4.5.2.1.103"  # exam C
SMALL_STUDY = ANS_EXAMS["E"].study_uid
CACHE_MB = 4


@pytest.fixture
def small_disk() -> Iterator[Callable[[Path, int], Path]]:
    """small_disk(directory, megabytes): a tmpfs of that size mounted there, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("mount (util-linux) not found")
    mounted: list[Path] = []

    def mount(directory: Path, megabytes: int) -> Path:
        directory.mkdir(parents=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(directory)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(directory)
        return directory

    try:
        yield mount
    finally:
        for directory in mounted:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def cache_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file() and p.parent != cache]


def cache_health(box: Any) -> dict[str, Any]:
    health = json.loads(urllib.request.urlopen(f"{box.url}/health", timeout=10).read())
    assert health["status"] == "up", health  # a full cache disk degrades the cache, never the box
    return dict(health["components"]["cache"])


def test_retrieve_larger_than_the_free_cache_space(
    small_disk: Any, orthanc: Any, armed_box: Any, tmp_path: Path
) -> None:
    small_cache_disk = small_disk(tmp_path / "box0" / "box-var" / "cache", CACHE_MB)
    orthanc.clear()
    # Two series of ~5 MB each: neither fits on the cache disk.
    big = write_study(tmp_path / "big", dataclasses.replace(exam_c_study(instances=20), rows=512, columns=512))
    small = write_study(tmp_path / "small", study_for_exam(ANS_EXAMS["E"], instances=4))
    orthanc.store_files(big + small)
    box = armed_box(orthanc, None)
    assert (tmp_path / "box0").exists() and box.work == tmp_path / "box0"
    # The disk fills up in the middle of the series: the client still gets all of it, identical.
    status, boundary, body = get_study(box, BIG_STUDY)
    assert status == 200 and study_parts(body, boundary) == file_parts(big)
    health = cache_health(box)
    assert health["status"] == "degraded" and "ENOSPC" in health["last_write_error"], health
    assert health["series"] == 0, health
    # Nothing of it stays on the cache disk, half-written or not.
    assert cache_files(small_cache_disk) == [], cache_files(small_cache_disk)
    # A disk full from the start (something else took the space): every study is still served, both at once.
    filler = fill_up(small_cache_disk / "filler")
    with ThreadPoolExecutor(2) as pool:
        requests = [(pool.submit(get_study, box, BIG_STUDY), big), (pool.submit(get_study, box, SMALL_STUDY), small)]
        for request, files in requests:
            status, boundary, body = request.result()
            assert status == 200, body[:300]
            assert study_parts(body, boundary) == file_parts(files)
    assert cache_health(box)["series"] == 0
    # Space is back: a study that fits is cached, then served from the cache, and the cache is healthy again.
    filler.unlink()
    for _ in range(2):
        status, boundary, body = get_study(box, SMALL_STUDY)
        assert status == 200 and study_parts(body, boundary) == file_parts(small)
    health = cache_health(box)
    assert health["series"] >= 1 and health["status"] == "up", health


def fill_up(path: Path) -> Path:
    """A file that takes every free byte of its disk."""
    with open(path, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    return path


def test_full_kos_directory_retries_then_publishes_once(
    small_disk: Any, orthanc: Any, armed_box: Any, sim: Any, tmp_path: Path
) -> None:
    kos_dir = small_disk(tmp_path / "box0" / "box-var" / "kos", 1)
    filler = fill_up(kos_dir / "filler")
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C")
    box = armed_box(orthanc, None)
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-KOS-FULL")) == "AA"
    wait_for(lambda: box.publications("ACN103")[0]["attempts"] >= 2, 30, "two failed attempts")
    pub = box.publications("ACN103")[0]
    assert pub["state"] == "retrying" and "No space left" in (pub["last_error"] or ""), pub
    assert sim.documents(INS) == []
    filler.unlink()  # the operator frees space; nobody touches the box
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published", pub["last_error"]
    assert [e["uniqueId"] for e in sim.documents(INS)] == [pub["kos_uid"]]
