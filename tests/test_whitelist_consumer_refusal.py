"""A whitelist that cannot be trusted leaves the consumer with no source to send a professional's token to (502)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from drimbox.audit.events import AUDIT, MemoryAudit
from drimbox.config import Settings, WhitelistSettings
from drimbox.consumer import setup_consumer
from drimbox.consumer.images import setup_consumer_images
from drimbox.demo.samples.processes import free_port
from drimbox.sim import build_sim_app
from tests.support.consumer import LAUNCH_FORM, FakeAuth, Pro, publish, study_spec

pytestmark = pytest.mark.sim
ACCEPT = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


@dataclass
class Mesh:
    sim_url: str
    source_url: str
    source_hits: list[str]


async def mesh(tmp: Path, signer: str) -> AsyncIterator[Mesh]:
    """The simulator (DMP, whitelist signed by `signer`) and a stand-in source that records whoever reaches it."""
    settings = Settings()
    settings.sim.var_dir, settings.sim.port, settings.sim.whitelist_signer = str(tmp / "sim"), free_port(), signer
    sim = TestServer(build_sim_app(settings), host="127.0.0.1", port=settings.sim.port)
    hits: list[str] = []

    async def source(request: web.Request) -> web.Response:
        hits.append(request.headers.get("Authorization", ""))
        return web.json_response({"error": "nothing here"}, status=404)

    source_app = web.Application()
    source_app.router.add_route("*", "/{tail:.*}", source)
    src = TestServer(source_app, host="127.0.0.1")
    await sim.start_server()
    await src.start_server()
    try:
        yield Mesh(f"http://127.0.0.1:{sim.port}", f"http://127.0.0.1:{src.port}", hits)
    finally:
        await src.close()
        await sim.close()


@pytest.fixture(params=["valid", "revoked", "untrusted", "wrong_cn", "expired"])
async def signed_by(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, Mesh]]:
    async for m in mesh(tmp_path, request.param):
        yield request.param, m


async def test_the_consumer_sends_no_token_on_a_list_it_cannot_trust(
    signed_by: tuple[str, Mesh], tmp_path: Path
) -> None:
    kind, m = signed_by
    settings = Settings()
    settings.box.var_dir, settings.box.roles = str(tmp_path / "consumer-var"), ["consumer"]
    settings.dmp.url, settings.dmp.timeout = f"{m.sim_url}/dmp", 5.0
    settings.whitelist = WhitelistSettings(url=f"{m.sim_url}/whitelist", certificate_url=f"{m.sim_url}/whitelist/certificate",
                                           trust_on_first_use=True)  # fmt: skip
    spec = study_spec()
    kos_uid = await publish(settings.dmp.url, settings, spec, public_url=m.source_url)
    auth = FakeAuth(Pro())
    app = web.Application()
    app[AUDIT] = MemoryAudit()
    setup_consumer(app, settings, auth)
    setup_consumer_images(app, settings, auth)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        assert (await client.post("/conso/launch", data=LAUNCH_FORM)).status == 200
        resp = await client.get(f"/conso/dicom-web/studies/{spec.study_uid}?kos={kos_uid}", headers=ACCEPT)
        if kind == "valid":
            # The control: a trusted list names the source, which is asked (and has nothing).
            assert resp.status == 404 and m.source_hits
        else:
            assert (resp.status, (await resp.json())["reason"]) == (502, "source_not_whitelisted")
            assert m.source_hits == []  # not one request, so not one token, reached the source
