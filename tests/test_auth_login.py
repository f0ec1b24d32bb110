"""Browser login with an OIDC provider on loopback: the whole flow, open redirects, state, nonce, audience, logout."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import web

from drimbox.auth import oidc as oidc_module
from drimbox.auth.routes import AuthGate, access_token, current_professional, require_login, require_professional
from drimbox.config import Settings
from drimbox.demo.samples.processes import free_port
from tests.support.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider, start_provider


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Box:
    url: str
    gate: AuthGate
    runner: web.AppRunner
    launches: dict[str, dict[str, str]] = field(default_factory=dict)


def box_settings(provider: Provider, tmp_path: Path, port: int, **auth: Any) -> Settings:
    s = Settings()
    s.box.public_url = f"http://127.0.0.1:{port}"
    s.box.var_dir = str(tmp_path / "box-var")
    s.psc.issuer, s.psc.client_id, s.psc.client_secret = provider.issuer, CLIENT_ID, CLIENT_SECRET
    for key, value in auth.items():
        setattr(s.auth, key, value)
    return s


async def start_box(settings: Settings, clock: Callable[[], float] = time.time) -> Box:
    gate = AuthGate(settings, clock=clock)
    app = web.Application()
    gate.setup(app)
    box = Box(settings.box.public_url, gate, web.AppRunner(app, access_log=None))

    async def protected(request: web.Request) -> web.Response:
        professional = await require_professional(request)
        return web.json_response(
            {
                "id": professional.id,
                "profession": professional.profession,
                "specialty": professional.specialty,
                "structure": professional.structure_name,
            }
        )

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"token": await access_token(request)})

    async def launch(request: web.Request) -> web.Response:
        # What the consumer does: keep the POSTed launch server-side, come back to it by a GET after login.
        form = dict(await request.post())
        if await current_professional(request) is None:
            launch_id = str(len(box.launches) + 1)
            box.launches[launch_id] = {k: str(v) for k, v in form.items()}
            require_login(request, next=f"/resume/{launch_id}")
        return web.json_response({"direct": True})

    async def resume(request: web.Request) -> web.Response:
        await require_professional(request)
        return web.json_response({"method": request.method, "form": box.launches[request.match_info["id"]]})

    app.add_routes(
        [
            web.get("/protected", protected),
            web.get("/token", token),
            web.post("/launch", launch),
            web.get("/resume/{id}", resume),
        ]
    )
    await box.runner.setup()
    port = int(settings.box.public_url.rsplit(":", 1)[1])
    await web.TCPSite(box.runner, "127.0.0.1", port).start()
    return box


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider()
    runner = await start_provider(p)
    yield p
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: the jar must keep cookies set by an IP-address host (127.0.0.1).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@pytest.fixture
async def box(provider: Provider, tmp_path: Path) -> AsyncIterator[Box]:
    b = await start_box(box_settings(provider, tmp_path, free_port()))
    yield b
    await b.runner.cleanup()


async def test_login_flow_end_to_end(provider: Provider, box: Box, client: aiohttp.ClientSession) -> None:
    async with client.get(box.url + "/protected") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.url.path == "/protected"
        body = await resp.json()
        callback = next(r for r in resp.history if r.url.path == "/auth/callback")
        cookies = callback.headers.getall("Set-Cookie")
    assert body == {
        "id": "899700218896",
        "profession": "10",
        "specialty": "SM44",
        "structure": "CABINET RADIOLOGIE TEST",
    }
    session_cookie = next(c for c in cookies if c.startswith("drimbox_session="))
    assert "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie and "Secure" not in session_cookie
    # The authorization request: PKCE S256, state, nonce, PSC's scope and acr.
    q = provider.last_authorize
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert q["state"] and q["nonce"] and q["scope"] == "openid scope_all" and q["acr_values"] == "eidas1"
    async with client.get(box.url + "/auth/me") as resp:
        assert resp.status == 200 and (await resp.json())["id"] == "899700218896"
    # Logged in: no new trip to the provider.
    before = provider.calls.get("token", 0)
    async with client.get(box.url + "/protected", allow_redirects=False) as resp:
        assert resp.status == 200
    assert provider.calls.get("token", 0) == before


async def test_login_hint_and_extra_params_reach_the_provider(
    provider: Provider, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    b = await start_box(box_settings(provider, tmp_path, free_port(), authorize_params=["sim_auto=1"]))
    try:
        async with client.get(
            b.url + "/auth/login", params={"next": "/protected", "login_hint": "810100000012"}
        ) as resp:
            assert (await resp.json())["profession"] == "60"
        assert provider.last_authorize["sim_auto"] == "1"
    finally:
        await b.runner.cleanup()


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "evil.example",
        "http:/x",
        "/ok\r\nSet-Cookie: x=1",
        "javascript:alert(1)",
        "",
    ],
)
async def test_next_must_be_a_local_path(box: Box, client: aiohttp.ClientSession, target: str) -> None:
    async with client.get(box.url + "/auth/login", params={"next": target}, allow_redirects=False) as resp:
        assert resp.status == 400
        assert "Location" not in resp.headers


async def test_post_needing_login_comes_back_as_get_without_reposting(box: Box, client: aiohttp.ClientSession) -> None:
    async with client.post(box.url + "/launch", data={"Patient.identifier.value": "279035121518989"}) as resp:
        assert resp.status == 200
        assert resp.url.path == "/resume/1"
        assert await resp.json() == {"method": "GET", "form": {"Patient.identifier.value": "279035121518989"}}
        assert resp.history[0].status == 303


async def _callback_url(box: Box, client: aiohttp.ClientSession) -> str:
    """Start a login and let the provider answer, but stop before the callback."""
    async with client.get(box.url + "/auth/login", params={"next": "/protected"}, allow_redirects=False) as resp:
        assert resp.status == 303
        authorize = resp.headers["Location"]
    async with client.get(authorize, allow_redirects=False) as resp:
        assert resp.status == 302
        return resp.headers["Location"]


async def test_state_mismatch_is_refused(box: Box, client: aiohttp.ClientSession) -> None:
    callback = await _callback_url(box, client)
    tampered = callback.replace("state=", "state=x")
    async with client.get(tampered, allow_redirects=False) as resp:
        assert resp.status == 400 and "état différent" in await resp.text()
    # Another browser (no login cookie) presenting this callback: login CSRF, refused.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        async with other.get(callback, allow_redirects=False) as resp:
            assert resp.status == 400


async def test_provider_refusal_is_shown_not_followed(box: Box, client: aiohttp.ClientSession) -> None:
    callback = await _callback_url(box, client)
    state = yarl.URL(callback).query["state"]
    refused = f"{box.url}/auth/callback?error=access_denied<script>&state={state}"
    async with client.get(refused, allow_redirects=False) as resp:
        assert resp.status == 401
        text = await resp.text()
        assert "access_denied" in text and "<script>" not in text
    async with client.get(callback, allow_redirects=False) as resp:
        assert resp.status == 400  # the refused login's state is spent


async def test_callback_is_single_use_and_checks_iss(box: Box, client: aiohttp.ClientSession) -> None:
    callback = await _callback_url(box, client)
    async with client.get(callback.replace("iss=", "iss=x"), allow_redirects=False) as resp:
        assert resp.status == 400
    callback = await _callback_url(box, client)
    async with client.get(callback, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/protected"
    async with client.get(callback, allow_redirects=False) as resp:
        assert resp.status == 400


@pytest.mark.parametrize("knob", ["id_token_nonce", "id_token_aud"])
async def test_id_token_with_wrong_nonce_or_audience_is_refused(
    provider: Provider, box: Box, client: aiohttp.ClientSession, knob: str
) -> None:
    setattr(provider, knob, "someone-else")
    async with client.get(box.url + "/protected") as resp:
        assert resp.status == 401
        assert resp.url.path == "/auth/callback"
        assert "invalid_id_token" in await resp.text()
    async with client.get(box.url + "/auth/me") as resp:
        assert resp.status == 401


async def test_provider_key_rotation_is_followed(
    provider: Provider, box: Box, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oidc_module, "JWKS_MIN_REFETCH", 0.0)
    async with client.get(box.url + "/protected") as resp:
        assert resp.status == 200
    provider.rotate_key()
    client.cookie_jar.clear()
    async with client.get(box.url + "/protected") as resp:
        assert resp.status == 200
    assert provider.calls["jwks"] == 2


async def test_access_token_is_refreshed_near_expiry_and_session_ends_when_it_cannot(
    provider: Provider, box: Box, client: aiohttp.ClientSession
) -> None:
    provider.access_ttl = 30  # inside the 60 s refresh margin: every hand-out refreshes
    async with client.get(box.url + "/protected") as resp:
        assert resp.status == 200
    calls = provider.calls["token"]
    async with client.get(box.url + "/token") as resp:
        first = (await resp.json())["token"]
    async with client.get(box.url + "/token") as resp:
        second = (await resp.json())["token"]
    assert first and second and first != second
    assert provider.calls["token"] == calls + 2
    provider.token_down = True  # a provider outage does not end the session: the token is kept while valid
    async with client.get(box.url + "/token") as resp:
        assert (await resp.json())["token"] == second
    async with client.get(box.url + "/auth/me") as resp:
        assert resp.status == 200
    provider.token_down = False
    provider.refresh_tokens.clear()  # the provider forgets the session
    async with client.get(box.url + "/token") as resp:
        assert (await resp.json())["token"] is None
    async with client.get(box.url + "/auth/me") as resp:
        assert resp.status == 401


async def test_sessions_expire_when_idle_and_after_their_lifetime(
    provider: Provider, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    b = await start_box(
        box_settings(provider, tmp_path, free_port(), session_idle=1800.0, session_ttl=8 * 3600.0), clock
    )
    try:
        async with client.get(b.url + "/protected") as resp:
            assert resp.status == 200
        for _ in range(3):  # activity every 29 min keeps it alive
            clock.now += 29 * 60
            async with client.get(b.url + "/auth/me") as resp:
                assert resp.status == 200
        clock.now += 31 * 60
        async with client.get(b.url + "/auth/me") as resp:
            assert resp.status == 401
        async with client.get(b.url + "/protected", allow_redirects=False) as resp:
            assert resp.status == 303
            location = yarl.URL(resp.headers["Location"])
            assert location.path == "/auth/login" and location.query["next"] == "/protected"
        # Absolute lifetime: activity does not keep a session past session_ttl.
        async with client.get(b.url + "/protected") as resp:
            assert resp.status == 200
        for _ in range(int(8 * 60 / 20) - 1):
            clock.now += 20 * 60
            async with client.get(b.url + "/auth/me") as resp:
                assert resp.status == 200
        clock.now += 21 * 60
        async with client.get(b.url + "/auth/me") as resp:
            assert resp.status == 401
    finally:
        await b.runner.cleanup()


async def test_logout_ends_the_session_revokes_and_goes_through_end_session(
    provider: Provider, box: Box, client: aiohttp.ClientSession
) -> None:
    async with client.get(box.url + "/protected") as resp:
        assert resp.status == 200
    # From the box's own page (its Origin): a logout posted from elsewhere is refused (tests/security/test_csrf.py).
    async with client.post(box.url + "/auth/logout", headers={"Origin": box.url}) as resp:
        assert resp.status == 200 and resp.url.path == "/auth/logged-out"
        assert any(r.url.path.endswith("/logout") and r.url.host == "127.0.0.1" for r in resp.history[1:])
    assert provider.calls["revoke"] == 1 and provider.calls["logout"] == 1
    assert not provider.refresh_tokens  # the refresh token is gone at the provider
    async with client.get(box.url + "/auth/me") as resp:
        assert resp.status == 401
    async with client.get(box.url + "/protected", allow_redirects=False) as resp:
        assert resp.status == 303


async def test_logout_without_end_session_endpoint_lands_locally(
    provider: Provider, box: Box, client: aiohttp.ClientSession
) -> None:
    provider.end_session = False
    async with client.get(box.url + "/protected") as resp:
        assert resp.status == 200
    async with client.post(box.url + "/auth/logout", headers={"Origin": box.url}, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/auth/logged-out"


async def test_cookies_are_secure_when_the_box_is_https(
    provider: Provider, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    s = box_settings(provider, tmp_path, free_port())
    port = int(s.box.public_url.rsplit(":", 1)[1])
    s.box.public_url = f"https://127.0.0.1:{port}"
    b = await start_box(s)
    try:
        async with client.get(
            f"http://127.0.0.1:{port}/auth/login", params={"next": "/"}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
            cookie = resp.headers["Set-Cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
            assert f"redirect_uri=https%3A%2F%2F127.0.0.1%3A{port}%2Fauth%2Fcallback" in resp.headers["Location"]
    finally:
        await b.runner.cleanup()


async def test_provider_down_gives_503(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    down = Provider(issuer=f"http://127.0.0.1:{free_port()}/psc")
    b = await start_box(box_settings(down, tmp_path, free_port(), http_timeout=2.0))
    try:
        async with client.get(b.url + "/auth/login", allow_redirects=False) as resp:
            assert resp.status == 503
    finally:
        await b.runner.cleanup()
