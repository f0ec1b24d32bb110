"""Cold C-GET of a 300 × 512² 16-bit CT (158 MB) from Orthanc: drimbox's retrieve beside dcmtk getscu, same run.

    .venv/bin/python -m perf.dimse_retrieve [--runs 5] [--instances 300] [--pynetdicom]

Every run opens its own association (nothing pooled: "cold" for the box, as for getscu). getscu runs with
TCP_NODELAY=1, once writing the files (its default, the DESIGN.md reference) and once with --ignore (receive
only, like our in-memory consumer). Prints MB/s per run, the median, and the ratios.

Measured here (158 MB study, Orthanc 1.10 sending 16 KiB PDUs, 2 cores), medians of `--runs 7 --pynetdicom`,
all in the same run:

    dcmtk getscu, TCP_NODELAY=1, writing the files      ≈  370 MB/s  (DESIGN.md measured 575)
    dcmtk getscu --ignore (receive only)                ≈  860 MB/s
    pynetdicom 3.0 with dul._run_loop_delay = 0         ≈  280 MB/s  (out of the box ≈ 135)
    drimbox.dimse.get                                   ≈ 1120 MB/s  (1.3 × getscu --ignore, 3 × with files)
    drimbox.dimse.get, parallel=2 (an association a series) ≈ 1440 MB/s

py-spy of the C-GET thread: ≈ 60 % waiting for Orthanc (select), 16 % recv, 9 % joining each data set into one
bytes object, 3 % sending C-STORE-RSPs: Orthanc, on the other core, is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from drimbox.config import DicomSettings, PacsSettings
from drimbox.demo.samples.orthanc import OrthancServer, start_orthanc
from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.studies import exam_c_study, write_study
from drimbox.dimse.pool import AssociationPool
from drimbox.dimse.retrieve import RetrieveOutcome, iter_retrieve
from drimbox.dimse.store_scp import StoreSCP

BOX_AET = "DRIMBOX"


def _getscu(orthanc: OrthancServer, study_uid: str, instances: int, ignore: bool) -> tuple[int, float]:
    """getscu's (bytes, seconds); with --ignore nothing is written: bytes are those of the files run."""
    exe = shutil.which("getscu")
    if exe is None:
        raise SystemExit("getscu not found: apt-get install dcmtk")
    with tempfile.TemporaryDirectory(prefix="perf-getscu-") as out:
        args = [
            exe,
            "-v",
            "-S",
            "-aet",
            BOX_AET,
            "-aec",
            orthanc.aet,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            *(["--ignore"] if ignore else ["-od", out]),
        ]
        started = time.perf_counter()
        proc = subprocess.run(
            [*args, orthanc.host, str(orthanc.dicom_port)],
            capture_output=True,
            text=True,
            env={**os.environ, "TCP_NODELAY": "1"},
            check=False,
        )
        elapsed = time.perf_counter() - started
        stores = proc.stdout.count("Received C-STORE Request") + proc.stderr.count("Received C-STORE Request")
        if proc.returncode != 0 or stores != instances:
            raise SystemExit(f"getscu failed ({stores} stores):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        size = sum(p.stat().st_size for p in Path(out).iterdir())
    if not ignore:
        _getscu_size[0] = size
    return _getscu_size[0], elapsed


_getscu_size = [0]


async def _ours(
    pacs: PacsSettings, local: DicomSettings, study_uid: str, method: str, scp: StoreSCP, parallel: int = 1
) -> tuple[int, float]:
    outcome = RetrieveOutcome()
    pool = AssociationPool(idle_seconds=0)
    size = 0
    started = time.perf_counter()
    async for instance in iter_retrieve(
        pacs, local, study_uid, method=method, outcome=outcome, pool=pool, scp=scp, parallel=parallel
    ):
        size += len(instance.data)
    elapsed = time.perf_counter() - started
    if outcome.failed or not outcome.delivered:
        raise SystemExit(f"{method}: {outcome}")
    return size, elapsed


def _pynetdicom(pacs: PacsSettings, study_uid: str, sop_class: str) -> tuple[int, float]:
    """pynetdicom 3 C-GET as DESIGN.md measured it (loop delay 0), for the record: the path ul.py replaces."""
    from pydicom.dataset import Dataset
    from pynetdicom import build_role, evt
    from pynetdicom.dimse_primitives import C_STORE

    from drimbox.dimse.network import make_ae

    size = 0

    def on_store(event: evt.Event) -> int:
        nonlocal size
        data = cast(C_STORE, event.request).DataSet
        size += len(data.getvalue()) if data is not None else 0
        return 0x0000

    ae = make_ae(BOX_AET, pacs.timeout)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.3")
    ae.add_requested_context(sop_class)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    started = time.perf_counter()
    assoc = ae.associate(
        pacs.host,
        pacs.port,
        ae_title=pacs.ae_title,
        ext_neg=[build_role(sop_class, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assoc.dul._run_loop_delay = 0
    for _ in assoc.send_c_get(query, "1.2.840.10008.5.1.4.1.2.2.3"):
        pass
    assoc.release()
    return size, time.perf_counter() - started


def _rate(result: tuple[int, float]) -> float:
    return result[0] / 1e6 / result[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--pynetdicom", action="store_true", help="also time pynetdicom's C-GET (the old path)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drimbox-perf-dimse-") as tmp:
        work = Path(tmp)
        spec = exam_c_study(instances=args.instances, rows=512, columns=512)
        print(f"writing {args.instances} × 512² CT ...", flush=True)
        paths = write_study(work / "study", spec)
        scp_port = free_port()
        orthanc = start_orthanc(work / "orthanc", box_aet=BOX_AET, box_port=scp_port)
        scp = StoreSCP(DicomSettings(ae_title=BOX_AET, host="127.0.0.1", port=scp_port)).start()
        try:
            orthanc.store_files(paths)
            pacs = orthanc.pacs_settings(timeout=60)
            local = DicomSettings(ae_title=BOX_AET, host="127.0.0.1", port=scp_port)
            candidates: dict[str, Callable[[], tuple[int, float]]] = {
                "getscu (files)": lambda: _getscu(orthanc, spec.study_uid, args.instances, ignore=False),
                "getscu --ignore": lambda: _getscu(orthanc, spec.study_uid, args.instances, ignore=True),
                "drimbox C-GET": lambda: asyncio.run(_ours(pacs, local, spec.study_uid, "c-get", scp)),
                "drimbox C-MOVE": lambda: asyncio.run(_ours(pacs, local, spec.study_uid, "c-move", scp)),
                "drimbox C-GET ∥ series": lambda: asyncio.run(_ours(pacs, local, spec.study_uid, "c-get", scp, 2)),
            }
            if args.pynetdicom:
                candidates["pynetdicom C-GET"] = lambda: _pynetdicom(pacs, spec.study_uid, str(spec.sop_class_uid))
            # One untimed round: Orthanc's files in the page cache, every code path imported.
            for run in candidates.values():
                run()
            rates: dict[str, list[float]] = {name: [] for name in candidates}
            sizes: dict[str, int] = {}
            # Interleaved rounds, so a noisy moment of the machine hits every candidate alike.
            for _ in range(args.runs):
                for name, run in candidates.items():
                    size, elapsed = run()
                    rates[name].append(size / 1e6 / elapsed)
                    sizes[name] = size
        finally:
            scp.stop()
            orthanc.stop()
    size = sizes["drimbox C-GET"]
    print(f"\nstudy: {args.instances} instances, {size / 1e6:.1f} MB of Part-10 files; {args.runs} runs each (MB/s)")
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        runs = " ".join(f"{v:6.0f}" for v in values)
        print(f"  {name:22} median {median[name]:6.0f}   best {max(values):6.0f}   runs {runs}")
    for ours in ("drimbox C-GET", "drimbox C-MOVE", "drimbox C-GET ∥ series"):
        for reference in ("getscu (files)", "getscu --ignore"):
            print(f"  {ours} / {reference}: {median[ours] / median[reference]:.2f}×")


if __name__ == "__main__":
    main()
