"""The simulated Mon Espace Santé authentication under /mes: an OpenID provider for patients.

Authorization code + PKCE (S256 only), state and nonce required, RS256 ID tokens with acr "eidas2" (eIDAS level
"substantial", the carte Vitale app's) carrying the patient's INS and its OID, names, birth date and sex. One client
([patient] client_id / client_secret); redirect URIs on loopback. Codes live 60 s and are good once; access tokens
live 5 minutes; everything in memory. `sim_auto=1` with `login_hint=<INS>` skips the choice page (tests only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet

from drimbox.config import Settings
from drimbox.sim.mes_patients import PATIENTS, Patient, find
from drimbox.sim.psc_keys import load_signing_key, public_jwks, signing_keyset
from drimbox.sim.psc_store import is_loopback_redirect

PREFIX = "/mes"
ACR = "eidas2"
CODE_LIFETIME = 60.0
TOKEN_LIFETIME = 300
_PAGE_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:"}  # fmt: skip


@dataclass(frozen=True)
class _Code:
    redirect_uri: str
    challenge: str
    nonce: str
    patient: Patient
    auth_time: int
    expires_at: float


class MesProvider:
    """The provider's state: its key, its one client, pending logins, codes and access tokens."""

    def __init__(self, issuer: str, keyset: KeySet, client_id: str, client_secret: str) -> None:
        self.issuer, self.keyset = issuer, keyset
        self.client_id, self._secret = client_id, client_secret
        self.pending: dict[str, dict[str, str]] = {}
        self.codes: dict[str, _Code] = {}
        self.tokens: dict[str, tuple[Patient, float]] = {}

    def metadata(self) -> dict[str, Any]:
        i = self.issuer
        return {"issuer": i, "authorization_endpoint": f"{i}/auth", "token_endpoint": f"{i}/token",
                "userinfo_endpoint": f"{i}/userinfo", "jwks_uri": f"{i}/jwks", "end_session_endpoint": f"{i}/logout",
                "response_types_supported": ["code"], "grant_types_supported": ["authorization_code"],
                "subject_types_supported": ["pairwise"], "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"], "acr_values_supported": [ACR],
                "scopes_supported": ["openid", "profile", "ins"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "ins", "ins_oid",
                                     "family_name", "given_name", "birthdate", "gender"]}  # fmt: skip

    def sub(self, patient: Patient) -> str:
        # Pairwise: the client sees a stable subject that is not the INS (the INS comes as its own claim).
        return hashlib.sha256(f"{self.client_id}|{patient.ins}".encode()).hexdigest()[:32]

    def check_request(self, q: dict[str, str]) -> str | None:
        """Why an authorization request is refused before any redirect (None: it is acceptable)."""
        if q.get("client_id") != self.client_id:
            return "unknown client_id"
        if not is_loopback_redirect(q.get("redirect_uri", "")):
            return "redirect_uri must be a loopback http(s) URL"
        if q.get("response_type") != "code":
            return "response_type must be code"
        if "openid" not in q.get("scope", "").split():
            return "scope must include openid"
        if not q.get("state") or not q.get("nonce"):
            return "state and nonce are required"
        if not q.get("code_challenge") or q.get("code_challenge_method") != "S256":
            return "PKCE S256 is required"
        return None

    def grant(self, q: dict[str, str], patient: Patient) -> str:
        """The redirect back to the client with a fresh code."""
        code = secrets.token_urlsafe(32)
        self.codes[code] = _Code(q["redirect_uri"], q["code_challenge"], q["nonce"], patient, int(time.time()),
                                 time.monotonic() + CODE_LIFETIME)  # fmt: skip
        return q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"], "iss": self.issuer})

    def client_ok(self, request: web.Request, form: dict[str, str]) -> bool:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                cid, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return False
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
        cid, secret = unquote(cid), unquote(secret)
        return cid == self.client_id and hmac.compare_digest(secret.encode(), self._secret.encode())

    def tokens_for(self, code: _Code) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": self.client_id, "azp": self.client_id, "sub": self.sub(code.patient),
                  "iat": now, "exp": now + TOKEN_LIFETIME, "auth_time": code.auth_time, "nonce": code.nonce,
                  "acr": ACR, "amr": ["apcv"], **code.patient.claims()}  # fmt: skip
        key = self.keyset.keys[0]
        id_token = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, self.keyset)
        access = secrets.token_urlsafe(32)
        self.tokens[access] = (code.patient, time.monotonic() + TOKEN_LIFETIME)
        return {"access_token": access, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME, "id_token": id_token}


MES = web.AppKey("mes_provider", MesProvider)


def _error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status,
                             headers={"Cache-Control": "no-store"})  # fmt: skip


async def _discovery(request: web.Request) -> web.Response:
    return web.json_response(request.app[MES].metadata())


async def _jwks(request: web.Request) -> web.Response:
    return web.json_response(public_jwks(request.app[MES].keyset))


async def _authorize(request: web.Request) -> web.StreamResponse:
    mes = request.app[MES]
    q = dict(request.query)
    refused = mes.check_request(q)
    if refused is not None:
        return web.Response(status=400, text=f"invalid authorization request: {refused}")
    if q.get("sim_auto") == "1":
        patient = find(q.get("login_hint", ""))
        if patient is None:
            return web.Response(status=400, text="sim_auto=1 needs login_hint naming a test patient's INS")
        raise web.HTTPSeeOther(mes.grant(q, patient))
    login_id = secrets.token_urlsafe(16)
    mes.pending[login_id] = q
    return web.Response(text=_login_page(login_id), content_type="text/html", headers=_PAGE_HEADERS)


async def _authorize_post(request: web.Request) -> web.StreamResponse:
    mes = request.app[MES]
    form = await request.post()
    q = mes.pending.pop(str(form.get("login_id", "")), None)
    if q is None:
        return web.Response(status=400, text="this login page has expired or was already used")
    if form.get("action") == "deny":
        raise web.HTTPSeeOther(q["redirect_uri"] + "?" + urlencode({"error": "access_denied", "state": q["state"]}))
    patient = find(str(form.get("patient", "")))
    if patient is None:
        return web.Response(status=400, text="unknown patient")
    raise web.HTTPSeeOther(mes.grant(q, patient))


async def _token(request: web.Request) -> web.Response:
    mes = request.app[MES]
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    if not mes.client_ok(request, form):
        return _error(401, "invalid_client", "client authentication failed")
    if form.get("grant_type") != "authorization_code":
        return _error(400, "unsupported_grant_type", "authorization_code only")
    code = mes.codes.pop(form.get("code", ""), None)
    if code is None or time.monotonic() > code.expires_at:
        return _error(400, "invalid_grant", "unknown, used or expired code")
    if form.get("redirect_uri") != code.redirect_uri:
        return _error(400, "invalid_grant", "redirect_uri differs")
    verifier = form.get("code_verifier", "")
    digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    if not verifier or not hmac.compare_digest(digest, code.challenge):
        return _error(400, "invalid_grant", "PKCE verification failed")
    return web.json_response(mes.tokens_for(code), headers={"Cache-Control": "no-store"})


async def _userinfo(request: web.Request) -> web.Response:
    mes = request.app[MES]
    token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    found = mes.tokens.get(token)
    if found is None or time.monotonic() > found[1]:
        return _error(401, "invalid_token", "unknown or expired access token")
    return web.json_response({"sub": mes.sub(found[0]), **found[0].claims()}, headers={"Cache-Control": "no-store"})


async def _logout(request: web.Request) -> web.StreamResponse:
    target = request.query.get("post_logout_redirect_uri", "")
    if target and is_loopback_redirect(target):
        raise web.HTTPSeeOther(target)
    return web.Response(text="<!doctype html><meta charset=utf-8><title>Mon Espace Santé</title><p>Vous êtes déconnecté.",
                        content_type="text/html", headers=_PAGE_HEADERS)  # fmt: skip


def _login_page(login_id: str) -> str:
    buttons = "\n".join(
        f'<li><button name="patient" value="{html.escape(p.ins)}">{html.escape(p.label())}</button></li>'
        for p in PATIENTS
    )
    return f"""<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mon Espace Santé (simulateur) — connexion</title>
<style>body{{font-family:sans-serif;max-width:36em;margin:1em auto;padding:0 1em}}li{{list-style:none;margin:.5em 0}}
button{{width:100%;text-align:left;padding:.6em;font-size:1em}}</style></head>
<body><h1>Mon Espace Santé — simulateur</h1>
<p>Choisissez le patient de test qui se connecte (l'application carte Vitale, niveau eIDAS substantiel, dans la vraie
connexion).</p>
<form method="post" action="auth"><input type="hidden" name="login_id" value="{html.escape(login_id)}">
<ul>{buttons}</ul><p><button name="action" value="deny">Refuser</button></p></form></body></html>"""


def mes_issuer(settings: Settings) -> str:
    """{sim.public_url or http://host:port}/mes: what the box's [patient] issuer says to use this simulator."""
    scheme = "https" if settings.tls.cert else "http"
    base = settings.sim.public_url or f"{scheme}://{settings.sim.host}:{settings.sim.port}"
    return base.rstrip("/") + PREFIX


def setup_mes(app: web.Application, settings: Settings) -> MesProvider:
    """Mount the patient provider under /mes; its key lives in {sim.var_dir}/mes."""
    key = load_signing_key(settings.sim_var_path / "mes")
    provider = app[MES] = MesProvider(mes_issuer(settings), signing_keyset(key), settings.patient.client_id,
                                      settings.patient.client_secret)  # fmt: skip
    app.router.add_get(f"{PREFIX}/.well-known/openid-configuration", _discovery)
    app.router.add_get(f"{PREFIX}/jwks", _jwks)
    app.router.add_get(f"{PREFIX}/auth", _authorize)
    app.router.add_post(f"{PREFIX}/auth", _authorize_post)
    app.router.add_post(f"{PREFIX}/token", _token)
    app.router.add_get(f"{PREFIX}/userinfo", _userinfo)
    app.router.add_get(f"{PREFIX}/logout", _logout)
    return provider
