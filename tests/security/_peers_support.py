"""Helpers for the DICOM-peer attacks: storescu and pynetdicom pushes from chosen AE titles and source addresses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from tests.support.fixtures_mesh import get_json

# A second loopback address: Linux routes all of 127.0.0.0/8 to lo, so a client can bind it as its source.
OTHER_LOOPBACK = "127.0.0.2"


def storescu(port: int, paths: list[Path], aet: str, aec: str = "DRIMBOX") -> subprocess.CompletedProcess[str]:
    """dcmtk storescu from `aet` on 127.0.0.1 (the outside tester's tool)."""
    return subprocess.run(
        ["storescu", "-aet", aet, "-aec", aec, "-to", "10", "-ta", "10", "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True, text=True, timeout=60, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def rejected_at_association(done: subprocess.CompletedProcess[str]) -> bool:
    out = done.stdout + done.stderr
    return done.returncode != 0 and "Association Rejected" in out


def pynetdicom_store(port: int, paths: list[Path], aet: str, bind: str, aec: str = "DRIMBOX") -> list[int] | None:
    """C-STORE each file as `aet` from source address `bind`: the statuses, or None when the association is refused."""
    ae = AE(ae_title=aet)
    datasets = [pydicom.dcmread(path) for path in paths]
    for sop_class in dict.fromkeys(str(ds.SOPClassUID) for ds in datasets):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title=aec, bind_address=(bind, 0))
    if not assoc.is_established:
        return None
    try:
        statuses = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if "Status" in status else -1)
        return statuses
    finally:
        assoc.release()


def injected_series(source: Path, into: Path, count: int = 2) -> list[Path]:
    """Instances of a new series in the study of `source` (same patient): what an attacker would slip in."""
    series_uid = generate_uid()
    paths = []
    for n in range(count):
        ds: Dataset = pydicom.dcmread(source)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 99
        ds.SeriesDescription = "INJECTED"
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n + 1
        path = into / f"injected-{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def trail(config: Path) -> list[dict[str, Any]]:
    """The box's audit trail, as `drimbox audit export` gives it."""
    out = subprocess.run([sys.executable, "-m", "drimbox.cli", "audit", "export", "-c", str(config)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def records(config: Path, action: str, source: str | None = None) -> list[dict[str, Any]]:
    return [r for r in trail(config) if r["action"] == action and (source is None or r["source"] == source)]


def served_instances(box: Any, study_uid: str) -> set[str]:
    """SOP Instance UIDs the box's own archive serves for a study (QIDO-RS, open in the test boxes)."""
    return {i["00080018"]["Value"][0] for i in get_json(f"{box.url}/dicom-web/studies/{study_uid}/instances")}
