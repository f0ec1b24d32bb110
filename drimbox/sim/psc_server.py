"""authlib's OAuth 2 / OpenID Connect server, fitted to aiohttp and to Pro Santé Connect's rules."""

# authlib ships no type information: its classes are Any to mypy, hence the "type: ignore[misc]" on subclasses.

from __future__ import annotations

import dataclasses
import json
import secrets
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web
from authlib.common.security import generate_token
from authlib.oauth2 import AuthorizationServer, OAuth2Error, OAuth2Request, ResourceProtector
from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Payload
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core import OpenIDCode
from authlib.oidc.rpinitiated import EndSessionEndpoint
from joserfc import jwt
from joserfc.jwk import KeySet

from drimbox.sim.psc_professionals import ACR, Professional, identity_claims, userinfo_claims
from drimbox.sim.psc_store import (
    AUTH_METHODS,
    CODE_LIFETIME,
    REFRESH_LIFETIME,
    AuthorizationCode,
    Client,
    Login,
    PscStore,
    TokenRecord,
    TokenView,
)


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, params: Iterable[tuple[str, str]]) -> None:
        self._data: dict[str, str] = {}
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in params:
            self._data.setdefault(key, value)
            self._datalist[key].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class PscRequest(OAuth2Request):  # type: ignore[misc]
    """An HTTP request as authlib reads it: query parameters for GET, the urlencoded body (only) for POST."""

    def __init__(self, method: str, uri: str, headers: Mapping[str, str], params: list[tuple[str, str]]) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self.payload = _Payload(params)
        self._params = params

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data if self.method == "GET" else {}

    @property
    def form(self) -> dict[str, str]:
        # client_secret_post, code, code_verifier, token: read from the body only, never from the URL.
        return self.payload.data if self.method == "POST" else {}

    def params(self) -> list[tuple[str, str]]:
        return list(self._params)


def _server(grant_or_endpoint: Any) -> PscServer:
    server: PscServer = grant_or_endpoint.server
    return server


class S256Required(CodeChallenge):  # type: ignore[misc]
    """PKCE is mandatory at PSC, S256 only: no code_challenge, or "plain", is refused at the authorization endpoint."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ("S256",)
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE: 'code_challenge_method' must be S256")
        super().validate_code_challenge(grant, redirect_uri)


def _require_state(grant: Any, redirect_uri: str) -> None:
    if not grant.request.payload.state:
        raise InvalidRequestError("Missing 'state' in request.")


class RequireState:
    """PSC refuses an authorization request without "state" (CSRF protection is not optional there)."""

    def __call__(self, grant: Any) -> None:
        grant.register_hook("after_validate_authorization_request_payload", _require_state)


class PscOpenIDCode(OpenIDCode):  # type: ignore[misc]
    """ID token: RS256 with the JWKS key, nonce required and never reused, the professional's identity claims."""

    def __init__(self, server: PscServer) -> None:
        super().__init__(require_nonce=True)
        self._server = server  # one extension per server: it signs with that server's key and issuer

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self._server.store.nonce_seen(request.payload.client_id, nonce)

    def resolve_client_private_key(self, client: Client) -> KeySet:
        return self._server.keyset

    def get_client_algorithm(self, client: Client) -> str:
        return "RS256"

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = int(self._server.store.now())
        return {"iss": self._server.issuer, "aud": client.client_id, "azp": client.client_id,
                "iat": now, "exp": now + self._server.access_lifetime}  # fmt: skip

    def generate_user_info(self, user: Login, scope: str) -> dict[str, Any]:
        return {**identity_claims(user.professional), "sid": user.sid, "acr": ACR}


class PscCodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    """Codes: bound to client, redirect URI, PKCE challenge and login; 60 s; consumed on first presentation."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        login = dataclasses.replace(request.user, nonce=data.get("nonce", ""))
        store = _server(self).store
        store.add_code(AuthorizationCode(
            code=code, client_id=request.client.client_id, redirect_uri=request.payload.redirect_uri,
            scope=request.scope, login=login, code_challenge=data["code_challenge"],
            code_challenge_method=data["code_challenge_method"], expires_at=store.now() + CODE_LIFETIME,
        ))  # fmt: skip

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        return _server(self).store.take_code(code, client.client_id)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        pass  # already consumed when presented (PscStore.take_code)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> Login | None:
        login = authorization_code.login
        return login if _server(self).directory_has(login.professional) else None


class PscRefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    """Refresh: a new access token and a new refresh token; the old refresh token is spent."""

    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: each refresh token is good once

    def authenticate_refresh_token(self, refresh_token: str) -> TokenView | None:
        view = _server(self).store.find_token(refresh_token, "refresh_token")
        if view is None or view.kind != "refresh_token" or view.is_revoked() or view.is_expired():
            return None
        return view

    def authenticate_user(self, refresh_token: TokenView) -> Login:
        return refresh_token.get_user()

    def revoke_old_credential(self, refresh_token: TokenView) -> None:
        refresh_token.record.refresh_revoked = True


class PscAccessTokens(JWTBearerTokenGenerator):  # type: ignore[misc]
    """Access tokens as RS256 JWTs (RFC 9068) carrying who logged in, plus an opaque refresh token."""

    def __init__(self, issuer: str, keyset: KeySet, lifetime: int) -> None:
        super().__init__(issuer, alg="RS256", refresh_token_generator=_refresh_token, expires_generator=lifetime)
        self._keyset = keyset

    def get_jwks(self) -> KeySet:
        return self._keyset

    def get_extra_claims(self, client: Client, grant_type: str, user: Login, scope: str) -> dict[str, Any]:
        claims: dict[str, Any] = {**identity_claims(user.professional), "azp": client.client_id, "sid": user.sid}
        if user.nonce:
            claims["nonce"] = user.nonce  # as Keycloak does; some PSC clients compare it
        return claims

    def get_auth_time(self, user: Login) -> int:
        return user.auth_time

    def get_acr(self, user: Login) -> str:
        return ACR


def _refresh_token(client: Client, grant_type: str, user: Login, scope: str) -> str:
    return generate_token(48)  # type: ignore[no-any-return]


class PscIntrospection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return _server(self).store.find_token(token_string, token_type_hint)

    def check_permission(self, token: TokenView, client: Client, request: Any) -> bool:
        # Like a Keycloak realm: any registered client may introspect any token. That is how a source box
        # checks the token a consumer box presents with a WADO request.
        return True

    def introspect_token(self, token: TokenView) -> dict[str, Any]:
        record = token.record
        common = {"active": True, "client_id": record.client_id, "username": record.login.professional.national_id,
                  "scope": record.scope, "sub": record.login.get_user_id(), "iss": _server(self).issuer}  # fmt: skip
        if token.kind == "access_token":
            return {**record.claims, **common, "token_type": "Bearer"}
        return {**common, "token_type": "Refresh", "exp": int(record.refresh_expires_at), "iat": int(record.issued_at)}


class PscRevocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> TokenView | None:
        return _server(self).store.find_token(token_string, token_type_hint)

    def revoke_token(self, token: TokenView, request: Any) -> None:
        _server(self).store.revoke(token)


class PscEndSession(EndSessionEndpoint):  # type: ignore[misc]
    def get_server_jwks(self) -> KeySet:
        return _server(self).keyset

    def _is_valid_post_logout_redirect_uri(self, client: Client, post_logout_redirect_uri: str) -> bool:
        return client.check_redirect_uri(post_logout_redirect_uri)  # the same rule as for login redirects

    def end_session(self, end_session_request: Any) -> None:
        claims = end_session_request.id_token_claims or {}
        if claims.get("sid"):
            _server(self).store.end_session(str(claims["sid"]))


class PscBearer(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, store: PscStore) -> None:
        super().__init__()
        self.store = store

    def authenticate_token(self, token_string: str) -> TokenView | None:
        view = self.store.find_token(token_string, "access_token")
        return view if view is not None and view.kind == "access_token" else None


class PscServer(AuthorizationServer):  # type: ignore[misc]
    """The simulated PSC: authlib does the protocol; this class stores, signs, and answers in aiohttp."""

    def __init__(self, issuer: str, store: PscStore, keyset: KeySet, access_lifetime: int,
                 directory: Mapping[str, Professional]) -> None:  # fmt: skip
        super().__init__(scopes_supported=["openid", "scope_all"])
        self.issuer = issuer
        self.store = store
        self.keyset = keyset
        self.access_lifetime = access_lifetime
        self.directory = directory
        self.register_token_generator("default", PscAccessTokens(issuer, keyset, access_lifetime))
        self.register_grant(PscCodeGrant, [S256Required(), RequireState(), PscOpenIDCode(self)])
        self.register_grant(PscRefreshGrant)
        for endpoint in (PscIntrospection, PscRevocation, PscEndSession):
            self.register_endpoint(endpoint)
        self.protector = ResourceProtector()
        self.protector.register_token_validator(PscBearer(store))

    def directory_has(self, pro: Professional) -> bool:
        return pro.national_id in self.directory

    # -- what authlib asks of a framework integration --------------------------------------------------

    def query_client(self, client_id: str | None) -> Client | None:
        return self.store.query_client(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        claims = dict(jwt.decode(token["access_token"], self.keyset).claims)
        # The record expires exactly when the JWT does, so introspection and a local JWT check agree.
        issued_at, expires_at = float(claims["iat"]), float(claims["exp"])
        record = TokenRecord(
            access_token=token["access_token"], refresh_token=token.get("refresh_token", ""),
            client_id=request.client.client_id, scope=token.get("scope", ""), login=request.user, claims=claims,
            issued_at=issued_at, expires_at=expires_at, refresh_expires_at=issued_at + REFRESH_LIFETIME,
        )  # fmt: skip
        self.store.add_token(record, request.authorization_code)

    def create_oauth2_request(self, request: PscRequest) -> PscRequest:
        return request

    def create_json_request(self, request: PscRequest) -> PscRequest:
        return request

    def handle_response(self, status_code: int, payload: Any, headers: list[tuple[str, str]]) -> web.Response:
        body = json.dumps(payload) if isinstance(payload, dict) else (payload or "")
        return web.Response(status=status_code, body=body.encode(), headers=headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass  # no listeners in the simulator

    # -- the endpoints, called by psc_routes ----------------------------------------------------------

    def error_response(self, request: PscRequest | None, error: OAuth2Error) -> web.Response:
        response: web.Response = self.handle_error_response(request, error)
        return response

    def new_login(self, pro: Professional) -> Login:
        return Login(professional=pro, sid=secrets.token_urlsafe(16), auth_time=int(self.store.now()))

    def userinfo(self, request: PscRequest) -> web.Response:
        try:
            token: TokenView = self.protector.validate_request(["openid"], request)
        except OAuth2Error as error:
            return self.error_response(request, error)
        pro = token.get_user().professional
        claims = userinfo_claims(pro) if "scope_all" in token.get_scope().split() else {"sub": pro.sub}
        return web.json_response(claims, headers={"Cache-Control": "no-store"})

    def metadata(self) -> dict[str, Any]:
        """The OpenID Provider Metadata served at /.well-known/openid-configuration."""
        i = self.issuer
        return {
            "issuer": i,
            "authorization_endpoint": f"{i}/auth",
            "token_endpoint": f"{i}/token",
            "userinfo_endpoint": f"{i}/userinfo",
            "jwks_uri": f"{i}/jwks",
            "introspection_endpoint": f"{i}/introspect",
            "revocation_endpoint": f"{i}/revoke",
            "end_session_endpoint": f"{i}/logout",
            "scopes_supported": ["openid", "scope_all"],
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "userinfo_signing_alg_values_supported": ["none"],
            "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "introspection_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "revocation_endpoint_auth_methods_supported": list(AUTH_METHODS),
            "code_challenge_methods_supported": ["S256"],
            "acr_values_supported": [ACR],
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "claims_supported": [
                "sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "sid", "preferred_username",
                "given_name", "family_name", "SubjectNameID", "SubjectRefPro", "SubjectOrganization",
                "SubjectOrganizationID", "SubjectRole", "Secteur_Activite", "codeCivilite", "otherIds",
            ],
        }  # fmt: skip
