"""A source box's trail of its DMP publications: registered, replaced, withdrawn, on the report author's behalf."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from tests.support.drim_flow import publish_exam
from tests.test_source_e2e import send

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]
INS = "279035121518989"


def trail(config: Path) -> list[dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "drimbox.cli", "audit", "export", "-c", str(config)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


async def test_register_replace_withdraw_are_recorded_and_survive_a_restart(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    box = source_box(orthanc)
    first = await asyncio.to_thread(publish_exam, orthanc, box, tmp_path, exam="G1", instances=2)
    # The chain goes on across a restart of the box (the head is read back on open).
    await asyncio.to_thread(box.stop)
    await asyncio.to_thread(box.start)
    maj = build_oru(build_cda(ANS_EXAMS["G1_MAJ"]), action="replace", control_id="G1-MAJ")
    assert await asyncio.to_thread(send, box, maj) == "AA"
    second = await asyncio.to_thread(box.wait_state, "ACN108", ("published",), 60.0, -1)
    third = await asyncio.to_thread(publish_exam, orthanc, box, tmp_path, exam="I", instances=2)
    await asyncio.to_thread(publish_exam, orthanc, box, tmp_path, exam="I", action="withdraw", control="2")
    # This box's /dicom-web is open (the fixture's default): an access is traced all the same, once per series.
    for _ in range(2):
        with urllib.request.urlopen(f"{box.url}/dicom-web/studies/{ANS_EXAMS['I'].study_uid}/series", timeout=30) as r:
            assert r.status == 200
    records = trail(box.config)
    opened = [r for r in records if r["action"] == "dicomweb.retrieve"]
    assert [(r["detail"]["via"], r["study"], r["source"]) for r in opened] == [
        ("open", ANS_EXAMS["I"].study_uid, "127.0.0.1")
    ]
    records = [r for r in records if r["action"].startswith("dmp.")]
    assert [(r["action"], r["kos"]) for r in records] == [
        ("dmp.register", first["kos_uid"]),
        ("dmp.replace", second["kos_uid"]),
        ("dmp.register", third["kos_uid"]),
        ("dmp.withdraw", third["kos_uid"]),
    ]
    for r, spec in zip(records, [ANS_EXAMS[e] for e in ("G1", "G1_MAJ", "I", "I")], strict=True):
        assert (r["outcome"], r["professional"], r["patient"]) == ("success", spec.author_id, INS)
        assert r["patient_name"] == f"{spec.family}^{spec.given}" and r["detail"]["accession"] == spec.accession
    verify = subprocess.run([sys.executable, "-m", "drimbox.cli", "audit", "verify", "-c", str(box.config)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert verify.returncode == 0 and "5 records" in verify.stdout, verify.stdout
