"""Report link opened → first image painted, in headless Chromium, on a 300 × 512² CT behind a Proxy box (cold, warm).

    python -m perf.first_image [--cold 3] [--warm 5] [--json FILE]

The professional logs in first (the session cookie is kept and given to each browser context), so what is timed is
the doctor's click on the link: the report link's redirect, the viewer's files, /metadata, the first frames, the
paint. The viewer marks `performance.mark('first-image')` once the first image is drawn; its startTime counts from
the start of the navigation, the redirect from /IHEInvokeImageDisplay included. Cold: the box's cache emptied and a
fresh browser profile (no HTTP cache) for each run. Warm: the same link again once the box and the browser hold it.
Targets: ≤ 1000 ms cold, ≤ 300 ms warm. Also run by the perf suite (`python -m perf`).
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
from urllib.parse import urlencode

from drimbox.auth.operator import operator_token_hash
from drimbox.demo.main import operator_request
from drimbox.demo.mesh import DEMO_OPERATOR_TOKEN
from drimbox.demo.samples.orthanc import OrthancServer, start_orthanc
from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import StudySpec, write_study
from drimbox.hl7.mllp import send_message

CHROMIUM = "/usr/bin/chromium"
RADIOLOGIST = "801234560801"
TARGETS_MS = {"cold": 1000.0, "warm": 300.0}
_MARK = "performance.getEntriesByName('first-image')[0].startTime"
_REDIRECT = "performance.getEntriesByType('navigation')[0].redirectEnd"


def _start_box(work: Path, orthanc: OrthancServer, sim_url: str) -> tuple[DrimboxProcess, int]:
    http, mllp, dicom = free_port(), free_port(), free_port()
    orthanc.add_modality("DRIMBOX", "127.0.0.1", dicom)
    cfg = write_config(work / "first-image-box.toml", {
        "box": {"var_dir": str(work / "first-image-box"), "profile": "proxy", "public_url": f"http://127.0.0.1:{http}"},
        "http": {"port": http}, "mllp": {"port": mllp}, "dicom": {"port": dicom},
        "pacs": {"ae_title": orthanc.aet, "port": orthanc.dicom_port},
        "dmp": {"url": f"{sim_url}/dmp"}, "psc": {"issuer": f"{sim_url}/psc"},
        # /dicom-web stays protected, as in production: the viewer passes on the session. sim_auto lets the
        # simulated PSC log the radiologist in without its page (login_hint), before the timing starts.
        "auth": {"authorize_params": ["sim_auto=1"], "operator_token": operator_token_hash(DEMO_OPERATOR_TOKEN)},
    })  # fmt: skip
    box = DrimboxProcess("serve", cfg, f"http://127.0.0.1:{http}/health", work / "first-image-box.log").start()
    return box, mllp


def _publish(box_url: str, mllp_port: int, spec: StudySpec) -> str:
    """Send the study's report and wait until it is published (the report link needs a live publication)."""
    exam = dataclasses.replace(ANS_EXAMS["C"], study_uid=spec.study_uid, accession=spec.accession_number,
                               document_id="1.2.250.1.213.4.5.4.99403")  # fmt: skip
    ack = asyncio.run(send_message("127.0.0.1", mllp_port, build_oru(build_cda(exam), control_id="FIRST-IMAGE")))
    assert b"|AA|" in ack, ack
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with urllib.request.urlopen(
            operator_request(f"{box_url}/api/publications?accession={exam.accession}"), timeout=10
        ) as resp:
            found = json.loads(resp.read())
        if found and found[-1]["state"] in ("published", "failed", "rejected"):
            assert found[-1]["state"] == "published", found[-1]
            break
        time.sleep(0.1)
    return f"{box_url}/IHEInvokeImageDisplay?" + urlencode(
        {
            "requestType": "STUDY",
            "studyUID": exam.study_uid,
            "Accessionnumber": exam.accession,
            "idCDA": exam.document_id,
        }
    )


def _open(context: Any, link: str) -> dict[str, float]:
    """Open the link in a new tab of `context`; the viewer's first-image time (ms from navigation start)."""
    page = context.new_page()
    try:
        started = time.perf_counter()
        page.goto(link)
        page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=60_000)
        wall = (time.perf_counter() - started) * 1000
        if page.get_attribute("body", "data-state") != "ready":
            raise RuntimeError(f"the viewer failed: {page.inner_text('#message')}")
        return {"first_image_ms": float(page.evaluate(_MARK)), "redirect_ms": float(page.evaluate(_REDIRECT)),
                "wall_ms": wall}  # fmt: skip
    finally:
        page.close()


def _browser_runs(box_url: str, link: str, cold: int, warm: int) -> dict[str, list[dict[str, float]]]:
    from playwright.sync_api import ViewportSize, sync_playwright

    runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--no-first-run"])  # fmt: skip
        try:
            login = browser.new_context()
            page = login.new_page()
            page.goto(f"{box_url}/auth/login?" + urlencode({"next": "/viewer/", "login_hint": RADIOLOGIST}))
            session = login.storage_state()
            login.close()
            size: ViewportSize = {"width": 1280, "height": 800}
            for _ in range(cold):
                urllib.request.urlopen(operator_request(f"{box_url}/api/cache", "DELETE"), timeout=30).close()
                context = browser.new_context(storage_state=session, viewport=size)
                runs["cold"].append(_open(context, link))
                context.close()
            context = browser.new_context(storage_state=session, viewport=size)
            _open(context, link)  # fills the browser's cache; the box's is warm from the cold runs
            runs["warm"] = [_open(context, link) for _ in range(warm)]
            context.close()
        finally:
            browser.close()
    return runs


def measure_first_image(
    work: Path, orthanc: OrthancServer, spec: StudySpec, cold: int = 3, warm: int = 5
) -> dict[str, Any]:
    """The study must be in `orthanc` already. Starts a simulator and a Proxy box of its own, stops them after."""
    sim_port = free_port()
    sim_cfg = write_config(
        work / "first-image-sim.toml", {"sim": {"port": sim_port, "var_dir": str(work / "first-image-sim")}}
    )
    sim = DrimboxProcess("sim", sim_cfg, f"http://127.0.0.1:{sim_port}/sim/dmp/documents?patient=0",
                         work / "first-image-sim.log").start()  # fmt: skip
    try:
        box, mllp = _start_box(work, orthanc, f"http://127.0.0.1:{sim_port}")
        try:
            box_url = box.health_url.rsplit("/", 1)[0]
            link = _publish(box_url, mllp, spec)
            runs = _browser_runs(box_url, link, cold, warm)
        finally:
            box.stop()
    finally:
        sim.stop()
    result: dict[str, Any] = {"study": f"{spec.instance_total} × {spec.rows}×{spec.columns} {spec.modality}, "
                                       f"{spec.series_count} series", "runs": runs}  # fmt: skip
    for kind in ("cold", "warm"):
        result[f"{kind}_median_ms"] = round(statistics.median(r["first_image_ms"] for r in runs[kind]), 1)
        result[f"{kind}_target_ms"] = TARGETS_MS[kind]
    return result


def summary(result: dict[str, Any]) -> str:
    lines = [f"first image painted after the report link is opened ({result['study']}, Proxy box, Chromium headless):"]
    for kind in ("cold", "warm"):
        each = ", ".join(f"{r['first_image_ms']:.0f}" for r in result["runs"][kind])
        lines.append(f"  {kind}: median {result[f'{kind}_median_ms']:.0f} ms (target ≤ {result[f'{kind}_target_ms']:.0f})"
                     f"   runs: {each} ms")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    from perf.suite import studies

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", type=int, default=3, help="cold runs (default 3)")
    parser.add_argument("--warm", type=int, default=5, help="warm runs (default 5)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    spec = studies(full=False)["ct300"]  # the suite's CT: 300 × 512², 16 bit, one series
    with tempfile.TemporaryDirectory(prefix="drimbox-perf-") as tmp:
        work = Path(tmp)
        files = write_study(work / "ct300", spec)
        orthanc = start_orthanc(work / "orthanc")
        try:
            orthanc.store_files(files)
            result = measure_first_image(work, orthanc, spec, args.cold, args.warm)
        finally:
            orthanc.stop()
    print(summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
