"""The whole stack in Chromium: more instances than one QIDO page, ordered by position, as stored, cached.

A series of 1100 small JPEG-LS slices (one 32² bitstream from dcmtk's dcmcjpls, cloned: the shape of the ANS
1300-slice study, not its size) behind a backend that, like a cold Proxy box, answers `only-if-cached` metadata
504 and holds the full series metadata back until the test lets it go: the slider must say 1100 from the
instance list alone, past QIDO's limit of 1000. Then every request is checked: nothing fetched twice, frames as
stored, and a reopen costs only revalidations (304), reading no instance on the box.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from aiohttp import web
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless

from drimbox.dicomweb.backend import QidoQuery, StoredInstance
from drimbox.dicomweb.routes import dicomweb_routes
from drimbox.viewer.routes import viewer_routes
from tests.support.fixtures_browser import CHROMIUM
from tests.support.folder_backend import FolderBackend
from tests.support.threaded_app import app_in_thread
from tests.test_viewer_routes import FakeGate

playwright_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)
if shutil.which("dcmcjpls") is None:
    pytest.skip("dcmcjpls is missing (Debian package dcmtk)", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.dcmtk]

STUDY = "1.2.826.0.1.3680043.10.1316.1"
SERIES = STUDY + ".1"
SLICES = 1100  # past QIDO's 1000 per answer
SIZE = 32
# The modality numbered two slices the wrong way round: position, not InstanceNumber, places them.
SWAPPED = {10: 20, 20: 10}


def _slice(position: int, pixel_data: bytes) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(f"{SERIES}.{position}")
    meta.TransferSyntaxUID = JPEGLSLossless
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = "TEST^STACK", "STACK-1", "20240101", "CT"
    ds.SeriesNumber, ds.InstanceNumber = 1, SWAPPED.get(position, position)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, -float(position)]  # numbered head to foot
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    return ds


def _jls_frame(root: Path) -> bytes:
    """One JPEG-LS frame encapsulated, by dcmtk from a native slice."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, UID(f"{SERIES}.0")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = _slice(0, b"")
    ds.file_meta = meta
    ds.PixelData = (np.add.outer(np.arange(SIZE), np.arange(SIZE)) * 60).astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.save_as(root / "native.tmp", enforce_file_format=True)
    subprocess.run(["dcmcjpls", str(root / "native.tmp"), str(root / "jls.tmp")], check=True, timeout=30)
    data = bytes(pydicom.dcmread(root / "jls.tmp").PixelData)
    (root / "native.tmp").unlink()
    (root / "jls.tmp").unlink()
    return data


class ColdProxy:
    """The folder backend as a Proxy box: cold (holding nothing, the series metadata waiting) until `release`."""

    def __init__(self, inner: FolderBackend) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.read: list[str] = []  # the SOP Instance UID of every instance read, in order
        # Instances whose reading never ends (a PACS that has not sent them yet), and those whose reading the box
        # gave up because the request for them went away.
        self.held: set[str] = set()
        self.cancelled: list[str] = []

    def admits(self, study_uid: str, series_uid: str | None, sop_uid: str | None) -> None:
        """Everything is visible here (a ScopedBackend would check the KOS)."""

    async def holds(self, study_uid: str, series_uid: str | None = None) -> bool:
        return self.release.is_set()  # once retrieved, the series is the box's

    def search(self, query: QidoQuery) -> AsyncIterator[Dataset]:
        return self.inner.search(query)

    async def iter_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        async for instance in self.inner.iter_instances(study_uid, series_uid, sop_uid):
            self.read.append(instance.sop_instance_uid)
            if instance.sop_instance_uid in self.held:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    self.cancelled.append(instance.sop_instance_uid)
                    raise
            yield instance

    async def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, base: str
    ) -> AsyncIterator[bytes]:
        if sop_uid is None:
            await self.release.wait()
        async for item in self.inner.metadata(study_uid, series_uid, sop_uid, base=base):
            yield item


@dataclass
class Served:
    url: str
    backend: ColdProxy
    loop: asyncio.AbstractEventLoop
    log: list[tuple[str, int]] = field(default_factory=list)  # (path?query, status) of every DICOMweb answer
    files: list[str] = field(default_factory=list)  # path?query of every request for the viewer's own files


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("viewer-stack")
    frame = _jls_frame(root)
    for position in range(1, SLICES + 1):
        _slice(position, frame).save_as(root / f"s{position}.dcm", enforce_file_format=True)
    state: dict[str, Any] = {}
    log: list[tuple[str, int]] = []
    files: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
        response = await handler(request)
        if request.path.startswith("/dicom-web/"):
            log.append((request.path_qs, response.status))
        elif request.path.startswith("/viewer/"):
            files.append(request.path_qs)
        return response

    async def build() -> web.Application:
        backend = state["backend"] = ColdProxy(await FolderBackend.open(root))
        app = web.Application(middlewares=[record])
        app.add_routes(viewer_routes(FakeGate(True), None))  # type: ignore[arg-type]
        app.add_routes(dicomweb_routes(backend, compress=False))
        return app

    with app_in_thread(build, timeout=60) as (url, loop):
        yield Served(url, state["backend"], loop, log, files)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 800, "height": 600}, locale="fr-FR")
    pg = context.new_page()
    pg.on("pageerror", lambda e: print(f"page error: {e}"))
    yield pg
    context.close()


def wait_until(page: Any, expression: str, timeout: float = 20.0) -> None:
    """Poll a JavaScript expression from here: the page's CSP forbids the eval that wait_for_function uses."""

    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(30)


def canvas(page: Any, name: str) -> str:
    return str(page.locator("#image").get_attribute(f"data-{name}") or "")


def go_to(page: Any, index: int) -> None:
    page.locator("#image").focus()
    page.keyboard.press("Home")
    for _ in range(index):
        page.keyboard.press("ArrowDown")
    wait_until(page, f"document.querySelector('#image').dataset.index === '{index}'")


def test_the_whole_stack_by_position_as_stored_then_revalidated(page: Any, served: Served) -> None:
    page.goto(f"{served.url}/viewer/?base=/dicom-web&study={STUDY}")
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=30_000)
    assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#message")
    # Before the series metadata: the instance list alone, every page of it, sized the slider.
    assert page.get_attribute("#slider", "max") == str(SLICES - 1)
    assert page.inner_text("#position").endswith(f"/ {SLICES}")
    pages = [p for p, _ in served.log if p.startswith(f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances?")]
    assert sorted(p.rsplit("offset=", 1)[1] for p in pages) == ["0", "1000"], pages
    # Side by side: the series list gave the count, so the second page was asked before the first had come.
    timing = page.evaluate(
        "() => performance.getEntriesByType('resource').filter(e => e.name.includes('/instances?'))"
        ".map(e => [e.name.split('offset=')[1], e.startTime, e.responseEnd])"
    )
    started = {offset: start for offset, start, _ in timing}
    assert started["1000"] < next(end for offset, _, end in timing if offset == "0"), timing
    assert canvas(page, "transfer-syntax") == JPEGLSLossless
    served.loop.call_soon_threadsafe(served.backend.release.set)
    wait_until(page, "document.querySelector('#progress')?.textContent.includes('1100') || true")
    # Ordered by position along the normal: the slice at the 10th position is there, whatever its number says.
    go_to(page, 9)
    assert canvas(page, "instance") == f"{SERIES}.10"
    assert canvas(page, "transfer-syntax") == JPEGLSLossless
    page.keyboard.press("End")
    wait_until(page, f"document.querySelector('#image').dataset.index === '{SLICES - 1}'")
    assert canvas(page, "instance") == f"{SERIES}.{SLICES}"
    frames = [p for p, s in served.log if "/frames/" in p]
    assert frames and len(frames) == len(set(frames)), "a frame was fetched twice"
    assert not [p for p in frames if "/rendered" in p]  # no preview on loopback: each slice asked once, exact
    statuses = {s for p, s in served.log if "/frames/" in p}
    assert statuses <= {200, 499}, statuses  # 499: a request cancelled because the user scrolled past it
    # Reopened: the browser revalidates what it holds, the box answers 304 without reading any instance.
    before, reads, files = len(served.log), len(served.backend.read), len(served.files)
    page.reload()
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    wait_until(page, "document.querySelector('#image').dataset.instance")
    page.locator("#image").focus()
    page.keyboard.press("End")  # a slice the first pass showed
    wait_until(page, f"document.querySelector('#image').dataset.index === '{SLICES - 1}'")
    again = served.log[before:]
    # The page only: its scripts, style and decoding worker are named by their content, kept, never asked again.
    assert [p for p in served.files[files:] if not p.startswith("/viewer/messages/")] == [
        f"/viewer/?base=/dicom-web&study={STUDY}"
    ], served.files[files:]
    shown = {f"{SERIES}.{SLICES // 2}", f"{SERIES}.{SLICES}"}  # the first image, and the last one
    revalidated = {p.split("/instances/")[1].split("/")[0]: s for p, s in again if "/frames/" in p}
    assert {uid: revalidated.get(uid) for uid in shown} == dict.fromkeys(shown, 304), again
    # A 304 is answered from the URL: no instance answered 304 was read (only the images the browser never had,
    # neighbours cancelled in the first pass, are). Requests still in flight then are counted on neither side.
    not_modified = {p.split("/instances/")[1].split("/")[0] for p, s in again if s == 304 and "/instances/" in p}
    assert not_modified >= shown and not not_modified & set(served.backend.read[reads:]), again
    # The box now holds the study: its metadata came whole (200) on this reopen, and revalidates on the next.
    assert [s for p, s in again if p.endswith("/metadata")] == [200], again
    before = len(served.log)
    page.reload()
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    assert [s for p, s in served.log[before:] if p.endswith("/metadata")] == [304], served.log[before:]


def test_slices_scrolled_past_are_cancelled_in_flight_and_the_box_stops_reading_them(page: Any, served: Served) -> None:
    """A jump to the end leaves the prefetch around the first image behind: its requests still waiting on the box
    are aborted by the viewer, and the box's handlers for them are cancelled (it stops reading those instances)."""
    served.loop.call_soon_threadsafe(served.backend.release.set)  # the box holds the series: metadata at once
    first = SLICES // 2
    held = {f"{SERIES}.{n}" for n in range(first - 40, first + 41) if n != first}
    served.loop.call_soon_threadsafe(served.backend.held.update, held)
    before = len(served.backend.read)
    try:
        page.goto(f"{served.url}/viewer/?base=/dicom-web&study={STUDY}")
        page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        wait_until(page, f"document.querySelector('#image').dataset.instance === '{SERIES}.{first}'")
        # The prefetch ahead of the first image is on its way, and stuck at the box.
        deadline = time.monotonic() + 20
        while len(held.intersection(served.backend.read[before:])) < 4:
            assert time.monotonic() < deadline, "the viewer fetched nothing ahead"
            page.wait_for_timeout(50)
        page.locator("#image").focus()
        page.keyboard.press("End")
        wait_until(page, f"document.querySelector('#image').dataset.index === '{SLICES - 1}'")
        assert canvas(page, "instance") == f"{SERIES}.{SLICES}"
        started = held.intersection(served.backend.read[before:])
        deadline = time.monotonic() + 10
        while not started <= set(served.backend.cancelled):
            assert time.monotonic() < deadline, sorted(started - set(served.backend.cancelled))
            page.wait_for_timeout(50)
    finally:
        served.loop.call_soon_threadsafe(served.backend.held.clear)
