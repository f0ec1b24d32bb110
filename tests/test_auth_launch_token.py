"""A launch carrying a PSC access token logs the professional in directly; sessions expire; logout ends them everywhere."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.support.auth_boxes import RunningBox, box_settings, running_box
from tests.support.consumer import INS, LAUNCH_FORM
from tests.support.drim_flow import psc_token, revoke

pytestmark = [pytest.mark.sim, pytest.mark.box]
STUDY = "1.2.250.1.213.4.5.2.1.103"
LINK = f"/IHEInvokeImageDisplay?requestType=STUDY&studyUID={STUDY}"
EXAMS_API = f"/conso/api/patients/{INS}/exams"


async def token(sim: Any) -> str:
    answer = await asyncio.to_thread(psc_token, sim.url)
    access: str = answer["access_token"]
    return access


async def launch(
    box: RunningBox, *, bearer: str = "", form_token: str = "", cookie: str = ""
) -> aiohttp.ClientResponse:
    """POST /conso/launch as the doctor's software would; returns the (unfollowed) answer, body read."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    if cookie:
        headers["Cookie"] = f"drimbox_session={cookie}"
    form = {**LAUNCH_FORM, **({"access_token": form_token} if form_token else {})}
    async with aiohttp.ClientSession() as http:
        resp = await http.post(box.url + "/conso/launch", data=form, headers=headers, allow_redirects=False)
        await resp.read()
        return resp


def exams_api(resp: aiohttp.ClientResponse) -> str:
    """The exam list API for the launch this answer redirects to (the launch carries the patient's consent)."""
    return EXAMS_API + "?" + urlsplit(resp.headers["Location"]).query


async def status(box: RunningBox, path: str, session: str) -> tuple[int, str]:
    """(status, Location) of a GET with this session cookie (sent by hand: a kept or stolen cookie)."""
    async with aiohttp.ClientSession() as http:
        resp = await http.get(box.url + path, headers={"Cookie": f"drimbox_session={session}"}, allow_redirects=False)
        await resp.read()
        return resp.status, resp.headers.get("Location", "")


async def test_a_launch_with_a_valid_token_needs_no_second_login(tmp_path: Path, sim: Any) -> None:
    async with running_box(box_settings(tmp_path, sim.url, ["source", "consumer"])) as box:
        access = await token(sim)
        resp = await launch(box, bearer=access)
        assert resp.status == 303 and resp.headers["Location"].startswith(f"/conso/patients/{INS}/exams?")
        session = resp.cookies["drimbox_session"].value
        me_status, _ = await status(box, "/auth/me", session)
        assert me_status == 200
        async with aiohttp.ClientSession(cookies={"drimbox_session": session}) as http:
            me = await (await http.get(box.url + "/auth/me")).json()
            assert me["family"] == "MEDIONI"
            # No refresh token came with the launch: the session ends when the software's token does.
            assert me["session_expires_at"] <= time.time() + 300
            exams = await http.get(box.url + exams_api(resp))
            assert exams.status == 200, await exams.text()  # the exam list, asked of the DMP for them

        # The same token in the form field (a browser form cannot set a header) works too; both at once do not.
        by_form = await launch(box, form_token=access)
        assert by_form.status == 303 and "drimbox_session" in by_form.cookies
        assert (await launch(box, bearer=access, form_token=access)).status == 400

        # A refused token is a 401 page, even for a browser that has a live session: never a silent fallback.
        forged = await launch(box, bearer="forged-token", cookie=session)
        assert forged.status == 401 and "drimbox_session" not in forged.cookies
        other = await token(sim)
        await asyncio.to_thread(revoke, sim.url, other)
        revoked = await launch(box, form_token=other)
        assert revoked.status == 401
        # Without a token the launch goes the usual way: login first.
        plain = await launch(box)
        assert plain.status == 303 and plain.headers["Location"].startswith("/auth/login?")

    launches = [(outcome, reason) for action, outcome, reason in box.actions() if action == "auth.launch-token"]
    assert launches == [("success", ""), ("success", ""), ("refused", "inactive"), ("refused", "revoked")]
    assert all(e.professional for e in box.audit.events if e.outcome == "success")


@pytest.mark.parametrize("ttl,idle", [(1.5, 600.0), (600.0, 1.5)], ids=["absolute", "idle"])
async def test_an_expired_session_is_refused(tmp_path: Path, sim: Any, ttl: float, idle: float) -> None:
    settings = box_settings(tmp_path, sim.url, ["source", "consumer"], session_ttl=ttl, session_idle=idle)
    async with running_box(settings) as box:
        launched = await launch(box, bearer=await token(sim))
        session = launched.cookies["drimbox_session"].value
        assert (await status(box, "/auth/me", session))[0] == 200
        assert (await status(box, LINK, session))[0] == 404  # logged in: told nothing is published here
        await asyncio.sleep(1.7)
        assert (await status(box, "/auth/me", session))[0] == 401
        assert (await status(box, exams_api(launched), session))[0] == 401
        link_status, where = await status(box, LINK, session)
        assert link_status == 303 and where.startswith("/auth/login?")


async def test_after_logout_the_cookie_opens_nothing(tmp_path: Path, sim: Any) -> None:
    async with running_box(box_settings(tmp_path, sim.url, ["source", "consumer"])) as box:
        launched = await launch(box, bearer=await token(sim))
        session = launched.cookies["drimbox_session"].value
        assert (await status(box, exams_api(launched), session))[0] == 200
        async with aiohttp.ClientSession(cookies={"drimbox_session": session}) as http:
            out = await http.post(box.url + "/auth/logout", headers={"Origin": box.url}, allow_redirects=False)
            assert out.status == 303 and out.cookies["drimbox_session"].value == ""
        # The browser forgot the cookie; a copy kept elsewhere is worth nothing either.
        assert (await status(box, "/auth/me", session))[0] == 401
        assert (await status(box, exams_api(launched), session))[0] == 401
        assert (await status(box, f"/conso/dicom-web/studies/{STUDY}/series", session))[0] == 401
        link_status, where = await status(box, LINK, session)
        assert link_status == 303 and where.startswith("/auth/login?")
    assert ("auth.logout", "success", "") in box.actions()


async def test_a_token_launch_naming_a_situation_acts_in_it_and_one_naming_none_asks(tmp_path: Path, sim: Any) -> None:
    """The software's token logs in a professional with two situations: its Situation picks one, else the page."""
    async with running_box(box_settings(tmp_path, sim.url, ["consumer"])) as box:
        durand = (await asyncio.to_thread(psc_token, sim.url, "810003456789"))["access_token"]
        async with aiohttp.ClientSession() as http:
            resp = await http.post(box.url + "/conso/launch", data={**LAUNCH_FORM, "Situation": "1690000019"},
                                   headers={"Authorization": f"Bearer {durand}"}, allow_redirects=False)  # fmt: skip
            assert resp.status == 303 and resp.headers["Location"].startswith(f"/conso/patients/{INS}/exams?")
            session = resp.cookies["drimbox_session"].value
        async with aiohttp.ClientSession(cookies={"drimbox_session": session}) as http:
            me = await (await http.get(box.url + "/auth/me")).json()
            assert (me["structure_id"], me["sector"]) == ("1690000019", "SA01^1.2.250.1.71.4.2.4")
        resp = await launch(box, bearer=durand)
        assert resp.status == 303 and urlsplit(resp.headers["Location"]).path == "/auth/situation"
