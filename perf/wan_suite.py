"""The perf suite over emulated WAN links: each figure as a ratio to the link's limit, beside Orthanc on the same link.

    python -m perf.wan_suite [--profiles hospital,office,mobile] [--check-mb 50] [--out perf/results/wan]
    python -m perf --wan ...     (the same, inside the whole suite's run and report)

One link (perf/wan.py) carries every client: curl and Chromium run in its namespace, where 127.0.0.1:P of the box,
the simulator and Orthanc lead across the link to the host's (so the URLs are the same on both sides). The link is reshaped from profile to profile, so one box
and one login serve them all. The limit of a transfer is its bytes ÷ the link's rate plus the round trips the
protocol needs: 2 for one curl GET (handshake, request), VIEWER_ROUND_TRIPS for the viewer (see there).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from drimbox.auth.operator import operator_token_hash
from drimbox.demo.main import operator_request
from drimbox.demo.mesh import DEMO_OPERATOR_TOKEN
from drimbox.demo.samples.orthanc import OrthancServer, start_orthanc
from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import StudySpec, write_study
from drimbox.hl7.mllp import send_message
from perf.first_image import CHROMIUM, RADIOLOGIST, _publish
from perf.measure import ANS_ACCEPT, AS_STORED, Fetch
from perf.wan import PROFILES, Profile, WanLink
from perf.wan_check import check
from perf.wan_consumer import FarConsumer

CURL_ROUND_TRIPS = 2
# Report link → redirect, the viewer's page, its script, its modules, the instance list, the first frame: 6
# dependent requests after the handshake. A lower bound: the viewer may need more (metadata before the frame).
VIEWER_ROUND_TRIPS = 7
# Reopened (the box and the browser hold the study, the viewer's files are kept under their versions): handshake,
# report link → redirect, page (revalidated), the study's metadata, the first frame (revalidated).
REOPEN_ROUND_TRIPS = 5

# Resource Timing keeps 250 entries by default: a 300-slice pass needs more to count its bytes.
_TIMING_BUFFER = "performance.setResourceTimingBufferSize(100000)"
_BYTES = """() => {
  const mark = performance.getEntriesByName('first-image')[0].startTime;
  const all = [...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource')];
  const sum = (list) => list.reduce((s, e) => s + (e.transferSize || 0), 0);
  return { first_image_ms: mark, bytes_first: sum(all.filter((e) => e.responseEnd <= mark)), bytes_all: sum(all) };
}"""
# Every slice shown (the viewer opens mid-stack): Home, then one step after another to the end, each time waiting
# for the canvas to say it drew that slice.
_ALL_SLICES = """async () => {
  const canvas = document.getElementById('image');
  const total = Number(document.getElementById('position').textContent.split('/')[1]);
  const key = (name) => document.dispatchEvent(new KeyboardEvent('keydown', { key: name }));
  const drawn = async (i) => { while (canvas.dataset.index !== String(i)) await new Promise((r) => setTimeout(r, 1)); };
  key('Home');
  await drawn(0);
  let longest = 0;
  for (let i = 1; i < total; i++) {
    const asked = performance.now();
    key('ArrowDown');
    await drawn(i);
    longest = Math.max(longest, performance.now() - asked);
  }
  return { slices: total, all_shown_ms: performance.now(), longest_step_ms: longest };
}"""


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] wan: {text}", flush=True)


def figure(
    profile: Profile, name: str, nbytes: float, seconds: float, round_trips: float, **extra: Any
) -> dict[str, Any]:
    limit = profile.limit_s(nbytes, round_trips)
    return {"profile": profile.name, "name": name, "mb": round(nbytes / 1e6, 2), "seconds": round(seconds, 3),
            "limit_s": round(limit, 3), "ratio": round(seconds / limit, 3), "round_trips": round_trips,
            **extra}  # fmt: skip


def curl_in(
    link: WanLink, url: str, accept: str = AS_STORED, timeout: float = 900, headers: dict[str, str] | None = None
) -> Fetch:
    """One GET by curl in the link's namespace, body discarded."""
    extra = [a for k, v in (headers or {}).items() for a in ("-H", f"{k}: {v}")]
    args = link.inside(["curl", "-s", "-o", "/dev/null", "--max-time", str(timeout), "-H", f"Accept: {accept}",
                        *extra, "-w", "%{http_code} %{size_download} %{time_starttransfer} %{time_total}", url])  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 10, check=True).stdout
    code, size, first, total = out.split()
    if code != "200":
        raise RuntimeError(f"{url}: HTTP {code}")
    return Fetch(status=int(code), bytes=int(size), ttfb_s=float(first), total_s=float(total))


@contextmanager
def browser_in(link: WanLink, work: Path) -> Iterator[Any]:
    """Headless Chromium whose network is the link's namespace (a wrapper runs it there; Playwright's pipe follows)."""
    from playwright.sync_api import sync_playwright

    wrapper = work / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(link.inside([CHROMIUM]))} "$@"\n')
    wrapper.chmod(0o755)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(wrapper), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                          "--disable-component-update", "--no-first-run"])  # fmt: skip
        try:
            yield browser
        finally:
            browser.close()


def _start_box(work: Path, orthanc: OrthancServer, sim_port: int) -> tuple[DrimboxProcess, int]:
    """A Proxy box as perf.first_image starts it, with /dicom-web open (curl, like Orthanc beside it, has no session)."""
    http, mllp, dicom = free_port(), free_port(), free_port()
    orthanc.add_modality("DRIMBOX", "127.0.0.1", dicom)
    sim_url = f"http://127.0.0.1:{sim_port}"
    cfg = write_config(work / "wan-box.toml", {
        "box": {"var_dir": str(work / "wan-box"), "profile": "proxy", "public_url": f"http://127.0.0.1:{http}"},
        "http": {"port": http}, "mllp": {"port": mllp}, "dicom": {"port": dicom},
        "pacs": {"ae_title": orthanc.aet, "port": orthanc.dicom_port},
        "dmp": {"url": f"{sim_url}/dmp"}, "psc": {"issuer": f"{sim_url}/psc"},
        "auth": {"authorize_params": ["sim_auto=1"], "operator_token": operator_token_hash(DEMO_OPERATOR_TOKEN),
                 "protect_dicomweb": False},
    })  # fmt: skip
    box = DrimboxProcess("serve", cfg, f"http://127.0.0.1:{http}/health", work / "wan-box.log").start()
    return box, mllp


def _empty_cache(local: str) -> None:
    urllib.request.urlopen(operator_request(f"{local}/api/cache", "DELETE"), timeout=30).close()


def _viewer_runs(
    browser: Any, session: Any, link: WanLink, local: str, report_link: str, cold: int, all_slices: bool
) -> list[dict[str, Any]]:
    """Cold runs (box cache emptied, fresh browser profile): first image, and in the last one every slice shown."""
    runs = []
    for n in range(cold):
        _empty_cache(local)
        context = browser.new_context(storage_state=session, viewport={"width": 1280, "height": 800})
        context.add_init_script(_TIMING_BUFFER)
        page = context.new_page()
        page.set_default_timeout(600_000)
        try:
            page.goto(report_link)
            page.wait_for_selector("body[data-state=ready], body[data-state=error]")
            if page.get_attribute("body", "data-state") != "ready":
                raise RuntimeError(f"the viewer failed over the link: {page.inner_text('#message')}")
            run: dict[str, Any] = page.evaluate(_BYTES)
            if all_slices and n == cold - 1:
                run.update(page.evaluate(_ALL_SLICES))
                run["bytes_all"] = page.evaluate(_BYTES)["bytes_all"]
                run["reopened"] = _reopened(context, local, report_link, page.evaluate(_STUDY))
            runs.append(run)
        finally:
            context.close()
    return runs


_STUDY = "() => new URLSearchParams(location.search).get('study')"


def _reopened(context: Any, local: str, report_link: str, study: str, times: int = 3) -> list[dict[str, Any]]:
    """The report link opened again in the same browser once the box holds the study: what a doctor coming back to
    the exam waits for (first image, bytes before it), `times` times."""
    held = urllib.request.Request(f"{local}/dicom-web/studies/{study}/metadata",
                                  headers={"Cache-Control": "only-if-cached", "Accept": "application/dicom+json"})  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(held, timeout=30).close()
            break
        except urllib.error.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError("the box never held the whole study") from None
            time.sleep(0.2)
    opened = []
    for _ in range(times):
        page = context.new_page()
        try:
            page.goto(report_link)
            page.wait_for_selector("body[data-state=ready]")
            opened.append(page.evaluate(_BYTES))
        finally:
            page.close()
    return opened


def measure_wan(
    results: dict[str, Any],
    work: Path,
    orthanc: OrthancServer,
    spec: StudySpec,
    profiles: list[Profile],
    check_mb: float = 50,
    viewer: bool = True,
    ans: StudySpec | None = None,
) -> None:
    """Fill results["wan"]: the emulator's own check, then per profile the figures against the limit; `ans` (already
    in Orthanc): the ANS shape through the consumer on hospital."""
    wan: dict[str, Any] = results.setdefault("wan", {"check": [], "figures": [], "notes": []})
    say(f"the emulator against its nominal figures ({check_mb:.0f} MB bulk, kept-alive RTT)")
    wan["check"] = check(profiles, check_mb)
    wan["notes"].append(
        f"limits: bytes ÷ nominal rate + round trips ({CURL_ROUND_TRIPS} for one curl GET, {VIEWER_ROUND_TRIPS} "
        "for the viewer's first image); the nominal rate is the line's, TCP/IP headers included, so ~0.96 of it "
        "carries payload (see the check)."
    )
    if any(p.loss for p in profiles):
        wan["notes"].append("loss is not emulated (no netem in this kernel): the mobile profile is its rate and RTT")
    sim_port = free_port()
    sim_cfg = write_config(work / "wan-sim.toml", {"sim": {"port": sim_port, "var_dir": str(work / "wan-sim")}})
    sim = DrimboxProcess("sim", sim_cfg, f"http://127.0.0.1:{sim_port}/sim/dmp/documents?patient=0",
                         work / "wan-sim.log").start()  # fmt: skip
    try:
        box, mllp = _start_box(work, orthanc, sim_port)
        try:
            local = box.health_url.rsplit("/", 1)[0]
            report_link = _publish(local, mllp, spec)
            specs = [spec]
            if ans is not None:
                say(f"publishing the ANS shape ({ans.instance_total} instances)")
                _publish_report(local, mllp, ans, document_id="1.2.250.1.213.4.5.4.99415")
                specs.append(ans)
            box_study = f"{local}/dicom-web/studies/{spec.study_uid}"
            orthanc_study = f"{orthanc.dicomweb_url}/studies/{spec.study_uid}"
            with WanLink(profiles[0]) as link:
                # The namespace's 127.0.0.1:P is the host's across the link: the same URLs on both sides.
                link.share(*(urlsplit(u).port or 80 for u in (local, orthanc_study)), sim_port)
                with far_consumer(wan, link, work, local, sim_port, specs) as consumer:
                    _measure_profiles(wan, work, link, profiles, local, report_link, box_study, orthanc_study,
                                      viewer, consumer)  # fmt: skip
                    if ans is not None:
                        _measure_ans(wan, link, local, orthanc.dicomweb_url, consumer, ans)
        finally:
            box.stop()
    finally:
        sim.stop()


def _measure_profiles(
    wan: dict[str, Any],
    work: Path,
    link: WanLink,
    profiles: list[Profile],
    local: str,
    report_link: str,
    box_study: str,
    orthanc_study: str,
    viewer: bool,
    consumer: FarConsumer | None,
) -> None:
    figures: list[dict[str, Any]] = wan["figures"]
    with contextlib_nullable(viewer, link, work) as browser:
        session = None
        if browser is not None:
            login = browser.new_context()
            login.new_page().goto(f"{local}/auth/login?" + urlencode({"next": "/viewer/", "login_hint": RADIOLOGIST}))
            session = login.storage_state()
            login.close()
        for profile in profiles:
            link.reshape(profile)
            say(f"{profile.name}: Orthanc WADO-RS, CT 300")
            f = curl_in(link, orthanc_study)
            figures.append(figure(profile, "Orthanc WADO-RS, CT 300 (curl)", f.bytes, f.total_s, CURL_ROUND_TRIPS,
                                  ttfb_ms=round(f.ttfb_s * 1000)))  # fmt: skip
            say(f"{profile.name}: box Proxy WADO-RS cold, CT 300")
            _empty_cache(local)
            f = curl_in(link, box_study)
            figures.append(figure(profile, "box Proxy WADO-RS cold, CT 300 (curl)", f.bytes, f.total_s,
                                  CURL_ROUND_TRIPS, ttfb_ms=round(f.ttfb_s * 1000)))  # fmt: skip
            if consumer is not None:
                say(f"{profile.name}: through the consumer, both caches cold, CT 300")
                _empty_cache(local)
                consumer.clear_cache()
                study_uid = box_study.rsplit("/", 1)[1]
                f = curl_in(
                    link,
                    f"{consumer.url}/studies/{study_uid}",
                    headers={"KOS-SOPInstanceUID": consumer.kos_of[study_uid]},
                )
                figures.append(figure(profile, "source → link → consumer → curl, both caches cold, CT 300", f.bytes,
                                      f.total_s, CURL_ROUND_TRIPS, ttfb_ms=round(f.ttfb_s * 1000)))  # fmt: skip
            if browser is None:
                continue
            say(f"{profile.name}: the viewer over the link, cold: first image ×2, then every slice shown")
            runs = _viewer_runs(browser, session, link, local, report_link, cold=2, all_slices=True)
            first = statistics.median(r["first_image_ms"] for r in runs) / 1000
            first_bytes = statistics.median(r["bytes_first"] for r in runs)
            figures.append(figure(profile, "viewer: report link → first image (Chromium, cold)", first_bytes, first,
                                  VIEWER_ROUND_TRIPS, runs_ms=[round(r["first_image_ms"]) for r in runs]))  # fmt: skip
            last = runs[-1]
            figures.append(figure(profile, f"viewer: report link → all {last['slices']} slices shown (Chromium, cold)",
                                  last["bytes_all"], last["all_shown_ms"] / 1000, VIEWER_ROUND_TRIPS,
                                  longest_step_ms=round(last["longest_step_ms"])))  # fmt: skip
            again = last["reopened"]
            figures.append(figure(profile, "viewer: report link → first image, reopened (Chromium, box and browser warm)",
                                  statistics.median(r["bytes_first"] for r in again),
                                  statistics.median(r["first_image_ms"] for r in again) / 1000, REOPEN_ROUND_TRIPS,
                                  runs_ms=[round(r["first_image_ms"]) for r in again]))  # fmt: skip


@contextmanager
def far_consumer(
    wan: dict[str, Any], link: WanLink, work: Path, local: str, sim_port: int, specs: list[StudySpec]
) -> Iterator[FarConsumer | None]:
    """The consumer across the link from the source (perf.wan_consumer), holding the published studies' KOS."""
    try:
        sim_url = f"http://127.0.0.1:{sim_port}"
        manifests, kos_of = {}, {}
        for spec in specs:
            with urllib.request.urlopen(
                operator_request(f"{local}/api/publications?accession={spec.accession_number}"), timeout=10
            ) as r:
                kos_uid = json.loads(r.read())[-1]["kos_uid"]
            with urllib.request.urlopen(f"{sim_url}/sim/dmp/documents/{kos_uid}", timeout=10) as r:
                manifests[kos_uid] = r.read()
            kos_of[spec.study_uid] = kos_uid
        consumer = FarConsumer(link, work, sim_url, manifests).__enter__()
        consumer.kos_of = kos_of
    except Exception as exc:  # the other figures are still worth having
        wan["notes"].append(f"consumer figures skipped: {exc!r}")
        yield None
        return
    try:
        yield consumer
    finally:
        consumer.__exit__()


def _publish_report(box_url: str, mllp_port: int, spec: StudySpec, document_id: str) -> None:
    """Publish a report for a second study (its own accession and document), as perf.first_image's _publish does."""
    exam = dataclasses.replace(ANS_EXAMS["C"], study_uid=spec.study_uid, accession=spec.accession_number,
                               document_id=document_id)  # fmt: skip
    ack = asyncio.run(send_message("127.0.0.1", mllp_port, build_oru(build_cda(exam), control_id=f"WAN-{document_id}")))
    assert b"|AA|" in ack, ack
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with urllib.request.urlopen(
            operator_request(f"{box_url}/api/publications?accession={exam.accession}"), timeout=10
        ) as resp:
            found = json.loads(resp.read())
        if found and found[-1]["state"] in ("published", "failed", "rejected"):
            assert found[-1]["state"] == "published", found[-1]
            return
        time.sleep(0.2)
    raise TimeoutError(f"{exam.accession} not published")


def _measure_ans(
    wan: dict[str, Any], link: WanLink, local: str, orthanc_url: str, consumer: FarConsumer | None, ans: StudySpec
) -> None:
    """The ANS homologation shape (JPEG-LS, as stored) on hospital: Orthanc, the source, through the consumer."""
    profile = PROFILES["hospital"]
    link.reshape(profile)
    name = f"ANS {ans.instance_total} JPEG-LS"
    say(f"hospital: {name}, from Orthanc, from the source and through the consumer, caches cold")
    f = curl_in(link, f"{orthanc_url}/studies/{ans.study_uid}")
    wan["figures"].append(figure(profile, f"Orthanc WADO-RS, {name} (curl)", f.bytes, f.total_s,
                                 CURL_ROUND_TRIPS, ttfb_ms=round(f.ttfb_s * 1000)))  # fmt: skip
    _empty_cache(local)
    f = curl_in(link, f"{local}/dicom-web/studies/{ans.study_uid}", accept=ANS_ACCEPT)
    wan["figures"].append(figure(profile, f"box Proxy WADO-RS cold, {name} (curl)", f.bytes, f.total_s,
                                 CURL_ROUND_TRIPS, ttfb_ms=round(f.ttfb_s * 1000)))  # fmt: skip
    if consumer is None or ans.study_uid not in consumer.kos_of:
        return
    _empty_cache(local)
    consumer.clear_cache()
    f = curl_in(link, f"{consumer.url}/studies/{ans.study_uid}", accept=ANS_ACCEPT,
                headers={"KOS-SOPInstanceUID": consumer.kos_of[ans.study_uid]})  # fmt: skip
    wan["figures"].append(figure(profile, f"source → link → consumer → curl, both caches cold, {name}", f.bytes,
                                 f.total_s, CURL_ROUND_TRIPS, ttfb_ms=round(f.ttfb_s * 1000)))  # fmt: skip


@contextmanager
def contextlib_nullable(viewer: bool, link: WanLink, work: Path) -> Iterator[Any]:
    """The browser in the link's namespace, or None when the viewer is not measured (or cannot be)."""
    if not viewer:
        yield None
        return
    with browser_in(link, work) as browser:
        yield browser


def main() -> None:
    from perf.report import write_report
    from perf.suite import studies

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated (default: all)")
    parser.add_argument("--check-mb", type=float, default=50, help="the emulator check's bulk size (default 50)")
    parser.add_argument("--no-viewer", action="store_true", help="curl figures only (no Chromium)")
    parser.add_argument("--out", default="perf/results/wan", help="report directory")
    parser.add_argument("--ans", type=int, default=0, help="also the ANS JPEG-LS shape with this many instances "
                        "(1300: the homologation's 200 MB) through the consumer on hospital")  # fmt: skip
    args = parser.parse_args()
    shapes = studies(full=args.ans >= 1300)
    spec = shapes["ct300"]
    ans = dataclasses.replace(shapes["ans1300"], instance_total=args.ans) if args.ans else None
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "notes": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="drimbox-perf-wan-") as tmp:
        work = Path(tmp)
        files = write_study(work / "ct300", spec)
        orthanc = start_orthanc(work / "orthanc")
        try:
            orthanc.store_files(files)
            if ans is not None:
                say(f"generating and loading the ANS shape ({ans.instance_total} JPEG-LS instances)")
                orthanc.store_files(write_study(work / "ans", ans))
            profiles = [PROFILES[name] for name in args.profiles.split(",")]
            measure_wan(results, work, orthanc, spec, profiles, args.check_mb, viewer=not args.no_viewer, ans=ans)
        finally:
            orthanc.stop()
    results["duration_s"] = round(time.perf_counter() - started, 1)
    say(f"report written to {write_report(results, Path(args.out))}")


if __name__ == "__main__":
    main()
