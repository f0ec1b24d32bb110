"""Simulated Pro Santé Connect: discovery, the code + PKCE flow with authlib's client, tokens, userinfo, logout."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.oidc.core.util import create_half_hash
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt

from drimbox.auth.professional import Professional
from drimbox.config import ConfigError
from drimbox.sim.psc_professionals import Directory
from tests.test_sim_psc_support import (
    CLIENT_ID,
    GP,
    NURSE,
    RADIOLOGIST,
    REDIRECT_URI,
    SECRETARY,
    TWO_SITUATIONS,
    introspect,
    log_in,
    login_page_id,
    new_session,
    running_psc,
    server_keys,
    userinfo,
    verified_claims,
)

pytestmark = pytest.mark.sim


async def test_discovery_document_is_valid_openid_provider_metadata(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        response = await asyncio.to_thread(requests.get, psc.url(".well-known/openid-configuration"), timeout=10)
        assert response.status_code == 200
        metadata = OpenIDProviderMetadata(response.json())
        metadata.validate()  # authlib's check of OpenID Connect Discovery 1.0 and RFC 8414
        assert metadata["issuer"] == psc.issuer == f"http://127.0.0.1:{psc.settings.sim.port}/psc"
        assert metadata["code_challenge_methods_supported"] == ["S256"]
        assert metadata["scopes_supported"] == ["openid", "scope_all"]
        for name in ("jwks_uri", "introspection_endpoint", "revocation_endpoint", "end_session_endpoint"):
            assert metadata[name].startswith(psc.issuer + "/")
        keys = await asyncio.to_thread(server_keys, psc)
        (key,) = keys.keys
        assert key.kid and key.as_dict(private=False).get("d") is None  # the public half only


async def test_code_flow_with_pkce_gives_tokens_that_verify_against_the_jwks(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        auth, token = await asyncio.to_thread(log_in, psc, RADIOLOGIST)
        assert auth.params["state"] == auth.state
        assert token["token_type"] == "Bearer" and token["expires_in"] == 300 and token["scope"] == "openid scope_all"
        assert token["refresh_token"] and token["id_token"]

        header, id_claims = await asyncio.to_thread(verified_claims, psc, token["id_token"], aud=CLIENT_ID,
                                                    nonce=auth.nonce)  # fmt: skip
        assert header["alg"] == "RS256" and header["kid"]
        assert id_claims["SubjectNameID"] == RADIOLOGIST and id_claims["family_name"] == "BIDEAULT"
        assert id_claims["sub"].endswith(":" + RADIOLOGIST) and id_claims["acr"] == "eidas1"
        assert id_claims["at_hash"] == create_half_hash(token["access_token"], "RS256").decode()
        assert id_claims["auth_time"] <= id_claims["iat"] < id_claims["exp"]

        at_header, at_claims = await asyncio.to_thread(verified_claims, psc, token["access_token"],
                                                       client_id=CLIENT_ID)  # fmt: skip
        assert at_header["kid"] == header["kid"] and at_header["typ"] == "at+jwt"
        assert at_claims["exp"] - at_claims["iat"] == 300 and at_claims["scope"] == "openid scope_all"
        assert at_claims["SubjectNameID"] == RADIOLOGIST and at_claims["sid"] == id_claims["sid"]
        assert at_claims["nonce"] == auth.nonce and at_claims["jti"]


async def test_userinfo_has_the_psc_shape_for_each_kind_of_professional(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        infos = {}
        for who in (RADIOLOGIST, GP, NURSE, SECRETARY, TWO_SITUATIONS):
            _, token = await asyncio.to_thread(log_in, psc, who)
            response = await asyncio.to_thread(userinfo, psc, token["access_token"])
            assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
            infos[who] = response.json()
    radiologist = infos[RADIOLOGIST]
    assert radiologist["SubjectNameID"] == radiologist["preferred_username"] == RADIOLOGIST
    assert (radiologist["given_name"], radiologist["family_name"]) == ("Jacques", "BIDEAULT")
    assert radiologist["SubjectRole"] == ["10^1.2.250.1.213.1.1.5.5"]
    (exercice,) = radiologist["SubjectRefPro"]["exercices"]
    assert (exercice["codeProfession"], exercice["codeSavoirFaire"]) == ("10", "SM44")
    (activity,) = exercice["activities"]
    assert activity["ancienIdentifiantDeLaStructure"] == "101235555"
    assert (
        activity["raisonSocialeSite"] == "Centre de radiologie Ambroise" and activity["codeSecteurDactivite"] == "SA25"
    )
    assert radiologist["Secteur_Activite"] == "SA25^1.2.250.1.71.4.2.4"
    assert infos[GP]["SubjectRefPro"]["exercices"][0]["codeSavoirFaire"] == "SM26"
    assert infos[GP]["SubjectRefPro"]["exercices"][0]["activities"][0]["codeModeExercice"] == "L"
    nurse = infos[NURSE]["SubjectRefPro"]["exercices"][0]
    assert nurse["codeProfession"] == "60" and len(nurse["activities"]) == 2
    # Two situations as PSC gives them: the top level names the first (its technical id), the box must choose.
    durand = infos[TWO_SITUATIONS]
    assert [(a["ancienIdentifiantDeLaStructure"], a["codeSecteurDactivite"])
            for a in durand["SubjectRefPro"]["exercices"][0]["activities"]] == [
        ("410003456789001", "SA08"), ("1690000019", "SA01")]  # fmt: skip
    assert (durand["SubjectOrganizationID"], durand["Secteur_Activite"]) == ("R10000345678", "SA08^1.2.250.1.71.4.2.4")
    pro = Professional.from_claims(durand)
    assert pro.must_choose and [s.structure_id for s in pro.situations] == ["410003456789001", "1690000019"]
    assert Professional.from_claims(radiologist).structure_id == "101235555"
    secretary = infos[SECRETARY]
    assert secretary["SubjectRole"] == [] and secretary["SubjectRefPro"]["exercices"][0]["codeProfession"] == ""


async def test_introspection_then_refresh_rotates_the_refresh_token(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:

        def scenario() -> None:
            auth, token = log_in(psc, GP)
            active = introspect(psc, token["access_token"])
            assert active["active"] is True and active["username"] == GP and active["client_id"] == CLIENT_ID
            assert active["token_type"] == "Bearer" and active["iss"] == psc.issuer and active["exp"] > active["iat"]
            assert introspect(psc, token["refresh_token"], token_type_hint="refresh_token")["active"] is True
            refreshed = auth.session.refresh_token(psc.url("token"), refresh_token=token["refresh_token"])
            assert refreshed["access_token"] != token["access_token"]
            assert refreshed["refresh_token"] != token["refresh_token"]
            assert introspect(psc, refreshed["access_token"])["username"] == GP
            assert introspect(psc, token["refresh_token"])["active"] is False  # used once, gone
            again = requests.post(psc.url("token"), auth=(CLIENT_ID, "drimbox-secret"), timeout=10,
                                  data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]})  # fmt: skip
            assert again.status_code == 400 and again.json()["error"] == "invalid_grant"

        await asyncio.to_thread(scenario)


async def test_login_page_lists_the_professionals_and_a_post_logs_one_in(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:

        def scenario() -> None:
            session, verifier, nonce = new_session(), generate_token(48), generate_token(16)
            url, state = session.create_authorization_url(psc.url("auth"), code_verifier=verifier, nonce=nonce)
            page = requests.get(url, allow_redirects=False, timeout=10)
            assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
            assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
            for name in ("BIDEAULT", "MEDIONI", "LEROY", "MARTIN", "Radio-diagnostic"):
                assert name in page.text
            login_id = login_page_id(page.text)
            chosen = requests.post(psc.url("auth"), data={"login_id": login_id, "professional": NURSE},
                                   allow_redirects=False, timeout=10)  # fmt: skip
            assert chosen.status_code == 302
            location = chosen.headers["Location"]
            assert location.startswith(REDIRECT_URI + "?")
            token = session.fetch_token(psc.url("token"), authorization_response=location, code_verifier=verifier)
            assert introspect(psc, token["access_token"])["username"] == NURSE
            replay = requests.post(psc.url("auth"), data={"login_id": login_id, "professional": NURSE},
                                   allow_redirects=False, timeout=10)  # fmt: skip
            assert replay.status_code == 400  # a login page is good for one answer

            url, state = session.create_authorization_url(psc.url("auth"), code_verifier=verifier,
                                                          nonce=generate_token(16))  # fmt: skip
            page = requests.get(url, allow_redirects=False, timeout=10)
            denied = requests.post(psc.url("auth"), data={"login_id": login_page_id(page.text), "action": "deny"},
                                   allow_redirects=False, timeout=10)  # fmt: skip
            params = parse_qs(urlsplit(denied.headers["Location"]).query)
            assert params["error"] == ["access_denied"] and params["state"] == [state]

        await asyncio.to_thread(scenario)


async def test_logout_with_id_token_hint_ends_the_session(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:

        def scenario() -> None:
            _, token = log_in(psc, RADIOLOGIST)
            _, other = log_in(psc, RADIOLOGIST)  # another login session: untouched
            response = requests.get(psc.url("logout"), allow_redirects=False, timeout=10, params={
                "id_token_hint": token["id_token"], "post_logout_redirect_uri": "http://127.0.0.1:9/bye", "state": "s1",
            })  # fmt: skip
            assert response.status_code == 302 and response.headers["Location"] == "http://127.0.0.1:9/bye?state=s1"
            assert introspect(psc, token["access_token"])["active"] is False
            assert introspect(psc, token["refresh_token"])["active"] is False
            assert introspect(psc, other["access_token"])["active"] is True
            bad = requests.get(psc.url("logout"), params={"id_token_hint": "not.a.jwt"}, timeout=10)
            assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
            plain = requests.get(psc.url("logout"), timeout=10)
            assert plain.status_code == 200 and "déconnecté" in plain.text

        await asyncio.to_thread(scenario)


async def test_signing_key_survives_a_restart(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        _, token = await asyncio.to_thread(log_in, psc)
        kid = (await asyncio.to_thread(server_keys, psc)).keys[0].kid
    async with running_psc(tmp_path) as restarted:
        keys = await asyncio.to_thread(server_keys, restarted)
        assert keys.keys[0].kid == kid
        # Tokens are kept in memory: after a restart the old one still verifies, but is no longer active.
        assert jwt.decode(token["access_token"], keys, algorithms=["RS256"]).claims["SubjectNameID"] == RADIOLOGIST
        assert (await asyncio.to_thread(introspect, restarted, token["access_token"]))["active"] is False


async def test_professionals_file_adds_and_replaces_professionals(tmp_path: Path) -> None:
    extra = tmp_path / "pros.json"
    extra.write_text(json.dumps([
        {"national_id": "899999999999", "family_name": "KINE", "given_name": "Paul", "profession": "70",
         "situations": [{"structure_id": "1990000015", "structure_name": "Centre hospitalier simulé",
                         "activity_sector": "SA01"}]},
        {"national_id": RADIOLOGIST, "family_name": "BIDEAULT", "given_name": "Jacques", "profession": "10",
         "specialty": "SM45", "situations": []},
    ]))  # fmt: skip
    async with running_psc(tmp_path / "var", professionals_file=str(extra)) as psc:
        _, token = await asyncio.to_thread(log_in, psc, "899999999999")
        info = (await asyncio.to_thread(userinfo, psc, token["access_token"])).json()
        assert info["SubjectRole"] == ["70^1.2.250.1.213.1.1.5.5"]
        _, token = await asyncio.to_thread(log_in, psc, RADIOLOGIST)
        info = (await asyncio.to_thread(userinfo, psc, token["access_token"])).json()
        assert info["SubjectRefPro"]["exercices"][0]["codeSavoirFaire"] == "SM45"
    extra.write_text(json.dumps([{"national_id": "1", "family_name": "X", "given_name": "Y", "situations": [{}]}]))
    with pytest.raises(ConfigError, match=r"sim\.professionals_file\[0\]\.situations\[0\]: missing field"):
        Directory.load(str(extra))
    extra.write_text(json.dumps([{"national_id": "1", "family_name": "X", "given_name": "Y", "situations": [],
                                  "rpps": "1"}]))  # fmt: skip
    with pytest.raises(ConfigError, match=r"sim\.professionals_file\[0\]: unknown field\(s\) rpps"):
        Directory.load(str(extra))
