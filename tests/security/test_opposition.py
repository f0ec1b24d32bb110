"""Findings 8 and 9 (opposition): only a professional who may consult records records or lifts a patient's
opposition, and every change is in the audit trail.

A real consumer box (in this process, its audit in memory) with the simulator's DMP and Pro Santé Connect: the
secretary (no RPPS profession) and the doctors log in at the simulator's PSC, and launch as their software would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from drimbox.audit.events import MemoryAudit
from drimbox.config import Settings
from drimbox.consumer.access import AccessIntent, AccessRules
from drimbox.consumer.access_store import AccessStore
from drimbox.consumer.lookup import AccessRefused, PatientRef
from tests.support.auth_boxes import RunningBox, box_settings, running_box
from tests.support.consumer import INS, INS_OID, LAUNCH_FORM, Pro, publish, study_spec

pytestmark = [pytest.mark.sim, pytest.mark.box]

GP = "801234567897"  # Dr MEDIONI
RADIOLOGIST = "801234560801"  # Dr BIDEAULT
SECRETARY = "3101235555/SEC0001"
OPPOSED = {**LAUNCH_FORM, "InformationEtConsentement": "false"}
EXAMS_API = f"/conso/api/patients/{INS}/exams"


@pytest.fixture
async def box(tmp_path: Path, sim: Any) -> AsyncIterator[RunningBox]:
    settings = box_settings(tmp_path, sim.url, ["consumer"], authorize_params=["sim_auto=1"])
    await publish(f"{sim.url}/dmp", settings, study_spec())
    async with running_box(settings) as running:
        yield running


async def launch_as(box: RunningBox, who: str, form: dict[str, str]) -> tuple[int, str, aiohttp.ClientSession]:
    """A launch from the software, then this professional's PSC login: (status, page, the logged-in client)."""
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    resp = await http.post(f"{box.url}/conso/launch", data=form, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    next_path = parse_qs(urlsplit(resp.headers["Location"]).query)["next"][0]
    page = await http.get(f"{box.url}/auth/login?{urlencode({'next': next_path, 'login_hint': who})}")
    return page.status, await page.text(), http


async def api_list(http: aiohttp.ClientSession, box: RunningBox) -> tuple[int, dict[str, Any]]:
    """The exam list without a launch (a page reloaded, the API): it says nothing of the consent."""
    resp = await http.get(box.url + EXAMS_API)
    body: dict[str, Any] = await resp.json()
    return resp.status, body


def opposition_events(box: RunningBox) -> list[Any]:
    return [e for e in box.audit.events if e.action == "consumer.opposition"]


async def test_a_secretarys_launch_does_not_block_the_doctors(box: RunningBox) -> None:
    # The GP opens the patient (informed): the DMP access is declared, the list shows.
    status, page, gp = await launch_as(box, GP, LAUNCH_FORM)
    async with gp:
        assert status == 200, page
        # The secretary's software launches with InformationEtConsentement=false: refused (no RPPS profession)...
        status, page, secretary = await launch_as(box, SECRETARY, OPPOSED)
        await secretary.close()
        assert status == 403 and "non-medical staff" in page
        # ...and the patient is not opposed for anyone: the GP still gets the list.
        status, body = await api_list(gp, box)
        assert status == 200, body
        assert len(body["exams"]) == 1
    ignored = [e for e in opposition_events(box) if e.professional == SECRETARY]
    assert len(ignored) == 1 and ignored[0].outcome == "refused" and ignored[0].patient == INS
    assert ignored[0].detail["opposed"] == "true" and ignored[0].detail["rule"] == "habilitation"
    assert not [e for e in opposition_events(box) if e.outcome == "success"]


async def test_a_doctors_launch_records_the_opposition_for_everyone_and_audits_it(box: RunningBox) -> None:
    status, page, radiologist = await launch_as(box, RADIOLOGIST, LAUNCH_FORM)
    async with radiologist:
        assert status == 200, page
        status, page, gp = await launch_as(box, GP, OPPOSED)
        async with gp:
            assert status == 403 and "oppose à la consultation" in page
        status, body = await api_list(radiologist, box)
        assert status == 403 and body["rule"] == "opposition"
        # A doctor's later launch, the patient informed, lifts it.
        status, page, gp = await launch_as(box, GP, LAUNCH_FORM)
        await gp.close()
        assert status == 200, page
        assert (await api_list(radiologist, box))[0] == 200
    changes = [(e.outcome, e.professional, e.patient, e.detail["opposed"]) for e in opposition_events(box)]
    assert changes == [("success", GP, INS, "true"), ("success", GP, INS, "false")]


@pytest.mark.parametrize("who,records", [(Pro(id="810000000021", profession_code="21", specialty_code=None), False),
                                         (Pro(id="3101235555/SEC0002", profession_code=None, specialty_code=None), False),
                                         (Pro(id="810001234566", profession_code="60", specialty_code=None), True),
                                         (Pro(), True)], ids=["pharmacist", "secretary", "nurse", "gp"])  # fmt: skip
async def test_who_records_an_opposition_follows_the_habilitation_matrix(
    tmp_path: Path, who: Pro, records: bool
) -> None:
    audit = MemoryAudit()
    rules = AccessRules(Settings(), await AccessStore.open(tmp_path), audit)
    patient = PatientRef(INS, INS_OID)
    try:
        intent = AccessIntent(informed=False, launch_id="launch-1")
        with pytest.raises(AccessRefused) as refused:
            async with rules.consultation(who, patient, intent, what="exams"):
                pass
        assert refused.value.rule == ("opposition" if records else "habilitation")
        assert await rules.store.opposed(patient.key) is records
        (event,) = [e for e in audit.events if e.action == "consumer.opposition"]
        assert (event.outcome, event.professional, event.patient) == ("success" if records else "refused", who.id, INS)
        # The same launch read again (a page reloaded) is not applied, nor audited, twice.
        with pytest.raises(AccessRefused):
            async with rules.consultation(who, patient, intent, what="exams"):
                pass
        assert len([e for e in audit.events if e.action == "consumer.opposition"]) == 1
    finally:
        await rules.close()
