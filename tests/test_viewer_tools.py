"""The viewer's tools in Chromium: measurements in mm, cine, help, DICOM tags, report button, tablet, French/English.

The images are synthetic (known Pixel Spacing, a known patient) and served by the box's own DICOMweb and viewer
routes over a folder of Part-10 files: what is tested is the page, so no PACS is needed behind it.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from drimbox.dicomweb.routes import dicomweb_routes
from drimbox.viewer.routes import viewer_routes
from tests.support.fixtures_browser import CHROMIUM
from tests.support.folder_backend import FolderBackend
from tests.support.threaded_app import app_in_thread
from tests.test_viewer_routes import FakeGate

playwright_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)

pytestmark = [pytest.mark.browser]

STUDY = "1.2.826.0.1.3680043.10.1313.1"
CALIBRATED = STUDY + ".1"  # Pixel Spacing 0.5 (rows) \ 0.25 (columns)
DETECTOR = STUDY + ".2"  # Imager Pixel Spacing only (a radiograph): lengths are approximate
KOS_WITH_REPORT = "1.2.826.0.1.3680043.10.1313.9.1"
KOS_WITHOUT = "1.2.826.0.1.3680043.10.1313.9.2"
PREVIOUS = "1.2.826.0.1.3680043.10.1313.2"  # the same patient's earlier chest CT: 6 slices
PREVIOUS_SERIES = PREVIOUS + ".1"
KOS_PREVIOUS = "1.2.826.0.1.3680043.10.1313.9.3"
KOS_HEAD = "1.2.826.0.1.3680043.10.1313.9.4"  # later than PREVIOUS, but of another region
INS = "180012345678901"
SIZE = 128
SLICES = 12


def _instance(series: str, number: int, spacing: dict[str, list[float]], study: str = STUDY) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(f"{series}.{number}")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "DUPONT^JEANNE", INS, "19700214", "F"
    ds.OtherPatientIDs = "LOCAL-4242"
    ds.StudyDate, ds.Modality, ds.StudyDescription = "20210108" if study == STUDY else "20200601", "CT", "TDM THORAX"
    ds.SeriesNumber, ds.InstanceNumber = 2 if series == DETECTOR else 1, number
    ds.SeriesDescription = "Calibrated" if series == CALIBRATED else "Detector"
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    for keyword, values in spacing.items():
        setattr(ds, keyword, values)
    # A diagonal gradient and a bright square that moves with the slice: every image differs from its neighbours.
    pixels = np.add.outer(np.arange(SIZE), np.arange(SIZE)).astype(np.uint16) * 8
    pixels[8 * number : 8 * number + 16, 20:40] = 4000
    ds.PixelData = pixels.tobytes()
    return ds


def write_study(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(1, SLICES + 1):
        _instance(CALIBRATED, n, {"PixelSpacing": [0.5, 0.25]}).save_as(root / f"c{n}.dcm", enforce_file_format=True)
    for n in range(1, 4):
        _instance(DETECTOR, n, {"ImagerPixelSpacing": [0.2, 0.2]}).save_as(root / f"d{n}.dcm", enforce_file_format=True)
    for n in range(1, 7):
        _instance(PREVIOUS_SERIES, n, {"PixelSpacing": [0.7, 0.7]}, PREVIOUS).save_as(
            root / f"p{n}.dcm", enforce_file_format=True
        )


def _summary(kos: str) -> dict[str, Any]:
    """An exam as the consumer's JSON lists it (the fields the viewer reads)."""
    study, date, regions, description = {
        KOS_WITH_REPORT: (STUDY, "2021-01-08", ["THORAX"], "TDM THORAX"),
        KOS_WITHOUT: (STUDY, "2021-01-08", ["THORAX"], "TDM THORAX"),
        KOS_PREVIOUS: (PREVIOUS, "2020-06-01", ["THORAX"], "TDM THORAX ancien"),
        KOS_HEAD: ("1.2.826.0.1.3680043.10.1313.3", "2020-12-01", ["TETE"], "TDM CEREBRALE"),
    }[kos]
    return {"kos_uid": kos, "study_uid": study, "date": date, "modalities": ["CT"], "regions": regions,
            "description": description}  # fmt: skip


async def _patient_exams(request: web.Request) -> web.Response:
    if request.match_info["ins"] != INS:
        return web.json_response({"error": "unknown patient"}, status=404)
    return web.json_response({"exams": [_summary(k) for k in (KOS_WITH_REPORT, KOS_HEAD, KOS_PREVIOUS)]})


async def _exam(request: web.Request) -> web.Response:
    """What the consumer's exam API says of a KOS (its study, and its report when it has one)."""
    kos = request.match_info["kos"]
    exam = _summary(kos)
    if kos == KOS_WITH_REPORT:
        exam["report"] = {"url": f"/conso/reports/{kos}", "title": "CR TDM thorax", "date": "20210108"}
    return web.json_response(exam)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The box's viewer and DICOMweb routes (as the source, and as the consumer) on a loopback port, in a thread."""
    root = tmp_path_factory.mktemp("viewer-tools")
    write_study(root)

    async def build() -> web.Application:
        backend = await FolderBackend.open(root)
        app = web.Application()
        app.add_routes(viewer_routes(FakeGate(True), None))  # type: ignore[arg-type]
        app.add_routes(dicomweb_routes(backend))
        app.add_routes(dicomweb_routes(backend, base="/conso/dicom-web"))
        app.add_routes(
            [web.get("/conso/api/exams/{kos}", _exam), web.get("/conso/api/patients/{ins}/exams", _patient_exams)]
        )
        return app

    with app_in_thread(build) as (url, _):
        yield url


def open_page(browser: Any, url: str, locale: str = "fr-FR", **context: Any) -> Any:
    ctx = browser.new_context(
        viewport=context.pop("viewport", {"width": 1280, "height": 800}), locale=locale, **context
    )
    page = ctx.new_page()
    page.on("pageerror", lambda e: print(f"page error: {e}"))
    page.goto(url)
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=30_000)
    assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#message")
    # The words (and the tools' modules) arrive once the first image is painted.
    wait_until(page, f"document.body.dataset.words === {locale[:2]!r}")
    return page


def wait_until(page: Any, expression: str, timeout: float = 15.0) -> None:
    """Poll a JavaScript expression from here: the page's CSP forbids the eval that wait_for_function uses."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(30)


def click_image(page: Any, x: float, y: float) -> None:
    """A click on the image's pixel (x, y), the image fitted (and centred) in its canvas."""
    box = page.locator("#image").bounding_box()
    zoom = min(box["width"], box["height"]) / SIZE
    page.mouse.click(
        box["x"] + box["width"] / 2 + (x - SIZE / 2) * zoom, box["y"] + box["height"] / 2 + (y - SIZE / 2) * zoom
    )


def measured(page: Any) -> list[str]:
    texts: list[str] = page.locator("#measurements li").all_inner_texts()
    return texts


def value_of(label: str) -> float:
    match = re.match(r"([0-9]+[.,][0-9])", label)
    assert match, label
    return float(match.group(1).replace(",", "."))


def test_distances_and_angles_in_mm_from_the_pixel_spacing(server: str, browser: Any) -> None:
    page = open_page(browser, f"{server}/viewer/?base=/dicom-web&study={STUDY}")
    assert "Visionneuse non diagnostique" in page.inner_text(".notice")
    assert page.inner_text("#study-date") == "08/01/2021"
    page.keyboard.press("d")
    # 80 columns across at 0.25 mm, then 80 rows down at 0.5 mm: the spacing's order (rows, columns) matters.
    click_image(page, 24, 30)
    click_image(page, 104, 30)
    wait_until(page, "document.querySelectorAll('#measurements li').length === 1")
    click_image(page, 24, 30)
    click_image(page, 24, 110)
    wait_until(page, "document.querySelectorAll('#measurements li').length === 2")
    across, down = measured(page)
    assert across.endswith(" mm") and "approximative" not in across, across
    assert abs(value_of(across) - 20.0) < 0.6 and abs(value_of(down) - 40.0) < 0.6, (across, down)
    assert "," in across  # French decimals
    # An angle: vertex in the middle. Across then down is a right angle whatever the spacing.
    page.click("button[data-tool=angle]")
    for x, y in ((104, 30), (24, 30), (24, 110)):
        click_image(page, x, y)
    wait_until(page, "document.querySelectorAll('#measurements li').length === 3")
    angle = measured(page)[2]
    assert angle.endswith("°") and abs(value_of(angle) - 90.0) < 1.5, angle
    # The measurements belong to their image: the next one has none, coming back shows them again.
    page.focus("#image")
    page.keyboard.press("ArrowDown")
    wait_until(page, "document.querySelectorAll('#measurements li').length === 0")
    page.keyboard.press("ArrowUp")
    wait_until(page, "document.querySelectorAll('#measurements li').length === 3")
    page.keyboard.press("r")
    wait_until(page, "document.querySelectorAll('#measurements li').length === 0")

    # A radiograph's spacing is at the detector: the length says it is approximate.
    page.click("#series-list button:has-text('Detector')")
    wait_until(page, "document.getElementById('slider').max === '2'")
    page.wait_for_selector("body[data-state=ready]")
    page.keyboard.press("d")
    click_image(page, 14, 64)
    click_image(page, 114, 64)
    wait_until(page, "document.querySelectorAll('#measurements li').length === 1")
    (approximate,) = measured(page)
    assert "(approximative)" in approximate and abs(value_of(approximate) - 20.0) < 0.6, approximate
    page.context.close()


def test_english_when_the_browser_prefers_it(server: str, browser: Any) -> None:
    page = open_page(browser, f"{server}/viewer/?base=/dicom-web&study={STUDY}", locale="en-GB")
    assert "Non-diagnostic viewer" in page.inner_text(".notice")
    assert page.inner_text("button[data-tool=pan]") == "Pan" and page.get_attribute("#help-toggle", "title").startswith(
        "Keyboard"
    )
    assert page.inner_text("#study-date") == "2021-01-08"
    assert page.inner_text("#wl").startswith("W ")
    page.keyboard.press("d")
    click_image(page, 24, 30)
    click_image(page, 104, 30)
    wait_until(page, "document.querySelectorAll('#measurements li').length === 1")
    assert re.fullmatch(r"20\.\d mm", measured(page)[0]), measured(page)
    page.context.close()


def test_cine_plays_at_the_chosen_rate_and_pauses(server: str, browser: Any) -> None:
    page = open_page(browser, f"{server}/viewer/?base=/dicom-web&study={STUDY}")
    seen: set[str] = set()
    page.fill("#fps", "20")
    page.click("#cine")
    assert page.get_attribute("#cine", "aria-pressed") == "true" and page.inner_text("#cine") == "Pause"
    for _ in range(100):
        seen.add(page.get_attribute("#image", "data-index") or "")
        if len(seen) >= SLICES:
            break
        page.wait_for_timeout(25)
    assert len(seen) >= SLICES, f"cine showed only {sorted(seen)}"  # it loops through every image
    page.focus("#image")
    page.keyboard.press(" ")
    assert page.get_attribute("#cine", "aria-pressed") == "false" and page.inner_text("#cine") == "Lecture"
    page.wait_for_timeout(150)  # a step already under way may land
    stopped = page.get_attribute("#image", "data-index")
    page.wait_for_timeout(300)
    assert page.get_attribute("#image", "data-index") == stopped
    page.context.close()


def test_help_panel_lists_the_shortcuts(server: str, browser: Any) -> None:
    page = open_page(browser, f"{server}/viewer/?base=/dicom-web&study={STUDY}")
    assert not page.is_visible("#help")
    page.focus("#image")
    page.keyboard.press("?")
    page.wait_for_selector("#help", state="visible")
    shortcuts = dict(
        zip(page.locator("#help dt").all_inner_texts(), page.locator("#help dd").all_inner_texts(), strict=True)
    )
    assert shortcuts["D"] == "Mesure de distance" and shortcuts["A"] == "Mesure d'angle"
    assert shortcuts["Espace"] == "Lecture / pause du ciné" and shortcuts["T"].startswith("Afficher")
    assert all(shortcuts.values())
    assert "Deux doigts" in page.inner_text("#help .touch")
    page.keyboard.press("Escape")
    page.wait_for_selector("#help", state="hidden")
    page.click("#help-toggle")
    page.wait_for_selector("#help", state="visible")
    page.click("#help button")
    page.wait_for_selector("#help", state="hidden")
    page.context.close()


def test_tag_panel_shows_the_image_tags_with_the_patient_masked(server: str, browser: Any) -> None:
    page = open_page(browser, f"{server}/viewer/?base=/dicom-web&study={STUDY}")
    page.focus("#image")
    page.keyboard.press("t")
    page.wait_for_selector("#tags", state="visible")
    index = int(page.get_attribute("#image", "data-index") or "0")

    def row(tag: str) -> str:
        text: str = page.locator(f"#tags tr[data-tag='{tag}'] td").nth(2).inner_text()
        return text

    assert row("00280030") == "0.5 \\ 0.25"
    assert row("00200013") == str(index + 1)
    assert row("00100010") == "DUPONT JEANNE"  # the name, as the banner shows it
    assert row("00100020") == page.inner_text("#ins") and INS not in row("00100020")
    panel = page.inner_text("#tags")
    assert "19700214" not in panel and "LOCAL-4242" not in panel and INS not in panel
    assert row("00100030") == "(masqué)"
    # The panel follows the image on screen.
    page.keyboard.press("ArrowDown")
    wait_until(
        page, f"document.querySelector(\"#tags tr[data-tag='00200013'] td:nth-child(3)\").textContent === '{index + 2}'"
    )
    page.keyboard.press("t")
    page.wait_for_selector("#tags", state="hidden")
    page.context.close()


def test_report_button_when_the_exam_has_a_report(server: str, browser: Any) -> None:
    page = open_page(browser, f"{server}/viewer/?kos={KOS_WITH_REPORT}")
    assert page.is_visible("#report") and page.inner_text("#report") == "Compte rendu"
    assert page.get_attribute("#report", "href") == f"/conso/reports/{KOS_WITH_REPORT}"
    page.context.close()
    page = open_page(browser, f"{server}/viewer/?kos={KOS_WITHOUT}")
    assert not page.is_visible("#report")
    page.context.close()
    page = open_page(browser, f"{server}/viewer/?base=/dicom-web&study={STUDY}")  # the source box: no KOS, no button
    assert not page.is_visible("#report")
    page.context.close()


@pytest.mark.parametrize("viewport", [{"width": 1024, "height": 768}, {"width": 768, "height": 1024}])
def test_tablet_layout_and_touch(server: str, browser: Any, viewport: dict[str, int]) -> None:
    page = open_page(
        browser, f"{server}/viewer/?base=/dicom-web&study={STUDY}", viewport=viewport, has_touch=True, is_mobile=True
    )
    # Everything within the screen: no sideways scrolling, every tool reachable, the notice on screen, a big image.
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    for button in page.locator(".toolbar button:visible").all():
        b = button.bounding_box()
        assert b["x"] >= 0 and b["x"] + b["width"] <= viewport["width"] and b["height"] >= 30, button.inner_text()
    notice = page.locator(".notice").bounding_box()
    assert notice["y"] >= 0 and notice["y"] + notice["height"] <= viewport["height"]
    image = page.locator("#image").bounding_box()
    assert image["height"] > viewport["height"] * 0.45 and image["width"] > viewport["width"] * 0.7

    cdp = page.context.new_cdp_session(page)
    cx, cy = image["x"] + image["width"] / 2, image["y"] + image["height"] / 2

    def touch(kind: str, points: list[tuple[float, float]]) -> None:
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": kind, "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)]},
        )

    # One finger drawn upwards scrolls forward through the stack.
    start = int(page.get_attribute("#image", "data-index") or "0")
    touch("touchStart", [(cx, cy)])
    for step in range(1, 6):
        touch("touchMove", [(cx, cy - 12 * step)])
    touch("touchEnd", [])
    wait_until(page, f"document.getElementById('image').dataset.index !== '{start}'")
    # Two fingers spreading apart zoom in: the image's pixels are bigger on screen.
    before = page.locator("#image").screenshot()
    touch("touchStart", [(cx - 40, cy), (cx + 40, cy)])
    for step in range(1, 6):
        touch("touchMove", [(cx - 40 - 20 * step, cy), (cx + 40 + 20 * step, cy)])
    touch("touchEnd", [])
    page.wait_for_timeout(100)
    zoom = page.evaluate("() => document.getElementById('image').dataset.zoom")
    assert zoom is not None and float(zoom) > 1.8 * min(image["width"], image["height"]) / SIZE, zoom
    assert page.locator("#image").screenshot() != before
    page.context.close()


def test_the_page_reads_french_without_its_catalogue(server: str, browser: Any) -> None:
    """Before the catalogue arrives (or if it fails) the page's own text is French: the notice is always there."""
    ctx = browser.new_context(locale="fr-FR")
    page = ctx.new_page()
    page.route("**/viewer/messages/**", lambda route: route.abort())
    page.goto(f"{server}/viewer/?base=/dicom-web&study={STUDY}")
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    assert "Visionneuse non diagnostique" in page.inner_text(".notice")
    assert page.inner_text("button[data-tool=window]") == "Fenêtre"
    ctx.close()


def test_the_words_and_tools_load_after_the_first_image(server: str, browser: Any) -> None:
    """The first image's budget (issue 5): the catalogue and the tools' modules are asked only once it is painted."""
    page = open_page(browser, f"{server}/viewer/?base=/dicom-web&study={STUDY}")
    later = page.evaluate(
        "() => performance.getEntriesByType('resource')"
        ".filter(e => /messages\\/fr\\.json|i18n\\.js|measure\\.js|panels\\.js/.test(e.name))"
        ".map(e => [e.name.split('/').pop().split('?')[0], e.startTime - performance.getEntriesByName('first-image')[0].startTime])"
    )
    assert sorted(name for name, _ in later) == ["fr.json", "i18n.js", "measure.js", "panels.js"], later
    assert all(after >= 0 for _, after in later), later
    page.context.close()


def test_two_exams_side_by_side_scroll_in_step(server: str, browser: Any) -> None:
    """From the consumer: the patient's previous exam of the same region is offered, opens beside, and follows."""
    page = open_page(browser, f"{server}/viewer/?kos={KOS_WITH_REPORT}")
    page.wait_for_selector("#compare-tools", state="visible")
    # The earlier chest CT, not the more recent head CT.
    assert page.eval_on_selector("#compare-with", "s => s.value") == KOS_PREVIOUS
    assert page.inner_text("#compare-with option:checked").startswith("01/06/2020 · CT · TDM THORAX ancien")
    page.click("#compare")
    page.wait_for_selector("#peer")
    peer = page.frame_locator("#peer")
    peer.locator("body[data-state=ready]").wait_for(timeout=30_000)
    # The compared exam keeps its own non-diagnostic notice and banner (its date).
    assert "Visionneuse non diagnostique" in peer.locator(".notice").inner_text()
    assert peer.locator("#study-date").inner_text() == "01/06/2020"
    left, right = page.locator("#image").bounding_box(), peer.locator("#image").bounding_box()
    assert right["x"] >= left["x"] + left["width"] - 1, (left, right)  # side by side at 1280 wide

    # Scrolling one scrolls the other to the same place in its stack: last to last, first to first.
    page.focus("#image")
    page.keyboard.press("End")
    wait_until(page, f"document.getElementById('image').dataset.index === '{SLICES - 1}'")
    frame = page.frame(url=lambda url: "embedded=1" in url)
    assert frame is not None
    wait_until(frame, "document.getElementById('image').dataset.index === '5'")
    peer.locator("#image").focus()
    frame.press("#image", "Home")
    wait_until(page, "document.getElementById('image').dataset.index === '0'")
    # Unsynchronised: the other side stays where it is.
    page.uncheck("#sync")
    page.focus("#image")
    page.keyboard.press("End")
    wait_until(page, f"document.getElementById('image').dataset.index === '{SLICES - 1}'")
    page.wait_for_timeout(300)
    assert frame.evaluate("() => document.getElementById('image').dataset.index") == "0"
    page.click("#compare")
    page.wait_for_selector("#peer", state="detached")
    page.context.close()
    # On the source box (no KOS) there is nothing granted to compare with: no button.
    page = open_page(browser, f"{server}/viewer/?base=/dicom-web&study={STUDY}")
    page.wait_for_timeout(300)
    assert not page.is_visible("#compare-tools")
    page.context.close()


def test_comparison_on_a_portrait_tablet_puts_the_exams_one_above_the_other(server: str, browser: Any) -> None:
    page = open_page(
        browser, f"{server}/viewer/?kos={KOS_WITH_REPORT}", viewport={"width": 768, "height": 1024}, has_touch=True
    )
    page.wait_for_selector("#compare-tools", state="visible")
    page.click("#compare")
    peer = page.frame_locator("#peer")
    peer.locator("body[data-state=ready]").wait_for(timeout=30_000)
    mine, theirs = page.locator("#image").bounding_box(), page.locator("#peer").bounding_box()
    assert theirs["y"] >= mine["y"] + mine["height"] - 1 and theirs["y"] + theirs["height"] <= 1024 + 1, (mine, theirs)
    assert mine["height"] > 200 and peer.locator("#image").bounding_box()["height"] > 150
    assert page.evaluate("document.documentElement.scrollWidth") <= 768
    assert page.is_visible(".notice") and peer.locator(".notice").is_visible()
    page.context.close()


def _painted_grey(page: Any, x: int, y: int) -> list[int]:
    """The RGB painted for image pixel (x, y): the viewer paints the image at its own size, the browser scales it."""
    rgba: list[int] = page.evaluate(
        """([x, y]) => [...document.getElementById('pixels').getContext('2d').getImageData(x, y, 1, 1).data]""",
        [x, y],
    )
    return rgba[:3]


def _shown_grey(page: Any, x: float, y: float) -> list[int]:
    """The RGB on screen (a screenshot) of the screen pixel holding point (x, y) of the fitted image, in its pixels."""
    box = page.locator("#image").bounding_box()
    zoom = float(page.get_attribute("#image", "data-zoom") or 0)
    cx = box["x"] + box["width"] / 2 + (x - SIZE / 2) * zoom
    cy = box["y"] + box["height"] / 2 + (y - SIZE / 2) * zoom
    shot = Image.open(io.BytesIO(page.screenshot(clip={"x": int(cx), "y": int(cy), "width": 1, "height": 1})))
    r, g, b = shot.convert("RGB").getpixel((0, 0))  # type: ignore[misc]  # an RGB image's pixel is a 3-tuple
    return [r, g, b]


def test_the_painted_greys_are_the_stored_values_through_the_window(server: str, browser: Any) -> None:
    """What the doctor sees is each stored value through the linear window: the image's own, then a preset."""
    page = open_page(browser, f"{server}/viewer/?base=/dicom-web&study={STUDY}")
    try:
        assert float(page.get_attribute("#image", "data-zoom") or 0) >= 3  # enlarged: no smoothing between pixels
        shown = int(page.get_attribute("#image", "data-index") or 0)
        number = int((page.get_attribute("#image", "data-instance") or "").rsplit(".", 1)[1])
        square = (8 * number + 4, 30)  # inside the bright square (4000) of that slice

        def expected(value: float, center: float, width: float) -> int:
            return int(np.clip(np.round((value - (center - width / 2)) * 255 / width), 0, 255))

        for x, y in [(0, 0), (10, 3), (40, 90), (127, 127), square]:
            stored = 4000 if (x, y) == square else (x + y) * 8
            grey = expected(stored, 2000, 4000)
            assert _painted_grey(page, y, x) == [grey] * 3, (shown, x, y, stored)
        # And on screen, where the browser enlarges the image: each pixel's own grey, none blended with a neighbour's,
        # even a hair inside the square's edge (its first column, 20, beside a dark one: smoothing would mix them).
        zoom = float(page.get_attribute("#image", "data-zoom") or 0)
        for row, column in [(10, 3), (40, 90), square]:
            stored = 4000 if (row, column) == square else (row + column) * 8
            grey = expected(stored, 2000, 4000)
            assert _shown_grey(page, column + 0.5, row + 0.5) == [grey] * 3, (shown, row, column, stored)
        assert _shown_grey(page, 20 + 0.6 / zoom, square[0] + 0.5) == [255] * 3
        page.select_option("#preset", "300,1500")  # bone: 4000 is white, 0 black, (x + y) * 8 in between
        wait_until(page, "document.getElementById('preset').value === '300,1500'")
        page.wait_for_timeout(200)
        for x, y in [(0, 0), (30, 30), (60, 40), square]:
            stored = 4000 if (x, y) == square else (x + y) * 8
            grey = expected(stored, 300, 1500)
            assert abs(_painted_grey(page, y, x)[0] - grey) <= 1, (x, y, stored, grey)
    finally:
        page.context.close()
