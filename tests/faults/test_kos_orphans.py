"""A kill between writing a KOS file and recording its UID: the file nothing refers to is removed at the next start."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from tests.faults.harness import INS, load_exam, restart, send, wait_killed

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]


def test_kos_file_left_by_a_kill_is_removed_at_start(orthanc: Any, armed_box: Any, sim: Any, tmp_path: Path) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C")
    box = armed_box(orthanc, "publish.kos_written")
    kos_dir = tmp_path / "box0" / "box-var" / "kos"
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-ORPHAN")) == "AA"
    wait_killed(box, "publish.kos_written")
    [orphan] = list(kos_dir.glob("*.dcm"))
    # The kill happened an hour ago; meanwhile a KOS of another job was just written, and an operator left a note.
    hour_ago = time.time() - 3600
    os.utime(orphan, (hour_ago, hour_ago))
    stale_tmp = kos_dir / "1.2.999.1.tmp"
    stale_tmp.write_bytes(b"half")
    os.utime(stale_tmp, (hour_ago, hour_ago))
    fresh = kos_dir / "1.2.999.2.dcm"
    fresh.write_bytes(b"being written")
    note = kos_dir / "README.txt"
    note.write_text("kept")
    os.utime(note, (hour_ago, hour_ago))
    restart(box)
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published", pub["last_error"]
    assert [e["uniqueId"] for e in sim.documents(INS)] == [pub["kos_uid"]]
    assert pub["kos_uid"] != orphan.stem  # the replay built a new KOS; the first one was never recorded
    assert not orphan.exists() and not stale_tmp.exists()
    assert (kos_dir / f"{pub['kos_uid']}.dcm").exists() and fresh.exists() and note.exists()
