"""Bytes the viewer downloads for a series' frames: as it asked before (native), as it asks now (the stored
JPEG-LS when the browser decodes it), against the stored and the uncompressed sizes; and what the alternatives for
uncompressed stored data cost (JPEG-LS on the fly, `[http] compress_on_the_fly`; gzip level 1 of native frames).

    python -m perf.viewer_bytes                      # the suite's ct300 (native) and ans1300 (JPEG-LS, 260 slices)
    python -m perf.viewer_bytes --full               # ans1300 at its real 1300 slices
    python -m perf.viewer_bytes --url http://127.0.0.1:8042/dicom-web --study <uid>   # any DICOMweb server
    python -m perf.viewer_bytes --json out.json
    python -m perf.viewer_bytes --browser            # also the viewer itself in Chromium, every slice shown

Without --url the box's own DICOMweb and viewer routes serve the generated studies on loopback, twice: as a box
by default (`compress_on_the_fly = "auto"`) and with it `true`. Each frame is asked once, 4 at a time (as
the viewer does), with the exact Accept headers the viewer sends (`ACCEPT_BEFORE`, `ACCEPT_VIEWER` on a fast link,
`ACCEPT_VIEWER_SLOW` on a slow one: then "auto" encodes uncompressed data as JPEG-LS); the bytes are the response
bodies. `fetch_frames()` is the reusable part: point it at a base URL behind an emulated link.

Figures (one run, 2 shared cores, loopback, `python -m perf.viewer_bytes --browser`; the suite's synthetic slices,
noise 24, compress like the ANS data set, ~3:1):

| study | stored | uncompressed | viewer before | viewer now | box CPU/frame before → now |
|---|---|---|---|---|---|
| ct300, stored native | 157.3 MB | 157.3 MB | 157.3 MB | 157.3 MB (53.3 MB with compress_on_the_fly) | 1.3 → 1.7 (7.8 on the fly) ms |
| ans1300 (260 slices), stored JPEG-LS | 46.1 MB | 136.3 MB | 136.4 MB | 46.2 MB (1.00 × stored) | 20.7 → 1.5 ms |

- The browser decodes a 512² JPEG-LS slice in 8-9 ms (median, in a worker; the box's pydicom took ~19 ms).
- The slow-link preview (`/frames/N/rendered?quality=60&viewport=256,256&window=40,400,linear`): 4.7 kB a slice
  against 177 kB for the JPEG-LS frame (15 kB at full size), ~45 ms of box CPU (decode, window, JPEG): asked only
  once exact frames take over 300 ms.
- Uncompressed stored data: JPEG-LS on the fly (the slow-link viewer on an "auto" box) sends 0.34 × for ~6 ms of box CPU a
  frame; gzip level 1 of the native frame 0.44 × (ratio 2.25) for ~4 ms. JPEG-LS wins on bytes, for 50 % more CPU,
  and needs nothing new on the wire (no Content-Encoding on multipart frames): gzip is not implemented.
  Hence "auto": on a LAN the CPU costs more than the bytes save (the viewer's pass over ct300 on loopback: 0.6 s
  native, 4.0 s on the fly), so the viewer asks compressed only on a slow link (viewer/link.js).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
import zlib
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from drimbox.demo.samples.studies import StudySpec, write_study
from drimbox.dicomweb.routes import dicomweb_routes
from tests.support.folder_backend import FolderBackend

NATIVE = "1.2.840.10008.1.2.1"
# What viewer/dicomweb.js sent before the codecs (RAW_FRAME), and what it sends now (frameAccept with JPEG-LS).
ACCEPT_BEFORE = f'multipart/related; type="application/octet-stream"; transfer-syntax={NATIVE}'
_DECODED = (
    'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80, '
    'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.81, '
    'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90, '
    'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.91, '
)
ACCEPT_VIEWER = f"{_DECODED}{ACCEPT_BEFORE}"  # a fast link: every form at the same weight
ACCEPT_VIEWER_SLOW = f"{_DECODED}{ACCEPT_BEFORE}; q=0.5"  # a slow link: uncompressed weighted below
PARALLEL = 4  # viewer/stack.js PARALLEL


@dataclass
class Pass:
    """One pass over a series' frames with one Accept header."""

    frames: int
    bytes: int  # response bodies (multipart framing included): what the link carries, HTTP headers aside
    seconds: float
    cpu_ms_per_frame: float  # this process's CPU (server + client) per frame: the box's cost when it dominates
    part_types: list[str]


async def instance_urls(session: aiohttp.ClientSession, base: str, study: str) -> list[str]:
    """The frame-1 URL of every instance of the study, in Instance Number order."""
    async with session.get(
        f"{base}/studies/{study}/instances?includefield=00200013&limit=100000",
        headers={"Accept": "application/dicom+json"},
    ) as resp:
        resp.raise_for_status()
        items = await resp.json(content_type=None)

    def key(item: dict[str, Any]) -> int:
        return int(item.get("00200013", {}).get("Value", [0])[0])

    urls = []
    for item in sorted(items, key=key):
        series, sop = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
        urls.append(f"{base}/studies/{study}/series/{series}/instances/{sop}/frames/1")
    return urls


async def fetch_frames(
    base: str, study: str, accept: str, parallel: int = PARALLEL, headers: dict[str, str] | None = None
) -> Pass:
    """Every instance's first frame with `accept`, `parallel` at a time: bytes, time and part types seen."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        urls = await instance_urls(session, base, study)
        total, types = 0, set()
        queue = list(reversed(urls))
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal total
            while queue:
                url = queue.pop()
                async with session.get(url, headers={"Accept": accept, **(headers or {})}) as resp:
                    resp.raise_for_status()
                    body = await resp.read()
                total += len(body)
                types.add(part_type(resp.headers.get("Content-Type", ""), body))

        await asyncio.gather(*(worker() for _ in range(parallel)))
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    return Pass(len(urls), total, seconds, 1000 * cpu_s / max(1, len(urls)), sorted(types))


def part_type(content_type: str, body: bytes) -> str:
    """The first part's Content-Type (a single-part answer: the response's)."""
    if "boundary" not in content_type:
        return content_type
    head = body[: body.find(b"\r\n\r\n")].decode("latin-1")
    return next(
        (line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("content-type")), ""
    )


def gzip_native(paths: list[Path]) -> dict[str, float]:
    """Native frames through gzip level 1 (Content-Encoding: gzip): ratio and CPU per frame."""
    import pydicom

    raw = packed = 0
    cpu = 0.0
    for path in paths:
        data = bytes(pydicom.dcmread(path).PixelData)
        started = time.process_time()
        out = zlib.compressobj(1, zlib.DEFLATED, 31)
        size = len(out.compress(data)) + len(out.flush())
        cpu += time.process_time() - started
        raw, packed = raw + len(data), packed + size
    return {"bytes": packed, "ratio": raw / max(1, packed), "cpu_ms_per_frame": 1000 * cpu / max(1, len(paths))}


@asynccontextmanager
async def local_box(root: Path, *, compress: bool | str = "auto") -> Any:
    """The box's DICOMweb routes over `root` at /dicom-web (`compress`: `compress_on_the_fly`) and its viewer."""
    from drimbox.viewer.routes import viewer_routes
    from tests.test_viewer_routes import FakeGate

    backend = await FolderBackend.open(root)
    app = web.Application()
    app.add_routes(dicomweb_routes(backend, compress=compress, max_results=100_000))
    app.add_routes(viewer_routes(FakeGate(True), None))  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def sizes(paths: list[Path]) -> dict[str, int]:
    """Stored Pixel Data and the same pixels uncompressed (rows × columns × samples × bytes)."""
    import pydicom

    stored = uncompressed = 0
    for path in paths:
        ds = pydicom.dcmread(path)
        stored += len(ds.PixelData)
        uncompressed += int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
    return {"stored_pixel_bytes": stored, "uncompressed_bytes": uncompressed}


async def measure_shape(root: Path, spec: StudySpec, paths: list[Path], browser: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"slices": len(paths), "stored_syntax": spec.transfer_syntax, **sizes(paths)}
    native = spec.transfer_syntax == NATIVE
    async with local_box(root) as url, local_box(root, compress=True) as otf:
        base = f"{url}/dicom-web"
        await fetch_frames(base, spec.study_uid, ACCEPT_BEFORE)  # warms the page cache and the index
        result["before"] = asdict(await fetch_frames(base, spec.study_uid, ACCEPT_BEFORE))
        result["viewer"] = asdict(await fetch_frames(base, spec.study_uid, ACCEPT_VIEWER))
        if native:
            result["viewer_on_the_fly"] = asdict(await fetch_frames(base, spec.study_uid, ACCEPT_VIEWER_SLOW))
        if browser:
            result["browser"] = await asyncio.to_thread(browse, url, spec.study_uid, len(paths))
            if native:
                result["browser_on_the_fly"] = await asyncio.to_thread(browse, otf, spec.study_uid, len(paths))
    if native:
        result["gzip1_native"] = gzip_native(paths)
    return result


def browse(url: str, study: str, slices: int) -> dict[str, Any]:
    """The viewer in headless Chromium, every slice shown once (Home, then one step per drawn slice): frame bytes
    from Resource Timing, the first image, the workers' decode time per frame."""
    from playwright.sync_api import sync_playwright

    from tests.support.fixtures_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = chromium.new_page(viewport={"width": 1280, "height": 800})
            page.add_init_script("performance.setResourceTimingBufferSize(100000)")
            started = time.perf_counter()
            page.goto(f"{url}/viewer/?base=/dicom-web&study={study}")
            page.wait_for_selector("body[data-state=ready]", timeout=60_000)
            first_image_ms = page.evaluate("() => performance.getEntriesByName('first-image')[0].startTime")
            page.locator("#image").focus()
            page.keyboard.press("Home")
            for index in range(slices):
                if index:
                    page.keyboard.press("ArrowDown")
                deadline = time.monotonic() + 30
                while page.get_attribute("#image", "data-index") != str(index):
                    assert time.monotonic() < deadline, f"slice {index} never shown"
                    page.wait_for_timeout(5)
            seconds = time.perf_counter() - started
            figures: dict[str, Any] = page.evaluate(
                """() => {
                  const frames = performance.getEntriesByType('resource').filter((e) => e.name.includes('/frames/'));
                  const decodes = performance.getEntriesByName('decode').map((e) => e.duration).sort((a, b) => a - b);
                  return {
                    requests: frames.length,
                    body_bytes: frames.reduce((n, e) => n + e.encodedBodySize, 0),
                    transfer_bytes: frames.reduce((n, e) => n + e.transferSize, 0),
                    decodes: decodes.length,
                    decode_ms_median: decodes.length ? decodes[Math.floor(decodes.length / 2)] : null,
                    syntax: document.querySelector('#image').dataset.transferSyntax,
                  };
                }"""
            )
        finally:
            chromium.close()
    return {**figures, "first_image_ms": first_image_ms, "all_slices_seconds": seconds}


def shapes(full: bool) -> Iterator[tuple[str, StudySpec]]:
    from perf.suite import studies

    all_shapes = studies(full)
    yield "ct300", all_shapes["ct300"]
    yield "ans1300", all_shapes["ans1300"]


def summary(name: str, r: dict[str, Any]) -> str:
    mb = 1e6
    lines = [f"{name}: {r['slices']} slices stored {r['stored_syntax']}; pixel data stored "
             f"{r['stored_pixel_bytes'] / mb:.1f} MB, uncompressed {r['uncompressed_bytes'] / mb:.1f} MB"]  # fmt: skip
    for key in ("browser", "browser_on_the_fly"):
        if key in r:
            b = r[key]
            decode = f", decode {b['decode_ms_median']:.1f} ms/frame (median)" if b["decode_ms_median"] else ""
            lines.append(
                f"  {key:18} {b['body_bytes'] / mb:7.1f} MB in {b['requests']} frame requests "
                f"({b['body_bytes'] / r['uncompressed_bytes']:.2f} × uncompressed), {b['syntax']}{decode}, "
                f"first image {b['first_image_ms']:.0f} ms, every slice in {b['all_slices_seconds']:.1f} s"
            )
    for key in ("before", "viewer", "viewer_on_the_fly"):
        if key in r:
            p = r[key]
            lines.append(
                f"  {key:18} {p['bytes'] / mb:7.1f} MB ({p['bytes'] / r['uncompressed_bytes']:.2f} × uncompressed)"
                f" in {p['seconds']:.2f} s, {p['cpu_ms_per_frame']:.1f} ms CPU/frame, parts {', '.join(p['part_types'])}"
            )
    if "gzip1_native" in r:
        g = r["gzip1_native"]
        lines.append(f"  gzip -1 of native   {g['bytes'] / mb:7.1f} MB (ratio {g['ratio']:.2f}), "
                     f"{g['cpu_ms_per_frame']:.1f} ms CPU/frame")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="ans1300 at 1300 slices (else 260)")
    parser.add_argument("--url", help="a DICOMweb base URL to measure instead of the local box")
    parser.add_argument("--study", help="with --url: the study to fetch")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--browser", action="store_true", help="also page through every slice in the viewer")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    if args.url:
        if not args.study:
            parser.error("--url needs --study")
        for key, accept in (("before", ACCEPT_BEFORE), ("viewer", ACCEPT_VIEWER)):
            results[key] = asdict(asyncio.run(fetch_frames(args.url, args.study, accept)))
            p = results[key]
            print(f"{key:8} {p['bytes'] / 1e6:.1f} MB in {p['seconds']:.2f} s, parts {', '.join(p['part_types'])}")
    else:
        with tempfile.TemporaryDirectory(prefix="drimbox-viewer-bytes-") as tmp:
            for name, spec in shapes(args.full):
                started = time.perf_counter()
                paths = write_study(Path(tmp) / name, spec)
                print(f"[{name}: {len(paths)} files written in {time.perf_counter() - started:.0f} s]", flush=True)
                results[name] = asyncio.run(measure_shape(Path(tmp) / name, spec, paths, args.browser))
                print(summary(name, results[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ratios = [r["viewer"]["bytes"] / r["uncompressed_bytes"] for r in results.values() if "uncompressed_bytes" in r]
    if ratios:
        print(f"median viewer bytes / uncompressed: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
