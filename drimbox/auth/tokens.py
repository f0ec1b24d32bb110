"""Source side: check the Pro Santé Connect bearer token a consumer box sends, by introspection or as a JWT."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from joserfc.errors import ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwt import JWTClaimsRegistry

from drimbox.auth.oidc import OidcClient, OidcError
from drimbox.auth.professional import Professional
from drimbox.config import Settings

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192
# RFC 6750 §2.1 b64token: anything else is refused before any lookup.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
CACHE_ENTRIES = 10_000
# Token types that must never open a resource even when the provider says "active".
_NOT_ACCESS = {"refresh", "refresh_token", "offline", "id", "id_token"}


class TokenError(Exception):
    """A bearer token refused; `reason` is one of REASONS, safe to send back and to log."""

    REASONS = (
        "missing",
        "malformed",
        "expired",
        "revoked",
        "wrong_issuer",
        "wrong_audience",
        "invalid_signature",
        "not_access_token",
        "not_a_professional",
        "unavailable",
        # A token the provider calls inactive and that says nothing of its own expiry (opaque, or a JWT
        # without "exp"): unknown, expired or revoked, the provider does not tell which.
        "inactive",
    )

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def status(self) -> int:
        # The provider being unreachable says nothing about the token: 503, so the caller retries.
        return 503 if self.reason == "unavailable" else 401

    def response(self) -> web.Response:
        """RFC 6750 §3 answer: 401 with WWW-Authenticate and a JSON reason (503 when the provider is down)."""
        body = {"error": "invalid_token" if self.status == 401 else "temporarily_unavailable", "reason": self.reason}
        if self.detail:
            body["detail"] = self.detail
        headers = {}
        if self.status == 401:
            error = "" if self.reason == "missing" else f', error="invalid_token", error_description="{self.reason}"'
            headers["WWW-Authenticate"] = f'Bearer realm="drimbox"{error}'
        return web.json_response(body, status=self.status, headers=headers)


class BearerTokenChecker:
    """Token → Professional, with a small TTL cache (a series retrieve sends the same token many times)."""

    def __init__(self, settings: Settings, *, oidc: OidcClient | None = None) -> None:
        self._owns_oidc = oidc is None
        self.oidc = oidc or OidcClient(settings.psc, settings.auth)
        self.issuer = settings.psc.issuer
        self.mode = settings.auth.token_check
        self.audience = settings.auth.token_audience
        # This box as a resource server: a token whose audience names resource servers must name this one.
        self.resource = _origin(settings.box.public_url)
        self.leeway = settings.auth.clock_leeway
        self.ttl = settings.auth.token_cache_ttl
        self._cache: OrderedDict[str, tuple[float, Professional | TokenError]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[Professional]] = {}

    async def close(self) -> None:
        if self._owns_oidc:
            await self.oidc.close()

    async def check_request(self, request: web.Request) -> Professional:
        """The professional behind `Authorization: Bearer …`, or TokenError (reason "missing" without one)."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenError("missing", "an Authorization: Bearer header is required")
        return await self.check(token.strip())

    async def check(self, token: str) -> Professional:
        """The professional the token stands for, or TokenError saying why not."""
        if len(token) > MAX_TOKEN_LENGTH or not _B64TOKEN.fullmatch(token):
            raise TokenError("malformed", "not a bearer token (RFC 6750 b64token)")
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            self._cache.move_to_end(key)
            value = cached[1]
            if isinstance(value, TokenError):
                raise TokenError(value.reason, value.detail)
            return value
        # Parallel requests with the same new token share one check, which outlives any one of them.
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._check_and_remember(key, token))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def check_fresh(self, token: str) -> tuple[Professional, float]:
        """(professional, expiry in epoch seconds or 0) asking the provider now: for a login, not a cached answer."""
        if len(token) > MAX_TOKEN_LENGTH or not _B64TOKEN.fullmatch(token):
            raise TokenError("malformed", "not a bearer token (RFC 6750 b64token)")
        return await self._check_uncached(token)

    async def _check_and_remember(self, key: str, token: str) -> Professional:
        try:
            professional, expires_at = await self._check_uncached(token)
        except TokenError as exc:
            if exc.reason != "unavailable":
                self._remember(key, exc, time.time() + self.ttl)
            raise
        finally:
            self._inflight.pop(key, None)
        self._remember(key, professional, expires_at)
        return professional

    def _remember(self, key: str, value: Professional | TokenError, expires_at: float) -> None:
        # Never trusted past the token's own expiry, nor longer than the TTL (which bounds revocation lag).
        lifetime = min(self.ttl, expires_at - time.time()) if expires_at else self.ttl
        if lifetime <= 0:
            return
        self._cache[key] = (time.monotonic() + lifetime, value)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)

    async def _check_uncached(self, token: str) -> tuple[Professional, float]:
        unverified = _peek_claims(token)
        if unverified is None and token.count(".") == 2:
            raise TokenError("malformed", "not a JWT")
        if unverified is not None and "iss" in unverified and unverified["iss"] != self.issuer:
            # Refused before any call: a token from another issuer is not ours to ask about.
            raise TokenError("wrong_issuer")
        try:
            if self.mode == "jwt":
                claims = await self._check_jwt(token, unverified)
            else:
                claims = await self._introspect(token, unverified)
        except OidcError as exc:
            if exc.reason in ("invalid_signature", "unknown_key"):
                raise TokenError("invalid_signature") from None
            if exc.reason == "malformed":
                raise TokenError("malformed", exc.detail) from None
            # Anything else says nothing about the token: the provider is down, or refuses this box
            # (invalid_client: check [psc] client_id and client_secret).
            log.warning("bearer token check: provider unavailable or refusing this box (%s)", exc)
            raise TokenError("unavailable", "the identity provider cannot check tokens now") from None
        typ = str(claims.get("typ") or claims.get("token_type") or "").lower()
        if typ in _NOT_ACCESS:
            raise TokenError("not_access_token")
        aud = claims.get("aud")
        audiences = (
            [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
        )
        if self.audience and self.audience not in audiences:
            raise TokenError("wrong_audience")
        # Bound to this box where the token allows it. PSC's tokens name the client that obtained them (in DRIM-M the
        # consumer box), never the source they are presented to: a client id binds nothing here and is accepted. A
        # token whose audience names resource servers by URL (RFC 8707 resource indicators) opens only those.
        resources = {_origin(a) for a in audiences if "://" in a}
        if resources and self.resource and self.resource not in resources:
            raise TokenError("wrong_audience", "the token is for other resource servers than this box")
        if self.mode == "introspection" and not _has_profile(claims):
            # Introspection answers may carry only the identifier: userinfo has the practice situation.
            try:
                info = await self.oidc.userinfo(token)
            except OidcError:
                info = {}
            if info.get("sub") in (None, claims.get("sub")):
                claims = {**info, **claims}
        try:
            professional = Professional.from_claims(claims)
        except ValueError:
            raise TokenError("not_a_professional") from None
        exp = claims.get("exp")
        return professional, float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else 0.0

    async def _introspect(self, token: str, unverified: dict[str, Any] | None) -> dict[str, Any]:
        answer = await self.oidc.introspect(token)
        now = time.time()
        if answer.get("active") is not True:
            # RFC 7662 says only "inactive"; a JWT's own exp tells an expired token from a revoked one.
            exp = unverified.get("exp") if unverified else None
            if not isinstance(exp, int | float):
                raise TokenError("inactive")
            raise TokenError("expired" if exp <= now else "revoked")
        if "iss" in answer and answer["iss"] != self.issuer:
            raise TokenError("wrong_issuer")
        exp = answer.get("exp")
        if isinstance(exp, int | float) and exp + self.leeway <= now:
            raise TokenError("expired")
        return answer

    async def _check_jwt(self, token: str, unverified: dict[str, Any] | None) -> dict[str, Any]:
        if unverified is None:
            raise TokenError("malformed", 'not a JWT (auth.token_check = "introspection" accepts opaque tokens)')
        verified = await self.oidc.verify_signature(token)
        registry = JWTClaimsRegistry(
            leeway=self.leeway, iss={"essential": True, "value": self.issuer}, exp={"essential": True}
        )
        try:
            registry.validate(verified.claims)
        except ExpiredTokenError:
            raise TokenError("expired") from None
        except MissingClaimError as exc:
            raise TokenError("malformed", str(exc)) from None
        except JoseError as exc:
            raise TokenError("wrong_issuer" if "iss" in str(exc) else "malformed", str(exc)) from None
        return dict(verified.claims)


def _origin(url: str) -> str:
    """scheme://host:port of a URL (default ports written out), "" when it is not an http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:
        return ""
    host = (parts.hostname or "").rstrip(".")
    return f"{parts.scheme}://{host}:{port}" if parts.scheme in ("http", "https") and host else ""


def _peek_claims(token: str) -> dict[str, Any] | None:
    """A JWT's payload WITHOUT verifying it: only ever used to refuse early or to word a refusal."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _has_profile(claims: dict[str, Any]) -> bool:
    # The practice situation (profession, specialty, structure), not just a name: PSC's access tokens and
    # introspection answers carry the identity only.
    return bool(claims.get("SubjectRefPro") or claims.get("profession"))
