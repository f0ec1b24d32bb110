"""The box's auth against the simulator (drimbox.sim.app): PSC login, token checks, logout, the signed whitelist."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from drimbox.auth.routes import AuthGate, access_token, require_professional
from drimbox.auth.tokens import BearerTokenChecker, TokenError
from drimbox.auth.whitelist import AnsWhitelist
from drimbox.config import Settings
from drimbox.demo.samples.processes import free_port
from drimbox.sim.app import build_sim_app

pytestmark = pytest.mark.sim

DOCTOR = "801234567897"  # a built-in test professional of the simulator


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[Settings, str]]:
    """The simulator and a box with the auth routes, both on loopback; yields the box settings and URL."""
    sim_port, box_port = free_port(), free_port()
    settings = Settings()
    settings.sim.port, settings.sim.var_dir = sim_port, str(tmp_path / "sim-var")
    sim_url = f"http://127.0.0.1:{sim_port}"
    settings.psc.issuer = f"{sim_url}/psc"
    settings.whitelist.url, settings.whitelist.certificate_url = (
        f"{sim_url}/whitelist",
        f"{sim_url}/whitelist/certificate",
    )
    settings.whitelist.trust_on_first_use = True  # the simulator's test root, on loopback
    settings.box.public_url, settings.box.var_dir = f"http://127.0.0.1:{box_port}", str(tmp_path / "box-var")
    settings.auth.authorize_params = ["sim_auto=1"]
    sim = web.AppRunner(build_sim_app(settings), access_log=None)
    await sim.setup()
    await web.TCPSite(sim, "127.0.0.1", sim_port).start()

    async def whoami(request: web.Request) -> web.Response:
        professional = await require_professional(request)
        return web.json_response({**professional.to_json(), "token": await access_token(request)})

    app = web.Application()
    AuthGate(settings).setup(app)
    app.router.add_get("/whoami", whoami)
    box = web.AppRunner(app, access_log=None)
    await box.setup()
    await web.TCPSite(box, "127.0.0.1", box_port).start()
    yield settings, settings.box.public_url
    await box.cleanup()
    await sim.cleanup()


async def test_login_token_check_and_logout_against_the_simulator(mesh: tuple[Settings, str]) -> None:
    settings, box = mesh
    checker = BearerTokenChecker(settings)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            login = f"{box}/auth/login?next=/whoami&login_hint={DOCTOR}"
            async with client.get(login) as resp:
                assert resp.status == 200, await resp.text()
                me = await resp.json()
            assert me["id"] == DOCTOR and me["family"] == "MEDIONI" and me["profession"] == "10" and me["specialty"]
            token = me["token"]
            # The source side checks that token by introspection and gets the same professional.
            professional = await checker.check(token)
            assert professional.id == DOCTOR and professional.profession == "10"
            async with client.post(f"{box}/auth/logout", headers={"Origin": box}) as resp:
                assert resp.status == 200
                assert any("/psc/logout" in str(r.url) for r in resp.history)
            fresh = BearerTokenChecker(settings)  # no cached answer from before the logout
            try:
                with pytest.raises(TokenError) as info:
                    await fresh.check(token)
                assert info.value.reason == "revoked"
            finally:
                await fresh.close()
            async with client.get(f"{box}/whoami", allow_redirects=False) as resp:
                assert resp.status == 303
    finally:
        await checker.close()


async def test_jwt_mode_against_the_simulator_keys(mesh: tuple[Settings, str]) -> None:
    settings, box = mesh
    settings.auth.token_check = "jwt"
    checker = BearerTokenChecker(settings)
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
            async with client.get(f"{box}/auth/login?next=/whoami&login_hint={DOCTOR}") as resp:
                token = (await resp.json())["token"]
        assert (await checker.check(token)).id == DOCTOR
    finally:
        await checker.close()


async def test_the_simulators_signed_whitelist_verifies(mesh: tuple[Settings, str]) -> None:
    settings, _ = mesh
    whitelist = AnsWhitelist(settings.whitelist)
    try:
        listed = await whitelist.refresh()
        assert listed.signed
        assert await whitelist.check("http://127.0.0.1:8080/dicom-web/studies/1.2.3")
        assert not await whitelist.check("https://unlisted.example/dicom-web")
    finally:
        await whitelist.close()
    unsigned = AnsWhitelist(dataclasses.replace(settings.whitelist, url=settings.whitelist.url + "/unsigned"))
    try:
        assert not await unsigned.check("http://127.0.0.1:8080/x")
        assert "unsigned" in unsigned.last_error
    finally:
        await unsigned.close()
