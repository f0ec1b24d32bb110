"""A minimal OpenID Connect provider for the auth tests (code + PKCE, refresh, introspection, revocation, logout)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

CLIENT_ID = "drimbox"
CLIENT_SECRET = "s3cret:with/odd chars"

# PSC-shaped professionals: SubjectNameID = "8" + RPPS, practice situation under SubjectRefPro.
USERS: dict[str, dict[str, Any]] = {
    "899700218896": {
        "family_name": "DOC0021889",
        "given_name": "KIT",
        "SubjectRefPro": {
            "exercices": [
                {
                    "codeProfession": "10",
                    "codeSavoirFaire": "SM44",
                    "activities": [
                        {
                            "raisonSocialeSite": "CABINET RADIOLOGIE TEST",
                            "numeroFinessSite": "010000024",
                            "identifiantTechniqueDeLaStructure": "F010000024",
                            "ancienIdentifiantDeLaStructure": "1010000024",
                            "codeSecteurDactivite": "SA07",
                        }
                    ],
                }
            ]
        },
    },
    "810100000012": {
        "family_name": "INFIRMIER",
        "given_name": "ANNE",
        "SubjectRefPro": {"exercices": [{"codeProfession": "60"}]},
    },
}


def new_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


@dataclass
class Provider:
    """Knobs a test turns to make the provider misbehave, and counters it reads."""

    issuer: str = ""
    key: RSAKey = field(default_factory=lambda: new_key("k1"))
    access_ttl: int = 300
    id_token_nonce: str | None = None  # override: a wrong nonce
    id_token_aud: str | None = None  # override: a wrong audience
    end_session: bool = True
    token_down: bool = False  # the token endpoint answers 503
    calls: dict[str, int] = field(default_factory=dict)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    last_authorize: dict[str, str] = field(default_factory=dict)

    def rotate_key(self) -> None:
        self.key = new_key(secrets.token_hex(4))

    def sign(self, claims: dict[str, Any], key: RSAKey | None = None) -> str:
        key = key or self.key
        return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)

    def access_token(
        self, user: str, *, exp: int | None = None, iss: str | None = None, key: RSAKey | None = None
    ) -> str:
        now = int(time.time())
        claims = {
            "iss": iss or self.issuer,
            "sub": "f:" + user,
            "SubjectNameID": user,
            "azp": CLIENT_ID,
            "typ": "Bearer",
            "iat": now,
            "exp": exp if exp is not None else now + self.access_ttl,
            "jti": secrets.token_hex(8),
            "scope": "openid scope_all",
        }
        return self.sign(claims, key)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _client_ok(self, request: web.Request, form: Any) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            from urllib.parse import unquote

            ident, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            return unquote(ident) == CLIENT_ID and unquote(secret) == CLIENT_SECRET
        return bool(form.get("client_id") == CLIENT_ID and form.get("client_secret") == CLIENT_SECRET)

    def _claims(self, token: str) -> dict[str, Any] | None:
        try:
            claims = jwt.decode(token, self.key).claims
        except Exception:
            return None
        if claims.get("jti") in self.revoked or claims.get("exp", 0) <= time.time():
            return None
        return claims

    # --- endpoints ---

    async def discovery(self, request: web.Request) -> web.Response:
        self._count("discovery")
        base = self.issuer
        doc = {
            "issuer": base,
            "authorization_endpoint": base + "/authorize",
            "token_endpoint": base + "/token",
            "jwks_uri": base + "/jwks",
            "userinfo_endpoint": base + "/userinfo",
            "introspection_endpoint": base + "/introspect",
            "revocation_endpoint": base + "/revoke",
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        }
        if self.end_session:
            doc["end_session_endpoint"] = base + "/logout"
        return web.json_response(doc)

    async def jwks(self, request: web.Request) -> web.Response:
        self._count("jwks")
        return web.json_response(KeySet([self.key]).as_dict(private=False))

    async def authorize(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        self.last_authorize = dict(q)
        if (
            q.get("client_id") != CLIENT_ID
            or q.get("response_type") != "code"
            or q.get("code_challenge_method") != "S256"
        ):
            return web.json_response({"error": "invalid_request"}, status=400)
        user = q.get("login_hint") or next(iter(USERS))
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "user": user,
            "nonce": q.get("nonce"),
            "challenge": q.get("code_challenge"),
            "redirect_uri": q.get("redirect_uri"),
        }
        params = {"code": code, "state": q.get("state", ""), "iss": self.issuer}
        raise web.HTTPFound(q["redirect_uri"] + "?" + urlencode(params))

    async def token(self, request: web.Request) -> web.Response:
        self._count("token")
        if self.token_down:
            return web.Response(status=503, text="down")
        form = await request.post()
        if not self._client_ok(request, form):
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.pop(str(form.get("code")), None)
            if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
                return web.json_response({"error": "invalid_grant"}, status=400)
            if create_s256_code_challenge(str(form.get("code_verifier", ""))) != grant["challenge"]:
                return web.json_response({"error": "invalid_grant", "error_description": "PKCE"}, status=400)
            user, nonce = grant["user"], grant["nonce"]
        elif form.get("grant_type") == "refresh_token":
            user_or_none = self.refresh_tokens.pop(str(form.get("refresh_token")), None)
            if user_or_none is None:
                return web.json_response({"error": "invalid_grant"}, status=400)
            user, nonce = user_or_none, None
        else:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        access = self.access_token(user)
        refresh = secrets.token_urlsafe(24)
        self.refresh_tokens[refresh] = user
        now = int(time.time())
        id_claims = {
            "iss": self.issuer,
            "sub": "f:" + user,
            "aud": self.id_token_aud or CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "auth_time": now,
            "acr": "eidas1",
            "at_hash": _at_hash(access),
        }
        if nonce is not None:
            id_claims["nonce"] = self.id_token_nonce or nonce
        return web.json_response(
            {
                "access_token": access,
                "token_type": "Bearer",
                "expires_in": self.access_ttl,
                "refresh_token": refresh,
                "refresh_expires_in": 1800,
                "id_token": self.sign(id_claims),
            }
        )

    async def userinfo(self, request: web.Request) -> web.Response:
        self._count("userinfo")
        claims = self._claims(request.headers.get("Authorization", "").removeprefix("Bearer "))
        if claims is None:
            return web.json_response({"error": "invalid_token"}, status=401)
        user = claims["SubjectNameID"]
        return web.json_response(
            {"sub": claims["sub"], "SubjectNameID": user, "preferred_username": user, **USERS[user]}
        )

    async def introspect(self, request: web.Request) -> web.Response:
        self._count("introspect")
        form = await request.post()
        if not self._client_ok(request, form):
            return web.json_response({"error": "invalid_client"}, status=401)
        claims = self._claims(str(form.get("token", "")))
        if claims is None:
            return web.json_response({"active": False})
        return web.json_response({"active": True, "client_id": CLIENT_ID, **claims})

    async def revoke(self, request: web.Request) -> web.Response:
        self._count("revoke")
        form = await request.post()
        if not self._client_ok(request, form):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = str(form.get("token", ""))
        if self.refresh_tokens.pop(token, None) is None:
            try:
                self.revoked.add(jwt.decode(token, self.key).claims["jti"])
            except Exception:
                pass
        return web.Response(status=200)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self._count("logout")
        target = request.query.get("post_logout_redirect_uri", "")
        raise web.HTTPFound(target + "?" + urlencode({"state": request.query.get("state", "")}))

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/.well-known/openid-configuration", self.discovery),
                web.get("/jwks", self.jwks),
                web.get("/authorize", self.authorize),
                web.post("/token", self.token),
                web.get("/userinfo", self.userinfo),
                web.post("/introspect", self.introspect),
                web.post("/revoke", self.revoke),
                web.get("/logout", self.logout),
            ]
        )
        return app


def _at_hash(access_token: str) -> str:
    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


async def start_provider(provider: Provider) -> web.AppRunner:
    """Serve the provider on 127.0.0.1 (a free port); its issuer becomes http://127.0.0.1:PORT/psc-test."""
    root = web.Application()
    root.add_subapp("/psc-test", provider.app())
    runner = web.AppRunner(root, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    provider.issuer = f"http://127.0.0.1:{port}/psc-test"
    return runner
