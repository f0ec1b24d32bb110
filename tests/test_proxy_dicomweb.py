"""The Proxy profile seen by DICOMweb clients: a real Orthanc behind the box, dicomweb-client in front."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from dicomweb_client.api import DICOMwebClient

from drimbox.demo.samples.studies import exam_c_study, write_study
from tests.support.fixtures_mesh import OPERATOR_TOKEN

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.box]

STUDY = "1.2.250.1.213.4.5.2.1.103"


def pixel_hash(ds: Any) -> str:
    return hashlib.sha256(ds.PixelData).hexdigest()


def orthanc_truth(orthanc: Any) -> dict[str, str]:
    import urllib.request
    from io import BytesIO

    import pydicom

    truth = {}
    for iid in orthanc.rest("GET", "/instances"):
        with urllib.request.urlopen(f"{orthanc.base_url}/instances/{iid}/file", timeout=30) as resp:
            ds = pydicom.dcmread(BytesIO(resp.read()))
        truth[str(ds.SOPInstanceUID)] = pixel_hash(ds)
    return truth


@pytest.fixture
def loaded(orthanc: Any, tmp_path: Path) -> dict[str, str]:
    orthanc.clear()
    orthanc.store_files(write_study(tmp_path / "study", exam_c_study(instances=12)))
    return orthanc_truth(orthanc)


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
def test_dicomweb_client_gets_what_orthanc_holds(
    orthanc: Any, source_box: Any, loaded: dict[str, str], retrieve: str
) -> None:
    box = source_box(orthanc, pacs={"retrieve": retrieve})
    if retrieve == "c-move":
        orthanc.add_modality("DRIMBOX", "127.0.0.1", box.dicom_port)
    client = DICOMwebClient(f"{box.url}/dicom-web")
    studies = client.search_for_studies(search_filters={"PatientID": "279035121518989"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [STUDY]
    series = client.search_for_series(STUDY)
    assert len(series) == 2
    for attempt in ("cold", "warm"):
        got = {str(ds.SOPInstanceUID): pixel_hash(ds) for ds in client.retrieve_study(STUDY)}
        assert got == loaded, attempt
    one_series = series[0]["0020000E"]["Value"][0]
    assert {str(ds.SOPInstanceUID) for ds in client.retrieve_series(STUDY, one_series)} < set(loaded)
    metadata = client.retrieve_study_metadata(STUDY)
    assert {m["00080018"]["Value"][0] for m in metadata} == set(loaded)
    assert all("BulkDataURI" in m["7FE00010"] for m in metadata)


def test_unknown_study_is_404_and_pacs_down_is_503(orthanc: Any, source_box: Any, loaded: dict[str, str]) -> None:
    import urllib.error
    import urllib.request

    box = source_box(orthanc)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{box.url}/dicom-web/studies/1.2.3.4/series/5.6.7", timeout=30)
    assert err.value.code == 404
    dead = source_box(orthanc, pacs={"port": 1, "timeout": 2.0})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{dead.url}/dicom-web/studies?PatientID=1", timeout=30)
    assert err.value.code == 503


def test_operator_can_empty_the_cache(orthanc: Any, source_box: Any, loaded: dict[str, str]) -> None:
    import json
    import urllib.request

    box = source_box(orthanc)
    client = DICOMwebClient(f"{box.url}/dicom-web")
    assert len(client.retrieve_study(STUDY)) == len(loaded)

    def delete(query: str = "") -> dict[str, int]:
        req = box.operator_request(f"/api/cache{query}", "DELETE")
        with urllib.request.urlopen(req, timeout=30) as resp:
            result: dict[str, int] = json.loads(resp.read())
            return result

    health = json.loads(urllib.request.urlopen(f"{box.url}/health", timeout=30).read())
    assert health["components"]["cache"]["series"] == 2
    assert delete(f"?study={STUDY}")["series"] == 0
    assert len(client.retrieve_study(STUDY)) == len(loaded)
    assert delete()["series"] == 0


async def test_single_instance_requests_on_a_cold_series_then_the_series(
    orthanc: Any, source_box: Any, loaded: dict[str, str]
) -> None:
    """What a viewer does on a cold cache: a thumbnail and an instance of each series, then the series itself.

    A single-instance request must neither break the series fill other requests share nor lose the files a
    later request reads; every answer is 200 and complete, round after round on an emptied cache."""
    import asyncio

    import aiohttp

    box = source_box(orthanc)
    base = f"{box.url}/dicom-web/studies/{STUDY}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/series", headers={"Accept": "application/dicom+json"}) as resp:
            series = [s["0020000E"]["Value"][0] for s in await resp.json()]
        async with http.get(f"{base}/instances", headers={"Accept": "application/dicom+json"}) as resp:
            by_series: dict[str, list[str]] = {}
            for item in await resp.json():
                by_series.setdefault(item["0020000E"]["Value"][0], []).append(item["00080018"]["Value"][0])

        async def status(url: str, accept: str) -> tuple[int, int]:
            async with http.get(url, headers={"Accept": accept}) as resp:
                return resp.status, len(await resp.read())

        for _ in range(4):
            async with http.delete(
                f"{box.url}/api/cache", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
            ) as resp:
                assert resp.status == 200
            for uid in series:
                first = by_series[uid][0]
                thumb = await status(f"{base}/series/{uid}/instances/{first}/thumbnail", "image/png")
                assert thumb[0] == 200
                results = await asyncio.gather(
                    status(f"{base}/series/{uid}/instances/{by_series[uid][-1]}", "application/dicom"),
                    status(f"{base}/series/{uid}/metadata", "application/dicom+json"),
                    status(f"{base}/series/{uid}/instances/{first}/thumbnail", "image/png"),
                )
                assert [code for code, _ in results] == [200, 200, 200], results
            got = {
                str(ds.SOPInstanceUID): pixel_hash(ds)
                for ds in DICOMwebClient(f"{box.url}/dicom-web").retrieve_study(STUDY)
            }
            assert got == loaded


@pytest.mark.parametrize("retrieve", ["c-get", "c-move"])
async def test_only_if_cached_and_one_instance_before_its_series(
    orthanc: Any, source_box: Any, loaded: dict[str, str], retrieve: str
) -> None:
    """What the viewer does on a cold box: metadata only if cached (504, and no retrieve started), then one
    instance's metadata and frame at once (200; with C-GET, an instance-level C-GET races the series fill);
    the series it belongs to then ends up cached in full."""
    import asyncio
    import json
    import time
    import urllib.request

    import aiohttp

    box = source_box(orthanc, pacs={"retrieve": retrieve})
    if retrieve == "c-move":
        orthanc.add_modality("DRIMBOX", "127.0.0.1", box.dicom_port)
    base = f"{box.url}/dicom-web/studies/{STUDY}"
    json_accept = {"Accept": "application/dicom+json"}
    cached_only = {**json_accept, "Cache-Control": "only-if-cached"}

    def cached_series() -> int:
        health = json.loads(urllib.request.urlopen(f"{box.url}/health", timeout=30).read())
        return int(health["components"]["cache"]["series"])

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/series", headers=json_accept) as resp:
            series = sorted(s["0020000E"]["Value"][0] for s in await resp.json())
        uid = series[0]
        for url in (f"{base}/metadata", f"{base}/series/{uid}/metadata"):
            async with http.get(url, headers=cached_only) as resp:
                assert resp.status == 504 and (await resp.json())["status"] == 504
        await asyncio.sleep(0.2)
        assert cached_series() == 0  # a 504 is all it cost: the PACS was not asked for images

        async with http.get(f"{base}/series/{uid}/instances", headers=json_accept) as resp:
            instances = [i["00080018"]["Value"][0] for i in await resp.json()]
        middle = instances[len(instances) // 2]
        frame_accept = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}

        async def get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
            async with http.get(url, headers=headers) as resp:
                return resp.status, await resp.read()

        (meta_status, meta), (frame_status, frame) = await asyncio.gather(
            get(f"{base}/series/{uid}/instances/{middle}/metadata", json_accept),
            get(f"{base}/series/{uid}/instances/{middle}/frames/1", frame_accept),
        )
        assert meta_status == 200 and [m["00080018"]["Value"][0] for m in json.loads(meta)] == [middle]
        assert frame_status == 200 and len(frame) > 128 * 128 * 2  # the 16-bit 128² pixels, in one part

        # The series goes on arriving after that one instance: soon served from the cache alone.
        deadline = time.monotonic() + 30
        while (status := (await get(f"{base}/series/{uid}/metadata", cached_only))[0]) == 504:
            assert time.monotonic() < deadline, "the series never got into the cache"
            await asyncio.sleep(0.05)
        assert status == 200
        status, body = await get(f"{base}/series/{uid}/metadata", cached_only)
        assert sorted(m["00080018"]["Value"][0] for m in json.loads(body)) == sorted(instances)
        # The study is not whole in the cache until its other series is.
        assert (await get(f"{base}/metadata", cached_only))[0] == 504
        assert (await get(f"{base}/series/{series[1]}/metadata", json_accept))[0] == 200
        status, body = await get(f"{base}/metadata", cached_only)
        assert status == 200 and {m["00080018"]["Value"][0] for m in json.loads(body)} == set(loaded)


def test_paging_through_an_instance_search_asks_the_pacs_once(
    orthanc: Any, source_box: Any, loaded: dict[str, str]
) -> None:
    import json
    import urllib.request

    box = source_box(orthanc, http={"workers": 1})  # one process: every page reaches the one that kept the answers

    def finds() -> float:
        with urllib.request.urlopen(box.operator_request("/metrics"), timeout=30) as resp:
            lines = resp.read().decode().splitlines()
        return sum(float(line.split()[-1]) for line in lines
                   if line.startswith("drimbox_dimse_calls_total{") and 'operation="C-FIND"' in line)  # fmt: skip

    def page(offset: int) -> tuple[list[str], bool]:
        url = f"{box.url}/dicom-web/studies/{STUDY}/instances?limit=5&offset={offset}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            return [i["00080018"]["Value"][0] for i in json.loads(resp.read())], "Warning" in resp.headers

    before = finds()
    pages = [page(0), page(5), page(10)]
    assert [more for _, more in pages] == [True, True, False]
    uids = [uid for found, _ in pages for uid in found]
    assert sorted(uids) == sorted(loaded)  # every instance once, none twice, across the pages
    assert finds() - before == 1
    assert page(0) == pages[0]  # asked again at once: the same answers, no C-FIND
    assert finds() - before == 1
    # The study invalidated (here by the operator; a replaced or withdrawn publication does the same): the PACS again.
    urllib.request.urlopen(box.operator_request(f"/api/cache?study={STUDY}", "DELETE"), timeout=30).close()
    assert page(0) == pages[0]
    assert finds() - before == 2


def test_a_pacs_that_never_answers_is_a_503_after_one_time_out(orthanc: Any, source_box: Any) -> None:
    """An instance search is gathered in the background and its reader follows it: a PACS that accepts the
    connection and then says nothing costs the client one DIMSE time-out, not one for the gathering and another
    for a second try."""
    import socket
    import time
    import urllib.error
    import urllib.request

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the kernel, nobody ever reads them
        box = source_box(orthanc, pacs={"port": silent.getsockname()[1], "timeout": 3.0})
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{box.url}/dicom-web/studies/{STUDY}/series/1.2.3/instances", timeout=30)
        elapsed = time.monotonic() - started
    assert err.value.code == 503
    assert 2.5 < elapsed < 5.5, elapsed
