"""Simulated Pro Santé Connect refuses what the real one refuses, with RFC 6749 / 6750 / 7662 answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from drimbox.config import ConfigError, load_settings
from tests.test_sim_psc_support import (
    CLIENT_ID,
    CLIENT_SECRET,
    RADIOLOGIST,
    REDIRECT_URI,
    RunningPsc,
    authorize,
    code_grant,
    exchange,
    introspect,
    log_in,
    new_session,
    post_token,
    running_psc,
    userinfo,
)

pytestmark = pytest.mark.sim


def assert_oauth_error(response: requests.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    return body


def authorization_request(psc: RunningPsc, **overrides: str | None) -> requests.Response:
    """A hand-made authorization request (defaults valid), so each test can break one parameter."""
    verifier = generate_token(48)
    params: dict[str, str | None] = {
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT_URI, "scope": "openid scope_all",
        "state": "st4te", "nonce": generate_token(16), "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256", "login_hint": RADIOLOGIST, "sim_auto": "1",
    }  # fmt: skip
    params.update(overrides)
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return requests.get(f"{psc.url('auth')}?{query}", allow_redirects=False, timeout=10)


def redirected_error(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?") and "code=" not in location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def test_wrong_pkce_verifier_is_refused_and_burns_the_code(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:

        def scenario() -> None:
            auth = authorize(psc)
            body = assert_oauth_error(post_token(psc, code_grant(auth, code_verifier=generate_token(48))), 400,
                                      "invalid_grant")  # fmt: skip
            assert "challenge" in body["error_description"].lower()
            # One attempt per code: the right verifier now comes too late.
            assert_oauth_error(post_token(psc, code_grant(auth)), 400, "invalid_grant")
            auth = authorize(psc)
            missing = code_grant(auth)
            del missing["code_verifier"]
            assert_oauth_error(post_token(psc, missing), 400, "invalid_request")

        await asyncio.to_thread(scenario)


async def test_a_replayed_code_is_refused_and_revokes_what_it_gave(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:

        def scenario() -> None:
            auth = authorize(psc)
            first = post_token(psc, code_grant(auth))
            assert first.status_code == 200
            token = first.json()
            assert introspect(psc, token["access_token"])["active"] is True
            assert_oauth_error(post_token(psc, code_grant(auth)), 400, "invalid_grant")
            assert introspect(psc, token["access_token"])["active"] is False
            assert introspect(psc, token["refresh_token"])["active"] is False
            # authlib's client sees the same refusal as an error, not a token.
            with pytest.raises(OAuthError, match="invalid_grant"):
                exchange(psc, auth)

        await asyncio.to_thread(scenario)


async def test_redirect_uri_must_be_registered_and_repeated_at_the_token_endpoint(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:

        def scenario() -> None:
            # Not a loopback URI: never redirected to, the error is shown to the user (JSON here).
            body = assert_oauth_error(authorization_request(psc, redirect_uri="http://evil.example/cb"), 400,
                                      "invalid_request")  # fmt: skip
            assert "redirect" in body["error_description"].lower()
            assert_oauth_error(authorization_request(psc, redirect_uri="https://127.0.0.1/cb#frag"), 400,
                               "invalid_request")  # fmt: skip
            assert_oauth_error(authorization_request(psc, redirect_uri=None), 400, "invalid_request")
            auth = authorize(psc)
            assert_oauth_error(post_token(psc, code_grant(auth, redirect_uri="http://127.0.0.1:9/other")), 400,
                               "invalid_grant")  # fmt: skip

        await asyncio.to_thread(scenario)

    registered = "http://box.example:8080/auth/callback"
    async with running_psc(tmp_path, psc_redirect_uris=[registered]) as psc:

        def registered_only() -> None:
            assert_oauth_error(authorization_request(psc), 400, "invalid_request")  # loopback no longer enough
            ok = authorization_request(psc, redirect_uri=registered)
            assert ok.status_code == 302 and ok.headers["Location"].startswith(registered + "?code=")

        await asyncio.to_thread(registered_only)


async def test_client_authentication_is_required_and_checked(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:

        def scenario() -> None:
            auth = authorize(psc)
            bad = post_token(psc, code_grant(auth), auth=(CLIENT_ID, "wrong-secret"))
            assert_oauth_error(bad, 401, "invalid_client")
            assert bad.headers["WWW-Authenticate"].startswith("Basic")
            auth = authorize(psc)
            post = code_grant(auth, client_id=CLIENT_ID, client_secret="wrong-secret")
            assert_oauth_error(post_token(psc, post, auth=None), 401, "invalid_client")
            auth = authorize(psc)
            assert_oauth_error(post_token(psc, code_grant(auth, client_id=CLIENT_ID), auth=None), 401, "invalid_client")
            # client_secret_post with the right secret is accepted.
            good = post_token(psc, code_grant(auth, client_id=CLIENT_ID, client_secret=CLIENT_SECRET), auth=None)
            assert good.status_code == 200 and good.headers["Cache-Control"] == "no-store"
            # Introspection and revocation want the client too.
            token = good.json()["access_token"]
            anonymous = requests.post(psc.url("introspect"), data={"token": token}, timeout=10)
            assert_oauth_error(anonymous, 401, "invalid_client")
            revoked = requests.post(psc.url("revoke"), data={"token": token}, auth=(CLIENT_ID, "nope"), timeout=10)
            assert_oauth_error(revoked, 401, "invalid_client")
            assert introspect(psc, token)["active"] is True
            # Refused by authlib's client too.
            session = new_session(client_secret="wrong-secret")
            with pytest.raises(OAuthError, match="invalid_client"):
                exchange(psc, authorize(psc, session=session))

        await asyncio.to_thread(scenario)


async def test_authorization_request_rules(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:

        def scenario() -> None:
            for broken, error in (
                ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),  # PKCE required
                ({"code_challenge_method": "plain"}, "invalid_request"),  # S256 only
                ({"code_challenge_method": None}, "invalid_request"),
                ({"nonce": None}, "invalid_request"),
                ({"scope": "profile"}, "invalid_scope"),  # OpenID Connect only
                ({"scope": "openid email"}, "invalid_scope"),  # what PSC does not know
                ({"response_type": "token"}, "unsupported_response_type"),
                ({"login_hint": "000000000000"}, "login_required"),  # sim_auto needs a known professional
                ({"sim_auto": None, "prompt": "none"}, "login_required"),  # no session at the simulated PSC
            ):
                params = redirected_error(authorization_request(psc, **broken))
                assert params["error"] == error, (broken, params)
                assert params["state"] == "st4te"
            params = redirected_error(authorization_request(psc, state=None))
            assert params["error"] == "invalid_request" and "state" not in params
            assert_oauth_error(authorization_request(psc, client_id="someone-else"), 400, "invalid_client")
            nonce = generate_token(16)
            assert authorization_request(psc, nonce=nonce).status_code == 302
            assert redirected_error(authorization_request(psc, nonce=nonce))["error"] == "invalid_request"  # replay

        await asyncio.to_thread(scenario)


async def test_token_endpoint_wants_a_form_post_without_repeated_parameters(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:

        def scenario() -> None:
            auth = authorize(psc)
            assert requests.get(psc.url("token"), timeout=10).status_code == 405
            as_json = requests.post(
                psc.url("token"), json=code_grant(auth), auth=(CLIENT_ID, CLIENT_SECRET), timeout=10
            )
            assert_oauth_error(as_json, 400, "invalid_request")
            body = urlencode(code_grant(auth)) + "&code=again"
            repeated = requests.post(psc.url("token"), data=body, auth=(CLIENT_ID, CLIENT_SECRET), timeout=10,
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
            assert_oauth_error(repeated, 400, "invalid_request")
            assert_oauth_error(post_token(psc, {"grant_type": "password"}), 400, "unsupported_grant_type")
            assert_oauth_error(post_token(psc, code_grant(auth, code="unknown")), 400, "invalid_grant")

        await asyncio.to_thread(scenario)


async def test_expired_access_token_is_inactive_and_refused_by_userinfo(tmp_path: Path) -> None:
    # 2 s: JWT times are whole seconds, so a token lives between 1 and 2 s; the first check needs it alive.
    async with running_psc(tmp_path, psc_access_token_lifetime=2) as psc:

        def scenario() -> None:
            _, token = log_in(psc)
            assert token["expires_in"] == 2
            assert userinfo(psc, token["access_token"]).status_code == 200
            time.sleep(2.2)
            assert introspect(psc, token["access_token"]) == {"active": False}
            refused = userinfo(psc, token["access_token"])
            assert_oauth_error(refused, 401, "invalid_token")
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
            assert introspect(psc, token["refresh_token"])["active"] is True  # the refresh token lives longer

        await asyncio.to_thread(scenario)


async def test_revoked_tokens_are_inactive_and_refused_by_userinfo(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:

        def scenario() -> None:
            auth, token = log_in(psc)
            response = auth.session.revoke_token(psc.url("revoke"), token=token["access_token"],
                                                 token_type_hint="access_token")  # fmt: skip
            assert response.status_code == 200
            assert introspect(psc, token["access_token"]) == {"active": False}
            assert_oauth_error(userinfo(psc, token["access_token"]), 401, "invalid_token")
            assert introspect(psc, token["refresh_token"])["active"] is True
            # Revoking the refresh token ends the grant: its access token goes with it.
            _, token = log_in(psc)
            revoked = requests.post(psc.url("revoke"), data={"token": token["refresh_token"]},
                                    auth=(CLIENT_ID, CLIENT_SECRET), timeout=10)  # fmt: skip
            assert revoked.status_code == 200
            assert introspect(psc, token["access_token"])["active"] is False
            # Unknown tokens: revocation says 200 (RFC 7009 §2.2), introspection says inactive.
            assert requests.post(psc.url("revoke"), data={"token": "nope"}, auth=(CLIENT_ID, CLIENT_SECRET),
                                 timeout=10).status_code == 200  # fmt: skip
            assert introspect(psc, "nope") == {"active": False}
            assert_oauth_error(requests.get(psc.url("userinfo"), timeout=10), 401, "missing_authorization")

        await asyncio.to_thread(scenario)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DRIMBOX_SIM__PSC_REDIRECT_URIS": "ftp://x/cb"}, "sim.psc_redirect_uris"),
        ({"DRIMBOX_SIM__PSC_ACCESS_TOKEN_LIFETIME": "0"}, "sim.psc_access_token_lifetime"),
        ({"DRIMBOX_SIM__PUBLIC_URL": "127.0.0.1:8090"}, "sim.public_url"),
        ({"DRIMBOX_SIM__PROFESSIONALS_FILE": "/nonexistent/pros.json"}, "sim.professionals_file"),
        ({"DRIMBOX_SIM__WHITELIST_HOSTS": "ftp://box.example"}, "sim.whitelist_hosts"),
        ({"DRIMBOX_SIM__WHITELIST_HOSTS": "box.example:*"}, "sim.whitelist_hosts"),  # any port: loopback hosts only
        ({"DRIMBOX_SIM__WHITELIST_HOSTS": "box.example:99999"}, "sim.whitelist_hosts"),
    ],
)
def test_sim_settings_errors_name_the_key(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_settings(None, env=env)


def test_public_url_sets_the_issuer() -> None:
    from drimbox.sim.psc_routes import psc_issuer

    assert psc_issuer(load_settings(None, env={})) == "http://127.0.0.1:8090/psc"
    settings = load_settings(None, env={"DRIMBOX_SIM__PUBLIC_URL": "https://sim.example/"})
    assert psc_issuer(settings) == "https://sim.example/psc"
