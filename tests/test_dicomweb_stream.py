"""Streaming: disconnects close the backend, late failures cut the response, outages 503, partial 206, CORS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pydicom.dataset import Dataset

from drimbox.dicomweb.backend import IncompleteRetrieve, QidoQuery, StoredInstance, Unavailable
from tests.support.dicomweb import SampleData, serve, write_samples
from tests.support.folder_backend import FolderBackend

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class ScriptedBackend:
    """The folder backend, repeated `repeat` times, failing after `fail_after` instances; records closing."""

    def __init__(
        self, inner: FolderBackend, *, repeat: int = 1, fail_after: int | None = None, error: Exception | None = None
    ) -> None:
        self.inner = inner
        self.repeat = repeat
        self.fail_after = fail_after
        self.error = error or Unavailable("PACS association aborted")
        self.yielded = 0
        self.closed = asyncio.Event()
        self.stall_after: int | None = None  # then wait forever, like a PACS that stopped sending

    async def search(self, query: QidoQuery) -> AsyncIterator[Dataset]:
        if self.fail_after == 0:
            raise self.error
        async for ds in self.inner.search(query):
            yield ds

    async def iter_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        try:
            for _ in range(self.repeat):
                async for instance in self.inner.iter_instances(study_uid, series_uid, sop_uid):
                    if self.fail_after is not None and self.yielded >= self.fail_after:
                        raise self.error
                    if self.stall_after is not None and self.yielded >= self.stall_after:
                        await asyncio.Event().wait()
                    self.yielded += 1
                    yield instance
        finally:
            self.closed.set()  # where a DIMSE backend sends its C-CANCEL

    async def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, base: str
    ) -> AsyncIterator[bytes]:
        count = 0
        async for item in self.inner.metadata(study_uid, series_uid, sop_uid, base=base):
            if self.fail_after is not None and count >= self.fail_after:
                raise self.error
            count += 1
            yield item


@pytest.fixture
def samples(tmp_path: Path) -> SampleData:
    return write_samples(tmp_path / "data")


@pytest.fixture
async def folder(samples: SampleData) -> FolderBackend:
    return await FolderBackend.open(samples.root)


async def test_client_disconnect_closes_backend_iterator(folder: FolderBackend, samples: SampleData) -> None:
    backend = ScriptedBackend(folder, repeat=100_000)  # far more than any socket buffer holds
    async with serve(backend) as url, aiohttp.ClientSession() as session:
        resp = await session.get(f"{url}/dicom-web/studies/{samples.spec.study_uid}", headers={"Accept": DICOM_ANY})
        assert resp.status == 200
        await resp.content.readexactly(100_000)
        resp.close()  # drops the connection mid-body
        await asyncio.wait_for(backend.closed.wait(), timeout=10)
    assert backend.yielded < 100_000 * 6


async def test_client_leaving_while_backend_stalls_closes_it(folder: FolderBackend, samples: SampleData) -> None:
    # With aiohttp's handler_cancellation the handler is cancelled when the client goes, even while it is
    # waiting for the backend: the iterator is closed there and then (no write needed to notice).
    backend = ScriptedBackend(folder)
    backend.stall_after = 1
    async with serve(backend, handler_cancellation=True) as url, aiohttp.ClientSession() as session:
        resp = await session.get(f"{url}/dicom-web/studies/{samples.spec.study_uid}", headers={"Accept": DICOM_ANY})
        assert resp.status == 200
        await resp.content.readexactly(1000)
        resp.close()
        await asyncio.wait_for(backend.closed.wait(), timeout=10)
    assert backend.yielded == 1


async def test_failure_after_status_line_cuts_the_response(folder: FolderBackend, samples: SampleData) -> None:
    for error in (Unavailable("PACS gone"), IncompleteRetrieve("2 sub-operations failed", completed=2, failed=2)):
        backend = ScriptedBackend(folder, fail_after=2, error=error)
        async with serve(backend) as url, aiohttp.ClientSession() as session:
            url = f"{url}/dicom-web/studies/{samples.spec.study_uid}"
            async with session.get(url, headers={"Accept": DICOM_ANY}) as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()  # no closing delimiter, no last chunk: never mistaken for a whole study
        assert backend.closed.is_set()


async def test_failure_before_first_instance_is_a_status(folder: FolderBackend, samples: SampleData) -> None:
    backend = ScriptedBackend(folder, fail_after=0)
    async with serve(backend) as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/dicom-web/studies/{samples.spec.study_uid}") as resp:
            assert resp.status == 503 and "PACS" in (await resp.json())["error"]
        async with session.get(f"{url}/dicom-web/studies") as resp:
            assert resp.status == 503
        backend.error = IncompleteRetrieve("every sub-operation failed", completed=0, failed=6)
        async with session.get(f"{url}/dicom-web/studies/{samples.spec.study_uid}") as resp:
            assert resp.status == 503


async def test_partial_metadata_is_206_with_warning(folder: FolderBackend, samples: SampleData) -> None:
    backend = ScriptedBackend(folder, fail_after=4, error=IncompleteRetrieve("2 unreadable", completed=4, failed=2))
    async with serve(backend) as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/dicom-web/studies/{samples.spec.study_uid}/metadata") as resp:
            assert resp.status == 206 and len(await resp.json()) == 4
            assert "2 instance(s)" in resp.headers["Warning"]


async def test_cors_only_where_configured(folder: FolderBackend, samples: SampleData) -> None:
    study = f"/dicom-web/studies/{samples.spec.study_uid}"
    origin = {"Origin": "https://viewer.example"}
    async with serve(folder) as url, aiohttp.ClientSession() as session:
        async with session.get(url + study + "/metadata", headers=origin) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    async with serve(folder, cors_origins=["https://viewer.example"]) as url, aiohttp.ClientSession() as session:
        async with session.get(url + study, headers={**origin, "Accept": DICOM_ANY}) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "https://viewer.example"  # streamed too
            assert "Warning" in resp.headers["Access-Control-Expose-Headers"]
            await resp.read()
        async with session.get(url + study + "/metadata", headers={"Origin": "https://evil.example"}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with session.get(url + "/dicom-web/studies/1.x", headers=origin) as resp:
            assert resp.status == 400 and resp.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
        preflight = {
            **origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        }
        async with session.options(url + study, headers=preflight) as resp:
            assert resp.status == 204 and "GET" in resp.headers["Access-Control-Allow-Methods"]
            assert resp.headers["Access-Control-Allow-Headers"] == "authorization"
    async with serve(folder, cors_origins=["*"]) as url, aiohttp.ClientSession() as session:
        async with session.get(url + "/dicom-web/studies", headers=origin) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_file_gone_is_404_before_streaming_and_a_cut_after(folder: FolderBackend, samples: SampleData) -> None:
    spec = samples.spec
    samples.ct_paths[1].unlink()  # instance 2 of series 1, after indexing
    series = f"/dicom-web/studies/{spec.study_uid}/series/{spec.series_uid(0)}"
    async with serve(folder) as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}{series}/instances/{spec.sop_uid(0, 1)}", headers={"Accept": DICOM_ANY}) as resp:
            assert resp.status == 404 and "file" in (await resp.json())["error"]
        async with session.get(url + series, headers={"Accept": DICOM_ANY}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
