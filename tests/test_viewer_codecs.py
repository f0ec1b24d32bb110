"""The viewer's compressed frames in Chromium: JPEG-LS asked and received as stored, decoded in a Web Worker.

A signed 12-bit CT compressed by dcmtk's dcmcjpls (an encoder independent of the browser's CharLS build) and the
same slices uncompressed, served by the box's DICOMweb and viewer routes over a folder of Part-10 files, with
`compress_on_the_fly = "auto"` as a box has by default: it encodes an uncompressed study for a viewer on a slow link
only. The page exposes the shown frame's transfer syntax and a fingerprint of its stored values
(`#image[data-pixel-hash]`), compared here with pydicom's decode of the file.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from aiohttp import web
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless

from drimbox.dicomweb import pixels
from drimbox.dicomweb.routes import dicomweb_routes
from drimbox.dicomweb.transcode import can_encode
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

JLS_STUDY = "1.2.826.0.1.3680043.10.1315.1"
RAW_STUDY = "1.2.826.0.1.3680043.10.1315.2"
J2K_STUDY = "1.2.826.0.1.3680043.10.1315.3"
# Uncompressed CT-sized frames (512², 512 KiB), as the viewer times its link on: with 128 KiB frames Chromium's own
# per-response time on loopback (5-8 ms on a 2-core machine) made a fast link read as ~20 MB/s, the threshold.
WIDE_STUDY = "1.2.826.0.1.3680043.10.1315.4"
SIZE = 96
SLICES = 5
WIDE_SIZE, WIDE_SLICES = 512, 20


def _slice(study: str, number: int, size: int = SIZE) -> Dataset:
    series = study + ".1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(f"{series}.{number}")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = "TEST^CODEC", "CODEC-1", "20240101", "CT"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    # Signed 12-bit: negative values make a decoder that forgets the sign (or the bit depth) visible.
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    rng = np.random.default_rng(number)
    values = np.add.outer(np.arange(size), np.arange(size)).astype(np.int16) * (20 * SIZE // size) - 1900
    values += rng.integers(-30, 30, size=values.shape, dtype=np.int16)
    values[4 * number : 4 * number + 12, 10:30] = 2000
    ds.PixelData = values.astype("<i2").tobytes()
    return ds


def fingerprint(values: np.ndarray[Any, Any]) -> int:
    """The viewer's hash of a frame's stored values (stack.js: h = h * 31 + v, as a signed 32-bit integer)."""
    h = 0
    for v in values.ravel().tolist():
        h = (h * 31 + v) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


@dataclass
class Served:
    url: str
    root: Path
    decodes: list[str] = field(default_factory=list)  # frames the box decoded or encoded itself


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("viewer-codecs")
    for n in range(1, SLICES + 1):
        _slice(RAW_STUDY, n).save_as(root / f"raw{n}.dcm", enforce_file_format=True)
        native = root / f"native{n}.tmp"
        _slice(JLS_STUDY, n).save_as(native, enforce_file_format=True)
        subprocess.run(["dcmcjpls", str(native), str(root / f"jls{n}.dcm")], check=True, timeout=30)
        native.unlink()
        j2k = _slice(J2K_STUDY, n)
        j2k.compress(JPEG2000Lossless)  # pylibjpeg-openjpeg, beside the browser's own OpenJPEG build
        j2k.save_as(root / f"j2k{n}.dcm", enforce_file_format=True)
    for n in range(1, WIDE_SLICES + 1):
        _slice(WIDE_STUDY, n, WIDE_SIZE).save_as(root / f"wide{n}.dcm", enforce_file_format=True)
    assert pydicom.dcmread(root / "jls1.dcm").file_meta.TransferSyntaxUID == JPEGLSLossless
    decodes: list[str] = []
    real_decoder, real_encoder = getattr(pixels, "get_decoder"), getattr(pixels, "get_encoder")  # noqa: B009

    def counted_decoder(uid: Any) -> Any:
        decodes.append(f"decode {uid}")
        return real_decoder(uid)

    def counted_encoder(uid: Any) -> Any:
        decodes.append(f"encode {uid}")
        return real_encoder(uid)

    async def build() -> web.Application:
        backend = await FolderBackend.open(root)
        app = web.Application()
        app.add_routes(viewer_routes(FakeGate(True), None))  # type: ignore[arg-type]
        app.add_routes(dicomweb_routes(backend, compress="auto"))  # a box's default: compress_on_the_fly = "auto"
        return app

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pixels, "get_decoder", counted_decoder)
        mp.setattr(pixels, "get_encoder", counted_encoder)
        with app_in_thread(build) as (url, _):
            yield Served(url, root, decodes)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 700}, locale="fr-FR")
    pg = context.new_page()
    pg.on("pageerror", lambda e: print(f"page error: {e}"))
    pg.on("console", lambda m: m.type in ("warning", "error") and print(f"console {m.type}: {m.text}"))
    yield pg
    context.close()


def wait_until(page: Any, expression: str, timeout: float = 20.0) -> None:
    """Poll a JavaScript expression from here: the page's CSP forbids the eval that wait_for_function uses."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(30)


def frame_types(page: Any) -> list[str]:
    """The Content-Type of every frames response the page receives from now on."""
    types: list[str] = []

    def seen(response: Any) -> None:
        if "/frames/" in response.url:
            types.append(response.headers.get("content-type", ""))

    page.on("response", seen)
    return types


def shown(page: Any) -> tuple[int, str, int]:
    canvas = page.locator("#image")
    index = int(canvas.get_attribute("data-index"))
    return index, canvas.get_attribute("data-transfer-syntax") or "", int(canvas.get_attribute("data-pixel-hash"))


def expected_hash(root: Path, prefix: str, index: int) -> int:
    ds = pydicom.dcmread(root / f"{prefix}{index + 1}.dcm")  # the stack is in Instance Number order
    return fingerprint(ds.pixel_array)


def open_viewer(page: Any, served: Served, study: str) -> None:
    page.goto(f"{served.url}/viewer/?base=/dicom-web&study={study}")
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=30_000)
    assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#message")


@pytest.mark.parametrize(
    ("study", "prefix", "syntax", "media"),
    [(JLS_STUDY, "jls", JPEGLSLossless, "image/jls"), (J2K_STUDY, "j2k", JPEG2000Lossless, "image/jp2")],
    ids=["jpeg-ls", "jpeg-2000"],
)
def test_a_compressed_study_travels_as_stored_and_is_decoded_in_the_browser(
    page: Any, served: Served, study: str, prefix: str, syntax: str, media: str
) -> None:
    types = frame_types(page)
    served.decodes.clear()
    open_viewer(page, served, study)
    index, shown_syntax, digest = shown(page)
    assert shown_syntax == syntax
    assert digest == expected_hash(served.root, prefix, index)
    # Another slice, by the keyboard: decoded as exactly.
    page.locator("#image").focus()
    page.keyboard.press("End")
    wait_until(page, f"document.querySelector('#image').dataset.index === '{SLICES - 1}'")
    index, shown_syntax, digest = shown(page)
    assert (index, shown_syntax) == (SLICES - 1, syntax)
    assert digest == expected_hash(served.root, prefix, index)
    assert types and all(f'type="{media}"' in t for t in types), types
    assert served.decodes == []  # the stored bitstream, sliced out of the file: no codec ran on the box


def test_an_uncompressed_study_still_arrives_native_and_the_box_encodes_nothing(page: Any, served: Served) -> None:
    types = frame_types(page)
    served.decodes.clear()
    open_viewer(page, served, RAW_STUDY)
    index, syntax, digest = shown(page)
    assert syntax == ExplicitVRLittleEndian
    assert digest == expected_hash(served.root, "raw", index)
    assert types and all('type="application/octet-stream"' in t for t in types), types
    assert served.decodes == []  # native frames are sliced, and a fast link asks nothing compressed: no codec at all


def test_the_vendored_codec_is_served_as_webassembly_with_an_immutable_cache(page: Any, served: Served) -> None:
    open_viewer(page, served, JLS_STUDY)
    wasm = page.request.get(f"{served.url}/viewer/vendor/codec-charls@1.2.7/charlswasm_decode.wasm")
    assert wasm.status == 200
    assert wasm.headers["content-type"] == "application/wasm"
    assert "immutable" in wasm.headers["cache-control"]
    assert wasm.body()[:4] == b"\0asm"
    for bad in ("codec-charls@1.2.7/LICENSE", "codec-charls/charlswasm_decode.js", "..%2Flock.json/x.js"):
        assert page.request.get(f"{served.url}/viewer/vendor/{bad}").status == 404, bad


def test_on_a_slow_link_a_marked_preview_comes_first_then_the_exact_frame(page: Any, served: Served) -> None:
    open_viewer(page, served, JLS_STUDY)  # once at full speed: the codec is then in the browser's cache (immutable)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    # 32 kB/s and 200 ms of latency: an exact 96² frame takes well over the viewer's 300 ms threshold.
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 200, "downloadThroughput": 32_000, "uploadThroughput": 32_000},
    )
    # The frames as on a first visit: the browser revalidates those it holds (tiny 304s) and the link would look
    # fast. A routed page has no HTTP cache (Playwright), so the frames are fetched in full again.
    page.route("**/frames/**", lambda route: route.continue_())
    page.reload()
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    first = int(page.locator("#image").get_attribute("data-index"))
    page.locator("#image").focus()
    page.keyboard.press("End")
    last = SLICES - 1
    # The preview, marked, while the exact frame is on its way (one evaluation: no race with its arrival).
    mark = "!document.getElementById('preview-mark').hidden"
    wait_until(page, f"document.querySelector('#image').dataset.preview === '{last}' && {mark}")
    wait_until(page, f"(document.querySelector('#image').dataset.paints || '').split(' ').includes('e{last}')", 30)
    paints = page.locator("#image").get_attribute("data-paints").split()
    assert paints.index(f"e{first}") < paints.index(f"p{last}") < paints.index(f"e{last}"), paints
    # Then the exact frame, unmarked, with pydicom's values.
    assert page.locator("#preview-mark").is_hidden()
    assert page.locator("#image").get_attribute("data-preview") is None
    index, syntax, digest = shown(page)
    assert (index, syntax) == (last, JPEGLSLossless)
    assert digest == expected_hash(served.root, "jls", index)


def test_a_browser_whose_codec_cannot_load_gets_the_frames_uncompressed(page: Any, served: Served) -> None:
    page.route("**/viewer/vendor/**", lambda route: route.abort())  # as a proxy that blocks .wasm would
    types = frame_types(page)
    open_viewer(page, served, JLS_STUDY)
    index, syntax, digest = shown(page)
    assert syntax == ExplicitVRLittleEndian  # decoded by the box, as before the codecs
    assert digest == expected_hash(served.root, "jls", index)
    assert any('type="application/octet-stream"' in t for t in types), types


def _open_wide_and_go_to_the_end(page: Any, served: Served) -> tuple[int, str, int]:
    open_viewer(page, served, WIDE_STUDY)
    page.locator("#image").focus()
    page.keyboard.press("End")
    wait_until(page, f"document.querySelector('#image').dataset.index === '{WIDE_SLICES - 1}'", 30)
    return shown(page)


def test_an_uncompressed_study_arrives_as_stored_on_a_fast_link(page: Any, served: Served) -> None:
    types = frame_types(page)
    served.decodes.clear()
    index, syntax, digest = _open_wide_and_go_to_the_end(page, served)
    assert page.get_attribute("body", "data-link") == "fast"  # it was timed: 128 KiB frames
    assert (index, syntax) == (WIDE_SLICES - 1, ExplicitVRLittleEndian)
    assert digest == expected_hash(served.root, "wide", index)
    assert types and all('type="application/octet-stream"' in t for t in types), types
    assert not [d for d in served.decodes if d.startswith("encode")]  # the box spent no CPU on it


@pytest.mark.skipif(not can_encode(JPEGLSLossless), reason="no JPEG-LS encoder (pyjpegls)")
def test_an_uncompressed_study_arrives_as_jpeg_ls_on_a_slow_link_with_the_exact_values(
    page: Any, served: Served
) -> None:
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    # 1 MB/s (8 Mbit/s) and 40 ms: slow. Throttled from the start, a fresh profile: nothing in the HTTP cache.
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 40, "downloadThroughput": 1_000_000, "uploadThroughput": 1_000_000},
    )
    types = frame_types(page)
    served.decodes.clear()
    open_viewer(page, served, WIDE_STUDY)
    wait_until(page, "document.body.dataset.link === 'slow'", 30)
    index, syntax, digest = _open_wide_and_go_to_the_end(page, served)
    assert (index, syntax) == (WIDE_SLICES - 1, JPEGLSLossless)
    assert digest == expected_hash(served.root, "wide", index)  # lossless: the stored values exactly
    jls = [t for t in types if 'type="image/jls"' in t]
    # Only those asked before four frames are timed come as stored (one timing is no judgement): the 4 the viewer
    # sends at once, and the one it asks as each of the first four arrives (its timing lands just after).
    assert jls and len(types) - len(jls) <= 4 + 4, types
    assert f"encode {JPEGLSLossless}" in served.decodes
