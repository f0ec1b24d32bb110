"""Pro Santé Connect's practice situations: read from the real userinfo shape, chosen on the box's page or by the
launch's Situation, and the chosen one is what the VIHF the DMP receives names (through the simulator)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web

from drimbox.auth.professional import PracticeSituation, Professional
from drimbox.demo.samples.processes import free_port
from tests.support.auth_boxes import box_settings, running_box
from tests.support.consumer import INS, LAUNCH_FORM

USERINFO = Path(__file__).parent / "fixtures" / "psc" / "userinfo-two-situations.json"
DURAND = "810003456789"  # the simulator's radiologist with two practice situations
PRACTICE, HOSPITAL = "410003456789001", "1690000019"


def test_the_real_userinfo_shape_gives_every_situation_and_no_choice_is_made_for_the_professional() -> None:
    claims = json.loads(USERINFO.read_text(encoding="utf-8"))
    pro = Professional.from_claims(claims)
    assert (pro.id, pro.rpps, pro.family, pro.given, pro.profession, pro.specialty) == (
        "899700999991",
        "99700999991",
        "TESTEUR",
        "ALEX",
        "10",
        "SM44",
    )
    # Not the first one by default: the top-level SubjectOrganizationID (a technical "R…" id) is not a structure.
    assert pro.must_choose and (pro.structure_id, pro.sector) == ("", "")
    assert [(s.structure_id, s.structure_name, s.sector, s.technical_id) for s in pro.situations] == [
        ("499700999991001", "CABINET DU DR TESTEUR", "SA07^1.2.250.1.71.4.2.4", "R999991"),
        ("10B9999990", "HOPITAL DE TEST", "SA01^1.2.250.1.71.4.2.4", "F0B9999990"),
    ]  # the third activity has no ancienIdentifiantDeLaStructure: no VIHF could name it
    hospital = pro.situation("10B9999990")
    assert hospital is not None and pro.situation("R999991") is None and pro.situation("") is None
    acting = pro.in_situation(hospital)
    assert not acting.must_choose
    assert (acting.structure_id, acting.structure_name, acting.sector, acting.profession, acting.specialty) == (
        "10B9999990",
        "HOPITAL DE TEST",
        "SA01^1.2.250.1.71.4.2.4",
        "10",
        "SM44",
    )
    # Sessions keep the professional as JSON: the situations come back.
    assert Professional.from_json(json.loads(json.dumps(acting.to_json()))) == acting


def test_a_single_situation_is_used_at_once_and_each_exercice_brings_its_profession() -> None:
    claims = json.loads(USERINFO.read_text(encoding="utf-8"))
    exercice = claims["SubjectRefPro"]["exercices"][0]
    one = {**claims, "SubjectRefPro": {"exercices": [{**exercice, "activities": exercice["activities"][1:2]}]}}
    pro = Professional.from_claims(one)
    assert not pro.must_choose and (pro.structure_id, pro.sector) == ("10B9999990", "SA01^1.2.250.1.71.4.2.4")
    # A second exercice (another profession) adds its own situations with its own codes.
    other = {**exercice, "codeProfession": "21", "codeSavoirFaire": "", "activities": [
        {**exercice["activities"][0], "ancienIdentifiantDeLaStructure": "3999999990001"}]}  # fmt: skip
    two = Professional.from_claims({**claims, "SubjectRefPro": {"exercices": [exercice, other]}})
    assert [(s.structure_id, s.profession) for s in two.situations][-1] == ("3999999990001", "21")


def test_hostile_or_plain_claims_never_crash() -> None:
    odd = Professional.from_claims({"sub": "x", "SubjectRefPro": {"exercices": [{"activities": ["x", None, {
        "ancienIdentifiantDeLaStructure": ["no"]}]}, 3]}})  # fmt: skip
    assert odd.situations == () and not odd.must_choose
    plain = Professional.from_claims({"sub": "u1", "structure_id": "S1", "Secteur_Activite": "SA25^1.2.250.1.71.4.2.4"})
    assert (plain.structure_id, plain.sector, plain.situations) == ("S1", "SA25^1.2.250.1.71.4.2.4", ())
    assert PracticeSituation.from_json({"structure_id": "1", "other": "ignored"}) == PracticeSituation("1")


# -- end to end: a consumer box, the simulator (PSC and DMP) as a real process ------------------------------------


@dataclass
class DmpTap:
    """Forwards every DMP request to the simulator unchanged and keeps the VIHF attributes each one carried."""

    upstream: str
    seen: list[dict[str, str]] = field(default_factory=list)

    async def forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(vihf_attributes(body))
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "soapaction")}
        async with aiohttp.ClientSession() as http, http.post(self.upstream + request.path_qs, data=body,
                                                              headers=headers) as resp:  # fmt: skip
            answer = await resp.read()
            kept = {k: v for k, v in resp.headers.items() if k.lower() == "content-type"}
            return web.Response(status=resp.status, body=answer, headers=kept)


def vihf_attributes(body: bytes) -> dict[str, str]:
    text = body.decode("utf-8", "replace")
    found = re.findall(r'<(?:\w+:)?Attribute Name="(Identifiant_Structure|Secteur_Activite)"[^>]*>\s*'
                       r"<(?:\w+:)?AttributeValue[^>]*>([^<]*)<", text)  # fmt: skip
    return dict(found)


@asynccontextmanager
async def dmp_tap(sim_url: str) -> AsyncIterator[tuple[str, DmpTap]]:
    tap = DmpTap(sim_url)
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", tap.forward)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", tap
    finally:
        await runner.cleanup()


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action, self.fields, self.choices = "", {}, []  # type: tuple[str, dict[str, str], list[str]]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action", "")
        elif tag == "input" and a.get("type") == "radio":
            self.choices.append(a.get("value", ""))
        elif tag == "input":
            self.fields[a.get("name", "")] = a.get("value", "")


async def log_in(http: aiohttp.ClientSession, box: str, who: str) -> dict[str, Any]:
    """The box's PSC login (the simulator's sim_auto stands for the CPS card); what /auth/me then says."""
    resp = await http.get(f"{box}/auth/login?{urlencode({'next': '/auth/me', 'login_hint': who})}")
    assert resp.status == 200, await resp.text()
    me: dict[str, Any] = await resp.json()
    return me


def structures(tap: DmpTap) -> set[tuple[str, str]]:
    return {(v["Identifiant_Structure"], v["Secteur_Activite"]) for v in tap.seen if v}


@pytest.mark.sim
@pytest.mark.box
async def test_the_chosen_situation_is_what_the_dmp_receives(tmp_path: Path, sim: Any) -> None:
    async with dmp_tap(sim.url) as (tap_url, tap):
        settings = box_settings(tmp_path, sim.url, ["consumer"], authorize_params=["sim_auto=1"])
        settings.dmp.url = f"{tap_url}/dmp"
        async with (
            running_box(settings) as box,
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http,
        ):
            me = await log_in(http, box.url, DURAND)
            assert me["structure_id"] == "" and [s["structure_id"] for s in me["situations"]] == [PRACTICE, HOSPITAL]
            # A launch naming no situation: the box asks before any DMP call.
            launched = await http.post(f"{box.url}/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
            assert launched.status == 303, await launched.text()
            choice_url = urlsplit(launched.headers["Location"])
            assert choice_url.path == "/auth/situation"
            assert parse_qs(choice_url.query)["next"][0].startswith(f"/conso/patients/{INS}/exams?")
            page = await http.get(box.url + launched.headers["Location"])
            text = await page.text()
            assert page.status == 200 and "Situation d'exercice" in text and 'lang="fr"' in text
            assert "Cabinet d&#x27;imagerie du Dr DURAND" in text and "Centre hospitalier simulé de Lyon" in text
            assert tap.seen == []
            form = _Form()
            form.feed(text)
            assert form.action == "/auth/situation" and form.choices == [PRACTICE, HOSPITAL]
            assert form.fields["csrf_token"] and form.fields["next"] == parse_qs(choice_url.query)["next"][0]
            # A structure that is not hers is refused, and changes nothing.
            refused = await http.post(box.url + form.action, data={**form.fields, "structure": "101235555"},
                                      allow_redirects=False)  # fmt: skip
            assert refused.status == 400 and "n'est pas l'une des vôtres" in await refused.text()
            chosen = await http.post(box.url + form.action, data={**form.fields, "structure": HOSPITAL})
            assert chosen.status == 200 and urlsplit(str(chosen.url)).path == f"/conso/patients/{INS}/exams"
            # The list offers to change it again, and comes back to itself.
            change = re.search(
                r'<a href="(/auth/situation\?next=[^"]+)">changer de situation d&#x27;exercice', await chosen.text()
            )
            assert change and unquote(html.unescape(change[1])).endswith(urlsplit(str(chosen.url)).query)
            # Every DMP request of that list (TD0.2, TD0.3, ITI-18) named the hospital and its sector.
            assert tap.seen and structures(tap) == {(HOSPITAL, "SA01^1.2.250.1.71.4.2.4")}
            me = await (await http.get(f"{box.url}/auth/me")).json()
            assert (me["structure_id"], me["sector"]) == (HOSPITAL, "SA01^1.2.250.1.71.4.2.4")
            assert ("auth.situation", "success", "") in box.actions()
            assert ("auth.situation", "refused", "unknown") in box.actions()

            # The software's launch names her practice: used at once, no page, the DMP hears of the practice.
            tap.seen.clear()
            launched = await http.post(f"{box.url}/conso/launch", data={**LAUNCH_FORM, "Situation": PRACTICE})
            assert launched.status == 200 and urlsplit(str(launched.url)).path == f"/conso/patients/{INS}/exams"
            assert structures(tap) == {(PRACTICE, "SA08^1.2.250.1.71.4.2.4")}

            # A situation that is not hers is not taken; the session's choice stands.
            tap.seen.clear()
            launched = await http.post(f"{box.url}/conso/launch", data={**LAUNCH_FORM, "Situation": "101235555"})
            assert launched.status == 200 and structures(tap) == {(PRACTICE, "SA08^1.2.250.1.71.4.2.4")}

        # A new session whose launch names none of her situations: the page says so.
        async with running_box(box_settings(tmp_path / "2", sim.url, ["consumer"], authorize_params=["sim_auto=1"])) as box, \
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # fmt: skip
            await log_in(http, box.url, DURAND)
            api = await http.get(f"{box.url}/conso/api/patients/{INS}/exams")
            assert api.status == 409 and (await api.json())["reason"] == "situation_required"
            launched = await http.post(f"{box.url}/conso/launch", data={**LAUNCH_FORM, "Situation": "101235555"})
            assert urlsplit(str(launched.url)).path == "/auth/situation"
            assert "n'est pas l'une des vôtres" in await launched.text()


@pytest.mark.sim
@pytest.mark.box
async def test_the_situation_page_needs_a_session_and_a_single_situation_needs_no_page(
    tmp_path: Path, sim: Any
) -> None:
    settings = box_settings(tmp_path, sim.url, ["consumer"], authorize_params=["sim_auto=1"])
    async with running_box(settings) as box, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        resp = await http.get(f"{box.url}/auth/situation?next=/conso", allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/auth/login?")
        assert (await http.post(f"{box.url}/auth/situation", data={"structure": HOSPITAL})).status == 401
        me = await log_in(http, box.url, "801234560801")  # the radiologist of the ANS samples: one situation
        assert (me["structure_id"], me["sector"]) == ("101235555", "SA25^1.2.250.1.71.4.2.4")
        launched = await http.post(f"{box.url}/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        assert urlsplit(launched.headers["Location"]).path == f"/conso/patients/{INS}/exams"
        listed = await http.get(box.url + launched.headers["Location"])
        assert listed.status == 200 and "changer de situation" not in await listed.text()
