"""Time from ORU sent to KOS registered in the simulated DMP, for a study of N instances (median of R runs), with the
box's state on SQLite (the default), on PostgreSQL, or both in the same run (same Orthanc, same simulator).

python -m perf.publish_latency --instances 300 --runs 5
python -m perf.publish_latency --instances 50 --runs 10 --state both
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from drimbox.demo.main import box_sections, operator_request
from drimbox.demo.samples.orthanc import OrthancServer, start_orthanc
from drimbox.demo.samples.postgres import PostgresServer, start_postgres
from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message


def _published(http_port: int, accession: str) -> bool:
    url = f"http://127.0.0.1:{http_port}/api/publications?accession={accession}"
    with urllib.request.urlopen(operator_request(url), timeout=10) as resp:
        found = json.loads(resp.read())
    return bool(found) and found[-1]["state"] == "published"


def _measure(work: Path, orthanc: OrthancServer, ports: dict[str, int], state_url: str, label: str,
             args: argparse.Namespace) -> list[float]:  # fmt: skip
    sections: dict[str, dict[str, Any]] = box_sections(work, ports, orthanc)
    if state_url:
        sections["state"] = {"url": state_url}
    box_cfg = write_config(work / "box.toml", sections)
    box = DrimboxProcess("serve", box_cfg, f"http://127.0.0.1:{ports['http']}/health", work / "box.log").start()
    timings: list[float] = []
    try:
        for run in range(args.runs):
            # Each run is a distinct exam (own study UID and accession) so nothing is a duplicate.
            exam = dataclasses.replace(
                ANS_EXAMS["C"],
                study_uid=f"1.2.250.1.213.4.5.2.1.9{run}03.{len(label)}",
                accession=f"PERF{label[:2].upper()}{run}",
                document_id=f"1.2.250.1.213.4.5.4.9{run}03.{len(label)}",
            )
            orthanc.store_files(write_study(work / f"study{run}", study_for_exam(exam, instances=args.instances)))
            oru = build_oru(build_cda(exam), control_id=f"PERF-{label}-{run}")
            t0 = time.perf_counter()
            asyncio.run(send_message("127.0.0.1", ports["mllp"], oru))
            while not _published(ports["http"], exam.accession):
                time.sleep(0.005)
            timings.append(time.perf_counter() - t0)
            print(f"{label} run {run + 1}: {timings[-1] * 1000:.0f} ms", flush=True)
    finally:
        for line in box.log().splitlines():
            if "C-FIND" in line:
                print("  box:", line.split(": ", 1)[-1])
        box.stop()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--state", choices=("sqlite", "postgresql", "both"), default="sqlite",
                        help="where the box keeps its state; postgresql starts a throw-away server (fsync on)")  # fmt: skip
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.state == "both" else [args.state]
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="drimbox-perf-") as tmp:
        work = Path(tmp)
        ports = {name: free_port() for name in ("http", "mllp", "dicom", "sim")}
        orthanc = start_orthanc(work / "orthanc", box_aet="DRIMBOX", box_port=ports["dicom"])
        sim_cfg = write_config(work / "sim.toml", {"sim": {"port": ports["sim"], "var_dir": str(work / "sim")}})
        sim = DrimboxProcess(
            "sim", sim_cfg, f"http://127.0.0.1:{ports['sim']}/sim/dmp/documents?patient=0", work / "sim.log"
        ).start()
        postgres: PostgresServer | None = None
        try:
            for backend in backends:
                url = ""
                if backend == "postgresql":
                    postgres = start_postgres()
                    url = postgres.url(postgres.create_database())
                (work / backend).mkdir()
                results[backend] = _measure(work / backend, orthanc, ports, url, backend, args)
        finally:
            if postgres is not None:
                postgres.remove()
            sim.stop()
            orthanc.stop()
    for backend, timings in results.items():
        print(
            f"ORU sent → KOS registered, {args.instances} instances, state on {backend}: median"
            f" {statistics.median(timings) * 1000:.0f} ms over {len(timings)} runs"
            f" (min {min(timings) * 1000:.0f}, max {max(timings) * 1000:.0f})"
        )


if __name__ == "__main__":
    main()
