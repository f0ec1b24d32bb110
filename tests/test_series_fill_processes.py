"""One series fill across processes: two processes' caches on one directory, a real Orthanc, one retrieve."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drimbox.config import DicomSettings, PacsSettings
from drimbox.demo.samples.studies import exam_c_study, write_study
from drimbox.dimse.retrieve import ReceivedInstance, iter_retrieve
from drimbox.state.series_cache import SeriesCache

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk]

LOCAL = DicomSettings(ae_title="DRIMBOX", host="127.0.0.1", port=0)


def _fill(cache_dir: str, pacs: dict[str, Any], study: str, series: str, work: str, delay: float) -> None:
    """A process of the box: read the series through its own SeriesCache; each retrieve it starts leaves a file."""

    async def main() -> None:
        cache = SeriesCache(Path(cache_dir), 1 << 30)

        async def slowed() -> AsyncIterator[ReceivedInstance]:
            (Path(work) / f"retrieve-{os.getpid()}").touch()
            async for item in iter_retrieve(PacsSettings(**pacs), LOCAL, study, series):
                await asyncio.sleep(delay)  # a slow PACS: the other process asks while this fill runs
                yield item

        got = [i.sop_instance_uid async for i in cache.series(study, series, slowed)]
        cache.close()
        (Path(work) / f"read-{os.getpid()}.json").write_text(json.dumps(got))

    asyncio.run(main())


@pytest.fixture
def series(orthanc: Any, tmp_path: Path) -> tuple[str, str, set[str]]:
    """A study in Orthanc: its UID, one series' UID and that series' instances."""
    orthanc.clear()
    orthanc.store_files(write_study(tmp_path / "study", exam_c_study(instances=12)))
    one = orthanc.rest("GET", "/series")[0]
    tags = orthanc.rest("GET", f"/series/{one}")
    sops = {orthanc.rest("GET", f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in tags["Instances"]}
    study = orthanc.rest("GET", f"/studies/{tags['ParentStudy']}")["MainDicomTags"]["StudyInstanceUID"]
    return study, tags["MainDicomTags"]["SeriesInstanceUID"], sops


def _start(orthanc: Any, cache: Path, series: tuple[str, str, set[str]], work: Path, delay: float) -> Any:
    pacs = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port, "timeout": 10.0}
    process = multiprocessing.get_context("spawn").Process(
        target=_fill, args=(str(cache), pacs, series[0], series[1], str(work), delay), daemon=True
    )
    process.start()
    return process


def _wait_for(path_glob: str, work: Path, timeout: float = 20.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := sorted(work.glob(path_glob)):
            return found
        time.sleep(0.02)
    raise AssertionError(f"nothing matched {path_glob} in {timeout} s")


def test_a_second_process_waits_for_the_first_fill(orthanc: Any, series: Any, tmp_path: Path) -> None:
    cache, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    first = _start(orthanc, cache, series, work, delay=0.1)  # 12 instances: a fill of over a second
    _wait_for("retrieve-*", work)
    second = _start(orthanc, cache, series, work, delay=0.0)
    for process in (first, second):
        process.join(60)
        assert process.exitcode == 0
    assert len(list(work.glob("retrieve-*"))) == 1  # one C-GET for both processes
    reads = [json.loads(p.read_text()) for p in work.glob("read-*.json")]
    assert len(reads) == 2 and all(set(r) == series[2] for r in reads)
    assert not list((cache / ".fills").iterdir())  # every lock file went with its fill


def test_a_killed_filler_lets_the_other_process_fill(orthanc: Any, series: Any, tmp_path: Path) -> None:
    cache, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    killed = _start(orthanc, cache, series, work, delay=5.0)  # stuck after its first instance
    (started,) = _wait_for("retrieve-*", work)
    survivor = _start(orthanc, cache, series, work, delay=0.0)
    time.sleep(1.5)  # the survivor is up and waiting on the lock, not retrieving
    assert [p.name for p in work.glob("retrieve-*")] == [started.name]
    assert killed.pid is not None
    os.kill(killed.pid, signal.SIGKILL)
    survivor.join(60)
    assert survivor.exitcode == 0
    assert len(list(work.glob("retrieve-*"))) == 2  # the kernel released the lock: the survivor retrieved
    (read,) = [json.loads(p.read_text()) for p in work.glob("read-*.json")]
    assert set(read) == series[2]
