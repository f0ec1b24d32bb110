"""Consumer retrieval with real processes: exam C from a protected source box, through /conso/dicom-web."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest

from drimbox.consumer.retrieval import (
    KOS_HEADER,
    NotWhitelisted,
    RetrievedInstance,
    SourceRetriever,
    SourceUnavailable,
    StreamedInstance,
)
from drimbox.demo.samples.processes import free_port
from drimbox.manifest import parse_kos
from tests.support.drim_flow import (
    consumer_settings,
    protected_front,
    psc_token,
    publish_exam,
    read_multipart,
    revoke,
    running_consumer,
)

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]
INSTANCES = 60  # 128² CT images: enough to measure, small enough for every run


@pytest.fixture(autouse=True)
def empty_pacs(orthanc: Any) -> None:
    orthanc.clear()


def _dead_source_copy(kos_bytes: bytes, dead_port: int, host: str = "127.0.0.1") -> tuple[str, bytes]:
    """The same exam re-published by another source box (down): new KOS, study and series UIDs, its URLs."""
    ds = pydicom.dcmread(io.BytesIO(kos_bytes))
    new = pydicom.uid.generate_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = new()
    study_uid = new()
    ds.StudyInstanceUID = study_uid
    for study in ds.CurrentRequestedProcedureEvidenceSequence:
        study.StudyInstanceUID = study_uid
        for series in study.ReferencedSeriesSequence:
            series.SeriesInstanceUID = new()
            series.RetrieveURL = (
                f"http://{host}:{dead_port}/dicom-web/studies/{study_uid}/series/{series.SeriesInstanceUID}"
            )
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return str(ds.SOPInstanceUID), out.getvalue()


async def test_exam_c_through_the_consumer_is_byte_identical_and_an_unreachable_source_is_503(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    front_port = free_port()
    box = source_box(orthanc, box={"public_url": f"http://127.0.0.1:{front_port}"})
    pub = await asyncio.to_thread(publish_exam, orthanc, box, tmp_path, instances=INSTANCES)
    kos_uid = pub["kos_uid"]
    kos_bytes = await asyncio.to_thread(sim.document_bytes, kos_uid)
    kos = parse_kos(kos_bytes)
    dead_uid, dead_kos = _dead_source_copy(kos_bytes, free_port())
    # 127.0.0.2 is loopback too, but the simulator's whitelist names only 127.0.0.1 and localhost.
    unlisted_uid, unlisted_kos = _dead_source_copy(kos_bytes, free_port(), host="127.0.0.2")
    manifests = {kos_uid: kos_bytes, dead_uid: dead_kos, unlisted_uid: unlisted_kos}
    token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
    study = kos.study_uid
    async with (protected_front(box, sim.url, front_port),
                running_consumer(consumer_settings(tmp_path, sim.url), token, manifests) as conso,
                aiohttp.ClientSession() as http):  # fmt: skip
        accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
        # Direct retrieve from the source box itself (unprotected process port), for the reference bytes and timing.
        t0 = time.perf_counter()
        async with http.get(f"{box.url}/dicom-web/studies/{study}", headers=accept) as resp:
            assert resp.status == 200
            direct_first = 0.0
            # Read to the end: leaving early cancels the source's fill (see the note on SeriesCache in the report).
            async for _ in resp.content.iter_any():
                direct_first = direct_first or time.perf_counter() - t0
        direct_cold = time.perf_counter() - t0
        # Again, warm in the source's cache, now read whole.
        t0 = time.perf_counter()
        async with http.get(f"{box.url}/dicom-web/studies/{study}", headers=accept) as resp:
            direct = await read_multipart(resp)
        direct_time = time.perf_counter() - t0
        # Through the consumer (cold consumer cache): consumer → whitelist → source front (token, KOS) → PACS.
        headers = {**accept, KOS_HEADER: kos_uid}
        t0 = time.perf_counter()
        async with http.get(f"{conso.url}/conso/dicom-web/studies/{study}", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            first_byte = 0.0
            body = bytearray()
            async for chunk in resp.content.iter_any():
                if not first_byte:
                    first_byte = time.perf_counter() - t0
                body += chunk
        cold_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        async with http.get(f"{conso.url}/conso/dicom-web/studies/{study}", headers=headers) as resp:
            through = await read_multipart(resp)
        warm_time = time.perf_counter() - t0
        expected = {i.sop_instance_uid for s in kos.series for i in s.instances}
        assert set(through) == expected, (len(through), len(direct), len(expected))
        assert set(direct) == expected, (len(through), len(direct), len(expected))
        assert all(through[uid] == direct[uid] for uid in expected)
        size = sum(len(v) for v in through.values())
        print(f"\nconsumer retrieve of exam C, {len(expected)} instances, {size / 1e6:.1f} MB:"
              f"\n  first byte through the consumer (consumer and source caches cold): {first_byte * 1000:.0f} ms"
              f" (direct from the source box, cold PACS: {direct_first * 1000:.0f} ms)"
              f"\n  through the consumer, caches cold: {size / cold_time / 1e6:.0f} MB/s;"
              f" warm consumer cache: {size / warm_time / 1e6:.0f} MB/s;"
              f" direct from the source box: {size / direct_cold / 1e6:.0f} MB/s cold, {size / direct_time / 1e6:.0f} MB/s"
              " warm")  # fmt: skip

        # Metadata, series by series, for the viewer; the opened exam entitles later requests without the header.
        async with http.get(
            f"{conso.url}/conso/dicom-web/studies/{study}/metadata", headers={KOS_HEADER: kos_uid}
        ) as resp:
            assert resp.status == 200
            assert len(await resp.json()) == len(expected)
        series = kos.series[0]
        async with http.get(
            f"{conso.url}/conso/dicom-web/studies/{study}/series/{series.series_uid}/instances"
        ) as resp:
            assert resp.status == 200
            assert len(await resp.json()) == len(series.instances)
        # A viewer may name the KOS in the query instead of a header: QIDO takes it as access, not as a match key.
        async with http.get(f"{conso.url}/conso/dicom-web/studies/{study}/series?kos={kos_uid}") as resp:
            assert resp.status == 200, await resp.text()
            assert len(await resp.json()) == len(kos.series)

        # The exam whose source box is down: 503 with a JSON reason, while exam C still opens.
        async with http.get(f"{conso.url}/conso/dicom-web/studies/{parse_kos(dead_kos).study_uid}",
                            headers={**accept, KOS_HEADER: dead_uid}) as resp:  # fmt: skip
            assert resp.status == 503, await resp.text()
            assert "unreachable" in (await resp.json())["error"]
        async with http.get(f"{conso.url}/conso/dicom-web/studies/{study}/series/{series.series_uid}",
                            headers=headers) as resp:  # fmt: skip
            assert resp.status == 200 and len(await read_multipart(resp)) == len(series.instances)

        # The professional's token revoked at Pro Santé Connect: the source says 401, the consumer passes it on.
        await asyncio.to_thread(revoke, sim.url, token)
        await conso.backend.cache.clear()  # else the consumer serves its cache without asking the source
        async with http.get(f"{conso.url}/conso/dicom-web/studies/{study}", headers=headers) as resp:
            refusal = await resp.json()
            assert (resp.status, refusal["reason"], refusal["source_reason"]) == (401, "source_refused", "revoked")

        # An exam whose source is not on the ANS whitelist: refused without connecting, 502 with the reason.
        async with http.get(f"{conso.url}/conso/dicom-web/studies/{parse_kos(unlisted_kos).study_uid}",
                            headers={**accept, KOS_HEADER: unlisted_uid}) as resp:  # fmt: skip
            assert (resp.status, (await resp.json())["reason"]) == (502, "source_not_whitelisted")

        # A KOS that names another study does not open this one.
        async with http.get(f"{conso.url}/conso/dicom-web/studies/{study}", headers={KOS_HEADER: dead_uid}) as resp:
            assert resp.status == 403 and (await resp.json())["reason"] == "kos_not_for_study"


async def test_a_retrieve_url_outside_the_whitelist_is_refused_before_any_connection(sim: Any) -> None:
    from drimbox.auth.whitelist import AnsWhitelist
    from drimbox.config import WhitelistSettings

    whitelist = AnsWhitelist(WhitelistSettings(url=f"{sim.url}/whitelist",
                                               certificate_url=f"{sim.url}/whitelist/certificate", trust_on_first_use=True))  # fmt: skip
    retriever = SourceRetriever(whitelist, connect_timeout=1.0)
    try:
        with pytest.raises(NotWhitelisted):
            # 127.0.0.2 is loopback too, but the simulator's list names only 127.0.0.1 and localhost.
            async for _ in retriever.iter_series("http://127.0.0.2:9/dicom-web/studies/1/series/2",
                                                 access_token="t", kos_uid="1.2"):  # fmt: skip
                pass
        with pytest.raises(SourceUnavailable):  # listed, but nobody listens: unreachable, not refused
            async for _ in retriever.iter_series(f"http://127.0.0.1:{free_port()}/dicom-web/studies/1/series/2",
                                                 access_token="t", kos_uid="1.2"):  # fmt: skip
                pass
    finally:
        await retriever.close()
        await whitelist.close()


async def test_the_parser_reads_another_producer_orthancs_own_wado_rs(orthanc: Any, sim: Any, tmp_path: Path) -> None:
    """Orthanc's multipart (its own boundary, part headers and padding) read by the consumer's streaming parser."""
    from drimbox.auth.whitelist import AnsWhitelist
    from drimbox.config import WhitelistSettings
    from drimbox.demo.samples.reports import ANS_EXAMS
    from drimbox.demo.samples.studies import study_for_exam, write_study

    spec = study_for_exam(ANS_EXAMS["C"], instances=8)
    files = write_study(tmp_path / "study", spec)
    await asyncio.to_thread(orthanc.store_files, files)
    whitelist = AnsWhitelist(WhitelistSettings(url=f"{sim.url}/whitelist",
                                               certificate_url=f"{sim.url}/whitelist/certificate", trust_on_first_use=True))  # fmt: skip
    retriever = SourceRetriever(whitelist)
    try:
        got: dict[str, bytes] = {}
        for series in range(spec.series_count):
            url = f"{orthanc.dicomweb_url}/studies/{spec.study_uid}/series/{spec.series_uid(series)}"
            async for instance in retriever.iter_series(url, access_token="unused", kos_uid="1.2"):
                got[instance.sop_instance_uid] = instance.data
        assert set(got) == set(await asyncio.to_thread(orthanc.instances))
        by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in files}
        for uid, data in got.items():
            assert pydicom.dcmread(io.BytesIO(data)).PixelData == pydicom.dcmread(by_uid[uid]).PixelData
    finally:
        await retriever.close()
        await whitelist.close()


class _Feed:
    """A response body delivered in small pieces, as aiohttp.StreamReader hands it over."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step = data, step

    async def readany(self) -> bytes:
        chunk, self.data = self.data[: self.step], self.data[self.step :]
        return chunk

    async def read(self, n: int) -> bytes:
        chunk, self.data = self.data[: min(n, self.step)], self.data[min(n, self.step) :]
        return chunk

    async def readexactly(self, n: int) -> bytes:
        if len(self.data) < n:
            raise asyncio.IncompleteReadError(self.data, n)
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


def _part10(uid: str, size: int) -> bytes:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", uid
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, pydicom.uid.UID(uid)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.add_new(0x00091010, "OB", b"--bound" * (size // 7))  # the boundary's text inside the data, not after CRLF
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("with_length", [True, False])
@pytest.mark.parametrize("step", [1, 7, 4096])
async def test_multipart_parts_with_or_without_content_length_in_any_chunking(with_length: bool, step: int) -> None:
    from drimbox.consumer.retrieval import _Buffer, _parts

    instances = [_part10(f"1.2.3.{n}", size) for n, size in enumerate((10, 3000, 0))]
    body = b"preamble\r\n"
    for data in instances:
        length = f"Content-Length: {len(data)}\r\n" if with_length else ""
        body += b"--bound  \r\nContent-Type: application/dicom\r\n" + length.encode() + b"\r\n" + data + b"\r\n"
    body += b"--bound--\r\nepilogue"
    got = [i async for i in _parts(_Buffer(_Feed(body, step)), b"bound")]  # type: ignore[arg-type]
    assert [i.data for i in got if isinstance(i, RetrievedInstance)] == instances
    assert [i.sop_instance_uid for i in got] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    assert {i.transfer_syntax_uid for i in got} == {"1.2.840.10008.1.2.1"}


def _image(uid: str, pixels: int, private: int = 0) -> bytes:
    """A Part-10 instance with `pixels` bytes of pixel data, and a private element of `private` bytes before them."""
    ds = pydicom.dcmread(io.BytesIO(_part10(uid, private)))
    ds.PixelData = bytes(range(256)) * (pixels // 256)
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("step", [7, 4096, 1 << 20])
async def test_a_large_part_goes_on_once_its_head_arrived_and_what_its_reader_leaves_is_skipped(step: int) -> None:
    from drimbox.consumer.retrieval import HEAD, _Buffer, _parts

    large, skipped, long_header, small = (_image("1.2.3.1", 300_000), _image("1.2.3.2", 200_000),
                                          _image("1.2.3.3", 100_000, private=HEAD + 100), _image("1.2.3.4", 10))  # fmt: skip
    body = b"".join(b"--bound\r\nContent-Type: application/dicom\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(d), d)
                    for d in (large, skipped, long_header, small)) + b"--bound--"  # fmt: skip
    got: list[tuple[str, bytes]] = []
    async for part in _parts(_Buffer(_Feed(body, step)), b"bound", HEAD + 1):  # type: ignore[arg-type]
        if isinstance(part, StreamedInstance):
            assert len(part.head) == HEAD and part.size in (len(large), len(skipped))
            # The identity is all there before any pixel: the KOS check needs nothing more.
            assert part.head.find(b"\xe0\x7f\x10\x00") > 0
            rest = b"".join([c async for c in part.rest()]) if part.sop_instance_uid == "1.2.3.1" else b""
            got.append(("streamed", part.head + rest))
        else:
            got.append(("whole", part.data))
    # The second part's reader left its rest: skipped, and the parts after it are read as usual.
    assert got == [("streamed", large), ("streamed", skipped[:HEAD]), ("whole", long_header), ("whole", small)]


class _SlowFeed(_Feed):
    """A body arriving at `rate` bytes a second."""

    def __init__(self, data: bytes, step: int, rate: float) -> None:
        super().__init__(data, step)
        self.rate = rate

    async def read(self, n: int) -> bytes:
        chunk = await super().read(n)
        await asyncio.sleep(len(chunk) / self.rate)
        return chunk

    async def readany(self) -> bytes:
        return await self.read(self.step)

    async def readexactly(self, n: int) -> bytes:
        chunks = []
        while n > 0 and self.data:
            chunks.append(await self.read(n))
            n -= len(chunks[-1])
        if n:
            raise asyncio.IncompleteReadError(b"".join(chunks), n)
        return b"".join(chunks)


@pytest.mark.parametrize(("rate", "streamed"), [(None, [True, False, False, False]), (5e6, [True, True, True, True])])
async def test_below_stream_from_a_part_streams_when_the_link_is_slow_and_the_first_one_always(
    rate: float | None, streamed: list[bool]
) -> None:
    """A 200 KB part takes 40 ms at 5 MB/s (a slow link: streamed), microseconds from memory (whole)."""
    from drimbox.consumer.retrieval import STREAM_FROM, _Buffer, _parts

    images = [_image(f"1.2.3.{n}", 200_000) for n in range(4)]
    body = b"".join(b"--bound\r\nContent-Length: %d\r\n\r\n%s\r\n" % (len(d), d) for d in images) + b"--bound--"
    feed = _Feed(body, 1 << 16) if rate is None else _SlowFeed(body, 1 << 16, rate)
    got: list[tuple[bool, bytes]] = []
    async for part in _parts(_Buffer(feed), b"bound", STREAM_FROM):  # type: ignore[arg-type]
        if isinstance(part, StreamedInstance):
            got.append((True, part.head + b"".join([c async for c in part.rest()])))
        else:
            got.append((False, part.data))
    assert got == list(zip(streamed, images, strict=True))


async def test_setup_consumer_images_wires_login_and_exam_checks(sim: Any, tmp_path: Path) -> None:
    """What app.py gets from consumer.images: the routes need a login and an exam this box listed."""
    from aiohttp.test_utils import TestClient, TestServer

    from tests.support.consumer import FakeAuth, Pro, consumer_app_with_images
    from tests.support.consumer import consumer_settings as listing_settings

    auth = FakeAuth(Pro())
    app = consumer_app_with_images(listing_settings(tmp_path, f"{sim.url}/dmp"), sim.url, auth)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/conso/dicom-web/studies/1.2.3")
        assert (resp.status, (await resp.json())["reason"]) == (403, "kos_required")
        resp = await client.get("/conso/dicom-web/studies/1.2.3", headers={KOS_HEADER: "1.2.9"})
        assert (resp.status, (await resp.json())["reason"]) == (404, "exam_unknown")
        resp = await client.post("/conso/api/exams/1.2.9/import")
        assert resp.status == 404
        resp = await client.post("/conso/api/exams/not-a-uid/import")
        assert resp.status == 400
        auth.pro = None
        resp = await client.get("/conso/dicom-web/studies/1.2.3", headers={KOS_HEADER: "1.2.9"})
        assert (resp.status, (await resp.json())["reason"]) == (401, "login_required")
