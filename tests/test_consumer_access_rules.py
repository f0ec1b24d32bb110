"""The consumer's DMP access rules through the consumer app and the simulator: opposition, matrix, emergency, bars."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from drimbox.audit.events import AUDIT, REFUSED, SUCCESS, MemoryAudit
from drimbox.config import ConfigError, Settings, WhitelistSettings, load_settings
from drimbox.consumer import setup_consumer
from drimbox.consumer.images import setup_consumer_images
from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.sim import build_sim_app
from drimbox.xds.habilitation import ImagingMatrix
from tests.support.consumer import INS, LAUNCH_FORM, FakeAuth, Pro, publish, study_spec
from tests.support.fixtures_mesh import get_json

pytestmark = pytest.mark.sim

GP = Pro()
OTHER_GP = Pro(id="810100000002", family="MARTIN", given="Paul")
NURSE = Pro(id="810001234566", family="LEROY", given="Camille", profession_code="60", specialty_code=None)
SECRETARY = Pro(id="3101235555/SEC0001", family="MARTIN", given="Julie", profession_code=None, specialty_code=None)
PHARMACIST = Pro(id="810000000021", family="DUPONT", given="Anne", profession_code="21", specialty_code=None)
ACCEPT = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
REASON = "patient inconscient aux urgences"


class Mesh:
    def __init__(self, sim_url: str, source_url: str, source_hits: list[str]) -> None:
        self.sim_url = sim_url
        self.dmp_url = f"{sim_url}/dmp"
        self.source_url = source_url
        self.source_hits = source_hits

    async def sim(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as http, http.request(method, self.sim_url + path, json=body) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def consultations(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = await self.sim("GET", f"/sim/dmp/consultations?patient={INS}")
        return rows


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    """The simulator (DMP, whitelist) and a stand-in source box that only counts what is asked of it."""
    settings = Settings()
    settings.sim.var_dir = str(tmp_path / "sim")
    sim = TestServer(build_sim_app(settings), host="127.0.0.1")
    hits: list[str] = []

    async def source(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"error": "nothing here"}, status=404)

    source_app = web.Application()
    source_app.router.add_route("*", "/{tail:.*}", source)
    src = TestServer(source_app, host="127.0.0.1")
    await sim.start_server()
    await src.start_server()
    yield Mesh(f"http://127.0.0.1:{sim.port}", f"http://127.0.0.1:{src.port}", hits)
    await src.close()
    await sim.close()


def settings_for(tmp: Path, mesh: Mesh, **access: Any) -> Settings:
    s = Settings()
    s.box.var_dir = str(tmp / "consumer-var")
    s.box.roles = ["consumer"]
    s.dmp.url = mesh.dmp_url
    s.dmp.timeout = 5.0
    s.whitelist = WhitelistSettings(
        url=f"{mesh.sim_url}/whitelist",
        certificate_url=f"{mesh.sim_url}/whitelist/certificate",
        trust_on_first_use=True,
    )
    for key, value in access.items():
        setattr(s.access, key, value)
    return s


@asynccontextmanager
async def consumer(settings: Settings, auth: FakeAuth) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The consumer's routes and its /conso/dicom-web, as app.py assembles them."""
    app = web.Application()
    app[AUDIT] = MemoryAudit()
    setup_consumer(app, settings, auth)
    setup_consumer_images(app, settings, auth)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def access_events(client: TestClient[web.Request, web.Application]) -> list[Any]:
    audit = client.app[AUDIT]
    assert isinstance(audit, MemoryAudit)
    return [e for e in audit.events if e.action == "consumer.access"]


async def test_opposition_is_recorded_and_honoured_nothing_asked_nothing_fetched(mesh: Mesh, tmp_path: Path) -> None:
    spec = study_spec()
    settings = settings_for(tmp_path, mesh)
    kos_uid = await publish(mesh.dmp_url, settings, spec, public_url=mesh.source_url)
    auth = FakeAuth(GP)
    async with consumer(settings, auth) as client:
        assert (await client.post("/conso/launch", data=LAUNCH_FORM)).status == 200
        opened = await client.get(f"/conso/dicom-web/studies/{spec.study_uid}?kos={kos_uid}", headers=ACCEPT)
        assert opened.status == 404  # the stand-in source has nothing, but it was asked
        asked = len(mesh.source_hits)
        assert asked >= 1
        seen = len(await mesh.consultations())

        # The software's next launch says the patient opposes: refused, and said why.
        page = await client.post("/conso/launch", data={**LAUNCH_FORM, "InformationEtConsentement": "false"})
        assert page.status == 403
        text = await page.text()
        assert (
            "oppose à la consultation" in text and "bris de glace" not in text.lower()
        )  # no emergency form over an opposition
        # Recorded: later requests without a launch are refused too, with the rule named.
        api = await client.get(f"/conso/api/patients/{INS}/exams")
        assert api.status == 403
        body = await api.json()
        assert body["reason"] == "access_refused" and body["rule"] == "opposition" and "emergency" not in body
        # An exam opened before the opposition is closed at once: no image is fetched from the source.
        again = await client.get(f"/conso/dicom-web/studies/{spec.study_uid}?kos={kos_uid}", headers=ACCEPT)
        assert again.status == 403 and "opposes" in (await again.json())["error"]
        assert len(mesh.source_hits) == asked
        # Emergency access does not lift an opposition.
        emergency = await client.get(f"/conso/api/patients/{INS}/exams", params={"purpose": "bris_de_glace",
                                                                                 "reason": REASON})  # fmt: skip
        assert emergency.status == 403 and (await emergency.json())["rule"] == "opposition"
        # No DMP transaction after the opposition: the simulator logged no further consultation.
        assert len(await mesh.consultations()) == seen
        refused = [e for e in access_events(client) if e.outcome == REFUSED]
        assert refused and all(e.detail["rule"] == "opposition" and e.patient == INS for e in refused)
        assert any(e.kos == kos_uid for e in refused)

        # The patient changes their mind: the next launch lifts the opposition.
        assert (await client.post("/conso/launch", data=LAUNCH_FORM)).status == 200


async def test_an_opposed_patient_is_never_named_to_the_dmp(mesh: Mesh, tmp_path: Path) -> None:
    async with consumer(settings_for(tmp_path, mesh), FakeAuth(GP)) as client:
        # A DMP call would consume this injected fault: it must still be pending afterwards.
        await mesh.sim("POST", "/sim/dmp/faults", {"unavailable": 1})
        resp = await client.post("/conso/launch", data={**LAUNCH_FORM, "InformationEtConsentement": "false"})
        assert resp.status == 403
        assert (await mesh.sim("GET", "/sim/dmp/faults"))["unavailable"] == 1
        assert await mesh.sim("GET", f"/sim/dmp/access?patient={INS}") == []  # no TD0.3 declared


async def test_habilitation_matrix_secretary_nurse_gp_and_its_configuration(mesh: Mesh, tmp_path: Path) -> None:
    await publish(mesh.dmp_url, settings_for(tmp_path, mesh), study_spec(), public_url=mesh.source_url)
    auth = FakeAuth(SECRETARY)
    async with consumer(settings_for(tmp_path, mesh), auth) as client:
        await mesh.sim("POST", "/sim/dmp/faults", {"unavailable": 1})
        page = await client.post("/conso/launch", data=LAUNCH_FORM)
        assert page.status == 403 and "non-medical staff" in await page.text()
        api = await (await client.get(f"/conso/api/patients/{INS}/exams")).json()
        assert api["rule"] == "habilitation"
        assert (await mesh.sim("GET", "/sim/dmp/faults"))["unavailable"] == 1  # refused before any DMP call
        await mesh.sim("DELETE", "/sim/dmp/faults")

        auth.pro = NURSE  # the default matrix lets nurses read imaging
        assert (await client.post("/conso/launch", data=LAUNCH_FORM)).status == 200
        nurse = await (await client.get(f"/conso/api/patients/{INS}/exams")).json()
        assert len(nurse["exams"]) == 1

        auth.pro = GP
        assert (await client.post("/conso/launch", data=LAUNCH_FORM)).status == 200
        events = access_events(client)
        assert [(e.professional, e.outcome) for e in events if e.outcome == REFUSED] == [(SECRETARY.id, REFUSED)] * 2
        assert {e.professional for e in events if e.outcome == SUCCESS} == {NURSE.id, GP.id}

    # `[access] imaging_professions` narrows the matrix on this box: nurses are refused without asking the DMP.
    async with consumer(settings_for(tmp_path / "narrow", mesh, imaging_professions=["10"]), FakeAuth(NURSE)) as client:
        resp = await client.get(f"/conso/api/patients/{INS}/exams")
        body = await resp.json()
        assert resp.status == 403 and body["rule"] == "habilitation" and "infirmier" in body["detail"]

    # Widening it does not bind the DMP: the simulator, the reference, still refuses a pharmacist's VIHF.
    async with consumer(settings_for(tmp_path / "wide", mesh, imaging_professions=["10", "21"]),
                        FakeAuth(PHARMACIST)) as client:  # fmt: skip
        resp = await client.post("/conso/launch", data=LAUNCH_FORM)
        assert resp.status == 403 and "pharmacien" in await resp.text()


async def test_emergency_access_with_a_reason_is_carried_in_the_vihf_and_audited(mesh: Mesh, tmp_path: Path) -> None:
    await publish(mesh.dmp_url, settings_for(tmp_path, mesh), study_spec(), public_url=mesh.source_url)
    async with consumer(settings_for(tmp_path, mesh), FakeAuth(OTHER_GP)) as client:
        # No authorisation and no launch saying the patient was informed: refused, emergency access offered.
        page = await client.get(f"/conso/patients/{INS}/exams")
        text = await page.text()
        assert page.status == 403 and "Accès en urgence (bris de glace)" in text and 'name="reason"' in text
        api = await client.get(f"/conso/api/patients/{INS}/exams")
        body = await api.json()
        assert api.status == 403 and body["rule"] == "no_authorization" and "bris_de_glace" in body["emergency"]["how"]
        # The reason is mandatory.
        no_reason = await client.get(f"/conso/api/patients/{INS}/exams", params={"purpose": "bris_de_glace"})
        assert no_reason.status == 400 and (await no_reason.json())["fields"][0]["field"] == "reason"
        form = await client.post(f"/conso/patients/{INS}/emergency", data={"reason": ""}, allow_redirects=False)
        assert form.status == 400
        assert await mesh.consultations() == []

        # With a reason, through the form: the list opens, and the DMP saw bris_de_glace with the reason.
        form = await client.post(f"/conso/patients/{INS}/emergency", data={"reason": REASON}, allow_redirects=False)
        assert form.status == 303 and form.headers["Location"].startswith(f"/conso/patients/{INS}/exams")
        listed = await client.get(form.headers["Location"])
        assert (
            listed.status == 200 and "Accès en urgence (bris de glace)</strong> en vigueur jusqu" in await listed.text()
        )
        rows = await mesh.consultations()
        assert rows and {(r["professional"], r["purpose"], r["reason"]) for r in rows} == {
            (OTHER_GP.id, "bris_de_glace", REASON)}  # fmt: skip
        # Through the API parameter too; no TD0.3 was declared for it.
        api = await client.get(
            f"/conso/api/patients/{INS}/exams", params={"purpose": "bris_de_glace", "reason": REASON}
        )
        body = await api.json()
        assert api.status == 200 and len(body["exams"]) == 1
        assert body["access"]["purpose"] == "bris_de_glace" and body["access"]["reason"] == REASON
        assert await mesh.sim("GET", f"/sim/dmp/access?patient={INS}") == []
        successes = [e for e in access_events(client) if e.outcome == SUCCESS]
        assert successes and all(e.detail["purpose"] == "bris_de_glace" and e.detail["reason"] == REASON
                                 for e in successes)  # fmt: skip


async def test_emergency_access_refused_when_the_patient_blocked_it(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.sim("PUT", f"/sim/dmp/patients/{INS}", {"emergency_access": False})
    async with consumer(settings_for(tmp_path, mesh), FakeAuth(OTHER_GP)) as client:
        resp = await client.get(
            f"/conso/api/patients/{INS}/exams", params={"purpose": "bris_de_glace", "reason": REASON}
        )
        body = await resp.json()
        assert resp.status == 403 and "refused emergency access" in body["detail"]
        page = await client.post(f"/conso/patients/{INS}/emergency", data={"reason": REASON}, allow_redirects=False)
        assert page.status == 403 and "refused emergency access" in await page.text()
        assert await mesh.consultations() == []
        refused = [e for e in access_events(client) if e.outcome == REFUSED]
        assert len(refused) == 2 and all(e.detail["purpose"] == "bris_de_glace" for e in refused)
        # The refused emergency is not kept: the next ordinary request is an ordinary refusal.
        plain = await (await client.get(f"/conso/api/patients/{INS}/exams")).json()
        assert plain["rule"] == "no_authorization"


async def test_a_professional_barred_by_the_patient_is_refused_emergency_included(mesh: Mesh, tmp_path: Path) -> None:
    await mesh.sim("PUT", "/sim/dmp/access", {"patient": INS, "professional": GP.id, "authorization": "INTERDITE",
                                              "reason": "refus du patient"})  # fmt: skip
    async with consumer(settings_for(tmp_path, mesh), FakeAuth(GP)) as client:
        page = await client.post("/conso/launch", data=LAUNCH_FORM)
        text = await page.text()
        assert page.status == 403 and "vous a interdit" in text and "Accès en urgence" not in text
        api = await (await client.get(f"/conso/api/patients/{INS}/exams")).json()
        assert api["rule"] == "blocked" and "emergency" not in api
        emergency = await client.get(f"/conso/api/patients/{INS}/exams",
                                     params={"purpose": "bris_de_glace", "reason": REASON})  # fmt: skip
        assert emergency.status == 403 and (await emergency.json())["rule"] == "blocked"
        assert await mesh.consultations() == []
        assert {e.detail["rule"] for e in access_events(client)} == {"blocked"}


@pytest.mark.box
async def test_a_consumer_box_process_with_pro_sante_connect_logins(sim: Any, tmp_path: Path) -> None:
    """The real box: the secretary and the GP log in at the simulator's PSC; the `[access]` section is read."""
    port = free_port()
    cfg = write_config(tmp_path / "consumer.toml", {
        "box": {"roles": ["consumer"], "var_dir": str(tmp_path / "consumer-var"), "public_url": f"http://127.0.0.1:{port}"},
        "http": {"port": port},
        "dmp": {"url": f"{sim.url}/dmp"},
        "psc": {"issuer": f"{sim.url}/psc"},
        "whitelist": {"url": f"{sim.url}/whitelist", "certificate_url": f"{sim.url}/whitelist/certificate",
                      "trust_on_first_use": True},
        "auth": {"authorize_params": ["sim_auto=1"]},
        "access": {"emergency_reason_min": 12},
    })  # fmt: skip
    box = DrimboxProcess("serve", cfg, f"http://127.0.0.1:{port}/health", tmp_path / "consumer.log").start()
    base = f"http://127.0.0.1:{port}"
    try:
        for who, expected in (("3101235555/SEC0001", 403), ("801234567897", 403)):
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                launch = await http.post(f"{base}/conso/launch", allow_redirects=False,
                                         data={**LAUNCH_FORM, "InformationEtConsentement": "false"} if who[0] == "8"
                                         else LAUNCH_FORM)  # fmt: skip
                next_path = parse_qs(urlsplit(launch.headers["Location"]).query)["next"][0]
                page = await http.get(f"{base}/auth/login?{urlencode({'next': next_path, 'login_hint': who})}")
                text = await page.text()
                assert page.status == expected, text
                if who[0] == "3":
                    assert "non-medical staff" in text
                    continue
                assert "oppose à la consultation" in text  # the GP's launch carried the patient's opposition
                # Another launch, the patient informed: the GP is let in (TD0.3), in normal mode.
                listed = await http.post(f"{base}/conso/launch", data=LAUNCH_FORM)
                assert listed.status == 200, await listed.text()
                short = await http.get(f"{base}/conso/api/patients/{INS}/exams",
                                       params={"purpose": "bris_de_glace", "reason": "too short"})  # fmt: skip
                assert short.status == 400  # [access] emergency_reason_min = 12 from the file
        rows = get_json(f"{sim.url}/sim/dmp/consultations?patient={INS}")
        assert {(r["professional"], r["purpose"]) for r in rows} == {("801234567897", "normal")}
    finally:
        box.stop()


def test_the_access_section_and_the_matrix_it_sets() -> None:
    s = load_settings(env={"DRIMBOX_ACCESS__IMAGING_PROFESSIONS": "10, 21/SM98", "DRIMBOX_ACCESS__EMERGENCY": "false"})
    assert s.access.imaging_professions == ["10", "21/SM98"] and s.access.emergency is False
    matrix = ImagingMatrix.of(s.access.imaging_professions)
    assert matrix.may_read("G15_10") and matrix.may_read("21", ["SM98"])
    assert not matrix.may_read("21", ["SM54"]) and not matrix.may_read("60") and not matrix.may_read(None)
    assert ImagingMatrix().may_read("60") and not ImagingMatrix().may_read("21")
    for key, value in (("IMAGING_PROFESSIONS", "10;x"), ("EMERGENCY_TTL", "0"), ("EMERGENCY_REASON_MIN", "0")):
        with pytest.raises(ConfigError, match=f"access.{key.lower()}"):
            load_settings(env={f"DRIMBOX_ACCESS__{key}": value})
