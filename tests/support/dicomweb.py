"""DICOMweb test helpers: sample studies on disk (plain, RLE, multi-frame) and a loopback server for the routes."""

from __future__ import annotations

import copy
import hashlib
import io
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from aiohttp import web
from pydicom.dataset import Dataset
from pydicom.uid import UID, RLELossless

from drimbox.demo.samples.studies import StudySpec, exam_c_spec, write_study
from drimbox.dicomweb.backend import DicomwebBackend
from drimbox.dicomweb.routes import dicomweb_routes

MULTIFRAME_STUDY = "1.2.826.0.1.3680043.10.1234.7"
MULTIFRAME_SERIES = MULTIFRAME_STUDY + ".1"
MULTIFRAME_SOP = MULTIFRAME_STUDY + ".1.1"
RLE_SOP = MULTIFRAME_STUDY + ".1.2"
MULTIFRAME_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")  # Multi-frame Grayscale Word Secondary Capture


@dataclass(frozen=True)
class SampleData:
    """What the tests serve: exam C (2 series × 3 CT images) and a study with a 3-frame instance and its RLE twin."""

    root: Path
    spec: StudySpec
    ct_paths: list[Path]
    multiframe_path: Path
    rle_path: Path


def pixel_hash(ds: Dataset) -> str:
    """Hash of the decoded pixels: equal whatever the transfer syntax they travelled in."""
    return hashlib.sha256(ds.pixel_array.tobytes()).hexdigest()


def write_samples(root: Path) -> SampleData:
    spec = exam_c_spec(instances_per_series=3, rows=64, columns=64)
    ct_paths = write_study(root / "examc", spec)
    # A 3-frame instance built from the CT slices, in another study, and an RLE Lossless copy of it.
    slices = [pydicom.dcmread(p) for p in ct_paths[:3]]
    ds = copy.deepcopy(slices[0])
    ds.SOPClassUID = MULTIFRAME_SC
    ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_SC
    ds.StudyInstanceUID, ds.SeriesInstanceUID = MULTIFRAME_STUDY, MULTIFRAME_SERIES
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(MULTIFRAME_SOP)
    ds.SeriesNumber, ds.InstanceNumber, ds.Modality = 1, 1, "OT"
    ds.NumberOfFrames = 3
    ds.PixelData = b"".join(s.PixelData for s in slices)
    (root / "multi").mkdir(parents=True)
    multiframe_path = root / "multi" / "frames3.dcm"
    ds.save_as(multiframe_path, enforce_file_format=True)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(RLE_SOP)
    ds.InstanceNumber = 2
    ds.compress(RLELossless, generate_instance_uid=False)
    rle_path = root / "multi" / "frames3_rle.dcm"
    ds.save_as(rle_path, enforce_file_format=True)
    return SampleData(root, spec, ct_paths, multiframe_path, rle_path)


def read_part10(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@asynccontextmanager
async def serve(
    backend: DicomwebBackend,
    *,
    cors_origins: Sequence[str] = (),
    max_results: int = 1000,
    public_url: str | None = None,
    compress: bool = True,
    handler_cancellation: bool = False,
) -> AsyncIterator[str]:
    """The DICOMweb routes of `backend` on a loopback port; yields the server's root URL."""
    app = web.Application()
    app.add_routes(
        dicomweb_routes(
            backend, cors_origins=cors_origins, max_results=max_results, public_url=public_url, compress=compress
        )
    )
    runner = web.AppRunner(app, access_log=None, handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
