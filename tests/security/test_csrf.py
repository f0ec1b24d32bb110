"""Finding 6 (CSRF), in a real browser: a page on another origin of the same site acts with the doctor's session.

The victim is logged in to a consumer box (Pro Santé Connect of the simulator) and opened a patient from their
software. The attacker's page is served on another port of 127.0.0.1: same site, so the `SameSite=Lax` session
cookie IS sent with its cross-origin POSTs. It starts an import, asks emergency access ("bris de glace") with its
own reason, logs the doctor out, and posts a launch carrying another professional's access token. Each must fail;
the doctor's own pages (the list's Import button, the logout confirmation) and the software's cross-origin launch
must keep working.
"""

from __future__ import annotations

import asyncio
import html
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from aiohttp import web

from drimbox.demo.launcher import launch_page
from drimbox.demo.samples.processes import free_port
from tests.support.auth_boxes import RunningBox, box_settings, running_box
from tests.support.consumer import INS, INS_OID, LAUNCH_FORM, publish, study_spec
from tests.support.drim_flow import psc_token
from tests.support.fixtures_mesh import get_json

CHROMIUM = "/usr/bin/chromium"
async_api = pytest.importorskip("playwright.async_api", reason="the Python package playwright is not installed")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.sim, pytest.mark.box]

GP = "801234567897"  # Dr MEDIONI, the victim
RADIOLOGIST = "801234560801"  # Dr BIDEAULT, whose token the attacker holds
ATTACKER_REASON = "attacker's reason for a bris de glace"


@dataclass
class Scene:
    box: RunningBox
    sim_url: str
    kos_uid: str
    attacker: str  # http://127.0.0.1:<another port>
    pages: dict[str, str]
    page: Any  # the victim's tab
    seen: list[tuple[str, int]] = field(default_factory=list)  # (method path, status) of answers from the box

    def serve(self, name: str, body: str) -> str:
        """Put a page on the attacker's server; its URL."""
        self.pages[name] = body
        return f"{self.attacker}/{name}"

    async def visit(self, name: str, body: str, path: str) -> int:
        """The victim opens the attacker's page, which makes their browser call `path` on the box: its status."""
        url = self.serve(name, body)
        async with self.page.expect_response(lambda r: r.url.startswith(self.box.url + path), timeout=15_000) as info:
            await self.page.goto(url)
        response = await info.value
        await self.page.wait_for_load_state()
        status: int = response.status
        return status

    async def me(self) -> dict[str, Any] | None:
        """Who the victim's browser is logged in as (GET /auth/me, with its cookies), None when nobody."""
        response = await self.page.context.request.get(f"{self.box.url}/auth/me")
        if response.status == 401:
            return None
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body

    def consultations(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = get_json(f"{self.sim_url}/sim/dmp/consultations?patient={INS}")
        return rows


def auto_post(action: str, fields: dict[str, str]) -> str:
    """The attacker's page: a form to `action`, posted by script as soon as the page loads."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">' for k, v in fields.items()
    )
    return (f'<!doctype html><html><body><form method="post" action="{html.escape(action)}">{inputs}</form>'
            "<script>document.forms[0].submit()</script></body></html>")  # fmt: skip


@pytest.fixture
async def scene(tmp_path: Path, sim: Any) -> AsyncIterator[Scene]:
    settings = box_settings(tmp_path, sim.url, ["consumer"], authorize_params=["sim_auto=1"])
    kos_uid = await publish(f"{sim.url}/dmp", settings, study_spec())
    pages: dict[str, str] = {}

    async def attacker_page(request: web.Request) -> web.Response:
        body = pages.get(request.match_info["name"])
        return web.Response(text=body, content_type="text/html") if body else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{name}", attacker_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with running_box(settings) as box, async_api.async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--no-first-run"],
            )  # fmt: skip
            context = await browser.new_context(locale="fr-FR")  # a French doctor's browser
            page = await context.new_page()
            s = Scene(box, sim.url, kos_uid, f"http://127.0.0.1:{port}", pages, page)

            def record(r: Any) -> None:
                if r.url.startswith(box.url):
                    s.seen.append((r.request.method + " " + r.url, r.status))

            page.on("response", record)
            # The doctor logs in (the simulator's PSC, no page with sim_auto), then opens the patient from their
            # software: a page of another origin that posts the ANS launch form (as the demo's launcher does).
            await page.goto(f"{box.url}/auth/login?{urlencode({'login_hint': GP, 'next': '/auth/me'})}")
            assert (await s.me() or {}).get("id") == GP
            await page.goto(s.serve("software", launch_page(box.url, LAUNCH_FORM)))
            await page.wait_for_url(f"{box.url}/conso/patients/{INS}/exams**")
            assert kos_uid in await page.content(), await page.content()
            try:
                yield s
            finally:
                await browser.close()
    finally:
        await runner.cleanup()


async def test_another_origin_cannot_start_an_import(scene: Scene) -> None:
    path = f"/conso/api/exams/{scene.kos_uid}/import"
    status = await scene.visit("import", auto_post(scene.box.url + path, {}), path)
    assert status == 403, await scene.page.content()
    assert not [a for a in scene.box.actions() if a[0] == "consumer.import"]
    assert ("auth.csrf", "refused", "cross_origin") in scene.box.actions()
    # The doctor's own Import button on the exam list still starts it (its form posts to /conso/imports).
    await scene.page.go_back()
    await scene.page.goto(scene.page.url)  # the list again, as the doctor sees it
    async with scene.page.expect_response(
        lambda r: urlsplit(r.url).path == "/conso/imports" and r.request.method == "POST"
    ) as info:
        await scene.page.click("button[name=one]")
    assert (await info.value).status == 303
    assert ("consumer.import", "success", "") in scene.box.actions()


async def test_another_origin_cannot_open_emergency_access(scene: Scene) -> None:
    before = scene.consultations()
    path = f"/conso/patients/{INS}/emergency"
    action = f"{scene.box.url}{path}?{urlencode({'oid': INS_OID})}"
    status = await scene.visit("emergency", auto_post(action, {"reason": ATTACKER_REASON}), path)
    assert status == 403, await scene.page.content()
    await asyncio.sleep(0.2)
    after = scene.consultations()
    assert not [r for r in after if r["purpose"] == "bris_de_glace"], after
    # Nothing in the attacker's words reached the DMP. (Ordinary consultations may be added meanwhile: the list
    # page's thumbnails, loading lazily, check their exam with the DMP.)
    assert not [r for r in after if ATTACKER_REASON in str(r.get("reason", ""))], after
    assert all(r["purpose"] == "normal" for r in after[len(before) :]), after
    assert not [e for e in scene.box.audit.events if e.detail.get("reason") == ATTACKER_REASON]
    # The refusal page's own emergency form still works: the radiologist, without authorisation, asks for it.
    context = await scene.page.context.browser.new_context(locale="fr-FR")
    page = await context.new_page()
    await page.goto(f"{scene.box.url}/auth/login?{urlencode({'login_hint': RADIOLOGIST, 'next': '/auth/me'})}")
    refused = await page.goto(f"{scene.box.url}{path.replace('emergency', 'exams')}?{urlencode({'oid': INS_OID})}")
    assert refused is not None and refused.status == 403
    await page.fill("textarea[name=reason]", "patient inconscient aux urgences")
    await page.click("button:has-text('mode urgence')")
    await page.wait_for_url(f"{scene.box.url}/conso/patients/{INS}/exams**")
    assert scene.kos_uid in await page.content()
    emergencies = [(r["professional"], r["reason"]) for r in scene.consultations() if r["purpose"] == "bris_de_glace"]
    assert emergencies and set(emergencies) == {(RADIOLOGIST, "patient inconscient aux urgences")}
    await context.close()


async def test_another_origin_cannot_log_the_doctor_out(scene: Scene) -> None:
    # An image that GETs /auth/logout, then the page itself goes there (a link followed: Lax cookies are sent).
    url = f"{scene.box.url}/auth/logout"
    get = f'<!doctype html><html><body><img src="{url}" onerror="location.href = this.src"></body></html>'
    assert await scene.visit("logout-get", get, "/auth/logout") == 200
    assert scene.page.url == url  # the confirmation page, nothing more
    assert (await scene.me() or {}).get("id") == GP
    status = await scene.visit("logout-post", auto_post(f"{scene.box.url}/auth/logout", {}), "/auth/logout")
    assert status == 403
    assert (await scene.me() or {}).get("id") == GP
    # The doctor's own logout: the confirmation page's button.
    await scene.page.goto(f"{scene.box.url}/auth/logout")
    await scene.page.click("button:has-text('Se déconnecter')")
    await scene.page.wait_for_url(f"{scene.box.url}/auth/logged-out**")
    assert await scene.me() is None


async def test_a_launch_with_another_professionals_token_does_not_switch_the_session(scene: Scene) -> None:
    other = (await asyncio.to_thread(psc_token, scene.sim_url, RADIOLOGIST))["access_token"]
    form = {**LAUNCH_FORM, "access_token": other}
    status = await scene.visit("switch", auto_post(f"{scene.box.url}/conso/launch", form), "/conso/launch")
    assert status == 409, await scene.page.content()
    assert "déconnectez-vous" in (await scene.page.content()).lower()
    me = await scene.me()
    assert me is not None and me["id"] == GP
    assert ("auth.launch-token", "refused", "another_professional") in scene.box.actions()
    # The page offers to log out first; then the same launch logs the other professional in.
    await scene.page.click("button:has-text('Se déconnecter')")
    await scene.page.wait_for_url(f"{scene.box.url}/auth/logged-out**")
    assert await scene.me() is None
    await scene.page.goto(scene.serve("switch-again", auto_post(f"{scene.box.url}/conso/launch", form)))
    await scene.page.wait_for_url(f"{scene.box.url}/conso/patients/{INS}/exams**")
    assert (await scene.me() or {}).get("id") == RADIOLOGIST
    # A launch with the session's own professional's token is accepted: the session refreshed, same professional.
    mine = (await asyncio.to_thread(psc_token, scene.sim_url, RADIOLOGIST))["access_token"]
    await scene.page.goto(scene.serve("software-token", auto_post(f"{scene.box.url}/conso/launch",
                                                                   {**LAUNCH_FORM, "access_token": mine})))  # fmt: skip
    await scene.page.wait_for_url(f"{scene.box.url}/conso/patients/{INS}/exams**")
    assert (await scene.me() or {}).get("id") == RADIOLOGIST
