"""WADO-RS against the folder backend on loopback: dicomweb-client and raw requests, ANS Accept headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.encaps import get_frame
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from drimbox.dicomweb.transcode import can_transcode
from tests.support.dicomweb import (
    MULTIFRAME_SERIES,
    MULTIFRAME_SOP,
    MULTIFRAME_STUDY,
    RLE_SOP,
    SampleData,
    pixel_hash,
    read_part10,
    serve,
    write_samples,
)
from tests.support.folder_backend import FolderBackend

# The Accept header of the ANS validator's WADO-RS samples (wado-rs-request-series.txt and
# wado-rs-request-instance.txt carry the same one), copied verbatim: q-list, boundary=**, trailing comma.
ANS_ACCEPT = (
    'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.70;q=0.9;boundary=**,'
    'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.80;q=0.8;boundary=**,'
    'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.91;q=0.6;boundary=**,'
    'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.50;q=0.5;boundary=**,'
    'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.51;q=0.5;boundary=**,'
    'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.100;q=0.5;boundary=**,'
    'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.101;q=0.5;boundary=**,'
    'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.102;q=0.5;boundary=**,'
    'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.4.103;q=0.5;boundary=**,'
    'multipart/related; type="application/dicom";transfer-syntax=1.2.840.10008.1.2.1;q=0.4;boundary=**,'
)
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ANS_SYNTAXES = [part.split("transfer-syntax=")[1].split(";")[0] for part in ANS_ACCEPT.split(",") if part]


def ans_choice(stored: str) -> str:
    """What the box must send for the ANS header: the best-q syntax it can produce (codecs vary by machine)."""
    return next(ts for ts in ANS_SYNTAXES if can_transcode(stored, ts))


@pytest.fixture
def samples(tmp_path: Path) -> SampleData:
    return write_samples(tmp_path / "data")


@pytest.fixture
async def server(samples: SampleData) -> AsyncIterator[str]:
    backend = await FolderBackend.open(samples.root)
    async with serve(backend) as url:
        yield url


@pytest.fixture
def client(server: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{server}/dicom-web")


async def get_parts(url: str, accept: str) -> tuple[int, dict[str, str], list[tuple[dict[str, str], bytes]]]:
    """GET and split the multipart body with aiohttp's own reader (independent of ours)."""
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Accept": accept}) as resp:
        headers = dict(resp.headers)
        if not resp.headers.get("Content-Type", "").startswith("multipart/"):
            return resp.status, headers, [(headers, await resp.read())]
        parts: list[tuple[dict[str, str], bytes]] = []
        reader = aiohttp.MultipartReader.from_response(resp)
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            parts.append((dict(part.headers), bytes(await part.read())))
        return resp.status, headers, parts


def expected_uids(samples: SampleData, series: int | None = None) -> set[str]:
    spec = samples.spec
    chosen = range(spec.series_count) if series is None else [series]
    return {spec.sop_uid(s, i) for s in chosen for i in range(spec.series_size(s))}


def file_hashes(samples: SampleData) -> dict[str, str]:
    return {str((ds := pydicom.dcmread(p)).SOPInstanceUID): pixel_hash(ds) for p in samples.ct_paths}


async def test_dicomweb_client_retrieves_study_series_instance(client: DICOMwebClient, samples: SampleData) -> None:
    spec, hashes = samples.spec, file_hashes(samples)
    study = await asyncio.to_thread(client.retrieve_study, spec.study_uid)
    assert {str(ds.SOPInstanceUID) for ds in study} == expected_uids(samples)
    assert {str(ds.SOPInstanceUID): pixel_hash(ds) for ds in study} == hashes
    series = await asyncio.to_thread(client.retrieve_series, spec.study_uid, spec.series_uid(1))
    assert {str(ds.SOPInstanceUID) for ds in series} == expected_uids(samples, 1)
    one = await asyncio.to_thread(client.retrieve_instance, spec.study_uid, spec.series_uid(0), spec.sop_uid(0, 2))
    assert pixel_hash(one) == hashes[spec.sop_uid(0, 2)]


async def test_metadata_levels_and_bulkdata_uri(client: DICOMwebClient, samples: SampleData, server: str) -> None:
    spec = samples.spec
    study = await asyncio.to_thread(client.retrieve_study_metadata, spec.study_uid)
    assert {m["00080018"]["Value"][0] for m in study} == expected_uids(samples)
    series = await asyncio.to_thread(client.retrieve_series_metadata, spec.study_uid, spec.series_uid(0))
    assert len(series) == 3
    meta = await asyncio.to_thread(  # dicomweb-client unwraps the one-element array
        client.retrieve_instance_metadata, spec.study_uid, spec.series_uid(0), spec.sop_uid(0, 1)
    )
    assert meta["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "PAT-TROIS^DOMINIQUE"}]}
    assert meta["00280010"] == {"vr": "US", "Value": [64]}
    assert "Value" not in meta["7FE00010"] and "InlineBinary" not in meta["7FE00010"]
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith("/dicom-web/studies/")
    [pixels] = await asyncio.to_thread(client.retrieve_bulkdata, server + uri)
    assert pixels == pydicom.dcmread(samples.ct_paths[1]).PixelData


async def test_frames_native_multiframe_and_compressed(client: DICOMwebClient, samples: SampleData) -> None:
    spec = samples.spec
    [frame] = await asyncio.to_thread(
        client.retrieve_instance_frames, spec.study_uid, spec.series_uid(0), spec.sop_uid(0, 0), [1]
    )
    assert frame == pydicom.dcmread(samples.ct_paths[0]).PixelData
    slices = [pydicom.dcmread(p).PixelData for p in samples.ct_paths[:3]]
    frames = await asyncio.to_thread(
        client.retrieve_instance_frames,
        MULTIFRAME_STUDY,
        MULTIFRAME_SERIES,
        MULTIFRAME_SOP,
        [3, 1],
        media_types=("application/octet-stream",),
    )
    assert frames == [slices[2], slices[0]]
    # Stored RLE, asked native: decompressed by the box.
    native = await asyncio.to_thread(
        client.retrieve_instance_frames,
        MULTIFRAME_STUDY,
        MULTIFRAME_SERIES,
        RLE_SOP,
        [2],
        media_types=("application/octet-stream",),
    )
    assert native == [slices[1]]


async def test_frames_as_stored_and_errors(server: str, samples: SampleData) -> None:
    base = f"{server}/dicom-web/studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances/{RLE_SOP}/frames"
    rle = pydicom.dcmread(samples.rle_path)
    status, _, parts = await get_parts(
        f"{base}/2", 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    )
    assert status == 200
    assert parts[0][0]["Content-Type"] == f"application/octet-stream; transfer-syntax={RLELossless}"
    assert parts[0][1] == get_frame(rle.PixelData, 1, number_of_frames=3)
    status, _, parts = await get_parts(f"{base}/1,2", "*/*")
    assert (
        status == 200
        and [h["Content-Type"] for h, _ in parts] == [f"image/dicom-rle; transfer-syntax={RLELossless}"] * 2
    )
    for frames, expected in (("4", 404), ("0", 400), ("1,x", 400)):
        status, _, _ = await get_parts(f"{base}/{frames}", "*/*")
        assert status == expected, frames
    status, _, parts = await get_parts(f"{base}/1", 'multipart/related; type="image/jpeg"')
    assert status == 406 and b"octet-stream" in parts[0][1]


@pytest.mark.parametrize("level", ["series", "instance"])
async def test_ans_accept_header_gets_every_instance(server: str, samples: SampleData, level: str) -> None:
    spec = samples.spec
    url = f"{server}/dicom-web/studies/{spec.study_uid}/series/{spec.series_uid(0)}"
    if level == "instance":
        url += f"/instances/{spec.sop_uid(0, 1)}"
    status, headers, parts = await get_parts(url, ANS_ACCEPT)
    assert status == 200
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    received = {str((ds := read_part10(data)).SOPInstanceUID): pixel_hash(ds) for _, data in parts}
    hashes = file_hashes(samples)
    assert received == {
        uid: hashes[uid] for uid in ({spec.sop_uid(0, 1)} if level == "instance" else expected_uids(samples, 0))
    }
    # Stored Explicit VR LE: JPEG-LS lossless (q=0.8) when pyjpegls is installed, else the stored syntax (q=0.4).
    expected = ans_choice(ExplicitVRLittleEndian)
    assert {h["Content-Type"] for h, _ in parts} == {f"application/dicom; transfer-syntax={expected}"}


async def test_ans_accept_without_compression_on_the_fly(samples: SampleData) -> None:
    spec = samples.spec
    backend = await FolderBackend.open(samples.root)
    async with serve(backend, compress=False) as url:
        status, _, parts = await get_parts(
            f"{url}/dicom-web/studies/{spec.study_uid}/series/{spec.series_uid(1)}", ANS_ACCEPT
        )
    assert status == 200 and len(parts) == 3
    assert [data for _, data in parts] == [p.read_bytes() for p in samples.ct_paths[3:]]  # as stored


async def test_ans_accept_on_a_compressed_instance(server: str, samples: SampleData) -> None:
    # The ANS list does not name RLE: the instance is decompressed (and re-compressed if a codec allows).
    url = f"{server}/dicom-web/studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances/{RLE_SOP}"
    status, _, [(headers, data)] = await get_parts(url, ANS_ACCEPT)
    assert status == 200 and headers["Content-Type"].endswith(ans_choice(RLELossless))
    assert pixel_hash(read_part10(data)) == pixel_hash(pydicom.dcmread(samples.rle_path))


async def test_any_transfer_syntax_returns_stored_bytes(server: str, samples: SampleData) -> None:
    status, _, parts = await get_parts(f"{server}/dicom-web/studies/{MULTIFRAME_STUDY}", DICOM_ANY)
    assert status == 200
    by_uid = {str(read_part10(data).SOPInstanceUID): (h, data) for h, data in parts}
    headers, data = by_uid[RLE_SOP]
    assert data == samples.rle_path.read_bytes()  # not decompressed, not re-encoded: the stored file
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={RLELossless}"
    assert headers["Content-Length"] == str(len(data))
    assert by_uid[MULTIFRAME_SOP][1] == samples.multiframe_path.read_bytes()


async def test_transcoding_both_ways(server: str, samples: SampleData) -> None:
    url = f"{server}/dicom-web/studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances"
    expected = pixel_hash(pydicom.dcmread(samples.multiframe_path))
    status, _, [(_, data)] = await get_parts(f"{url}/{RLE_SOP}", 'multipart/related; type="application/dicom"')
    decompressed = read_part10(data)
    assert status == 200 and decompressed.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert str(decompressed.SOPInstanceUID) == RLE_SOP and pixel_hash(decompressed) == expected
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={RLELossless}'
    status, _, [(_, data)] = await get_parts(f"{url}/{MULTIFRAME_SOP}", accept)
    compressed = read_part10(data)
    assert status == 200 and compressed.file_meta.TransferSyntaxUID == RLELossless
    assert str(compressed.SOPInstanceUID) == MULTIFRAME_SOP and pixel_hash(compressed) == expected


async def test_single_part_application_dicom(server: str, samples: SampleData) -> None:
    spec = samples.spec
    url = f"{server}/dicom-web/studies/{spec.study_uid}/series/{spec.series_uid(0)}/instances/{spec.sop_uid(0, 0)}"
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Accept": "application/dicom"}) as resp:
        assert resp.status == 200 and resp.content_type == "application/dicom"
        assert await resp.read() == samples.ct_paths[0].read_bytes()


@pytest.mark.parametrize(
    ("path", "accept", "status"),
    [
        (
            "studies/{study}",
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
            406,
        ),
        ("studies/{study}", "application/json", 406),
        ("studies/{study}", "application/dicom", 406),  # a bare part only for one instance
        ("studies/{study}/metadata", 'multipart/related; type="application/dicom"', 406),
        ("studies/1.2.x", DICOM_ANY, 400),
        ("studies/1..2", DICOM_ANY, 400),
        ("studies/" + "1." * 32 + "1", DICOM_ANY, 400),
        ("studies/{study}/series/1.2.3/instances/abc", DICOM_ANY, 400),
        ("studies/1.2.3", DICOM_ANY, 404),
        ("studies/{study}/series/1.2.3", DICOM_ANY, 404),
        ("studies/{study}/series/{series}/instances/1.2.3", DICOM_ANY, 404),
        ("studies/1.2.3/metadata", "application/dicom+json", 404),
        ("studies/{study}/series/{series}/instances/{sop}/bulkdata/00101010", "*/*", 404),
        ("studies/{study}/series/{series}/instances/{sop}/bulkdata/7FE0001G", "*/*", 400),
    ],
)
async def test_error_statuses_have_json_reasons(
    server: str, samples: SampleData, path: str, accept: str, status: int
) -> None:
    spec = samples.spec
    url = f"{server}/dicom-web/" + path.format(study=spec.study_uid, series=spec.series_uid(0), sop=spec.sop_uid(0, 0))
    async with aiohttp.ClientSession() as session, session.get(url, headers={"Accept": accept}) as resp:
        assert resp.status == status
        body = await resp.json()
        assert body["status"] == status and body["error"]


async def test_fresh_boundary_per_response(server: str, samples: SampleData) -> None:
    url = f"{server}/dicom-web/studies/{samples.spec.study_uid}"
    _, first, _ = await get_parts(url, DICOM_ANY)
    _, second, _ = await get_parts(url, DICOM_ANY)
    assert first["Content-Type"] != second["Content-Type"]
