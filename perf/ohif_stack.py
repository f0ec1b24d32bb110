"""OHIF v2 served straight from Orthanc's DICOMweb plugin, measured as perf.viewer_stack measures our viewer (issue 16).

    python -m perf.ohif_stack            # the suite's ans1300 shape (JPEG-LS, 512², noise 24) at 260 slices
    python -m perf.ohif_stack --full     # at its real 1300 slices
    python -m perf.ohif_stack --json out.json
    python -m perf.viewer_stack --ohif   # both on the same Orthanc, side by side

The comparator of issue 16's targets ("report each against the same figures for Orthanc's WADO-RS serving OHIF").
OHIF v2's prebuilt bundle (`@ohif/viewer` on npm: one 12 MB index.umd.js carrying cornerstone, the
cornerstoneWADOImageLoader web worker as a blob and its WebAssembly codecs as data: URLs, so nothing comes from a
CDN) is downloaded once into ~/.cache/drimbox/ (beside tests/test_ohif.py's OHIF v3), its tarball checked against
the registry's dist.integrity (sha-512) pinned here; nothing of OHIF is in the repository. A small aiohttp server
on 127.0.0.1 serves the bundle, an app-config pointing at `/dicom-web` and our own index.html (the package's asks
polyfill.io), and forwards `/dicom-web/*` to Orthanc unchanged: same origin, as a site puts OHIF in front of its
PACS (no CORS), Orthanc's headers and gzip passed through. The proxy tallies the Accept headers OHIF sent and the
content types Orthanc answered: which syntax OHIF asked for, and whether Orthanc transcoded.
Why v2 and not v3: v2 draws with cornerstone on a 2D canvas, so it runs in the very Chromium (and flags,
--disable-gpu) perf.viewer_stack uses; OHIF v3 draws through WebGL (tests/test_ohif.py starts Chromium with
SwiftShader for it), which would measure a software GPU rather than the viewer.

Measured, cold (a fresh browser profile on disk, as perf.viewer_stack: see why there) then warm (the same context,
the study reopened), OHIF opened on its study route `/viewer/<StudyInstanceUID>`:
- first image: ms from the navigation to the first `cornerstoneimagerendered` event on OHIF's viewport element
  (cornerstone's own event, caught in the capture phase by a script installed before the page's);
- every slice: from the first slice, one ArrowDown (OHIF's `nextImage` hotkey) per exact paint: the step ends at
  the `cornerstoneimagerendered` event whose image is the wanted entry of the viewport's stack
  (cornerstoneTools' stack state); "Home" is cornerstoneTools' util/scrollToIndex(element, 0), the function
  OHIF's hotkeys call. Timed from the navigation to the last slice painted, as perf.viewer_stack does;
- bytes: Resource Timing transfer sizes of the `/dicom-web/` requests (OHIF's loader uses XHR on the page);
- step waits once loaded: a second Home→End pass in the same page;
- Orthanc's CPU per slice over the first pass (its process' utime + stime);
- the decode time a frame: cornerstoneWADOImageLoader's own `decodeTimeInMS` on each image in cornerstone's cache.
OHIF (cornerstone) paints in requestAnimationFrame, so one step per paint waits for the next frame: a pass cannot
beat slices × 16.7 ms (60 Hz; 4.3 s at 260, 21.7 s at 1300), where our viewer paints in the key handler.

Figures (one run each, 2 shared cores, 2026-12-06; perf/results/2026-12-06-ohif/ has the output and JSON), ours
(drimbox viewer + Proxy box) | OHIF 4.12.51 + Orthanc 1.10.1 (DICOMweb plugin 1.7):

| | 260 slices, 08:49 UTC | 1300 slices (--full), 08:50 UTC |
|---|---|---|
| first image cold / warm | 544 / 188 ms · 1344 / 1163 ms | 1164 / 270 ms · 2087 / 1756 ms |
| every slice cold / warm | 4.6 / 3.3 s · 6.5 / 6.0 s | 21.3 / 15.5 s · 25.3 / 25.4 s |
| bytes cold; warm reopen | 1.008 ×; 0.2 % · 1.003 ×; 100.3 % | 1.008 ×; 0.2 % · 1.002 ×; 100.2 % |
| longest step cold; once loaded (p99) | 167; 51 (50) ms · 60; 19 (17) ms | 217; 57 (53) ms · 198; 24 (18) ms |
| server CPU a slice cold / warm | box 6.0 / 1.3 ms · Orthanc 5.3 / 5.2 | box 5.9 / 1.4 ms · Orthanc 7.0 / 7.0 |
| browser decode a slice (median) | 7 · 7 ms | 7 · 7 ms |

OHIF asks `multipart/related; type=application/octet-stream; transfer-syntax=*` and Orthanc answers the stored
JPEG-LS (no transcoding), gzipped on the way (Chromium accepts gzip; JPEG-LS of noise barely shrinks). Orthanc
sends no validators, so a reopen downloads everything again. OHIF's first image is mostly its own page: the
bundle parsed and run takes 0.8-1.1 s before its first DICOMweb request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import statistics
import tarfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drimbox.demo.samples.orthanc import OrthancServer
from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.studies import StudySpec
from perf.viewer_stack import _STREAM, _bytes, _p99, box_cpu_seconds, chromium_with_profile, study_in_orthanc
from tests.support.ohif import cache_root

OHIF_VERSION = "4.12.51"  # the last OHIF v2 release of @ohif/viewer, the one with a prebuilt standalone bundle
OHIF_TARBALL = f"https://registry.npmjs.org/@ohif/viewer/-/viewer-{OHIF_VERSION}.tgz"
# `npm view @ohif/viewer@4.12.51 dist.integrity`
OHIF_INTEGRITY = "sha512-susQKpqkwsEwnxb/YgvcLxRHC8b4IIQNTOd/XYULaBfSiTmd49yKP6F4upKeOyIKGLDn7T2/z14x3l9m6DNVzQ=="
CACHE = cache_root() / f"ohif-viewer-{OHIF_VERSION}"  # beside tests/test_ohif.py's OHIF v3

# OHIF's own index.html minus its polyfill.io script (no internet here, and Chromium needs no polyfill).
_INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>OHIF Viewer</title></head>
<body><div id="root"></div>
<script src="/app-config.js"></script>
<script src="/index.umd.js" crossorigin></script>
<script>window.OHIFViewer.installViewer(window.config, 'root', function () {});</script>
</body></html>
"""

# The package's app-config.js with its demo server replaced by Orthanc behind the same origin; the study list off
# (the study is opened by its route) and only the hotkeys the benchmark presses.
_CONFIG = {
    "routerBasename": "/",
    "extensions": [],
    "showStudyList": False,
    "filterQueryParam": False,
    "disableServersCache": False,
    "studyPrefetcher": {
        "enabled": True,
        "order": "closest",
        "displaySetCount": 3,
        "preventCache": False,
        "prefetchDisplaySetsTimeout": 300,
        "maxNumPrefetchRequests": 100,
        "displayProgress": True,
        "includeActiveDisplaySet": True,
    },
    "servers": {
        "dicomWeb": [
            {
                "name": "Orthanc",
                "wadoUriRoot": "/dicom-web",
                "qidoRoot": "/dicom-web",
                "wadoRoot": "/dicom-web",
                "qidoSupportsIncludeField": True,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": True,
            }
        ]
    },
    "hotkeys": [
        {"commandName": "nextImage", "label": "Next Image", "keys": ["down"]},
        {"commandName": "previousImage", "label": "Previous Image", "keys": ["up"]},
    ],
    "cornerstoneExtensionConfig": {},
}

# Installed before OHIF's scripts: cornerstone's events do not bubble, a capture listener on window sees them all.
_WATCH = """(() => {
  window.__ohif = { first: null, last: null };
  window.addEventListener('cornerstoneimagerendered', (e) => {
    const image = e.detail && e.detail.image;
    if (!image || !e.target.classList || !e.target.classList.contains('viewport-element')) return;
    if (window.__ohif.first === null) window.__ohif.first = performance.now();
    window.__ohif.last = image.imageId;
  }, true);
  performance.setResourceTimingBufferSize(100000);
})();"""

# Driven inside the page, as perf.viewer_stack does (Playwright's round trips would be most of a step).
_PASS = """async (slices) => {
  const element = document.querySelector('.viewport-element');
  const state = cornerstoneTools.getToolState(element, 'stack');
  const ids = state && state.data[0] && state.data[0].imageIds;
  if (!ids || ids.length !== slices) {
    throw new Error(`OHIF's stack holds ${ids ? ids.length : 'no'} images, not ${slices}`);
  }
  const shown = (id) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      element.removeEventListener('cornerstoneimagerendered', seen);
      reject(new Error(`${id} not painted in 60 s`));
    }, 60000);
    const seen = (e) => {
      if (e.detail.image && e.detail.image.imageId === id) {
        clearTimeout(timer);
        element.removeEventListener('cornerstoneimagerendered', seen);
        resolve();
      }
    };
    element.addEventListener('cornerstoneimagerendered', seen);
  });
  const waits = [];
  for (let index = 0; index < slices; index++) {
    const started = performance.now();
    if (index === 0) {
      if (window.__ohif.last !== ids[0]) {
        const painted = shown(ids[0]);
        cornerstoneTools.import('util/scrollToIndex')(element, 0);
        await painted;
      }
    } else {
      const painted = shown(ids[index]);
      document.dispatchEvent(new KeyboardEvent('keydown',
        { key: 'ArrowDown', code: 'ArrowDown', keyCode: 40, which: 40, bubbles: true }));
      await painted;
    }
    waits.push(performance.now() - started);
  }
  return waits;
}"""

# When the last frame arrived (ms from the navigation): how fast OHIF's request pool and Orthanc deliver the series.
_RECEIVED = """() => Math.max(...performance.getEntriesByType('resource')
  .filter((e) => e.name.includes('/dicom-web/') && e.name.includes('/frames/')).map((e) => e.responseEnd))"""

# cornerstoneWADOImageLoader times each decode in its worker and writes it on the image (decodeTimeInMS).
_DECODES = """() => {
  const d = cornerstone.imageCache.cachedImages.filter((c) => c.image && c.image.decodeTimeInMS !== undefined)
    .map((c) => c.image.decodeTimeInMS).sort((a, b) => a - b);
  return { count: d.length, total: d.reduce((a, b) => a + b, 0), median: d.length ? d[d.length >> 1] : 0 };
}"""


def sri(data: bytes) -> str:
    """The Subresource Integrity form npm's dist.integrity uses: sha512-<base64> (as viewer/vendor/fetch.py)."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def ohif_bundle(cache: Path = CACHE) -> Path:
    """OHIF's index.umd.js, downloaded from the npm registry the first time and checked against its integrity."""
    bundle = cache / "index.umd.js"
    if bundle.is_file():
        return bundle
    with urllib.request.urlopen(OHIF_TARBALL, timeout=120) as response:
        tarball = response.read()
    if sri(tarball) != OHIF_INTEGRITY:
        raise SystemExit(f"{OHIF_TARBALL} does not match its dist.integrity")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile("package/dist/index.umd.js")
        if member is None:
            raise SystemExit(f"{OHIF_TARBALL} holds no dist/index.umd.js")
        data = member.read()
    cache.mkdir(parents=True, exist_ok=True)
    partial = bundle.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(bundle)  # a run killed mid-write leaves no truncated bundle behind
    return bundle


@dataclass
class OhifServer:
    """Where OHIF is served, and what went through its /dicom-web proxy to Orthanc."""

    url: str
    accepts: Counter[str] = field(default_factory=Counter)
    answered: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        self.accepts.clear()
        self.answered.clear()


def _app(bundle: Path, orthanc_url: str, tally: OhifServer) -> Any:
    from aiohttp import ClientSession, web

    config = f"window.config = {json.dumps(_CONFIG, indent=2)};\n"

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=_INDEX, content_type="text/html")

    async def app_config(request: web.Request) -> web.Response:
        return web.Response(text=config, content_type="application/javascript")

    async def umd(request: web.Request) -> web.FileResponse:
        return web.FileResponse(bundle, headers={"Content-Type": "application/javascript"})

    async def dicomweb(request: web.Request) -> web.StreamResponse:
        session: ClientSession = request.app["session"]
        forwarded = {k: v for k, v in request.headers.items() if k.lower() in ("accept", "accept-encoding", "range")}
        kind = "frames" if "/frames/" in request.path else request.path.rstrip("/").rsplit("/", 1)[-1]
        tally.accepts[f"{kind}: {request.headers.get('Accept', '')}"] += 1
        async with session.request(request.method, orthanc_url + request.path_qs, headers=forwarded) as upstream:
            content_type = upstream.headers.get("Content-Type", "")
            # The boundary differs on every answer: keep the type and its parameters, not the boundary.
            shown = "; ".join(p.strip() for p in content_type.split(";") if not p.strip().startswith("boundary="))
            tally.answered[f"{kind}: {upstream.status} {shown}"] += 1
            response = web.StreamResponse(status=upstream.status)
            for name in ("Content-Type", "Content-Encoding", "ETag", "Cache-Control", "Last-Modified", "Expires"):
                if name in upstream.headers:
                    response.headers[name] = upstream.headers[name]
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(1 << 16):
                await response.write(chunk)
            await response.write_eof()
            return response

    async def start(app: web.Application) -> None:
        # Orthanc's gzip reaches the browser as Orthanc sent it: Resource Timing then counts what was on the wire.
        app["session"] = ClientSession(auto_decompress=False)

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/app-config.js", app_config)
    app.router.add_get("/index.umd.js", umd)
    app.router.add_route("*", "/dicom-web/{tail:.*}", dicomweb)
    app.router.add_get("/{tail:.*}", index)  # OHIF's client-side routes (/viewer/<uid>) all load the page
    return app


@contextmanager
def ohif_server(orthanc: OrthancServer) -> Iterator[OhifServer]:
    """OHIF on a free loopback port in a thread of its own, stopped on exit."""
    from aiohttp import web

    bundle = ohif_bundle()
    port = free_port()
    server = OhifServer(url=f"http://127.0.0.1:{port}")
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(_app(bundle, orthanc.base_url, server))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, name="ohif-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


# Where the first image's time goes: OHIF's page up (its 12 MB bundle parsed and run: DOMContentLoaded comes after
# the body's scripts), its first DICOMweb request, the first frame received.
_PARTS = """() => {
  const dw = performance.getEntriesByType('resource').filter((e) => e.name.includes('/dicom-web/'));
  const frames = dw.filter((e) => e.name.includes('/frames/'));
  return { page_ready_ms: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,
           first_request_ms: Math.min(...dw.map((e) => e.startTime)),
           first_frame_received_ms: Math.min(...frames.map((e) => e.responseEnd)) };
}"""


def _open(context: Any, url: str) -> tuple[Any, float, dict[str, float]]:
    page = context.new_page()
    page.add_init_script(_WATCH)
    page.goto(url)
    page.wait_for_function("window.__ohif && window.__ohif.first !== null", timeout=120_000, polling=50)
    return page, float(page.evaluate("window.__ohif.first")), page.evaluate(_PARTS)


def _pass(page: Any, slices: int) -> list[float]:
    waits: list[float] = page.evaluate(_PASS, slices)
    return waits


def browse(server: OhifServer, orthanc: OrthancServer, spec: StudySpec, series: str) -> dict[str, Any]:
    slices = spec.instance_total
    url = f"{server.url}/viewer/{spec.study_uid}"
    with chromium_with_profile("drimbox-perf-ohif-profile-") as context:
        server.reset()
        cpu = box_cpu_seconds(orthanc.process.pid)
        started = time.perf_counter()
        page, first, parts = _open(context, url)
        waits = _pass(page, slices)
        cold_pass = time.perf_counter() - started
        cpu = box_cpu_seconds(orthanc.process.pid) - cpu
        decoded = page.evaluate(_DECODES)
        received = float(page.evaluate(_RECEIVED))
        loaded_started = time.perf_counter()
        again = _pass(page, slices)
        loaded_pass = time.perf_counter() - loaded_started
        cold = {"first_image_ms": first, "first_image_parts": parts, "pass_s": cold_pass,
                "step_ms_max": max(waits), "step_ms_median": statistics.median(waits),
                "frames_received_ms": received, **_bytes(page),
                "loaded_step_ms_max": max(again), "loaded_step_ms_p99": _p99(again), "loaded_pass_s": loaded_pass,
                "decode_ms_median": decoded["median"], "decode_ms_total": decoded["total"],
                "decodes": decoded["count"], "orthanc_cpu_ms_per_slice": 1000 * cpu / slices,
                "accepts": dict(server.accepts), "answered": dict(server.answered)}  # fmt: skip
        stream = page.evaluate(_STREAM, [spec.study_uid, series])  # Orthanc's WADO-RS series, as stored
        page.close()
        server.reset()
        cpu = box_cpu_seconds(orthanc.process.pid)
        started = time.perf_counter()
        page, first, parts = _open(context, url)
        waits = _pass(page, slices)
        warm = {"first_image_ms": first, "first_image_parts": parts, "pass_s": time.perf_counter() - started,
                "step_ms_max": max(waits), **_bytes(page),
                "orthanc_cpu_ms_per_slice": 1000 * (box_cpu_seconds(orthanc.process.pid) - cpu) / slices,
                "accepts": dict(server.accepts), "answered": dict(server.answered)}  # fmt: skip
        page.close()
    return {"cold": cold, "warm": warm, "stream_ms": stream["ms"], "stream_bytes": stream["bytes"],
            "stream_status": stream["status"]}  # fmt: skip


def measure(orthanc: OrthancServer, spec: StudySpec, series: str, stored_bytes: int) -> dict[str, Any]:
    """OHIF over the study `orthanc` already holds; the figures as perf.viewer_stack.measure returns ours."""
    if not orthanc.dicomweb:
        raise SystemExit("Orthanc's DICOMweb plugin is not installed: apt-get install orthanc-dicomweb")
    with ohif_server(orthanc) as server:
        result = browse(server, orthanc, spec, series)
    result.update(slices=spec.instance_total, stored_bytes=stored_bytes, ohif_version=OHIF_VERSION)
    return result


def _syntax(r: dict[str, Any]) -> str:
    """What OHIF asked for its frames, and what Orthanc answered, from the proxy's tally."""
    asked = sorted({a.split(": ", 1)[1] for a in r["cold"]["accepts"] if a.startswith("frames:")})
    answered = sorted({a.split(": ", 1)[1] for a in r["cold"]["answered"] if a.startswith("frames:")})
    return f"asked {' | '.join(asked)}; Orthanc answered {' | '.join(answered)}"


def _parts(run: dict[str, Any]) -> str:
    p = run["first_image_parts"]
    return f"{p['page_ready_ms']:.0f} / {p['first_request_ms']:.0f} / {p['first_frame_received_ms']:.0f}"


def figures(r: dict[str, Any]) -> dict[str, str]:
    """One line per figure of perf.viewer_stack's summary, keyed by its label."""
    c, w, stored = r["cold"], r["warm"], r["stored_bytes"]
    return {
        "first image": f"cold {c['first_image_ms']:.0f} ms, warm {w['first_image_ms']:.0f} ms"
        f" (page up / first DICOMweb request / first frame received: {_parts(c)} cold, {_parts(w)} warm)",
        "every slice": f"{c['pass_s']:.1f} s cold (every frame received at {c['frames_received_ms'] / 1000:.1f} s;"
        f" Orthanc streams the series as stored in"
        f" {r['stream_ms'] / 1000:.1f} s: {c['pass_s'] * 1000 / r['stream_ms']:.2f} ×), warm {w['pass_s']:.1f} s",
        "bytes": f"cold {c['transfer_bytes'] / 1e6:.1f} MB ({c['transfer_bytes'] / stored:.3f} × stored), warm"
        f" {w['transfer_bytes'] / 1e6:.2f} MB ({100 * w['transfer_bytes'] / stored:.1f} %);"
        f" {c['frame_requests']} frame requests, {c['frames_asked_twice']} asked twice",
        "steps": f"cold max {c['step_ms_max']:.0f} ms (median {c['step_ms_median']:.0f}); once loaded max"
        f" {c['loaded_step_ms_max']:.0f} ms, p99 {c['loaded_step_ms_p99']:.0f} ms",
        "box CPU per slice": f"Orthanc cold {c['orthanc_cpu_ms_per_slice']:.1f} ms,"
        f" warm {w['orthanc_cpu_ms_per_slice']:.1f} ms",
        "browser": f"decode {c['decode_ms_median']:.0f} ms a slice (median, {c['decode_ms_total'] / 1000:.1f} s in all"
        f" over {c['decodes']} frames); a pass through loaded slices {c['loaded_pass_s']:.1f} s",
    }


def summary(r: dict[str, Any]) -> str:
    lines = [
        f"OHIF {r['ohif_version']} + Orthanc DICOMweb, {r['slices']} JPEG-LS slices (stored pixel data"
        f" {r['stored_bytes'] / 1e6:.1f} MB), Chromium headless; {_syntax(r)}:"
    ]
    lines += [f"  {label}: {line}" for label, line in figures(r).items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:

    from perf.suite import studies

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="ans1300 at 1300 slices (else 260)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--slices", type=int, help="another number of slices (a quick try)")
    args = parser.parse_args(argv)
    spec = studies(args.full)["ans1300"]
    if args.slices:
        spec = dataclasses.replace(spec, instance_total=args.slices)
    ohif_bundle()  # downloaded before Orthanc starts: the timings never include it
    with study_in_orthanc(spec, "drimbox-perf-ohif-") as (_, orthanc, series, stored):
        result = measure(orthanc, spec, series, stored)
    print(summary(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()


def side_by_side(ours: str, r: dict[str, Any]) -> str:
    """perf.viewer_stack's summary with an "OHIF + Orthanc" line under each figure OHIF has too."""
    lines, theirs = [], figures(r)
    for line in ours.splitlines():
        lines.append(line)
        label = line.strip().split(":", 1)[0]
        if line.startswith("  ") and label in theirs:
            lines.append(f"    OHIF + Orthanc: {theirs[label]}")
    lines.append(f"  OHIF {r['ohif_version']}: {_syntax(r)}")
    return "\n".join(lines)
