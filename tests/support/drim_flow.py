"""The DRIM-M image flow on loopback: exam C published by a source box, its /dicom-web protected, a consumer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import requests
from aiohttp import web

from drimbox.auth.tokens import BearerTokenChecker
from drimbox.auth.whitelist import AnsWhitelist
from drimbox.config import Settings, WhitelistSettings, load_settings
from drimbox.consumer.backend import KOS_PARAM, ConsumerBackend
from drimbox.consumer.importer import Importer, import_routes
from drimbox.consumer.retrieval import SourceRetriever
from drimbox.consumer.store import ConsumerStore
from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.reports import ANS_EXAMS, Action, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.dicomweb.routes import dicomweb_routes
from drimbox.dicomweb.scope import ScopedBackend
from drimbox.hl7.mllp import send_message
from drimbox.source.access import SourceAccess
from drimbox.source.outbox import Outbox
from drimbox.source.proxy_backend import ProxyBackend
from drimbox.state.series_cache import SeriesCache

INS_KEY = "279035121518989|1.2.250.1.213.1.4.10"
DOCTOR = "801234567897"  # the simulator's Dr MEDIONI (general practitioner)
CLIENT = ("drimbox", "drimbox-secret")
REDIRECT = "http://127.0.0.1:9/auth/callback"


def psc_token(sim_url: str, login_hint: str = DOCTOR) -> dict[str, Any]:
    """A real access token from the simulated Pro Santé Connect (authorization code + PKCE, sim_auto)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {"response_type": "code", "client_id": CLIENT[0], "redirect_uri": REDIRECT, "scope": "openid scope_all",
              "state": secrets.token_hex(8), "nonce": secrets.token_hex(8), "code_challenge": challenge,
              "code_challenge_method": "S256", "login_hint": login_hint, "sim_auto": "1", "acr_values": "eidas1"}  # fmt: skip
    auth = requests.get(f"{sim_url}/psc/auth", params=params, allow_redirects=False, timeout=10)
    assert auth.status_code == 302, auth.text
    code = parse_qs(urlsplit(auth.headers["Location"]).query)["code"][0]
    token = requests.post(f"{sim_url}/psc/token", auth=CLIENT, timeout=10, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier})  # fmt: skip
    assert token.status_code == 200, token.text
    body: dict[str, Any] = token.json()
    return body


def revoke(sim_url: str, access_token: str) -> None:
    r = requests.post(f"{sim_url}/psc/revoke", auth=CLIENT, timeout=10,
                      data={"token": access_token, "token_type_hint": "access_token"})  # fmt: skip
    assert r.status_code == 200, r.text


def publish_exam(orthanc: Any, box: Any, work: Path, *, exam: str = "C", instances: int = 6,
                 action: Action = "publish", control: str = "1") -> dict[str, Any]:  # fmt: skip
    """Load the exam's images into the PACS (on first publish), send the report, wait for the outcome."""
    spec = ANS_EXAMS[exam]
    if action == "publish":
        orthanc.store_files(write_study(work / f"study-{exam}", study_for_exam(spec, instances=instances)))
    message = build_oru(build_cda(spec), action=action, control_id=f"{exam}-{control}")
    ack = asyncio.run(send_message("127.0.0.1", box.mllp_port, message, timeout=30))
    assert b"MSA|AA" in ack, ack
    accession = spec.accession
    wanted = ("published",) if action == "publish" else ("withdrawn",)
    result: dict[str, Any] = box.wait_state(accession, (*wanted, "failed", "rejected"))
    assert result["state"] in wanted, result
    return result


# A viewer on another origin that the protected front lets call it (CORS).
VIEWER_ORIGIN = "http://viewer.example"


@asynccontextmanager
async def protected_front(box: Any, sim_url: str, port: int, *, gate: Any = None) -> AsyncIterator[SourceAccess]:
    """The source box's /dicom-web behind SourceAccess, on 127.0.0.1:`port` (the box's public URL).

    Served in this process over the box's own ProxyBackend settings (same Orthanc), reading the box's outbox and
    stored KOS, assembled as source/wiring.py does (the scope wrapper, CORS for VIEWER_ORIGIN), with a test gate.
    """
    settings = load_settings(box.config, env={})
    settings.psc.issuer = f"{sim_url}/psc"
    settings.auth.token_cache_ttl = 0  # every request asks the provider: revocation is seen at once
    var = settings.var_path
    outbox = Outbox(var / "drimbox.sqlite")
    cache = SeriesCache(box.work / "front-cache", 1024**3)
    tokens = BearerTokenChecker(settings)
    access = SourceAccess(outbox, var / "kos", tokens, gate=gate, enabled=True, cors_origins=[VIEWER_ORIGIN])
    app = web.Application()
    backend = ScopedBackend(ProxyBackend(settings, cache))
    app.add_routes(access.protect(dicomweb_routes(backend, base="/dicom-web", compress=False,
                                                  cors_origins=[VIEWER_ORIGIN])))  # fmt: skip
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield access
    finally:
        await runner.cleanup()
        await tokens.close()
        cache.close()
        outbox.close()


@dataclass
class Doctor:
    """A logged-in professional as the consumer's auth sees them (consumer.auth.ProfessionalLike)."""

    id: str = DOCTOR
    family: str | None = "MEDIONI"
    given: str | None = "Stéphane"
    profession_code: str | None = "10"
    specialty_code: str | None = "SM26"
    sector_code: str | None = None
    structure_id: str | None = None
    structure_name: str | None = None


class TokenAuth:
    """consumer.auth.ConsumerAuth with a real PSC access token (what AuthGate gives once logged in)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.doctor = Doctor()

    async def current_professional(self, request: web.Request) -> Doctor:
        return self.doctor

    def login_url(self, next_path: str) -> str:
        return "/auth/login"

    async def access_token(self, request: web.Request) -> str:
        return self.token


@dataclass
class Consumer:
    url: str
    backend: ConsumerBackend
    importer: Importer
    store: ConsumerStore
    auth: TokenAuth
    whitelist: AnsWhitelist


def consumer_settings(work: Path, sim_url: str, pacs: Any = None, method: str = "c-store") -> Settings:
    s = Settings()
    s.box.var_dir = str(work / "consumer-var")
    s.dicom.ae_title = "DRIMCONSO"
    s.whitelist = WhitelistSettings(
        url=f"{sim_url}/whitelist", certificate_url=f"{sim_url}/whitelist/certificate", trust_on_first_use=True
    )
    if pacs is not None:
        c = s.consumer
        c.local_pacs_ae_title, c.local_pacs_host, c.local_pacs_port = pacs.aet, "127.0.0.1", pacs.dicom_port
        c.local_pacs_method, c.local_pacs_stow_url = method, pacs.dicomweb_url
    return s


@asynccontextmanager
async def running_consumer(settings: Settings, token: str, manifests: dict[str, bytes]) -> AsyncIterator[Consumer]:
    """The consumer's /conso/dicom-web and import API in an aiohttp server on loopback."""
    var = settings.var_path
    store = await ConsumerStore.open(var / "consumer")
    for kos_uid, data in manifests.items():
        await store.save_manifest(kos_uid, INS_KEY, data)
    whitelist = AnsWhitelist(settings.whitelist)
    retriever = SourceRetriever(whitelist, connect_timeout=3.0, read_timeout=20.0)
    backend = ConsumerBackend(store, SeriesCache(var / "consumer-cache", settings.consumer.cache_max_bytes), retriever)
    importer = Importer(settings, backend, var / "consumer")
    auth = TokenAuth(token)
    app = web.Application()
    app.add_routes(
        backend.protect(
            dicomweb_routes(backend, base="/conso/dicom-web", compress=False, access_params=(KOS_PARAM,)), auth
        )
    )
    app.add_routes(import_routes(lambda: importer, auth))
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Consumer(f"http://127.0.0.1:{port}", backend, importer, store, auth, whitelist)
    finally:
        await runner.cleanup()
        await importer.close()
        await backend.close()
        await whitelist.close()
        await store.close()


async def read_multipart(resp: aiohttp.ClientResponse) -> dict[str, bytes]:
    """A WADO-RS answer as {SOP Instance UID: Part-10 bytes} (read with aiohttp's own multipart reader)."""
    from drimbox.consumer.retrieval import _instance

    out: dict[str, bytes] = {}
    reader = aiohttp.MultipartReader.from_response(resp)
    while (part := await reader.next()) is not None:
        assert isinstance(part, aiohttp.BodyPartReader)
        data = bytes(await part.read())
        out[_instance(data).sop_instance_uid] = data
    return out
