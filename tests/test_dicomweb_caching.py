"""Caching of DICOMweb answers (validators, 304, private revalidation), metadata gzip and trim, clients that leave."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pydicom.dataset import Dataset

from drimbox.dicomweb.backend import NotFound, QidoQuery, StoredInstance
from tests.support.dicomweb import MULTIFRAME_SERIES, MULTIFRAME_SOP, MULTIFRAME_STUDY, SampleData, serve, write_samples
from tests.support.folder_backend import FolderBackend

RAW = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'


class CountingBackend:
    """The folder backend, counting the instances read; `hidden` SOP Instance UIDs are outside what requests see."""

    def __init__(self, inner: FolderBackend) -> None:
        self.inner = inner
        self.reads = 0
        self.hidden: set[str] = set()
        self.gate: asyncio.Event | None = None  # when set: reading waits for it (a slow PACS)

    def admits(self, study_uid: str, series_uid: str | None, sop_uid: str | None) -> None:
        if sop_uid in self.hidden:
            raise NotFound("no such resource here")

    def search(self, query: QidoQuery) -> AsyncIterator[Dataset]:
        return self.inner.search(query)

    async def iter_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        if self.gate is not None:
            await self.gate.wait()
        async for instance in self.inner.iter_instances(study_uid, series_uid, sop_uid):
            self.reads += 1
            yield instance

    def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, base: str
    ) -> AsyncIterator[bytes]:
        return self.inner.metadata(study_uid, series_uid, sop_uid, base=base)


@pytest.fixture
def samples(tmp_path: Path) -> SampleData:
    return write_samples(tmp_path / "data")


@pytest.fixture
async def backend(samples: SampleData) -> CountingBackend:
    return CountingBackend(await FolderBackend.open(samples.root))


FRAME = f"/dicom-web/studies/{MULTIFRAME_STUDY}/series/{MULTIFRAME_SERIES}/instances/{MULTIFRAME_SOP}/frames/2"


async def test_frames_revalidate_without_reading_the_instance(backend: CountingBackend) -> None:
    async with serve(backend) as url, aiohttp.ClientSession() as session:
        async with session.get(url + FRAME, headers={"Accept": RAW}) as resp:
            assert resp.status == 200
            body = await resp.read()
            etag = resp.headers["ETag"]
            assert etag.startswith('"') and resp.headers["Cache-Control"] == "private, no-cache"
            assert resp.headers["Vary"] == "Accept"
        assert backend.reads == 1
        async with session.get(url + FRAME, headers={"Accept": RAW, "If-None-Match": etag}) as resp:
            assert resp.status == 304 and resp.headers["ETag"] == etag and await resp.read() == b""
        assert backend.reads == 1  # the 304 read nothing: instances never change under their UID
        # Another frame, another representation: other validators.
        other = url + FRAME.replace("frames/2", "frames/3")
        async with session.get(other, headers={"Accept": RAW, "If-None-Match": etag}) as resp:
            assert resp.status == 200 and resp.headers["ETag"] != etag and await resp.read() != body
        jls = 'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80'
        async with session.get(url + FRAME, headers={"Accept": jls, "If-None-Match": etag}) as resp:
            assert resp.status == 200 and resp.headers["ETag"] != etag
        # Access taken away: the validator the browser holds no longer opens anything.
        backend.hidden.add(MULTIFRAME_SOP)
        async with session.get(url + FRAME, headers={"Accept": RAW, "If-None-Match": etag}) as resp:
            assert resp.status == 404


async def test_rendered_and_thumbnails_carry_validators(backend: CountingBackend, samples: SampleData) -> None:
    async with serve(backend) as url, aiohttp.ClientSession() as session:
        for path in (f"{FRAME}/rendered", f"/dicom-web/studies/{samples.spec.study_uid}/thumbnail"):
            async with session.get(url + path, headers={"Accept": "image/png"}) as resp:
                assert resp.status == 200 and resp.headers["Cache-Control"] == "private, no-cache"
                etag = resp.headers["ETag"]
            async with session.get(url + path, headers={"Accept": "image/png", "If-None-Match": etag}) as resp:
                assert resp.status == 304


async def test_metadata_gzip_etag_and_trim(backend: CountingBackend, samples: SampleData) -> None:
    path = f"/dicom-web/studies/{samples.spec.study_uid}/metadata"
    async with serve(backend) as url, aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(url + path, headers={"Accept-Encoding": "identity"}) as resp:
            plain = await resp.read()
            assert resp.status == 200 and "Content-Encoding" not in resp.headers
            etag = resp.headers["ETag"]
            assert resp.headers["Cache-Control"] == "private, no-cache"
            assert "KOS-SOPInstanceUID" in resp.headers["Vary"] and "Accept-Encoding" in resp.headers["Vary"]
        async with session.get(url + path, headers={"Accept-Encoding": "gzip"}) as resp:
            packed = await resp.read()
            assert resp.headers["Content-Encoding"] == "gzip" and len(packed) < len(plain) / 3
        async with session.get(url + path, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304 and await resp.read() == b""
        trimmed_url = f"{url}{path}?includefield=00200032,ImageOrientationPatient,00200013"
        async with session.get(trimmed_url, headers={"Accept-Encoding": "identity", "If-None-Match": etag}) as resp:
            assert resp.status == 200 and resp.headers["ETag"] != etag  # another body, another validator
            trimmed = await resp.read()
            items = await resp.json()
        assert len(items) == 6 and len(trimmed) < len(plain) / 3
        for item in items:
            assert set(item) <= {"00200032", "00200037", "00200013", "00080018", "00080016", "0020000E", "0020000D"}
            assert {"00200032", "00200037", "00200013", "00080018"} <= set(item)
        async with session.get(f"{url}{path}?includefield=NotAKeyword") as resp:
            assert resp.status == 400


async def test_client_leaving_before_the_frames_is_a_debug_line(
    backend: CountingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    # The traceback: the client closes while the box reads the instance; the handler (not cancelled: it was
    # in a thread or the PACS) then opens the multipart stream on a closed transport.
    backend.gate = asyncio.Event()
    caplog.set_level(logging.DEBUG)
    frames = FRAME.replace("frames/2", "frames/1,2,3")
    async with serve(backend) as url, aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.get(url + frames, headers={"Accept": RAW}))
        await asyncio.sleep(0.3)
        task.cancel()  # the connection is dropped with the request in flight
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        backend.gate.set()
        for _ in range(50):
            if any("client left" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    assert backend.reads == 1  # the handler went on to the write that failed: the case of the issue
    left = [r for r in caplog.records if "client left" in r.getMessage()]
    assert left and left[0].levelno == logging.DEBUG and frames.split("/frames")[0] in left[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
