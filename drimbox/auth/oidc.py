"""OpenID Connect relying party for Pro Santé Connect: discovery, PKCE code flow, id_token checks, refresh, logout."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from authlib.common.security import generate_token
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry

from drimbox import tls
from drimbox.config import AuthSettings, PscSettings

log = logging.getLogger(__name__)

# Only asymmetric signatures: "none" and HS* (keyed with the client secret) are never accepted.
ASYMMETRIC_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
# A token naming an unknown key refetches the JWKS, but not more often than this: random kids cannot
# turn the box into a load generator against the provider.
JWKS_MIN_REFETCH = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024


class OidcError(Exception):
    """The provider refused, answered something invalid, or a token failed a check; `reason` is a short code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AuthorizationRequest:
    """What the browser is sent to, and the secrets the callback needs (kept server-side)."""

    url: str
    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True)
class TokenSet:
    """Tokens from the token endpoint; times are epoch seconds, 0 when the provider did not say."""

    access_token: str
    expires_at: float = 0.0
    refresh_token: str = ""
    refresh_expires_at: float = 0.0
    id_token: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenSet:
        return cls(
            access_token=str(data.get("access_token", "")),
            expires_at=float(data.get("expires_at") or 0.0),
            refresh_token=str(data.get("refresh_token") or ""),
            refresh_expires_at=float(data.get("refresh_expires_at") or 0.0),
            id_token=str(data.get("id_token") or ""),
        )

    @classmethod
    def from_response(
        cls, body: dict[str, Any], *, previous: TokenSet | None = None, now: float | None = None
    ) -> TokenSet:
        now = time.time() if now is None else now
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise OidcError("invalid_token_response", "no access_token")
        expires_in = _number(body.get("expires_in"))
        refresh_in = _number(body.get("refresh_expires_in"))
        # A refresh response may omit the refresh token (keep the old one) and the id_token.
        return cls(
            access_token=access,
            expires_at=now + expires_in if expires_in else 0.0,
            refresh_token=str(body.get("refresh_token") or (previous.refresh_token if previous else "")),
            refresh_expires_at=now + refresh_in if refresh_in else (previous.refresh_expires_at if previous else 0.0),
            id_token=str(body.get("id_token") or (previous.id_token if previous else "")),
        )


class OidcClient:
    """One provider, one client registration; discovery and keys cached, every call async and bounded in time."""

    def __init__(self, psc: PscSettings, auth: AuthSettings, *, session: aiohttp.ClientSession | None = None) -> None:
        self.issuer = psc.issuer
        self.client_id = psc.client_id
        self._client_secret = psc.client_secret
        self._auth = auth
        self._session = session
        self._own_session = session is None
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # --- discovery and keys -------------------------------------------------------------------------

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document, refetched after auth.discovery_ttl."""
        async with self._lock:
            if self._metadata is None or time.monotonic() - self._metadata_at > self._auth.discovery_ttl:
                url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
                doc = await self._request_json("GET", url)
                # OIDC Discovery §4.3: the document must name exactly the issuer we asked, or it is not ours.
                if doc.get("issuer") != self.issuer:
                    raise OidcError("wrong_issuer", f"discovery names issuer {doc.get('issuer')!r}")
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(doc.get(key), str):
                        raise OidcError("invalid_discovery", f"no {key}")
                self._metadata, self._metadata_at = doc, time.monotonic()
            return self._metadata

    async def endpoint(self, name: str) -> str | None:
        value = (await self.metadata()).get(name)
        return value if isinstance(value, str) and value else None

    async def key_set(self, *, refresh: bool = False) -> KeySet:
        """The provider's signing keys; `refresh` asks again (key rotation), at most every JWKS_MIN_REFETCH s."""
        meta = await self.metadata()
        async with self._lock:
            age = time.monotonic() - self._keys_at
            stale = self._keys is None or age > self._auth.discovery_ttl or (refresh and age > JWKS_MIN_REFETCH)
            if stale:
                doc = await self._request_json("GET", meta["jwks_uri"])
                try:
                    self._keys = KeySet.import_key_set(doc)  # type: ignore[arg-type]
                except (JoseError, KeyError, TypeError, ValueError) as exc:
                    raise OidcError("invalid_jwks", type(exc).__name__) from None
                self._keys_at = time.monotonic()
            assert self._keys is not None
            return self._keys

    async def verify_signature(self, token: str) -> jwt.Token:
        """Check a JWS against the provider's keys (refetched once if its kid is unknown); claims unchecked."""
        meta = await self.metadata()
        offered = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        algs = [a for a in offered if a in ASYMMETRIC_ALGS] or ["RS256"]
        registry = JWSRegistry(algorithms=algs, strict_check_header=False)
        try:
            try:
                return jwt.decode(token, await self.key_set(), registry=registry)
            except InvalidKeyIdError:
                return jwt.decode(token, await self.key_set(refresh=True), registry=registry)
        except InvalidKeyIdError:
            raise OidcError("unknown_key", "no provider key for this token's kid") from None
        except JoseError as exc:
            raise OidcError(
                "invalid_signature" if "signature" in type(exc).__name__.lower() else "malformed", type(exc).__name__
            ) from None
        except (ValueError, TypeError) as exc:
            raise OidcError("malformed", type(exc).__name__) from None

    # --- authorization code flow ----------------------------------------------------------------------

    async def authorization_request(self, redirect_uri: str, *, login_hint: str = "") -> AuthorizationRequest:
        """A fresh state, nonce and PKCE verifier, and the authorization URL that carries them."""
        endpoint = (await self.metadata())["authorization_endpoint"]
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
        extra: dict[str, str] = {
            "nonce": nonce,
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        }
        if self._auth.acr_values:
            extra["acr_values"] = self._auth.acr_values
        if login_hint:
            extra["login_hint"] = login_hint
        for param in self._auth.authorize_params:
            key, _, value = param.partition("=")
            extra[key] = value
        url = prepare_grant_uri(
            endpoint, self.client_id, "code", redirect_uri=redirect_uri, scope=self._auth.scopes, state=state, **extra
        )
        return AuthorizationRequest(url=str(url), state=state, nonce=nonce, code_verifier=verifier)

    async def exchange_code(self, code: str, code_verifier: str, redirect_uri: str) -> TokenSet:
        body = await self._token_call(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            }
        )
        return TokenSet.from_response(body)

    async def refresh(self, tokens: TokenSet) -> TokenSet:
        if not tokens.refresh_token:
            raise OidcError("no_refresh_token")
        body = await self._token_call({"grant_type": "refresh_token", "refresh_token": tokens.refresh_token})
        return TokenSet.from_response(body, previous=tokens)

    async def validate_id_token(self, id_token: str, *, nonce: str, access_token: str = "") -> dict[str, Any]:
        """Signature (JWKS), iss, aud ∋ client_id, azp, exp, iat, nonce and at_hash; returns the claims."""
        token = await self.verify_signature(id_token)
        options: dict[str, Any] = {
            "iss": {"essential": True, "value": self.issuer},
            "aud": {"essential": True, "value": self.client_id},
        }
        params = {"nonce": nonce, "client_id": self.client_id, "access_token": access_token}
        claims = CodeIDToken(token.claims, token.header, options, params)
        try:
            claims.validate(leeway=self._auth.clock_leeway)
        except ExpiredTokenError:
            raise OidcError("expired", "id_token has expired") from None
        except JoseError as exc:
            # joserfc names the claim in the error ("iss", "aud", "nonce"...): safe to log, no token content.
            raise OidcError("invalid_id_token", str(exc)) from None
        # CodeIDToken only checks the nonce when one is expected; we always send one, so it must come back.
        if not nonce or claims.get("nonce") != nonce:
            raise OidcError("invalid_id_token", "nonce")
        return dict(claims)

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """The userinfo claims (JSON, or a signed JWT as PSC may answer), with the provider's signature checked."""
        url = await self.endpoint("userinfo_endpoint")
        if url is None:
            return {}
        try:
            async with self._client().get(url, headers={"Authorization": f"Bearer {access_token}"}) as resp:
                raw = await read_limited(resp)
                status, content_type = resp.status, resp.content_type
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError("provider_unreachable", f"userinfo: {type(exc).__name__}") from None
        if status != 200:
            raise OidcError("userinfo_failed", f"HTTP {status}")
        if content_type == "application/jwt":
            token = await self.verify_signature(raw.decode("ascii", "replace").strip())
            if token.claims.get("iss", self.issuer) != self.issuer:
                raise OidcError("wrong_issuer", "userinfo")
            return dict(token.claims)
        return _json_object(raw, "userinfo")

    async def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662, authenticated as this client; the raw answer ("active" and the token's claims)."""
        url = await self.endpoint("introspection_endpoint")
        if url is None:
            raise OidcError("no_introspection", "the provider announces no introspection_endpoint")
        return await self._client_call(url, {"token": token, "token_type_hint": "access_token"})

    async def revoke(self, token: str, hint: str = "refresh_token") -> None:
        """RFC 7009, best effort: a provider without a revocation endpoint or an error is only logged."""
        url = await self.endpoint("revocation_endpoint")
        if url is None:
            return
        try:
            await self._client_call(url, {"token": token, "token_type_hint": hint}, expect_json=False)
        except (OidcError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("token revocation failed: %s", exc)

    async def end_session_url(self, *, id_token_hint: str, post_logout_redirect_uri: str, state: str) -> str | None:
        """RP-initiated logout URL, or None when the provider has no end_session_endpoint."""
        url = await self.endpoint("end_session_endpoint")
        if url is None:
            return None
        params = {"post_logout_redirect_uri": post_logout_redirect_uri, "state": state, "client_id": self.client_id}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        return str(add_params_to_uri(url, params))

    # --- HTTP ------------------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self._auth.http_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout, connector=tls.connector())
            self._own_session = True
        return self._session

    async def _token_call(self, form: dict[str, str]) -> dict[str, Any]:
        return await self._client_call((await self.metadata())["token_endpoint"], form)

    async def _client_call(self, url: str, form: dict[str, str], *, expect_json: bool = True) -> dict[str, Any]:
        """POST a form authenticated as this client (RFC 6749 §2.3.1) and return the JSON answer."""
        data = dict(form)
        headers = {"Accept": "application/json"}
        if self._auth.token_endpoint_auth == "client_secret_post":
            data.update(client_id=self.client_id, client_secret=self._client_secret)
        else:
            # RFC 6749 §2.3.1: id and secret are form-urlencoded before they go into the Basic header.
            pair = f"{quote(self.client_id, safe='')}:{quote(self._client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        try:
            async with self._client().post(url, data=data, headers=headers) as resp:
                raw = await read_limited(resp)
                if resp.status >= 400:
                    error = _json_object(raw, "error") if resp.content_type == "application/json" else {}
                    raise OidcError(
                        str(error.get("error") or f"http_{resp.status}"), str(error.get("error_description") or "")
                    )
                return _json_object(raw, url) if expect_json else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError("provider_unreachable", type(exc).__name__) from None

    async def _request_json(self, method: str, url: str) -> dict[str, Any]:
        try:
            async with self._client().request(method, url, headers={"Accept": "application/json"}) as resp:
                raw = await read_limited(resp)
                if resp.status != 200:
                    raise OidcError("provider_error", f"{url}: HTTP {resp.status}")
                return _json_object(raw, url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError("provider_unreachable", f"{url}: {type(exc).__name__}") from None


async def read_limited(resp: aiohttp.ClientResponse, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """The whole body, refused past `limit` bytes: a provider answer never grows memory without bound."""
    if resp.content_length is not None and resp.content_length > limit:
        raise OidcError("response_too_large", str(resp.url))
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise OidcError("response_too_large", str(resp.url))
    return bytes(body)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise OidcError("invalid_response", f"{what}: not JSON") from None
    if not isinstance(value, dict):
        raise OidcError("invalid_response", f"{what}: not a JSON object")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.0
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0
