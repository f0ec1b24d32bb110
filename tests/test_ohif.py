"""An outside viewer works too: OHIF v3, prebuilt and unmodified, reads a source box's DICOMweb from another origin.

OHIF (the npm package @ohif/app, a fixed version, downloaded once and cached) is served by a small static server
on 127.0.0.1 with an app-config.js pointing at the box; the box allows OHIF's origin in [http] cors_origins.
Debian's Chromium shows OHIF's study list, then the viewer: the study is listed and its first image is painted.
Two boxes: an open /dicom-web (a centre's own OHIF on its own network) and a protected one read with the
operator token, which OHIF sends as a bearer header.
"""

from __future__ import annotations

import base64
import io
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.reports import ANS_EXAMS
from tests.support import ohif
from tests.support.fixtures_browser import CHROMIUM
from tests.support.fixtures_mesh import OPERATOR_TOKEN
from tests.support.ohif import OHIF_VERSION, OhifUnavailable, app_config, ohif_dist, serve_ohif
from tests.test_source_e2e import load_exam

playwright_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.ohif, pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim,
              pytest.mark.box]  # fmt: skip

EXAM = ANS_EXAMS["C"]


@pytest.fixture(scope="module")
def dist() -> Path:
    try:
        return ohif_dist()
    except OhifUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
                  "--use-angle=swiftshader", "--enable-unsafe-swiftshader"],
        )  # fmt: skip
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, service_workers="block")
    pg = context.new_page()
    failures: list[str] = []

    def on_response(r: Any) -> None:
        if r.status >= 400:
            failures.append(f"HTTP {r.status} {r.request.method} {r.url}")

    pg.on("response", on_response)
    pg.on("requestfailed", lambda r: failures.append(f"failed {r.method} {r.url}: {r.failure}"))
    pg.on("pageerror", lambda e: print(f"page error: {e}"))
    pg.failures = failures
    yield pg
    for line in failures:
        print(line)
    context.close()


def variance(png: bytes) -> float:
    from PIL import Image, ImageStat

    return float(ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).var[0])


def canvas_pixels(canvas: Any) -> bytes:
    data_url: str = canvas.evaluate("c => c.toDataURL('image/png')")
    return base64.b64decode(data_url.split(",", 1)[1])


def wait_for(page: Any, check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"never: {what}; failed requests: {page.failures}"
        page.wait_for_timeout(100)
    return result


def study_list_then_first_image(page: Any, ohif: str, dicomweb: str) -> None:
    """OHIF's study list shows exam C; its viewer paints a non-blank first image from the box's DICOMweb."""
    page.goto(f"{ohif}/")
    wait_for(page, lambda: EXAM.accession in page.inner_text("body"), "the study list shows exam C's accession")
    assert EXAM.family in page.inner_text("body")

    page.goto(f"{ohif}/viewer?StudyInstanceUIDs={EXAM.study_uid}")
    canvas = page.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible", timeout=30_000)
    started = time.monotonic()
    # The canvas's own pixels, not a screenshot of its area: OHIF's text overlays lie over it.
    wait_for(page, lambda: variance(canvas_pixels(canvas)) > 20, "the viewport's canvas shows an image")
    print(f"\nOHIF {OHIF_VERSION}: first image {time.monotonic() - started:.1f} s after the viewport appeared")
    # Every image request OHIF made went to the box and succeeded.
    assert not [f for f in page.failures if dicomweb in f], page.failures


def test_ohif_lists_and_shows_a_study_of_an_open_box(
    orthanc: Any, source_box: Any, page: Any, dist: Path, tmp_path: Path
) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=8)
    ohif_port = free_port()
    origin = f"http://127.0.0.1:{ohif_port}"
    box = source_box(orthanc, http={"cors_origins": [origin]})  # [auth] protect_dicomweb = false: the default here
    dicomweb = f"{box.url}/dicom-web"
    with serve_ohif(dist, app_config(dicomweb), ohif_port) as ohif:
        study_list_then_first_image(page, ohif, dicomweb)


def test_ohif_reads_a_protected_box_with_the_operator_token(
    orthanc: Any, source_box: Any, page: Any, dist: Path, tmp_path: Path
) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=8)
    ohif_port = free_port()
    origin = f"http://127.0.0.1:{ohif_port}"
    box = source_box(orthanc, http={"cors_origins": [origin]}, auth={"protect_dicomweb": True})
    dicomweb = f"{box.url}/dicom-web"
    # Without the token the same OHIF lists nothing: the box refuses its search (with no CORS header on the
    # refusal today, so the browser reports a failed request rather than the 401 itself: either counts here).
    with serve_ohif(dist, app_config(dicomweb), ohif_port) as ohif:
        page.goto(f"{ohif}/")
        wait_for(page, lambda: any(f"{dicomweb}/studies?" in f for f in page.failures),
                 "OHIF's search without a token fails")  # fmt: skip
        page.wait_for_timeout(500)
        assert EXAM.accession not in page.inner_text("body")
    request = urllib.request.Request(f"{dicomweb}/studies", headers={"Origin": origin})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    page.failures.clear()
    with serve_ohif(dist, app_config(dicomweb, token=OPERATOR_TOKEN), ohif_port) as ohif:
        study_list_then_first_image(page, ohif, dicomweb)


def test_without_network_or_cache_the_download_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ohif, "REGISTRY", "http://127.0.0.1:9/@ohif/app")  # nothing listens there
    with pytest.raises(OhifUnavailable, match=r"not cached .* cannot be downloaded"):
        ohif_dist(root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_cached_copy_needs_no_network(dist: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ohif, "REGISTRY", "http://127.0.0.1:9/@ohif/app")
    assert ohif_dist(root=dist.parent.parent) == dist


def test_a_tarball_that_does_not_match_its_integrity_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forged = tmp_path / "app.tgz"
    forged.write_bytes(b"not OHIF")
    monkeypatch.setattr(
        ohif, "_registry_dist", lambda v: {"integrity": ohif.OHIF_INTEGRITY, "tarball": forged.as_uri()}
    )
    with pytest.raises(AssertionError, match="does not match its integrity"):
        ohif_dist(root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
