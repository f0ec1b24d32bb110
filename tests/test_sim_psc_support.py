"""Helpers for the Pro Santé Connect simulator tests (a running simulator, authlib's client), and their own checks."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from aiohttp.test_utils import TestServer
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.jwk import KeySet

from drimbox.config import Settings
from drimbox.demo.samples.processes import free_port
from drimbox.sim import build_sim_app

CLIENT_ID, CLIENT_SECRET = "drimbox", "drimbox-secret"
REDIRECT_URI = "http://127.0.0.1:9/auth/callback"  # never contacted: the tests read the Location header
RADIOLOGIST, GP, NURSE, SECRETARY = "801234560801", "801234567897", "810001234566", "3101235555/SEC0001"
TWO_SITUATIONS = "810003456789"  # a radiologist with a practice and a hospital situation
SCOPE = "openid scope_all"


@dataclass
class RunningPsc:
    base: str
    settings: Settings

    @property
    def issuer(self) -> str:
        return f"{self.base}/psc"

    def url(self, name: str) -> str:
        return f"{self.issuer}/{name}"


def psc_settings(var_dir: Path, port: int, **sim: Any) -> Settings:
    settings = Settings()
    settings.sim.var_dir = str(var_dir)
    settings.sim.port = port
    for key, value in sim.items():
        setattr(settings.sim, key, value)
    return settings


@asynccontextmanager
async def running_psc(var_dir: Path, **sim: Any) -> AsyncIterator[RunningPsc]:
    """The whole simulator on 127.0.0.1, on the port its issuer names (so discovery and tokens agree)."""
    port = free_port()
    settings = psc_settings(var_dir, port, **sim)
    server = TestServer(build_sim_app(settings), host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield RunningPsc(f"http://127.0.0.1:{port}", settings)
    finally:
        await server.close()


# Everything below is synchronous (requests, authlib's OAuth2Session): tests run it with asyncio.to_thread
# so that the simulator keeps serving on the event loop meanwhile.


def new_session(**kwargs: Any) -> OAuth2Session:
    options: dict[str, Any] = {
        "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "scope": SCOPE, "redirect_uri": REDIRECT_URI,
        "code_challenge_method": "S256", "token_endpoint_auth_method": "client_secret_basic",
    }  # fmt: skip
    options.update(kwargs)
    return OAuth2Session(**options)


@dataclass
class Authorization:
    session: OAuth2Session
    verifier: str
    nonce: str
    state: str
    location: str  # where the simulator redirected the browser

    @property
    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.location).query).items()}

    @property
    def code(self) -> str:
        return self.params["code"]


def authorize(psc: RunningPsc, professional: str = RADIOLOGIST, *, session: OAuth2Session | None = None,
              **extra: str) -> Authorization:  # fmt: skip
    """The authorization request with sim_auto=1: the simulator answers with the redirect at once."""
    session = session or new_session()
    verifier, nonce = generate_token(64), generate_token(24)
    params: dict[str, str] = {"nonce": nonce, "login_hint": professional, "sim_auto": "1", "acr_values": "eidas1"}
    params.update(extra)
    url, state = session.create_authorization_url(psc.url("auth"), code_verifier=verifier, **params)
    response = requests.get(url, allow_redirects=False, timeout=10)
    assert response.status_code == 302, response.text
    return Authorization(session, verifier, nonce, state, response.headers["Location"])


def exchange(psc: RunningPsc, auth: Authorization, **kwargs: Any) -> dict[str, Any]:
    """authlib's client exchanges the code (state checked, PKCE verifier sent, client_secret_basic)."""
    token: dict[str, Any] = auth.session.fetch_token(
        psc.url("token"), authorization_response=auth.location, code_verifier=auth.verifier, **kwargs
    )
    return token


def log_in(psc: RunningPsc, professional: str = RADIOLOGIST) -> tuple[Authorization, dict[str, Any]]:
    auth = authorize(psc, professional)
    return auth, exchange(psc, auth)


def post_token(psc: RunningPsc, data: dict[str, str], auth: tuple[str, str] | None = (CLIENT_ID, CLIENT_SECRET)
               ) -> requests.Response:  # fmt: skip
    return requests.post(psc.url("token"), data=data, auth=auth, timeout=10)


def code_grant(auth: Authorization, **overrides: str) -> dict[str, str]:
    data = {"grant_type": "authorization_code", "code": auth.code, "redirect_uri": REDIRECT_URI,
            "code_verifier": auth.verifier}  # fmt: skip
    data.update(overrides)
    return data


def introspect(psc: RunningPsc, token: str, **data: str) -> dict[str, Any]:
    response = requests.post(psc.url("introspect"), data={"token": token, **data},
                             auth=(CLIENT_ID, CLIENT_SECRET), timeout=10)  # fmt: skip
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def userinfo(psc: RunningPsc, access_token: str) -> requests.Response:
    return requests.get(psc.url("userinfo"), headers={"Authorization": f"Bearer {access_token}"}, timeout=10)


def server_keys(psc: RunningPsc) -> KeySet:
    return KeySet.import_key_set(requests.get(psc.url("jwks"), timeout=10).json())


def verified_claims(psc: RunningPsc, token: str, **expected: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a JWT whose RS256 signature verifies against /psc/jwks and whose claims hold."""
    decoded = jwt.decode(token, server_keys(psc), algorithms=["RS256"])
    options: dict[str, Any] = {k: {"essential": True, "value": v} for k, v in expected.items()}
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": psc.issuer}, exp={"essential": True}, iat={"essential": True},
        sub={"essential": True}, **options,
    )  # fmt: skip
    registry.validate(decoded.claims)
    return dict(decoded.header), dict(decoded.claims)


def login_page_id(html: str) -> str:
    match = re.search(r'name="login_id" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


# -- checks of the helpers themselves --------------------------------------------------------------


def test_settings_helper_sets_sim_keys(tmp_path: Path) -> None:
    settings = psc_settings(tmp_path, 1234, psc_access_token_lifetime=5)
    assert settings.sim.port == 1234 and settings.sim.psc_access_token_lifetime == 5


def test_code_grant_helper_carries_pkce() -> None:
    auth = Authorization(new_session(), "v" * 43, "n", "s", f"{REDIRECT_URI}?code=abc&state=s")
    assert code_grant(auth)["code"] == "abc" and code_grant(auth, code="x")["code"] == "x"
