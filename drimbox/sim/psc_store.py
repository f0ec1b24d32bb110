"""What the simulated PSC remembers: its client, login sessions, authorization codes, tokens (in memory)."""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from drimbox.sim.psc_professionals import ACR, Professional

SCOPES_SUPPORTED = ("openid", "scope_all")
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
GRANT_TYPES = ("authorization_code", "refresh_token")
CODE_LIFETIME = 60  # seconds; RFC 6749 §4.1.2 says at most 10 minutes, Keycloak (PSC) uses 60 s
REFRESH_LIFETIME = 1800  # seconds: Keycloak's default SSO idle time
PENDING_LOGIN_LIFETIME = 600  # seconds a login page stays usable
PRUNE_INTERVAL = 30.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback_redirect(uri: str) -> bool:
    """http(s) on a loopback host, any port and path, no fragment or user info (RFC 8252 §7.3 style)."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and parts.hostname in LOOPBACK_HOSTS
        and not parts.fragment
        and parts.username is None
    )


@dataclass(frozen=True)
class Client:
    """The one registered client ([psc] client_id / client_secret), with the methods authlib calls on it."""

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...] = ()  # empty = any loopback http URI
    client_metadata: dict[str, Any] = field(default_factory=dict)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # OpenID Connect: redirect_uri is required in every authorization request

    def get_allowed_scope(self, scope: str | None) -> str | None:
        wanted = (scope or "").split()
        allowed = [s for s in wanted if s in SCOPES_SUPPORTED]
        return " ".join(allowed) if "openid" in allowed else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        if self.redirect_uris:
            return redirect_uri in self.redirect_uris
        return is_loopback_redirect(redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode(), self.client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


@dataclass(frozen=True)
class Login:
    """A professional's authentication at the simulated PSC: the "user" authlib hands to grants and tokens."""

    professional: Professional
    sid: str  # session id, in every token; logout ends it
    auth_time: int
    nonce: str = ""

    def get_user_id(self) -> str:
        return self.professional.sub


@dataclass
class AuthorizationCode:
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    login: Login
    code_challenge: str
    code_challenge_method: str
    expires_at: float
    used: bool = False
    tokens: list[TokenRecord] = field(default_factory=list)  # issued from it: revoked if the code is replayed

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str:
        return self.login.nonce

    def get_auth_time(self) -> int:
        return self.login.auth_time

    def get_acr(self) -> str:
        return ACR

    def get_amr(self) -> list[str]:
        return []


@dataclass
class TokenRecord:
    """An access token (a JWT) and its refresh token, as issued together."""

    access_token: str
    refresh_token: str
    client_id: str
    scope: str
    login: Login
    claims: dict[str, Any]  # the access token's JWT claims, answered by introspection
    issued_at: float
    expires_at: float
    refresh_expires_at: float
    access_revoked: bool = False
    refresh_revoked: bool = False


@dataclass(frozen=True)
class TokenView:
    """One of a record's two tokens, with the methods authlib calls on a token."""

    record: TokenRecord
    kind: str  # "access_token" or "refresh_token"
    now: Callable[[], float]

    @property
    def scope(self) -> str:
        return self.record.scope

    def check_client(self, client: Client) -> bool:
        return hmac.compare_digest(client.client_id.encode(), self.record.client_id.encode())

    def get_scope(self) -> str:
        return self.record.scope

    def get_expires_in(self) -> int:
        return int(self.expires_at - self.record.issued_at)

    @property
    def expires_at(self) -> float:
        return self.record.expires_at if self.kind == "access_token" else self.record.refresh_expires_at

    def is_expired(self) -> bool:
        return self.now() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.record.access_revoked if self.kind == "access_token" else self.record.refresh_revoked

    def get_user(self) -> Login:
        return self.record.login


class PscStore:
    """In memory: tokens do not survive a restart (introspection then says inactive), the signing key does."""

    def __init__(self, client: Client, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.now = clock
        self._codes: dict[str, AuthorizationCode] = {}
        self._by_access: dict[str, TokenRecord] = {}
        self._by_refresh: dict[str, TokenRecord] = {}
        self._nonces: dict[tuple[str, str], float] = {}
        self._pending: dict[str, tuple[list[tuple[str, str]], float]] = {}
        self._pruned_at = 0.0

    def query_client(self, client_id: str | None) -> Client | None:
        if client_id is not None and hmac.compare_digest(client_id.encode(), self.client.client_id.encode()):
            return self.client
        return None

    # -- login pages --------------------------------------------------------------------------------

    def add_pending_login(self, params: Iterable[tuple[str, str]]) -> str:
        """Keep a validated authorization request while the login page is shown; the form names it by id."""
        self._prune()
        login_id = secrets.token_urlsafe(24)
        self._pending[login_id] = (list(params), self.now() + PENDING_LOGIN_LIFETIME)
        return login_id

    def take_pending_login(self, login_id: str) -> list[tuple[str, str]] | None:
        entry = self._pending.pop(login_id, None)
        if entry is None or entry[1] <= self.now():
            return None
        return entry[0]

    # -- codes and nonces ---------------------------------------------------------------------------

    def add_code(self, code: AuthorizationCode) -> None:
        self._prune()
        self._codes[code.code] = code
        if code.login.nonce:
            self._nonces[(code.client_id, code.login.nonce)] = self.now() + REFRESH_LIFETIME

    def nonce_seen(self, client_id: str, nonce: str) -> bool:
        expires = self._nonces.get((client_id, nonce))
        return expires is not None and expires > self.now()

    def take_code(self, code: str, client_id: str) -> AuthorizationCode | None:
        """The code, consumed; None if unknown, expired, another client's, or already presented.

        A code presented twice revokes what the first exchange issued (RFC 6749 §4.1.2).
        """
        found = self._codes.get(code)
        if found is None or found.client_id != client_id:
            return None
        if found.used:
            for record in found.tokens:
                record.access_revoked = record.refresh_revoked = True
            return None
        found.used = True  # even if the exchange then fails (wrong verifier): a code is good for one attempt
        if found.expires_at <= self.now():
            return None
        return found

    # -- tokens -------------------------------------------------------------------------------------

    def add_token(self, record: TokenRecord, code: AuthorizationCode | None = None) -> None:
        self._prune()
        self._by_access[record.access_token] = record
        if record.refresh_token:
            self._by_refresh[record.refresh_token] = record
        if code is not None:
            code.tokens.append(record)

    def find_token(self, token: str, hint: str | None = None) -> TokenView | None:
        order = ("refresh_token", "access_token") if hint == "refresh_token" else ("access_token", "refresh_token")
        for kind in order:
            record = (self._by_access if kind == "access_token" else self._by_refresh).get(token)
            if record is not None:
                return TokenView(record, kind, self.now)
        return None

    def revoke(self, view: TokenView) -> None:
        """Revoking a refresh token ends its access token too; revoking an access token leaves the refresh one."""
        view.record.access_revoked = True
        if view.kind == "refresh_token":
            view.record.refresh_revoked = True

    def end_session(self, sid: str) -> int:
        """Logout: every token of the session becomes inactive. Returns how many records it touched."""
        touched = 0
        for record in self._by_access.values():
            if record.login.sid == sid and not (record.access_revoked and record.refresh_revoked):
                record.access_revoked = record.refresh_revoked = True
                touched += 1
        return touched

    def _prune(self) -> None:
        now = self.now()
        if now - self._pruned_at < PRUNE_INTERVAL:
            return
        self._pruned_at = now
        # Used codes stay a while after expiry so that a late replay is still recognised and punished.
        self._codes = {k: c for k, c in self._codes.items() if c.expires_at + PENDING_LOGIN_LIFETIME > now}
        self._nonces = {k: t for k, t in self._nonces.items() if t > now}
        self._pending = {k: p for k, p in self._pending.items() if p[1] > now}
        alive = {k: r for k, r in self._by_access.items() if max(r.expires_at, r.refresh_expires_at) > now}
        self._by_access = alive
        self._by_refresh = {r.refresh_token: r for r in alive.values() if r.refresh_token}
