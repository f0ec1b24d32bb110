"""A source box (in-process, Proxy over Orthanc or Native) that published exam C, with one more series it never published."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
from pydicom.uid import UID

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message
from drimbox.manifest import parse_kos
from tests.support.auth_boxes import OPERATOR_TOKEN, RunningBox, box_settings, running_box

EXAM = ANS_EXAMS["C"]
OTHER = ANS_EXAMS["E"]  # in the PACS, never published
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
DOCTOR, NURSE, SECRETARY = "801234567897", "810001234566", "3101235555/SEC0001"


@dataclass
class Published:
    """The running box and what its KOS references, next to what the PACS holds besides."""

    box: RunningBox
    kos_uid: str
    study: str
    series: dict[str, set[str]]  # series the KOS references → their instances
    extra_series: str  # a series of the same study the KOS does not reference
    extra_instance: str
    hidden_instance: str  # an instance the KOS does not reference, in a series it does:
    hidden_in: str

    @property
    def dicomweb(self) -> str:
        return f"{self.box.url}/dicom-web"

    @property
    def study_url(self) -> str:
        return f"{self.dicomweb}/studies/{self.study}"


def _extra_instance(template: Path, out: Path, series: str | None = None) -> tuple[str, str, Path]:
    """An instance of exam C's study in a series of its own numbered first (a thumbnail would pick it), or in `series`."""
    ds = pydicom.dcmread(template)
    sop = f"2.25.{uuid.uuid4().int}"
    if series is None:
        series, ds.SeriesNumber = f"2.25.{uuid.uuid4().int}", 0
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    ds.SeriesDescription = "NOT IN THE KOS"
    ds.PixelData = bytes(len(ds.PixelData))  # another image: a thumbnail of it is told from the KOS's
    ds.save_as(out, enforce_file_format=True)
    return series, sop, out


async def stow(http: aiohttp.ClientSession, url: str, files: list[Path], headers: dict[str, str]) -> int:
    """POST the files as one STOW-RS request; the status."""
    with aiohttp.MultipartWriter("related", boundary="drimbox-test-boundary") as writer:
        for path in files:
            writer.append(path.read_bytes(), {"Content-Type": "application/dicom"})
    content_type = 'multipart/related; type="application/dicom"; boundary=drimbox-test-boundary'
    async with http.post(url, data=writer, headers={**headers, "Content-Type": content_type}) as resp:
        await resp.read()
        return resp.status


async def _wait_published(box: RunningBox, accession: str, timeout: float = 60.0) -> str:
    outbox = box.box.outbox
    assert outbox is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pubs = await outbox.search(accession=accession)
        if pubs and pubs[-1].state in ("published", "failed", "rejected"):
            assert pubs[-1].state == "published" and pubs[-1].kos_uid, pubs[-1]
            return pubs[-1].kos_uid
        await asyncio.sleep(0.1)
    raise AssertionError(f"{accession} never published")


async def report(box: RunningBox, action: str = "publish", control: str = "1") -> None:
    message = build_oru(build_cda(EXAM), action=action, control_id=f"C-{control}")  # type: ignore[arg-type]
    ack = await send_message("127.0.0.1", box.box.settings.mllp.port, message, timeout=30)
    assert b"MSA|AA" in ack, ack


@asynccontextmanager
async def published_source(work: Path, sim_url: str, profile: str, orthanc: Any = None) -> AsyncIterator[Published]:
    """Exam C published by a source box; then a series of the same study added to its PACS (or archive) only."""
    settings = box_settings(work, sim_url, ["source"], profile, authorize_params=["sim_auto=1"])
    settings.publish.waiting_interval, settings.publish.backoff_initial, settings.publish.backoff_max = 0.5, 0.2, 1.0
    if profile == "proxy":
        settings.pacs.ae_title, settings.pacs.host, settings.pacs.port = orthanc.aet, "127.0.0.1", orthanc.dicom_port
        settings.pacs.timeout = 10.0
    files = write_study(work / "study-C", study_for_exam(EXAM, instances=4, rows=32, columns=32))
    other = write_study(work / "study-E", study_for_exam(OTHER, instances=2, rows=32, columns=32))
    extra_series, extra_sop, extra = _extra_instance(files[0], work / "extra.dcm")
    async with running_box(settings) as box, aiohttp.ClientSession() as http:
        if profile == "proxy":
            await asyncio.to_thread(orthanc.store_files, files + other)
        else:
            assert await stow(http, f"{box.url}/dicom-web/studies", files + other, OPERATOR) == 200
        await report(box)
        kos_uid = await _wait_published(box, EXAM.accession)
        kos = parse_kos((settings.var_path / "kos" / f"{kos_uid}.dcm").read_bytes())
        # The PACS holds more than the KOS: a series added after the publication (a late reconstruction, say),
        # and an instance added to a series the KOS references.
        _, hidden_sop, hidden = _extra_instance(files[0], work / "hidden.dcm", kos.series[0].series_uid)
        if profile == "proxy":
            await asyncio.to_thread(orthanc.store_files, [extra, hidden])
            async with http.delete(f"{box.url}/api/cache", params={"study": EXAM.study_uid}, headers=OPERATOR) as r:
                assert r.status == 200
        else:
            assert await stow(http, f"{box.url}/dicom-web/studies", [extra, hidden], OPERATOR) == 200
        series = {s.series_uid: {i.sop_instance_uid for i in s.instances} for s in kos.series}
        yield Published(
            box, kos_uid, EXAM.study_uid, series, extra_series, extra_sop, hidden_sop, kos.series[0].series_uid
        )


async def login(http: aiohttp.ClientSession, box_url: str, who: str) -> None:
    """A real Pro Santé Connect login of `who` at the simulator (sim_auto), ending on the box's /auth/me."""
    async with http.get(f"{box_url}/auth/login", params={"next": "/auth/me", "login_hint": who}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["id"] == who


def report_link(study: str, accession: str = EXAM.accession) -> str:
    return f"/IHEInvokeImageDisplay?requestType=STUDY&studyUID={study}&accessionNumber={accession}"


async def status_json(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any]:
    async with http.get(url, headers=headers, allow_redirects=False) as resp:
        body = await resp.read()
        if resp.content_type in ("application/json", "application/dicom+json") and body:
            return resp.status, await resp.json(content_type=None)
        return resp.status, body
