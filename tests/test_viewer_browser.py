"""The web viewer in a real browser (Debian's Chromium driven by Playwright) against real boxes and Orthanc.

Entries: the report link on the source box (with the Pro Santé Connect login of the simulator's page), and
View on the consumer box's exam list. Checks what a doctor sees: the right study, a non-blank image that
changes when scrolling and when the window/level is dragged, and clear pages for unknown or withdrawn exams.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from tests.support.consumer import INS, LAUNCH_FORM
from tests.support.fixtures_browser import CHROMIUM
from tests.test_consumer_box import consumer_box, local_pacs  # noqa: F401  (fixtures reused as they are)
from tests.test_source_e2e import load_exam
from tests.test_source_e2e import send as send_in_loop

playwright_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]

STUDY_C = "1.2.250.1.213.4.5.2.1.103"
PROFESSIONAL = "801234567897"


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # In English, explicitly: these paths' assertions read the English pages (the French viewer is in
    # test_viewer_tools.py); without a locale, Chromium would follow the machine's LANG.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB")
    pg = context.new_page()
    # Failed requests and page errors end up in the test's output: the first thing to read when it fails.
    # (A 504 to an only-if-cached request is the viewer's normal way to learn that a series is cold.)
    pg.on(
        "response",
        lambda r: (
            r.status >= 400
            and "only-if-cached" not in r.request.headers.get("cache-control", "")
            and print(f"HTTP {r.status} {r.request.method} {r.url}")
        ),
    )
    pg.on("pageerror", lambda e: print(f"page error: {e}"))
    yield pg
    context.close()


def send(box: Any, message: bytes) -> str:
    """The HL7 sender runs its own event loop: off this thread, where Playwright's sync API keeps one running."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(send_in_loop, box, message).result()


def canvas_png(page: Any) -> bytes:
    data: bytes = page.locator("#image").screenshot()
    return data


def variance(png: bytes) -> float:
    from PIL import Image, ImageStat

    return float(ImageStat.Stat(Image.open(io.BytesIO(png)).convert("L")).var[0])


def wait_until(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression from here: the page's CSP forbids the eval that wait_for_function uses."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(30)


def wait_ready(page: Any) -> None:
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=30_000)
    assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#message")
    # The words come after the first image is painted: until then the page shows its French text whatever the
    # browser prefers.
    page.wait_for_selector("body[data-words]", timeout=10_000)


def multiframe_series(single_frames: list[Path], out: Path, per_instance: int = 2) -> list[Path]:
    """A series of multi-frame instances built from the study's slices (frames differ), in a series of its own."""
    import pydicom
    from pydicom.uid import generate_uid

    series_uid = generate_uid()
    paths = []
    for number, start in enumerate(range(0, len(single_frames), per_instance), start=1):
        slices = [pydicom.dcmread(p) for p in single_frames[start : start + per_instance]]
        ds = slices[0]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesNumber = 9
        ds.SeriesDescription = "Multi-frame"
        ds.InstanceNumber = number
        ds.NumberOfFrames = len(slices)
        ds.PixelData = b"".join(s.PixelData for s in slices)
        ds.save_as(out / f"mf{number}.dcm", enforce_file_format=True)
        paths.append(out / f"mf{number}.dcm")
    return paths


def publish_exam_c(orthanc: Any, source_box: Any, tmp_path: Path, instances: int = 8, multiframe: bool = False) -> Any:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=instances)
    if multiframe:
        files = sorted((tmp_path / "study-C").rglob("*.dcm"))[:6]
        orthanc.store_files(multiframe_series(files, tmp_path))
    source = source_box(orthanc, auth={"protect_dicomweb": True})
    assert send(source, build_oru(build_cda(ANS_EXAMS["C"]), control_id="V-1")) == "AA"
    assert source.wait_state("ACN103", ("published", "failed", "rejected"))["state"] == "published"
    return source


def check_viewer_shows_exam_c(page: Any) -> None:
    wait_ready(page)
    assert "PAT-TROIS" in page.inner_text("#patient")
    ins = page.inner_text("#ins")
    assert INS not in ins and ins.endswith(INS[-3:])
    assert page.inner_text("#modality") == "CT"
    assert "Non-diagnostic viewer" in page.inner_text(".notice")
    first = canvas_png(page)
    assert variance(first) > 20, "the canvas is blank"

    # Scrolling (arrow key, then the wheel) shows another image.
    index = page.get_attribute("#image", "data-index")
    page.focus("#image")
    # Up, not down: the phantom is symmetric about the middle, so the two central slices look the same.
    page.keyboard.press("ArrowUp")
    wait_until(page, f"document.getElementById('image').dataset.index !== '{index}'")
    scrolled = canvas_png(page)
    assert scrolled != first
    page.mouse.move(700, 400)
    page.mouse.wheel(0, 100)
    wait_until(page, f"document.getElementById('image').dataset.index === '{index}'")
    assert canvas_png(page) == first

    # Dragging with the window/level tool changes the pixels.
    before = canvas_png(page)
    wl_before = page.inner_text("#wl")
    box = page.locator("#image").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 150, y + 80, steps=5)
    page.mouse.up()
    wait_until(page, f"document.getElementById('wl').textContent !== {wl_before!r}")
    assert canvas_png(page) != before
    # The target: a window/level change is painted in under 100 ms once the image is loaded.
    assert float(page.get_attribute("#image", "data-render-ms") or "inf") < 100

    # Zoom changes the view; Reset brings back the image's own window, fitted; Fit undoes a zoom.
    page.keyboard.press("r")
    wait_until(page, f"document.getElementById('wl').textContent === {wl_before!r}")
    page.wait_for_timeout(100)
    assert canvas_png(page) == first
    page.click("button[data-tool=zoom]")
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x, y - 120, steps=4)
    page.mouse.up()
    page.wait_for_timeout(100)
    assert canvas_png(page) != first
    page.click("#fit")
    page.wait_for_timeout(100)
    assert canvas_png(page) == first
    page.click("button[data-tool=window]")


def test_report_link_logs_in_and_shows_the_study(
    orthanc: Any, source_box: Any, sim: Any, page: Any, tmp_path: Path
) -> None:
    source = publish_exam_c(orthanc, source_box, tmp_path)
    link = f"{source.url}/IHEInvokeImageDisplay?" + urlencode(
        {"requestType": "STUDY", "studyUID": STUDY_C, "Accessionnumber": "ACN103", "idCDA": "1.2.250.1.213.4.5.4.403"}
    )
    # Not logged in: the box sends the browser to Pro Santé Connect (the simulator's login page).
    page.goto(link)
    assert page.url.startswith(sim.url), page.url
    page.click(f"button[value='{PROFESSIONAL}']")
    page.wait_for_url(f"{source.url}/viewer/**")
    query = parse_qs(urlsplit(page.url).query)
    assert query == {"base": ["/dicom-web"], "study": [STUDY_C]}
    check_viewer_shows_exam_c(page)
    first_image_ms = page.evaluate("performance.getEntriesByName('first-image')[0].startTime")
    print(f"\nfirst image painted {first_image_ms:.0f} ms after the viewer's navigation started (8 instances)")

    # `series=` (the consumer's per-series View) opens that series, not the first one.
    wait_until(page, "document.querySelectorAll('#series-list button').length >= 2")
    uids = page.eval_on_selector_all("#series-list button", "buttons => buttons.map(b => b.dataset.series)")
    page.goto(f"{source.url}/viewer/?" + urlencode({"base": "/dicom-web", "study": STUDY_C, "series": uids[-1]}))
    wait_until(
        page, f"document.querySelector('#series-list button[aria-current=true]')?.dataset.series === '{uids[-1]}'"
    )

    # An unknown study, then bad parameters: clear pages, not the viewer.
    resp = page.goto(link.replace(STUDY_C, "1.2.3.4.5"))
    assert resp.status == 404 and "Exam not found" in page.inner_text("h1")
    resp = page.goto(f"{source.url}/IHEInvokeImageDisplay?requestType=STUDY&studyUID=not-a-uid")
    assert resp.status == 400 and "Invalid link" in page.inner_text("h1")

    # Withdrawn by the centre: the same link now says so.
    withdraw = build_oru(build_cda(ANS_EXAMS["C"]), action="withdraw", control_id="V-2")
    assert send(source, withdraw) == "AA"
    assert source.wait_state("ACN103", ("withdrawn", "failed"))["state"] == "withdrawn"
    resp = page.goto(link)
    assert resp.status == 410 and "withdrawn" in page.inner_text("body")


def test_viewer_without_a_session_goes_to_login(
    orthanc: Any, source_box: Any, sim: Any, page: Any, tmp_path: Path
) -> None:
    source = publish_exam_c(orthanc, source_box, tmp_path, instances=2)
    # Opened directly (a bookmark): the protected DICOMweb answers 401 and the viewer sends the user to log in.
    page.goto(f"{source.url}/viewer/?base=/dicom-web&study={STUDY_C}")
    page.wait_for_url(f"{sim.url}/**")
    page.click(f"button[value='{PROFESSIONAL}']")
    page.wait_for_url(f"{source.url}/viewer/**")
    # A login alone opens nothing (security finding 1): the study is this session's once its report link is opened.
    page.wait_for_selector("body[data-state=error]", timeout=30_000)
    assert "not allowed" in page.inner_text("#message")
    page.goto(f"{source.url}/IHEInvokeImageDisplay?requestType=STUDY&studyUID={STUDY_C}")
    page.wait_for_url(f"{source.url}/viewer/**")
    wait_ready(page)


def test_view_from_the_consumer_exam_list(
    orthanc: Any,
    source_box: Any,
    sim: Any,
    consumer_box: Any,  # noqa: F811  (the fixture imported above)
    page: Any,
    tmp_path: Path,
) -> None:
    publish_exam_c(orthanc, source_box, tmp_path)
    base = consumer_box.health_url.rsplit("/", 1)[0]
    # The doctor's software posts the launch; the browser follows it (sim_auto logs the GP in at once).
    launch = page.request.post(f"{base}/conso/launch", form=LAUNCH_FORM, max_redirects=0)
    assert launch.status == 303
    next_path = parse_qs(urlsplit(launch.headers["location"]).query)["next"][0]
    page.goto(f"{base}/auth/login?" + urlencode({"next": next_path, "login_hint": PROFESSIONAL}))
    assert urlsplit(page.url).path == f"/conso/patients/{INS}/exams"
    asked: list[int] = []  # the patient's exams, asked by the viewer for the comparison

    def record(r: Any) -> None:
        if f"/conso/api/patients/{INS}/exams" in r.url:
            asked.append(r.status)

    page.on("response", record)
    page.click("text=View")
    page.wait_for_url(f"{base}/viewer/**")
    check_viewer_shows_exam_c(page)
    # The viewer found the patient (the image's Patient ID is the INS) and asked for the list: one exam only,
    # nothing to compare with, so no Compare button.
    wait_until(page, "document.body.dataset.words === 'en'")
    for _ in range(100):
        if asked:
            break
        page.wait_for_timeout(50)
    assert asked == [200] and not page.is_visible("#compare-tools")
    # The series panel lists the series with a thumbnail that loaded.
    assert page.locator("#series-list img").count() >= 1
    wait_until(page, "[...document.querySelectorAll('#series-list img')].every(i => i.complete && i.naturalWidth > 0)")

    # Tablet width: the series go above the image, which still fills its stage and is not blank.
    page.set_viewport_size({"width": 768, "height": 1024})
    page.keyboard.press("f")
    page.wait_for_timeout(200)
    box = page.locator("#image").bounding_box()
    assert box["width"] == 768 and box["height"] > 500
    assert variance(canvas_png(page)) > 20


def test_multiframe_instances_make_one_stack(
    orthanc: Any, source_box: Any, sim: Any, page: Any, tmp_path: Path
) -> None:
    source = publish_exam_c(orthanc, source_box, tmp_path, multiframe=True)
    page.goto(f"{source.url}/IHEInvokeImageDisplay?requestType=STUDY&studyUID={STUDY_C}")
    page.click(f"button[value='{PROFESSIONAL}']")
    wait_ready(page)
    # Three instances of two frames: one slider step per frame.
    page.click("#series-list button:has-text('Multi-frame')")
    wait_until(page, "document.getElementById('slider').max === '5'")
    wait_ready(page)
    frame = canvas_png(page)
    assert variance(frame) > 20
    page.focus("#image")
    page.keyboard.press("Home")
    wait_until(page, "document.getElementById('image').dataset.index === '0'")
    page.wait_for_timeout(100)
    assert canvas_png(page) != frame


def test_first_image_does_not_wait_for_the_series_on_a_cold_proxy(
    orthanc: Any, source_box: Any, sim: Any, page: Any, tmp_path: Path
) -> None:
    """Cold: the stack's order from QIDO, then the middle image's own metadata and frame; the whole series' metadata,
    the thumbnails and the neighbours only after that image is painted. Warm: one request opens the study."""
    source = publish_exam_c(orthanc, source_box, tmp_path)
    import json
    import urllib.request

    with urllib.request.urlopen(source.operator_request("/api/cache", "DELETE"), timeout=30) as resp:
        assert json.loads(resp.read())["series"] == 0
    requests: list[tuple[str, str]] = []  # (what, cache-control) in the order the browser sent them

    def record(request: Any) -> None:
        if "/dicom-web/" in request.url:
            path = urlsplit(request.url).path.split(f"/studies/{STUDY_C}", 1)[1] + ("?" if "?" in request.url else "")
            requests.append((path, request.headers.get("cache-control", "")))

    page.on("request", record)
    page.goto(f"{source.url}/IHEInvokeImageDisplay?requestType=STUDY&studyUID={STUDY_C}")
    page.click(f"button[value='{PROFESSIONAL}']")
    wait_ready(page)
    assert variance(canvas_png(page)) > 20
    paths = [path for path, _ in requests]
    first_frame = next(i for i, p in enumerate(paths) if p.endswith("/frames/1"))
    assert paths[first_frame - 1].endswith("/instances?") or any(p.endswith("/instances?") for p in paths[:first_frame])
    # Nothing before the first frame asks for a whole series (or study) without only-if-cached.
    assert all(
        c == "only-if-cached" for p, c in requests[:first_frame] if p.endswith("/metadata") and "/instances/" not in p
    )
    assert not any(p.endswith("/thumbnail?") for p in paths[:first_frame])
    # Then the series' metadata, in full, completes the stack: the neighbours load, the thumbnails too.
    wait_until(page, "document.getElementById('progress').value > 1")
    wait_until(page, "[...document.querySelectorAll('#series-list img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.evaluate(
        "performance.getEntriesByType('resource').filter(e => e.name.includes('/thumbnail'))"
        ".every(e => e.startTime >= performance.getEntriesByName('first-image')[0].startTime)"
    )
    # The image a complete stack would open on too: the middle of the first series (4 of the study's 8 instances).
    assert page.get_attribute("#image", "data-index") == "1" and page.inner_text("#position") == "2 / 4"

    # Warm: the fills the viewer's requests started (the second series' with its thumbnail) run to their end...
    import time

    deadline = time.monotonic() + 30
    while page.request.get(f"{source.url}/dicom-web/studies/{STUDY_C}/metadata",
                           headers={"Cache-Control": "only-if-cached"}).status != 200:  # fmt: skip
        assert time.monotonic() < deadline, "the study never got into the box's cache"
        page.wait_for_timeout(50)
    # ...and the study's metadata then opens it: no QIDO of its instances, no series metadata. (Once this page's
    # preloads are over: a frame request of theirs must not pass for the next page's.)
    wait_until(page, "document.getElementById('progress').value === document.getElementById('progress').max")
    requests.clear()
    page.reload()
    wait_ready(page)
    paths = [path for path, _ in requests]
    first_frame = next(i for i, p in enumerate(paths) if p.endswith("/frames/1"))
    assert "/metadata" in paths[:first_frame]
    assert not any(
        p.endswith("/instances?") or ("/series/" in p and p.endswith("/metadata")) for p in paths[:first_frame]
    )
