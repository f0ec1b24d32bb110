"""Shared by the consumer's attack tests: DICOMweb servers on loopback (genuine, rogue), a consumer app, a local PACS."""

from __future__ import annotations

import io
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pydicom
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from drimbox.audit.events import AUDIT, AuditEvent, MemoryAudit
from drimbox.consumer.images import IMAGES
from drimbox.consumer.retrieval import KOS_HEADER
from drimbox.demo.samples.studies import StudySpec, iter_study
from tests.support.consumer import INS, LAUNCH_FORM, FakeAuth, Pro, consumer_app_with_images, consumer_settings

ACCEPT = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
POISON = "POISONED^IMAGE"


def study_files(spec: StudySpec) -> dict[str, dict[str, bytes]]:
    """{series UID: {SOP Instance UID: Part-10 bytes}} of the study `spec` describes."""
    out: dict[str, dict[str, bytes]] = {}
    for _, ds in iter_study(spec):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.setdefault(str(ds.SeriesInstanceUID), {})[str(ds.SOPInstanceUID)] = buffer.getvalue()
    return out


def poisoned(data: bytes, sop_uid: str | None = None, **changes: str) -> bytes:
    """A copy of an instance named POISONED^IMAGE: another SOP Instance UID when given, other attributes when asked."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientName = POISON
    if sop_uid is not None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(sop_uid)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class DicomwebServer:
    """A box's /dicom-web on 127.0.0.1 serving series as multipart/related; it keeps every Authorization it is sent."""

    port: int
    series: dict[str, dict[str, bytes]] = field(default_factory=dict)  # series UID → instances, in order
    redirect_to: str = ""  # answer every request with a 302 there instead
    published: set[str] | None = None  # the KOS UIDs this box published (as a source box checks); None: any
    authorizations: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.paths.append(request.path)
        self.authorizations.append(request.headers.get("Authorization", ""))
        if self.redirect_to:
            raise web.HTTPFound(self.redirect_to + request.path_qs)
        if self.published is not None and request.headers.get(KOS_HEADER) not in self.published:
            return web.json_response(
                {"error": "this box did not publish this KOS", "reason": "kos_unknown"}, status=403
            )
        instances = self.series.get(request.match_info.get("series", ""), {})
        if not instances:
            return web.json_response({"error": "no such series"}, status=404)
        boundary = secrets.token_hex(8)
        body = (
            b"".join(
                b"--"
                + boundary.encode()
                + b"\r\nContent-Type: application/dicom\r\n"
                + f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data
                + b"\r\n"
                for data in instances.values()
            )
            + b"--"
            + boundary.encode()
            + b"--\r\n"
        )
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        return web.Response(body=body, headers={"Content-Type": content_type})


@asynccontextmanager
async def serving(server: DicomwebServer) -> AsyncIterator[DicomwebServer]:
    app = web.Application()
    app.router.add_get("/dicom-web/studies/{study}/series/{series}", server.handle)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", server.port).start()
    try:
        yield server
    finally:
        await runner.cleanup()


class TokenAuth(FakeAuth):
    """A logged-in professional whose access token the test chooses (a real PSC one, or a marker)."""

    def __init__(self, token: str) -> None:
        super().__init__(Pro())
        self.token = token

    async def access_token(self, request: web.Request) -> str | None:
        return self.token


@dataclass
class ConsumerUnderTest:
    client: TestClient[web.Request, web.Application]
    audit: MemoryAudit

    @property
    def app(self) -> web.Application:
        return self.client.app

    async def open_exam_list(self) -> list[str]:
        """The professional's launch and exam list: the consumer fetches (and keeps) every listed KOS."""
        launched = await self.client.post("/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        assert launched.status == 303, await launched.text()
        location = launched.headers["Location"]
        assert location.startswith(f"/conso/patients/{INS}/exams"), location
        resp = await self.client.get(location.replace("/conso/patients/", "/conso/api/patients/"))
        body = await resp.json()
        assert resp.status == 200, body
        return [e["kos_uid"] for e in body["exams"]]

    async def study(self, study_uid: str, kos_uid: str) -> tuple[int, dict[str, bytes] | dict[str, object]]:
        """GET the study through /conso/dicom-web: (status, {SOP UID: bytes}) or (status, JSON refusal)."""
        resp = await self.client.get(f"/conso/dicom-web/studies/{study_uid}", headers={**ACCEPT, KOS_HEADER: kos_uid})
        if resp.status != 200:
            return resp.status, await resp.json()
        return 200, await multipart_instances(resp)

    def events(self, action: str) -> list[AuditEvent]:
        return [e for e in self.audit.events if e.action == action]

    async def clear_cache(self) -> None:
        await self.app[IMAGES].cache.clear()


async def multipart_instances(resp: aiohttp.ClientResponse) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    reader = aiohttp.MultipartReader.from_response(resp)
    while (part := await reader.next()) is not None:
        assert isinstance(part, aiohttp.BodyPartReader)
        data = bytes(await part.read())
        out[str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
    return out


@asynccontextmanager
async def running_consumer(tmp: Path, sim_url: str, token: str, **consumer: object) -> AsyncIterator[ConsumerUnderTest]:
    """The consumer as app.py assembles it (lists, /conso/dicom-web, import), with an audit trail in memory."""
    settings = consumer_settings(tmp, f"{sim_url}/dmp", **consumer)
    app = consumer_app_with_images(settings, sim_url, TokenAuth(token))
    audit = MemoryAudit()
    app[AUDIT] = audit
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield ConsumerUnderTest(client, audit)


@dataclass
class StowPacs:
    """The consumer's local PACS over STOW-RS: it keeps what an import stores."""

    port: int
    stored: list[bytes] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"


@asynccontextmanager
async def stow_pacs(port: int) -> AsyncIterator[StowPacs]:
    pacs = StowPacs(port)

    async def store(request: web.Request) -> web.Response:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            pacs.stored.append(bytes(await part.read()))
        return web.json_response({}, status=200)

    async def present(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/dicom-web/studies", store)
    app.router.add_get("/dicom-web/studies/{study}/instances", present)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield pacs
    finally:
        await runner.cleanup()
