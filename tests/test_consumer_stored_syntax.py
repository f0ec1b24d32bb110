"""A JPEG 2000 study on a source box reaches a viewer through the consumer as stored: no box decodes it on the way."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
from pydicom.encaps import generate_fragmented_frames

from drimbox.consumer.evidence import origin_of
from drimbox.consumer.retrieval import KOS_HEADER
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message
from drimbox.manifest import parse_kos
from tests.support.drim_flow import consumer_settings, psc_token, read_multipart, running_consumer

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
# What viewer/dicomweb.js frameAccept sends when the browser decodes JPEG-LS and JPEG 2000 (viewer/codecs.js).
VIEWER_FRAME_ACCEPT = ", ".join(
    [f'multipart/related; type="image/jls"; transfer-syntax={ts}' for ts in ("1.2.840.10008.1.2.4.80",
                                                                           "1.2.840.10008.1.2.4.81")]
    + [f'multipart/related; type="image/jp2"; transfer-syntax={ts}' for ts in (J2K_LOSSLESS, "1.2.840.10008.1.2.4.91")]
    + ['multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1; q=0.5']
)  # fmt: skip


@pytest.fixture(autouse=True)
def empty_pacs(orthanc: Any) -> None:
    orthanc.clear()


def _publish_j2k(orthanc: Any, box: Any, work: Path) -> tuple[str, dict[str, bytes]]:
    """Exam C stored in the PACS as JPEG 2000 lossless; (KOS UID, {SOP Instance UID: first frame as stored})."""
    exam = ANS_EXAMS["C"]
    spec = dataclasses.replace(study_for_exam(exam, instances=4), transfer_syntax=J2K_LOSSLESS)
    files = write_study(work / "study-j2k", spec)
    for path in files:  # by REST: dcmtk's storescu proposes no JPEG 2000 context of its own
        request = urllib.request.Request(f"{orthanc.base_url}/instances", data=path.read_bytes(), method="POST")
        urllib.request.urlopen(request, timeout=30).close()
    frames = {}
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == J2K_LOSSLESS
        frames[str(ds.SOPInstanceUID)] = b"".join(next(generate_fragmented_frames(ds.PixelData)))
    ack = asyncio.run(send_message("127.0.0.1", box.mllp_port, build_oru(build_cda(exam), control_id="J2K-1")))
    assert b"MSA|AA" in ack, ack
    result: dict[str, Any] = box.wait_state(exam.accession, ("published", "failed", "rejected"))
    assert result["state"] == "published", result
    return result["kos_uid"], frames


async def test_a_jpeg_2000_study_reaches_the_viewer_through_the_consumer_as_stored(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    box = source_box(orthanc)
    kos_uid, stored_frames = await asyncio.to_thread(_publish_j2k, orthanc, box, tmp_path)
    kos_bytes = await asyncio.to_thread(sim.document_bytes, kos_uid)
    kos = parse_kos(kos_bytes)
    token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
    async with (running_consumer(consumer_settings(tmp_path, sim.url), token, {kos_uid: kos_bytes}) as conso,
                aiohttp.ClientSession() as http):  # fmt: skip
        base = f"{conso.url}/conso/dicom-web/studies/{kos.study_uid}"
        # The viewer's first request for a frame: the consumer's cache is cold, it fetches the series from the source.
        series = kos.series[0]
        sop = series.instances[0].sop_instance_uid
        url = f"{base}/series/{series.series_uid}/instances/{sop}/frames/1"
        async with http.get(url, headers={"Accept": VIEWER_FRAME_ACCEPT, KOS_HEADER: kos_uid}) as resp:
            assert resp.status == 200, await resp.text()
            reader = aiohttp.MultipartReader.from_response(resp)
            part = await reader.next()
            assert isinstance(part, aiohttp.BodyPartReader)
            content_type = part.headers["Content-Type"]
            frame = bytes(await part.read())
        # As stored in the PACS: the source did not decode for the consumer, the consumer did not for the viewer.
        assert "image/jp2" in content_type and J2K_LOSSLESS in content_type, content_type
        assert frame == stored_frames[sop]

        # A DICOMweb client asking for the study as stored gets the JPEG 2000 bitstream of every instance.
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
        async with http.get(base, headers={"Accept": accept, KOS_HEADER: kos_uid}) as resp:
            assert resp.status == 200
            through = await read_multipart(resp)
        assert set(through) == set(stored_frames)
        for uid, data in through.items():
            ds = pydicom.dcmread(io.BytesIO(data))
            assert ds.file_meta.TransferSyntaxUID == J2K_LOSSLESS
            assert b"".join(next(generate_fragmented_frames(ds.PixelData))) == stored_frames[uid]

        # The consumer's cache holds every instance in the stored syntax (nothing was decoded on the way in).
        for s in kos.series:
            origin = origin_of(s.retrieve_url, kos_uid)
            cached = await conso.backend.cache.cached(kos.study_uid, s.series_uid, origin=origin)
            assert cached is not None and len(cached) == len(s.instances)
            assert {c.transfer_syntax_uid for c in cached} == {J2K_LOSSLESS}
