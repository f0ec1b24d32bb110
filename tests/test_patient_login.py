"""The simulated Mon Espace Santé provider (PKCE, single-use codes, eIDAS acr, INS in the ID token) and the box's
patient login: an ID token below the configured eIDAS level, or without an INS, opens no session."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from joserfc import jwt
from joserfc.jwk import KeySet

from drimbox.config import Settings
from drimbox.demo.samples.processes import free_port
from drimbox.patient.identity import PatientIdentity, acr_level
from drimbox.sim import build_sim_app
from tests.support.auth_boxes import box_settings, running_box
from tests.support.patient_flow import ANS_PATIENT, PATIENT_COOKIE, enable_patient

REDIRECT = "http://127.0.0.1:9/patient/callback"
VERIFIER = "v" * 64
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()


@pytest.fixture
async def mes(tmp_path: Path) -> AsyncIterator[str]:
    """The simulator in this process; returns its Mon Espace Santé issuer."""
    settings = Settings()
    settings.sim.var_dir, settings.sim.port = str(tmp_path / "sim"), free_port()
    server = TestServer(build_sim_app(settings), host="127.0.0.1", port=settings.sim.port)
    await server.start_server()
    yield f"http://127.0.0.1:{settings.sim.port}/mes"
    await server.close()


def authorize_url(issuer: str, **changes: str) -> str:
    query = {"client_id": "drimbox-patient", "redirect_uri": REDIRECT, "response_type": "code", "scope": "openid ins",
             "state": "s1", "nonce": "n1", "code_challenge": CHALLENGE, "code_challenge_method": "S256",
             "sim_auto": "1", "login_hint": ANS_PATIENT, **changes}  # fmt: skip
    return f"{issuer}/auth?{urlencode({k: v for k, v in query.items() if v})}"


async def code_for(http: aiohttp.ClientSession, issuer: str) -> str:
    resp = await http.get(authorize_url(issuer), allow_redirects=False)
    assert resp.status == 303, await resp.text()
    return parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]


async def token(
    http: aiohttp.ClientSession, issuer: str, code: str, verifier: str = VERIFIER
) -> aiohttp.ClientResponse:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    basic = base64.b64encode(b"drimbox-patient:drimbox-patient-secret").decode()
    return await http.post(f"{issuer}/token", data=form, headers={"Authorization": f"Basic {basic}"})


async def test_the_provider_issues_an_eidas_substantial_id_token_with_the_ins(mes: str) -> None:
    async with aiohttp.ClientSession() as http:
        meta = await (await http.get(f"{mes}/.well-known/openid-configuration")).json()
        assert meta["issuer"] == mes and meta["acr_values_supported"] == ["eidas2"]
        resp = await token(http, mes, await code_for(http, mes))
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        keys = KeySet.import_key_set(await (await http.get(meta["jwks_uri"])).json())
        claims = jwt.decode(body["id_token"], keys).claims
        assert claims["acr"] == "eidas2" and claims["nonce"] == "n1" and claims["aud"] == "drimbox-patient"
        assert claims["ins"] == ANS_PATIENT and claims["ins_oid"] == "1.2.250.1.213.1.4.10"
        assert claims["family_name"] == "PAT-TROIS" and claims["birthdate"] == "1979-03-28"
        assert claims["sub"] != ANS_PATIENT  # pairwise: the INS comes as its own claim
        assert PatientIdentity.from_claims(claims).ins == ANS_PATIENT
        info = await http.get(f"{mes}/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert (await info.json())["ins"] == ANS_PATIENT


@pytest.mark.parametrize("change", [{"code_challenge": ""}, {"code_challenge_method": "plain"}, {"state": ""},
                                    {"nonce": ""}, {"client_id": "other"}, {"redirect_uri": "https://evil.example/cb"}])  # fmt: skip
async def test_the_provider_refuses_an_incomplete_authorization_request(mes: str, change: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as http:
        resp = await http.get(authorize_url(mes, **change), allow_redirects=False)
        assert resp.status == 400 and "Location" not in resp.headers


async def test_a_code_is_good_once_and_only_with_its_verifier(mes: str) -> None:
    async with aiohttp.ClientSession() as http:
        code = await code_for(http, mes)
        wrong = await token(http, mes, code, verifier="w" * 64)
        assert wrong.status == 400 and (await wrong.json())["error"] == "invalid_grant"
        code = await code_for(http, mes)
        assert (await token(http, mes, code)).status == 200
        again = await token(http, mes, code)
        assert again.status == 400 and (await again.json())["error"] == "invalid_grant"


def test_identity_and_acr_levels() -> None:
    assert [acr_level(a) for a in ("eidas1", "eidas2", "eidas3", "", "eidas9")] == [1, 2, 3, 0, 0]
    for ins in ("12345", "279035121518989x", "979035121518989"):
        with pytest.raises(ValueError):
            PatientIdentity.from_claims({"ins": ins, "ins_oid": "1.2.250.1.213.1.4.10"})
    with pytest.raises(ValueError):
        PatientIdentity.from_claims({"ins": ANS_PATIENT, "ins_oid": "not an oid"})


@pytest.mark.sim
@pytest.mark.box
async def test_a_login_below_the_required_eidas_level_opens_no_session(tmp_path: Path, sim: Any) -> None:
    settings = enable_patient(box_settings(tmp_path, sim.url, ["source"]), sim.url)
    settings.patient.acr_values = "eidas3"  # the simulator's logins are eidas2 (substantial)
    async with running_box(settings) as box, aiohttp.ClientSession() as http:
        start = await http.get(f"{box.url}/patient/login?next=/patient/", allow_redirects=False)
        assert "acr_values=eidas3" in start.headers["Location"]
        state = start.cookies[PATIENT_COOKIE + "_login"].value
        at = await http.get(start.headers["Location"] + f"&sim_auto=1&login_hint={ANS_PATIENT}", allow_redirects=False)
        back = await http.get(at.headers["Location"], allow_redirects=False,
                              headers={"Cookie": f"{PATIENT_COOKIE}_login={state}"})  # fmt: skip
        assert back.status == 403 and 'data-reason="acr_too_low"' in await back.text()
        assert PATIENT_COOKIE not in back.cookies
        # A callback with a state this browser did not start is refused before anything is asked of the provider.
        forged = await http.get(at.headers["Location"], allow_redirects=False,
                                headers={"Cookie": f"{PATIENT_COOKIE}_login=other"})  # fmt: skip
        assert forged.status == 400 and 'data-reason="state_mismatch"' in await forged.text()
    assert ("patient.login", "refused", "acr_too_low") in box.actions()
