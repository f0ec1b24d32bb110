"""The archive SCP killed mid-burst keeps every acknowledged instance; a full disk answers Out of Resources."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from drimbox.archive import Archive
from drimbox.archive.store import INCOMING, split_part10
from drimbox.config import PacsSettings
from drimbox.demo.samples.studies import exam_c_study, write_study
from drimbox.dimse import find_study_instances
from tests.support.dcmtk import require_tool

pytestmark = pytest.mark.dcmtk

AE_TITLE = "DRIMBOX"
SIZE = 256
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


class ScpProcess:
    """`python -m drimbox.archive` in its own process group, on a port the OS picks."""

    def __init__(self, var_dir: Path, wrapper: list[str] | None = None) -> None:
        env = {
            **os.environ,
            "DRIMBOX_BOX__VAR_DIR": str(var_dir),
            "DRIMBOX_BOX__LOG_LEVEL": "WARNING",
            "DRIMBOX_DICOM__PORT": "0",
            "DRIMBOX_DICOM__AE_TITLE": AE_TITLE,
            "DRIMBOX_DICOM__STORE_PEERS": "STORESCU@127.0.0.1",  # dcmtk's default calling AE title
        }
        self.proc = subprocess.Popen(
            [*(wrapper or []), sys.executable, "-m", "drimbox.archive"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "READY":
            self.kill()
            pytest.fail(f"archive SCP did not start: {line}")
        self.port = int(line[1])

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)
        self.proc.wait(timeout=30)


def storescu_burst(port: int, files: list[Path], kill_after: int | None, victim: ScpProcess) -> str:
    """storescu -v of every file; with `kill_after`, SIGKILL the SCP once that many were acknowledged."""
    exe = require_tool("storescu", "dcmtk")
    proc = subprocess.Popen(
        [exe, "-v", "-aec", AE_TITLE, "127.0.0.1", str(port), *map(str, files)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        successes = 0
        for line in proc.stderr:
            lines.append(line)
            if "Received Store Response (Success)" in line:
                successes += 1
                if successes == kill_after:
                    victim.kill()
        proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "".join(lines)


def acknowledged(log: str) -> list[Path]:
    done: list[Path] = []
    current = ""
    for line in log.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current:
            done.append(Path(current))
            current = ""
    return done


def dataset_part(data: bytes) -> bytes:
    return data[split_part10(data)[1] :]


@pytest.fixture(scope="module")
def burst(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_study(tmp_path_factory.mktemp("burst"), exam_c_study(200, rows=SIZE, columns=SIZE))


def test_killed_during_a_burst_keeps_what_it_acknowledged(tmp_path: Path, burst: list[Path]) -> None:
    var = tmp_path / "var"
    scp = ScpProcess(var)
    try:
        log = storescu_burst(scp.port, burst, kill_after=60, victim=scp)
    finally:
        scp.kill()
    acked = acknowledged(log)
    assert 60 <= len(acked) < len(burst), "the kill must land in the middle of the burst"
    source = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in burst}

    archive = Archive.open(var)  # what a restart does: sweep the temporary files, open the index
    try:
        assert list((archive.root / INCOMING).iterdir()) == []
        indexed = archive.index.search("instance", {}, includefields=["all"])
        files = {f.sop_uid: f for f in archive.index.instance_files(burst_study_uid(burst))}
        assert {m["SOPInstanceUID"] for m in indexed} == set(files)
        for path in acked:
            uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert uid in files, f"{path.name} was acknowledged but is not in the archive"
        # Everything indexed is whole: same size as indexed, parses, pixel data complete, same bytes as sent.
        for uid, f in files.items():
            data = f.path.read_bytes()
            assert len(data) == f.size
            ds = dcmread(f.path)
            assert len(ds.PixelData) == SIZE * SIZE * 2
            assert dataset_part(data) == dataset_part(source[uid].read_bytes())
    finally:
        archive.close()

    # The restarted SCP takes the rest (and the re-sent ones again) without complaint.
    scp = ScpProcess(var)
    try:
        log = storescu_burst(scp.port, burst, kill_after=None, victim=scp)
    finally:
        scp.kill(signal.SIGTERM)
    assert len(acknowledged(log)) == len(burst)
    archive = Archive.open(var)
    try:
        assert len(archive.index.search("instance", {})) == len(burst)
    finally:
        archive.close()


def burst_study_uid(files: list[Path]) -> str:
    return str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A 3 MB tmpfs as the archive directory, mounted in a private user+mount namespace (no root needed)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) not found")
    archive_dir = tmp_path / "var" / "archive"
    archive_dir.mkdir(parents=True)
    probe = subprocess.run(
        [unshare, "-Urm", "mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(archive_dir)],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.decode().strip()}")
    wrapper = [
        unshare,
        "-Urm",
        "sh",
        "-c",
        f'mount -t tmpfs -o size=3m tmpfs "{archive_dir}" && exec "$0" "$@"',
    ]
    yield tmp_path / "var", wrapper


def test_full_disk_answers_out_of_resources(small_disk: tuple[Path, list[str]], burst: list[Path]) -> None:
    var, wrapper = small_disk
    scp = ScpProcess(var, wrapper)
    try:
        log = storescu_burst(scp.port, burst[:60], kill_after=None, victim=scp)
        acked = acknowledged(log)
        assert 0 < len(acked) < 60
        # 0xA700, as storescu names it; storescu stops at the first failure.
        assert "Received Store Response (Refused: OutOfResources)" in log, log[-2000:]
        # What was acknowledged is there: ask the SCP itself (the tmpfs only exists in its namespace).
        own = PacsSettings(ae_title=AE_TITLE, host="127.0.0.1", port=scp.port, timeout=10)
        found = find_study_instances(own, "STORESCU", burst_study_uid(burst))  # a peer the archive knows
        assert found is not None
        stored = {i.sop_instance_uid for i in found.instances}
        for path in acked:
            assert dcmread(path, stop_before_pixels=True).SOPInstanceUID in stored
        assert len(stored) == len(acked)
    finally:
        scp.kill(signal.SIGTERM)
