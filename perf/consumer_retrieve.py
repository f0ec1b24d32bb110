"""Exam retrieve through the consumer vs directly from the source box, same run: first byte and MB/s (curl).

    python -m perf.consumer_retrieve --instances 200 --size 512

The source box is a real process (Proxy profile, Orthanc behind it); the consumer (its /conso/dicom-web over
ConsumerBackend, whitelist from the simulator, a real PSC token) runs in this process. The source's /dicom-web is
left unprotected here (`[auth] protect_dicomweb = false`): protection adds one token check per series request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

from drimbox.demo.main import box_sections, operator_request
from drimbox.demo.samples.orthanc import start_orthanc
from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message
from tests.support.drim_flow import consumer_settings, psc_token, running_consumer

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


async def curl(url: str, **headers: str) -> tuple[float, float, int]:
    """(seconds to first byte, seconds in all, bytes) of one GET, measured by curl outside this process."""
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
            "-H", f"Accept: {ACCEPT}", *[a for k, v in headers.items() for a in ("-H", f"{k}: {v}")], url]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    code, first, total, size = out.decode().split()
    assert code == "200", (url, code)
    return float(first), float(total), int(size)


def _published(port: int, accession: str) -> str | None:
    with urllib.request.urlopen(
        operator_request(f"http://127.0.0.1:{port}/api/publications?accession={accession}"), timeout=10
    ) as r:
        found = json.loads(r.read())
    return found[-1]["kos_uid"] if found and found[-1]["state"] == "published" else None


def _clear_source_cache(port: int) -> None:
    urllib.request.urlopen(operator_request(f"http://127.0.0.1:{port}/api/cache", "DELETE"), timeout=30)


def line(name: str, result: tuple[float, float, int]) -> str:
    first, total, size = result
    return f"  {name:<58} first byte {first * 1000:6.0f} ms   {size / total / 1e6:7.0f} MB/s   ({total:.2f} s)"


async def measure(work: Path, ports: dict[str, int], kos_uid: str, kos: bytes, study: str, runs: int) -> None:
    sim_url = f"http://127.0.0.1:{ports['sim']}"
    token = (await asyncio.to_thread(psc_token, sim_url))["access_token"]
    direct_url = f"http://127.0.0.1:{ports['http']}/dicom-web/studies/{study}"
    names = ("direct from the source box, source cache cold (C-GET)", "direct from the source box, source cache warm",
             "through the consumer, both caches cold", "through the consumer, consumer cold, source warm",
             "through the consumer, consumer cache warm")  # fmt: skip
    measured: list[list[tuple[float, float, int]]] = [[] for _ in names]
    async with running_consumer(consumer_settings(work, sim_url), token, {kos_uid: kos}) as conso:
        conso_url = f"{conso.url}/conso/dicom-web/studies/{study}"
        through = {"KOS-SOPInstanceUID": kos_uid}
        await conso.whitelist.ensure_fresh()  # a running box holds the list already (fetched at start)
        # The professional's exam list read the KOS before any image is asked for (consumer/kos_read.py keeps it):
        # read here too, and timed apart, so the first byte below is the images' own.
        started = time.perf_counter()
        await conso.backend.kos(kos_uid)
        kos_read_s = time.perf_counter() - started
        for _ in range(runs):  # in turn, so a neighbour's load on a shared machine weighs on both paths alike
            await asyncio.to_thread(_clear_source_cache, ports["http"])
            await conso.backend.cache.clear()
            measured[0].append(await curl(direct_url))
            measured[1].append(await curl(direct_url))
            await asyncio.to_thread(_clear_source_cache, ports["http"])
            measured[2].append(await curl(conso_url, **through))
            await conso.backend.cache.clear()
            measured[3].append(await curl(conso_url, **through))
            measured[4].append(await curl(conso_url, **through))
    size = measured[0][0][2]
    print(f"exam C, {size / 1e6:.0f} MB, Accept transfer-syntax=* (curl, loopback), median of {runs} runs:")
    print(f"  the KOS read once per process (by the exam list, before the viewer): {kos_read_s * 1000:.0f} ms")
    for name, results in zip(names, measured, strict=True):
        print(line(name, sorted(results, key=lambda r: r[1])[len(results) // 2]))
    # The target (15, item 4): through the consumer cold at ≥ 0.9 × the source's own cold speed. Each run's
    # ratio is of two measurements made one after the other.
    cold = sorted(d[1] / t[1] for d, t in zip(measured[0], measured[2], strict=True))
    warm = sorted(d[1] / t[1] for d, t in zip(measured[1], measured[3], strict=True))
    print(f"  through / direct, both cold: {' '.join(f'{r:.2f}' for r in cold)} × (target ≥ 0.9); source warm, "
          f"consumer cold: {' '.join(f'{r:.2f}' for r in warm)} ×")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each image")
    parser.add_argument("--runs", type=int, default=3, help="measurements of each path, in turn (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drimbox-perf-") as tmp:
        work = Path(tmp)
        ports = {name: free_port() for name in ("http", "mllp", "dicom", "sim")}
        orthanc = start_orthanc(work / "orthanc", box_aet="DRIMBOX", box_port=ports["dicom"])
        sim_cfg = write_config(work / "sim.toml", {"sim": {"port": ports["sim"], "var_dir": str(work / "sim")}})
        sim = DrimboxProcess("sim", sim_cfg, f"http://127.0.0.1:{ports['sim']}/sim/dmp/documents?patient=0",
                             work / "sim.log").start()  # fmt: skip
        sections = box_sections(work, ports, orthanc)
        sections["auth"]["protect_dicomweb"] = False
        box_cfg = write_config(work / "box.toml", sections)
        box = DrimboxProcess("serve", box_cfg, f"http://127.0.0.1:{ports['http']}/health", work / "box.log").start()
        try:
            exam = ANS_EXAMS["C"]
            spec = study_for_exam(exam, instances=args.instances, rows=args.size, columns=args.size)
            orthanc.store_files(write_study(work / "study", spec))
            asyncio.run(send_message("127.0.0.1", ports["mllp"], build_oru(build_cda(exam), control_id="PERF-C")))
            deadline = time.monotonic() + 120
            while (kos_uid := _published(ports["http"], exam.accession)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert kos_uid, "exam C was not published"
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['sim']}/sim/dmp/documents/{kos_uid}") as r:
                kos = r.read()
            # The consumer runs on uvloop, as `drimbox serve` does.
            uvloop.run(measure(work, ports, kos_uid, kos, exam.study_uid, args.runs))
        finally:
            box.stop()
            sim.stop()
            orthanc.stop()


if __name__ == "__main__":
    main()
