"""The perf suite: the box beside Orthanc and dcmtk on the same studies, same run; ratios are the headline."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drimbox.auth.operator import operator_token_hash
from drimbox.config import Settings
from drimbox.demo.main import operator_request
from drimbox.demo.mesh import DEMO_OPERATOR_TOKEN
from drimbox.demo.samples.orthanc import OrthancServer, start_orthanc, storescu
from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.demo.samples.studies import StudySpec, exam_c_spec, write_study
from perf.first_image import CHROMIUM, measure_first_image
from perf.measure import (
    ANS_ACCEPT,
    AS_STORED,
    Fetch,
    best_of,
    concurrent_fetch,
    fetch,
    getscu,
    rss_mb,
)
from perf.report import write_report
from perf.wan import PROFILES
from perf.wan_suite import measure_wan


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def studies(full: bool) -> dict[str, StudySpec]:
    """CT 300 × 512² 16 bit (158 MB); the ANS homologation shape (1300 JPEG-LS, ~200 MB); an MR series."""
    base = exam_c_spec("ins", rows=512, columns=512)
    ct = dataclasses.replace(
        base, study_uid="1.2.250.1.999.9.1.1", accession_number="PERFCT", series_count=1, instance_total=300, noise=24
    )
    shapes = {"ct300": ct}
    shapes["ans1300"] = dataclasses.replace(
        base,
        study_uid="1.2.250.1.999.9.1.2",
        accession_number="PERFANS",
        series_count=1,
        instance_total=1300 if full else 260,
        noise=24,
        transfer_syntax="1.2.840.10008.1.2.4.80",
    )
    shapes["mr"] = dataclasses.replace(
        base,
        study_uid="1.2.250.1.999.9.1.3",
        accession_number="PERFMR",
        series_count=1,
        instance_total=120,
        rows=256,
        columns=256,
        noise=24,
    )
    return shapes


class RssSampler(threading.Thread):
    """Samples a process's resident set every 50 ms; `peak` is the largest seen while it ran."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._halt = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                # With [http] workers, the supervisor and every serving process: the box's whole footprint.
                self.peak = max(self.peak, sum(rss_mb(pid) for pid in _family(self.pid)))
            except OSError:
                return
            self._halt.wait(0.05)

    def stop(self) -> float:
        self._halt.set()
        self.join(2)
        return self.peak


def _family(pid: int) -> list[int]:
    """A process and its children (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(c) for c in children)]


def _serves_dicomweb(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/dicom-web/studies?limit=1", timeout=5) as resp:
            return resp.status in (200, 204)
    except (urllib.error.URLError, OSError):
        return False


def cpu_count() -> int:
    """The box's default [http] workers: the CPUs this process may run on."""
    return Settings().http.worker_count()


def start_box(
    work: Path, name: str, orthanc: OrthancServer, sim_port: int, profile: str, workers: int = 0
) -> DrimboxProcess:
    """A box on Orthanc; `workers` its [http] workers (0: one per CPU, as a box installed with the defaults)."""
    http, mllp, dicom = free_port(), free_port(), free_port()
    if profile == "proxy":
        orthanc.add_modality("DRIMBOX", "127.0.0.1", dicom)
    cfg = write_config(
        work / f"{name}.toml",
        {
            "box": {"var_dir": str(work / name), "profile": profile, "public_url": f"http://127.0.0.1:{http}"},
            "http": {"port": http, "workers": workers or cpu_count()},
            "mllp": {"port": mllp},
            "dicom": {"port": dicom},
            "pacs": {"ae_title": orthanc.aet, "port": orthanc.dicom_port},
            "dmp": {"url": f"http://127.0.0.1:{sim_port}/dmp"},
            # The benchmark measures transport, not the PSC token check (one introspection per request).
            "auth": {"protect_dicomweb": False, "operator_token": operator_token_hash(DEMO_OPERATOR_TOKEN)},
            # A Native archive takes C-STOREs from listed peers only: the suite's storescu on loopback.
            **({"dicom": {"port": dicom, "store_peers": ["STORESCU@127.0.0.1"]}} if profile == "native" else {}),
        },
    )
    proc = DrimboxProcess("serve", cfg, f"http://127.0.0.1:{http}/health", work / f"{name}.log").start()
    return proc


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": "",
        "retrieve": {},
        "metadata": {},
        "qido": {},
        "concurrency": {},
        "rss": {},
        "targets": [],
        "notes": [],
    }
    with tempfile.TemporaryDirectory(prefix="drimbox-perf-") as tmp:
        work = Path(tmp)
        shapes = studies(args.full)
        files: dict[str, list[Path]] = {}
        for key, spec in shapes.items():
            say(f"generating {key}: {spec.instance_total} instances of {spec.rows}×{spec.columns}")
            files[key] = write_study(work / "data" / key, spec)
        orthanc = start_orthanc(work / "orthanc")
        try:
            for key, paths in files.items():
                say(f"loading {key} into Orthanc ({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB)")
                orthanc.store_files(paths)
            measure_orthanc(results, orthanc, shapes)
            measure_boxes(results, work, orthanc, shapes, files, args)
            measure_browser(results, work, orthanc, shapes["ct300"])
            measure_viewer_stack(results, work, orthanc, shapes["ans1300"], files["ans1300"])
            if args.wan:
                run_wan(results, work, orthanc, shapes["ct300"], shapes["ans1300"], args)
        finally:
            orthanc.stop()
    compute_targets(results)
    return results


def run_wan(
    results: dict[str, Any],
    work: Path,
    orthanc: OrthancServer,
    spec: StudySpec,
    shapes_ans: StudySpec,
    args: argparse.Namespace,
) -> None:
    """The WAN section (perf.wan_suite): only with --wan, it takes minutes (158 MB per profile and client)."""
    viewer = shutil.which(CHROMIUM) is not None and importlib.util.find_spec("playwright") is not None
    if not viewer:
        results["notes"].append(f"WAN viewer figures skipped: {CHROMIUM} or the playwright package is missing")
    profiles = [PROFILES[name] for name in args.wan_profiles.split(",")]
    ans = shapes_ans if "hospital" in args.wan_profiles.split(",") else None
    measure_wan(results, work, orthanc, spec, profiles, check_mb=50, viewer=viewer, ans=ans)


def measure_orthanc(results: dict[str, Any], orthanc: OrthancServer, shapes: dict[str, StudySpec]) -> None:
    ct = shapes["ct300"].study_uid
    orthanc.add_modality("GETSCU", "127.0.0.1", free_port())
    say("dcmtk getscu ← Orthanc (CT 300)")
    results["retrieve"]["getscu ← Orthanc, CT 300"] = best_of(
        2, getscu, "127.0.0.1", orthanc.dicom_port, orthanc.aet, ct
    ).to_json()
    say("Orthanc WADO-RS (CT 300)")
    wado = f"{orthanc.dicomweb_url}/studies/{ct}"
    results["retrieve"]["Orthanc WADO-RS, CT 300"] = best_of(2, fetch, wado, AS_STORED).to_json()
    results["metadata"]["Orthanc /metadata, CT 300"] = best_of(
        3, fetch, f"{wado}/metadata", "application/dicom+json"
    ).to_json()
    results["qido"]["Orthanc QIDO /studies?PatientID"] = best_of(
        3, fetch, f"{orthanc.dicomweb_url}/studies?PatientID={shapes['ct300'].patient_id}", "application/dicom+json"
    ).to_json()
    results["concurrency"]["Orthanc WADO-RS"] = [concurrent_fetch(wado, n).to_json() for n in CLIENTS]


def measure_browser(results: dict[str, Any], work: Path, orthanc: OrthancServer, spec: StudySpec) -> None:
    """What a doctor waits for: report link opened → first image painted, in headless Chromium (perf.first_image)."""
    if shutil.which(CHROMIUM) is None or importlib.util.find_spec("playwright") is None:
        results["notes"].append(f"first-image timing skipped: {CHROMIUM} or the playwright package is missing")
        return
    say("first image in Chromium after the report link (CT 300, Proxy): 3 cold, 5 warm")
    results["first_image"] = measure_first_image(work, orthanc, spec)


def measure_viewer_stack(
    results: dict[str, Any], work: Path, orthanc: OrthancServer, spec: StudySpec, paths: list[Path]
) -> None:
    """The ANS shape scrolled whole in the viewer through a Proxy box, cold then warm (perf.viewer_stack)."""
    if shutil.which(CHROMIUM) is None or importlib.util.find_spec("playwright") is None:
        results["notes"].append(f"viewer stack skipped: {CHROMIUM} or the playwright package is missing")
        return
    import pydicom

    from perf import viewer_stack

    say(f"viewer: every slice of the ANS shape ({spec.instance_total} JPEG-LS) in Chromium through a Proxy box")
    stored = sum(len(pydicom.dcmread(p).PixelData) for p in paths)
    series = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    results["viewer_stack"] = viewer_stack.measure(work, orthanc, spec, series, stored)
    say(viewer_stack.summary(results["viewer_stack"]))


def measure_boxes(
    results: dict[str, Any],
    work: Path,
    orthanc: OrthancServer,
    shapes: dict[str, StudySpec],
    files: dict[str, list[Path]],
    args: argparse.Namespace,
) -> None:
    sim_port = free_port()
    sim_cfg = write_config(work / "sim.toml", {"sim": {"port": sim_port, "var_dir": str(work / "sim")}})
    sim = DrimboxProcess(
        "sim", sim_cfg, f"http://127.0.0.1:{sim_port}/sim/dmp/documents?patient=0", work / "sim.log"
    ).start()
    try:
        box = start_box(work, "proxy", orthanc, sim_port, "proxy")
        try:
            url = box.health_url.rsplit("/", 1)[0]
            if not _serves_dicomweb(url):
                results["notes"].append("the box does not serve DICOMweb yet: box figures skipped")
                say("box has no DICOMweb yet: skipping box measurements")
                return
            measure_box(results, "box proxy", url, box, shapes, args)
        finally:
            box.stop()
        if cpu_count() > 1:
            measure_warm_concurrency(results, work, orthanc, sim_port, shapes["ct300"], workers=1)
        native = start_box(work, "native", orthanc, sim_port, "native")
        try:
            measure_native(results, native, shapes, files)
        finally:
            native.stop()
    finally:
        sim.stop()


def measure_native(
    results: dict[str, Any], box: DrimboxProcess, shapes: dict[str, StudySpec], files: dict[str, list[Path]]
) -> None:
    """The Native profile: the study C-STOREd into the box, then served from its archive."""
    import tomllib

    config = tomllib.loads(box.config.read_text())
    url = box.health_url.rsplit("/", 1)[0]
    say("box native: storescu of CT 300 into the box's archive")
    start = time.perf_counter()
    storescu("127.0.0.1", config["dicom"]["port"], "DRIMBOX", files["ct300"])
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in files["ct300"])
    results["retrieve"]["storescu → box native (C-STORE, durable), CT 300"] = Fetch(0, size, 0.0, elapsed).to_json()
    study = f"{url}/dicom-web/studies/{shapes['ct300'].study_uid}"
    say("box native: retrieve and metadata (CT 300)")
    results["retrieve"]["box native, CT 300"] = best_of(3, fetch, study, AS_STORED).to_json()
    results["metadata"]["box native /metadata, CT 300"] = best_of(
        3, fetch, f"{study}/metadata", "application/dicom+json"
    ).to_json()
    results["concurrency"]["box native"] = [concurrent_fetch(study, n).to_json() for n in CLIENTS]


def measure_box(
    results: dict[str, Any],
    name: str,
    url: str,
    box: DrimboxProcess,
    shapes: dict[str, StudySpec],
    args: argparse.Namespace,
) -> None:
    ct = shapes["ct300"].study_uid
    study = f"{url}/dicom-web/studies/{ct}"
    say(f"{name}: cold retrieve (CT 300), cache emptied before each of 3 runs")

    def cold_fetch(target: str, accept: str) -> Fetch:
        urllib.request.urlopen(operator_request(f"{url}/api/cache", "DELETE"), timeout=30).close()
        return fetch(target, accept)

    results["retrieve"][f"{name} cold, CT 300"] = best_of(3, cold_fetch, study, AS_STORED).to_json()
    say(f"{name}: warm retrieve (CT 300)")
    results["retrieve"][f"{name} warm, CT 300"] = best_of(2, fetch, study, AS_STORED).to_json()
    ans = f"{url}/dicom-web/studies/{shapes['ans1300'].study_uid}"
    results["retrieve"][f"{name} cold, ANS JPEG-LS ({shapes['ans1300'].instance_total})"] = best_of(
        3, cold_fetch, ans, ANS_ACCEPT
    ).to_json()
    results["metadata"][f"{name} /metadata warm, CT 300"] = best_of(
        3, fetch, f"{study}/metadata", "application/dicom+json"
    ).to_json()
    results["qido"][f"{name} QIDO /studies?PatientID"] = best_of(
        3, fetch, f"{url}/dicom-web/studies?PatientID={shapes['ct300'].patient_id}", "application/dicom+json"
    ).to_json()
    results["concurrency"][f"{name} warm, workers {cpu_count()}"] = [
        concurrent_fetch(study, n).to_json() for n in CLIENTS
    ]
    mr = f"{url}/dicom-web/studies/{shapes['mr'].study_uid}"
    results["retrieve"][f"{name} cold, MR {shapes['mr'].instance_total} × 256²"] = best_of(
        3, cold_fetch, mr, AS_STORED
    ).to_json()
    assert box.proc is not None
    say(f"{name}: 10 clients pulling CT 300, sampling RSS")
    sampler = RssSampler(box.proc.pid)
    sampler.start()
    concurrent_fetch(study, 10)
    results["rss"][f"{name} peak RSS, 10 clients × CT 300 (MB)"] = round(sampler.stop(), 1)


CLIENTS = (1, 4, 16)


def measure_warm_concurrency(
    results: dict[str, Any], work: Path, orthanc: OrthancServer, sim_port: int, spec: StudySpec, *, workers: int
) -> None:
    """1, 4 and 16 concurrent clients of a warm CT 300 on a Proxy box with `workers` processes."""
    box = start_box(work, f"proxy-w{workers}-{free_port()}", orthanc, sim_port, "proxy", workers=workers)
    try:
        study = f"{box.health_url.rsplit('/', 1)[0]}/dicom-web/studies/{spec.study_uid}"
        say(f"box proxy, workers {workers}: warming CT 300, then 1, 4, 16 concurrent clients")
        fetch(study, AS_STORED)
        results["concurrency"][f"box proxy warm, workers {workers}"] = [
            concurrent_fetch(study, n).to_json() for n in CLIENTS
        ]
    finally:
        box.stop()


def concurrency_targets(results: dict[str, Any], workers: int) -> None:
    """The issue's ratios: the box's aggregate (workers 1 and N) over Orthanc's, at 1 and 16 clients, same run."""
    c = results["concurrency"]
    orthanc = {run["clients"]: run["aggregate_mb_per_s"] for run in c.get("Orthanc WADO-RS", [])}
    for name, goal in ((f"box proxy warm, workers {workers}", True), ("box proxy warm, workers 1", False)):
        box = {run["clients"]: run["aggregate_mb_per_s"] for run in c.get(name, [])}
        for clients, wanted in ((1, 1.5), (16, 1.0)):
            value = box[clients] / orthanc[clients] if box.get(clients) and orthanc.get(clients) else None
            results["targets"].append({
                "name": f"{name[len('box proxy warm, '):]}: {clients} warm client(s), aggregate / Orthanc's",
                "value": "—" if value is None else f"{value:.2f}",
                "goal": f"≥ {wanted}" if goal else "(reference)",
                "met": None if value is None or not goal else value >= wanted,
            })  # fmt: skip


def interleaved(targets: dict[str, str], repeat: int) -> dict[str, list[dict[str, Any]]]:
    """Each server at 1, 4 and 16 clients, in turn (Orthanc, box, box, Orthanc, ...) `repeat` times: the median
    aggregate of each. In turn, so a neighbour's load on a shared machine weighs on every server alike."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for clients in CLIENTS:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for _ in range(repeat):
            for name, url in targets.items():
                runs[name].append(concurrent_fetch(url, clients).to_json())
        for name, measured in runs.items():
            measured.sort(key=lambda r: r["aggregate_mb_per_s"])
            out[name].append(measured[len(measured) // 2])
    return out


def run_concurrency(args: argparse.Namespace) -> dict[str, Any]:
    """--concurrency: Orthanc, then the box with workers 1 and with one per CPU, on CT 300, `--runs` times."""
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": "",
                               "retrieve": {}, "metadata": {}, "qido": {}, "concurrency": {}, "rss": {},
                               "targets": [], "notes": [], "runs": []}  # fmt: skip
    workers = cpu_count()
    with tempfile.TemporaryDirectory(prefix="drimbox-perf-") as tmp:
        work = Path(tmp)
        spec = studies(False)["ct300"]
        files = write_study(work / "data" / "ct300", spec)
        orthanc = start_orthanc(work / "orthanc")
        sim_port = free_port()
        sim_cfg = write_config(work / "sim.toml", {"sim": {"port": sim_port, "var_dir": str(work / "sim")}})
        sim = DrimboxProcess(
            "sim", sim_cfg, f"http://127.0.0.1:{sim_port}/sim/dmp/documents?patient=0", work / "sim.log"
        ).start()
        try:
            orthanc.store_files(files)
            wado = f"{orthanc.dicomweb_url}/studies/{spec.study_uid}"
            fetch(wado, AS_STORED)  # Orthanc warm too (its files in the page cache)
            boxes = {w: start_box(work, f"proxy-w{w}", orthanc, sim_port, "proxy", workers=w)
                     for w in sorted({1, workers})}  # fmt: skip
            try:
                targets = {"Orthanc WADO-RS": wado}
                for w, box in boxes.items():
                    targets[f"box proxy warm, workers {w}"] = (
                        f"{box.health_url.rsplit('/', 1)[0]}/dicom-web/studies/{spec.study_uid}"
                    )
                    fetch(targets[f"box proxy warm, workers {w}"], AS_STORED)  # warm: the series in the cache
                for n in range(args.runs):
                    say(f"run {n + 1}/{args.runs}: 1, 4, 16 concurrent clients, Orthanc and the boxes in turn, "
                        f"median of {args.repeat}")  # fmt: skip
                    one: dict[str, Any] = {"concurrency": interleaved(targets, args.repeat), "targets": []}
                    concurrency_targets(one, workers)
                    for t in one["targets"]:
                        say(f"  {t['name']}: {t['value']} (goal {t['goal']})")
                    results["runs"].append(one)
            finally:
                for box in boxes.values():
                    box.stop()
            results["concurrency"] = results["runs"][-1]["concurrency"]
            results["targets"] = [
                {**t, "name": f"run {i + 1}: {t['name']}"} for i, r in enumerate(results["runs"]) for t in r["targets"]
            ]
        finally:
            sim.stop()
            orthanc.stop()
    return results


def compute_targets(results: dict[str, Any]) -> None:
    r, m = results["retrieve"], results["metadata"]

    def target(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        results["targets"].append(
            {"name": name, "value": "—" if value is None else f"{value:.2f}", "goal": goal, "met": ok}
        )

    getscu_rate = r.get("getscu ← Orthanc, CT 300", {}).get("mb_per_s")
    cold = r.get("box proxy cold, CT 300", {}).get("mb_per_s")
    warm = r.get("box proxy warm, CT 300", {}).get("mb_per_s")
    orthanc_wado = r.get("Orthanc WADO-RS, CT 300", {}).get("mb_per_s")
    ratio = cold / getscu_rate if cold and getscu_rate else None
    target("cold Proxy retrieve / getscu", ratio, "≥ 0.8", None if ratio is None else ratio >= 0.8)
    ratio = warm / orthanc_wado if warm and orthanc_wado else None
    target("warm retrieve (Proxy cache) / Orthanc WADO-RS", ratio, "≥ 1.5", None if ratio is None else ratio >= 1.5)
    native = r.get("box native, CT 300", {}).get("mb_per_s")
    ratio = native / orthanc_wado if native and orthanc_wado else None
    target("Native retrieve / Orthanc WADO-RS", ratio, "≥ 1.5", None if ratio is None else ratio >= 1.5)
    box_meta = m.get("box proxy /metadata warm, CT 300", {}).get("total_s")
    orthanc_meta = m.get("Orthanc /metadata, CT 300", {}).get("total_s")
    ratio = box_meta / orthanc_meta if box_meta and orthanc_meta else None
    target("warm /metadata time / Orthanc's", ratio, "≤ 0.1", None if ratio is None else ratio <= 0.1)
    first = results.get("first_image", {})
    for kind in ("cold", "warm"):
        value, goal = first.get(f"{kind}_median_ms"), first.get(f"{kind}_target_ms")
        target(
            f"first image painted after the report link, {kind} (ms, median)",
            value,
            f"≤ {goal:.0f}" if goal else "—",
            None if value is None or goal is None else value <= goal,
        )
    concurrency_targets(results, cpu_count())
    stack = results.get("viewer_stack")
    if stack:
        c, w = stack["cold"], stack["warm"]
        for name, value, limit in (
            ("viewer stack: first image cold (ms)", c["first_image_ms"], 1000.0),
            ("viewer stack: first image warm (ms)", w["first_image_ms"], 300.0),
            ("viewer stack: every slice / box stream time", c["pass_s"] * 1000 / stack["stream_ms"], 1.5),
            ("viewer stack: bytes first pass / stored", c["transfer_bytes"] / stack["stored_bytes"], 1.05),
            ("viewer stack: bytes warm reopen / stored", w["transfer_bytes"] / stack["stored_bytes"], 0.05),
            ("viewer stack: longest step once loaded (ms)", c["loaded_step_ms_max"], 100.0),
            ("viewer stack: box CPU per slice (ms)", c["box_cpu_ms_per_slice"], 5.0),
        ):
            target(name, value, f"≤ {limit:g}", value <= limit)
    rss = results["rss"].get("box proxy peak RSS, 10 clients × CT 300 (MB)")
    target("box peak RSS, 10 clients (MB)", rss, "≤ 200", None if rss is None else rss <= 200)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__)
    parser.add_argument("--full", action="store_true", help="the full ANS shape (1300 JPEG-LS instances)")
    parser.add_argument("--out", default="perf/results/latest", help="report directory")
    parser.add_argument(
        "--concurrency",
        action="store_true",
        help="only the concurrency ratios: Orthanc and the box with workers 1 and N, warm CT 300",
    )
    parser.add_argument("--runs", type=int, default=3, help="with --concurrency: how many runs (default 3)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="with --concurrency: measurements of each server per point, the median kept (default 5)",
    )
    parser.add_argument("--wan", action="store_true", help="also over emulated WAN links (root; ~12 minutes)")
    parser.add_argument("--wan-profiles", default=",".join(PROFILES), help="the --wan profiles (default: all)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = run_concurrency(args) if args.concurrency else run(args)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    path = write_report(results, Path(args.out))
    say(f"report written to {path} in {results['duration_s']} s")
