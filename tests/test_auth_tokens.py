"""Source-side bearer token checks: introspection and JWT modes, expired, revoked, garbage, wrong issuer, cache."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from drimbox.auth.tokens import BearerTokenChecker, TokenError
from drimbox.config import Settings
from drimbox.demo.samples.processes import free_port
from tests.support.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider, new_key, start_provider

USER = "899700218896"


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider()
    runner = await start_provider(p)
    yield p
    await runner.cleanup()


def settings(issuer: str, **auth: Any) -> Settings:
    s = Settings()
    s.psc.issuer, s.psc.client_id, s.psc.client_secret = issuer, CLIENT_ID, CLIENT_SECRET
    for key, value in auth.items():
        setattr(s.auth, key, value)
    return s


@pytest.fixture(params=["introspection", "jwt"])
async def checker(request: pytest.FixtureRequest, provider: Provider) -> AsyncIterator[BearerTokenChecker]:
    c = BearerTokenChecker(settings(provider.issuer, token_check=request.param))
    yield c
    await c.close()


async def reason(checker: BearerTokenChecker, token: str) -> str:
    with pytest.raises(TokenError) as info:
        await checker.check(token)
    return info.value.reason


async def test_valid_token_gives_the_professional(checker: BearerTokenChecker, provider: Provider) -> None:
    professional = await checker.check(provider.access_token(USER))
    assert professional.id == USER and professional.rpps == "99700218896"
    if checker.mode == "introspection":
        # The introspection answer carries only the id: the practice situation comes from userinfo.
        assert professional.profession == "10" and professional.family == "DOC0021889"


async def test_expired_token(checker: BearerTokenChecker, provider: Provider) -> None:
    assert await reason(checker, provider.access_token(USER, exp=int(time.time()) - 3600)) == "expired"


async def test_garbage_is_malformed(checker: BearerTokenChecker, provider: Provider) -> None:
    for junk in ["a.b.c", "x" * 10_000, "tok\x00en", "é.é.é", "", "a b"]:
        assert await reason(checker, junk) == "malformed", junk
    assert "introspect" not in provider.calls  # never worth asking the provider
    # An opaque token is the provider's to judge (introspection), and unknown to it.
    assert await reason(checker, "opaque-garbage") == ("inactive" if checker.mode == "introspection" else "malformed")
    unsigned = "eyJhbGciOiJSUzI1NiJ9.e30."  # {"alg": "RS256"}.{}.(no signature)
    assert await reason(checker, unsigned) == ("inactive" if checker.mode == "introspection" else "invalid_signature")


async def test_token_from_another_issuer(checker: BearerTokenChecker, provider: Provider) -> None:
    other = provider.access_token(USER, iss="https://evil.example/psc", key=new_key("evil"))
    assert await reason(checker, other) == "wrong_issuer"


async def test_forged_signature(provider: Provider) -> None:
    checker = BearerTokenChecker(settings(provider.issuer, token_check="jwt"))
    try:
        forged = provider.access_token(USER, key=new_key(provider.key.kid or ""))  # right kid, wrong key
        assert await reason(checker, forged) == "invalid_signature"
        unknown_kid = provider.access_token(USER, key=new_key("nope"))
        assert await reason(checker, unknown_kid) == "invalid_signature"
        # alg "none" and a symmetric alg keyed with the public key: never accepted.
        import base64
        import json

        def b64(obj: dict[str, Any]) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        claims = {"iss": provider.issuer, "sub": "x", "SubjectNameID": USER, "exp": int(time.time()) + 300}
        none = f"{b64({'alg': 'none'})}.{b64(claims)}."
        assert await reason(checker, none) in ("malformed", "invalid_signature")
        hs = f"{b64({'alg': 'HS256', 'kid': provider.key.kid})}.{b64(claims)}.c2lnbmF0dXJl"
        assert await reason(checker, hs) in ("malformed", "invalid_signature")
    finally:
        await checker.close()


async def test_revoked_token_is_seen_by_introspection(provider: Provider) -> None:
    checker = BearerTokenChecker(settings(provider.issuer, token_check="introspection", token_cache_ttl=0.0))
    try:
        token = provider.access_token(USER)
        assert (await checker.check(token)).id == USER
        from joserfc import jwt

        provider.revoked.add(jwt.decode(token, provider.key).claims["jti"])
        assert await reason(checker, token) == "revoked"
    finally:
        await checker.close()


async def test_results_are_cached_for_the_ttl_and_parallel_checks_share_one_call(provider: Provider) -> None:
    import asyncio

    checker = BearerTokenChecker(settings(provider.issuer, token_check="introspection", token_cache_ttl=30.0))
    try:
        token = provider.access_token(USER)
        results = await asyncio.gather(*(checker.check(token) for _ in range(20)))
        assert {p.id for p in results} == {USER}
        await checker.check(token)
        assert provider.calls["introspect"] == 1
        await reason(checker, "garbage.garbage.garbage")
        await reason(checker, "garbage.garbage.garbage")
        assert provider.calls["introspect"] == 1  # malformed JWTs never reach the provider
    finally:
        await checker.close()


async def test_provider_down_is_unavailable_not_invalid() -> None:
    checker = BearerTokenChecker(settings(f"http://127.0.0.1:{free_port()}/psc", http_timeout=2.0))
    try:
        with pytest.raises(TokenError) as info:
            await checker.check("opaque-token")
        assert info.value.reason == "unavailable" and info.value.status == 503
    finally:
        await checker.close()


async def test_check_request_and_the_401_answer(provider: Provider) -> None:
    checker = BearerTokenChecker(settings(provider.issuer))
    try:
        request = make_mocked_request("GET", "/dicom-web/studies/1", headers={})
        with pytest.raises(TokenError) as info:
            await checker.check_request(request)
        assert info.value.reason == "missing"
        resp = info.value.response()
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'Bearer realm="drimbox"'
        token = provider.access_token(USER)
        request = make_mocked_request("GET", "/x", headers={"Authorization": f"Bearer {token}"})
        assert (await checker.check_request(request)).id == USER
        expired = TokenError("expired").response()
        assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
        assert isinstance(expired, web.Response) and expired.text and '"reason": "expired"' in expired.text
    finally:
        await checker.close()


async def test_audience_when_configured(provider: Provider) -> None:
    checker = BearerTokenChecker(settings(provider.issuer, token_check="jwt", token_audience="drimbox-source"))
    try:
        assert await reason(checker, provider.access_token(USER)) == "wrong_audience"
    finally:
        await checker.close()


async def test_a_box_the_provider_refuses_is_unavailable_not_a_bad_token(provider: Provider) -> None:
    s = settings(provider.issuer)
    s.psc.client_secret = "wrong"
    checker = BearerTokenChecker(s)
    try:
        assert await reason(checker, provider.access_token(USER)) == "unavailable"
    finally:
        await checker.close()
