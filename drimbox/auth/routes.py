"""Browser login with Pro Santé Connect: /auth/login, /auth/callback, /auth/logout, and the helpers handlers call."""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import re
import secrets
import time
import weakref
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from drimbox.audit.events import FAILURE, REFUSED, SUCCESS
from drimbox.audit.request import audit_request
from drimbox.auth.csrf import CSRF_TOKEN, csrf_middleware, logout_form, token_for
from drimbox.auth.launch import OtherProfessional, launch_token_middleware
from drimbox.auth.oidc import OidcClient, OidcError, TokenSet
from drimbox.auth.professional import Professional
from drimbox.auth.session import PendingLogin, Session, SessionStore
from drimbox.auth.situation import situation_routes
from drimbox.auth.tokens import BearerTokenChecker
from drimbox.config import Settings
from drimbox.i18n import MIDDLEWARE as LANGUAGE_MIDDLEWARE
from drimbox.i18n import Messages

log = logging.getLogger(__name__)

# The session looked up once per request, however many helpers ask.
_REQUEST_KEY = web.RequestKey[Session | None]("drimbox_auth_session")
# The session a launch token opened during this request (its cookie only reaches the browser with the answer).
_NEW_SESSION_KEY = web.RequestKey[str]("drimbox_auth_new_session")
_SAFE_CODE = re.compile(r"[^A-Za-z0-9_.-]")
MAX_NEXT = 2048


class AuthGate:
    """The box's browser authentication: its routes, its session store, and what other handlers ask of it."""

    def __init__(
        self, settings: Settings, *, oidc: OidcClient | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        auth = settings.auth
        self.oidc = oidc or OidcClient(settings.psc, auth)
        self.sessions = SessionStore(
            settings.var_path / "auth.sqlite",
            ttl=auth.session_ttl,
            idle=auth.session_idle,
            clock=clock,
            url=settings.state.url,
        )
        self._clock = clock
        base = settings.box.public_url.rstrip("/")
        self.redirect_uri = base + "/auth/callback"
        self.post_logout_uri = base + auth.logout_redirect
        self.cookie = auth.cookie_name
        self.login_cookie = auth.cookie_name + "_login"
        # Secure whenever the box serves HTTPS, be it itself ([tls]) or behind a proxy (public_url).
        self._secure = settings.box.public_url.startswith("https://") or bool(settings.tls.cert and settings.tls.key)
        # Bearer tokens (a launch that carries one, STOW-RS, box-to-box) are checked with the same provider client.
        self.tokens = BearerTokenChecker(settings, oidc=self.oidc)
        # One refresh at a time per session; a lock lives as long as some request holds it.
        self._refresh_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def setup(self, app: web.Application) -> None:
        """Add the routes, make the gate reachable from any handler (sub-apps too), close it with the app."""
        app.add_routes(self.routes())
        app[AUTH_GATE] = self
        # Outermost of ours: every page it wraps, refusals included, says its language.
        app.middlewares.append(LANGUAGE_MIDDLEWARE)
        # Before anything acts on the session cookie: a state-changing request must come from the box's own pages.
        app.middlewares.append(csrf_middleware(self))
        # A contextual launch carrying the professional's PSC access token logs them in without a PSC round trip.
        app.middlewares.append(launch_token_middleware(self))

        async def _close(_: web.Application) -> None:
            await self.close()

        app.on_cleanup.append(_close)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/auth/login", self._login),
            web.get("/auth/callback", self._callback),
            web.get("/auth/logout", self._logout_form),
            web.post("/auth/logout", self._logout),
            web.get("/auth/logged-out", self._logged_out),
            web.get("/auth/me", self._me),
            *situation_routes(self),
        ]

    async def close(self) -> None:
        await self.tokens.close()
        await self.oidc.close()
        await asyncio.to_thread(self.sessions.close)

    # --- what other handlers call ---------------------------------------------------------------------

    async def current_session(self, request: web.Request) -> Session | None:
        """The request's live session (who, and its id_hash that keys what it was granted), None without one."""
        return await self._session(request)

    async def current_professional(self, request: web.Request) -> Professional | None:
        session = await self._session(request)
        return session.professional if session else None

    async def update_professional(self, request: web.Request, professional: Professional) -> None:
        """The request's session now stands for `professional` (the same person in another practice situation)."""
        session_id = request.get(_NEW_SESSION_KEY) or request.cookies.get(self.cookie, "")
        await self.sessions.update_professional(session_id, professional)
        request[_REQUEST_KEY] = None

    async def require_professional(self, request: web.Request, next: str | None = None) -> Professional:
        """The logged-in professional, or a 303 to the login page that comes back to `next`."""
        professional = await self.current_professional(request)
        if professional is None:
            self.require_login(request, next)
        return professional

    def require_login(self, request: web.Request, next: str | None = None) -> NoReturn:
        """Raise a 303 to /auth/login?next=…; `next` defaults to this GET's own URL.

        A POST cannot be replayed after the login: its handler stores what it needs server-side and names
        the local URL that picks it up again.
        """
        if next is None:
            if request.method not in ("GET", "HEAD"):
                raise ValueError("require_login: a non-GET request must name the local URL to come back to")
            next = request.path_qs
        raise web.HTTPSeeOther(location="/auth/login?" + urlencode({"next": safe_next(next) or "/"}))

    async def access_token(self, request: web.Request) -> str | None:
        """The session's PSC access token, refreshed first when it expires within auth.refresh_margin.

        None when there is no session, or the token can no longer be refreshed (the session is then ended,
        so the next require_professional sends the user to log in again).
        """
        session = await self._session(request)
        if session is None:
            return None
        if not self._needs_refresh(session.tokens):
            return session.tokens.access_token
        session_id = request.cookies.get(self.cookie, "")
        lock = self._refresh_locks.get(session.id_hash)
        if lock is None:
            lock = self._refresh_locks[session.id_hash] = asyncio.Lock()
        async with lock:
            # Another request may have refreshed while we waited: refresh tokens are often single-use.
            fresh = await self.sessions.get(session_id)
            if fresh is None:
                return None
            if not self._needs_refresh(fresh.tokens):
                request[_REQUEST_KEY] = fresh
                return fresh.tokens.access_token
            try:
                # Shielded: a client that leaves mid-refresh must not lose the rotated refresh token.
                tokens = await asyncio.shield(self._refresh_and_store(session_id, fresh.tokens))
            except OidcError as exc:
                if exc.reason in ("provider_unreachable", "provider_error", "http_500", "http_502", "http_503"):
                    # The provider is down, the session is not at fault: keep it, and the token while it lasts.
                    log.warning("token refresh failed, provider unavailable (%s)", exc.reason)
                    still_valid = self._clock() < fresh.tokens.expires_at
                    return fresh.tokens.access_token if still_valid else None
                log.info("session ended: token refresh refused (%s)", exc.reason)
                await self.sessions.delete(session_id)
                request[_REQUEST_KEY] = None
                return None
            request[_REQUEST_KEY] = None
            return tokens.access_token

    async def login_with_token(self, request: web.Request, token: str) -> tuple[Professional, str]:
        """A new session for the professional this access token stands for (checked now, never from a cache).

        Raises TokenError; OtherProfessional when the browser has a live session of someone else: that session is
        kept, never silently replaced (the launch may come from any page, CSRF; the professional logs out first).
        A session of the same professional is replaced by the new one (a refresh). Returns (professional,
        session id); the caller sets the cookie with set_session_cookie.
        """
        professional, expires_at = await self.tokens.check_fresh(token)
        old = request.cookies.get(self.cookie)
        current = await self._session(request)
        if current is not None and current.professional.id != professional.id:
            raise OtherProfessional(current.professional, professional)
        if old:
            await self.sessions.delete(old)
        # No refresh token comes with it: the session cannot outlive the token (then a PSC login, usually silent).
        tokens = TokenSet(access_token=token, expires_at=expires_at)
        session_id = await self.sessions.create(professional, tokens, not_after=expires_at)
        # This request already counts as logged in (its handler asks current_professional next).
        request[_REQUEST_KEY] = await self.sessions.get(session_id)
        request[_NEW_SESSION_KEY] = session_id
        request[CSRF_TOKEN] = token_for(session_id)
        log.info("login by launch token: professional %s", _masked(professional.id))
        return professional, session_id

    def set_session_cookie(self, response: web.StreamResponse, session_id: str) -> None:
        response.set_cookie(
            self.cookie,
            session_id,
            max_age=int(self.settings.auth.session_ttl),
            path="/",
            httponly=True,
            samesite="Lax",
            secure=self._secure,
        )

    async def _refresh_and_store(self, session_id: str, tokens: TokenSet) -> TokenSet:
        fresh = await self.oidc.refresh(tokens)
        await self.sessions.update_tokens(session_id, fresh)
        return fresh

    # --- routes ----------------------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.StreamResponse:
        next = safe_next(request.query.get("next", "/"))
        if next is None:
            return _page(request, 400, "auth.login_refused", "auth.bad_next")
        login_hint = request.query.get("login_hint", "")[:128]
        try:
            auth_request = await self.oidc.authorization_request(self.redirect_uri, login_hint=login_hint)
        except OidcError as exc:
            log.warning("login: provider unavailable (%s)", exc)
            return _page(request, 503, "auth.psc_unavailable", "auth.psc_unreachable")
        pending = PendingLogin(auth_request.state, auth_request.nonce, auth_request.code_verifier, next, self._clock())
        await self.sessions.save_pending(pending)
        response = _see_other(auth_request.url)
        # The state also rides in a cookie, binding the callback to this browser (no login CSRF).
        response.set_cookie(
            self.login_cookie,
            auth_request.state,
            max_age=600,
            path="/auth/",
            httponly=True,
            samesite="Lax",
            secure=self._secure,
        )
        return response

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        state = query.get("state", "")
        cookie_state = request.cookies.get(self.login_cookie, "")
        if not state or not cookie_state or not hmac.compare_digest(state.encode(), cookie_state.encode()):
            return _page(request, 400, "auth.login_refused", "auth.state_mismatch", retry=True)
        if "error" in query:
            await self.sessions.pop_pending(state)
            code = _SAFE_CODE.sub("", query["error"])[:64]
            return _page(request, 401, "auth.login_failed", "auth.provider_answered", retry=True, code=code)
        # RFC 9207: when the provider names itself, it must be ours (mix-up defence).
        if "iss" in query and query["iss"] != self.oidc.issuer:
            return _page(request, 400, "auth.login_refused", "auth.other_issuer", retry=True)
        pending = await self.sessions.pop_pending(state)
        if pending is None:
            return _page(request, 400, "auth.login_refused", "auth.login_expired", retry=True)
        code = query.get("code", "")
        if not code:
            return _page(request, 400, "auth.login_refused", "auth.no_code", retry=True)
        try:
            tokens = await self.oidc.exchange_code(code, pending.code_verifier, self.redirect_uri)
            if not tokens.id_token:
                raise OidcError("invalid_token_response", "no id_token")
            claims = await self.oidc.validate_id_token(
                tokens.id_token, nonce=pending.nonce, access_token=tokens.access_token
            )
            info = await self.oidc.userinfo(tokens.access_token)
            # OIDC Core §5.3.2: userinfo about someone else than the id_token's subject is discarded.
            if info and info.get("sub") != claims.get("sub"):
                raise OidcError("invalid_userinfo", "sub differs from the id_token")
            professional = Professional.from_claims({**claims, **info})
        except OidcError as exc:
            log.warning("login failed: %s", exc)
            await audit_request(request, "auth.login", FAILURE, reason=exc.reason)
            return _page(request, 401, "auth.login_failed", "auth.login_incomplete", retry=True, reason=exc.reason)
        except ValueError as exc:
            log.warning("login failed: %s", exc)
            await audit_request(request, "auth.login", REFUSED, reason="not_a_professional")
            return _page(request, 403, "auth.login_refused", "auth.not_professional")
        old = request.cookies.get(self.cookie)
        if old:
            await self.sessions.delete(old)
        session_id = await self.sessions.create(professional, tokens)
        log.info("login: professional %s", _masked(professional.id))
        await audit_request(request, "auth.login", SUCCESS, professional=professional.id)
        response = _see_other(pending.next)
        self.set_session_cookie(response, session_id)
        response.del_cookie(self.login_cookie, path="/auth/")
        return response

    async def _logout_form(self, request: web.Request) -> web.StreamResponse:
        """GET /auth/logout: a button that posts the logout (a GET changes nothing: any page can make one)."""
        session = await self._session(request)
        if session is None:
            return _page(request, 200, "auth.not_logged_in_title", "auth.not_logged_in", retry=True)
        pro = session.professional
        who = Messages.of(request).person(pro.family, pro.given, pro.id)
        return _page(request, 200, "auth.logout_title", "auth.logout_confirm", form=logout_form(request), name=who)

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        """POST /auth/logout (the CSRF middleware has checked it comes from the box's own pages)."""
        session_id = request.cookies.get(self.cookie, "")
        session = await self.sessions.delete(session_id) if session_id else None
        location = self.settings.auth.logout_redirect
        if session is not None:
            await audit_request(request, "auth.logout", SUCCESS, professional=session.professional.id)
            tokens = session.tokens
            if tokens.refresh_token:
                await self.oidc.revoke(tokens.refresh_token, "refresh_token")
            try:
                end = await self.oidc.end_session_url(
                    id_token_hint=tokens.id_token,
                    post_logout_redirect_uri=self.post_logout_uri,
                    state=secrets.token_urlsafe(16),
                )
                location = end or location
            except OidcError as exc:
                log.warning("logout: provider unavailable, local session ended only (%s)", exc.reason)
        response = _see_other(location)
        response.del_cookie(self.cookie, path="/")
        return response

    async def _logged_out(self, request: web.Request) -> web.StreamResponse:
        return _page(request, 200, "auth.logged_out_title", "auth.logged_out", retry=True)

    async def _me(self, request: web.Request) -> web.StreamResponse:
        session = await self._session(request)
        if session is None:
            error = Messages.of(request)("auth.not_logged_in_json")
            return web.json_response({"error": error, "login": "/auth/login"}, status=401)
        body: dict[str, Any] = session.professional.to_json()
        body["session_expires_at"] = session.expires_at
        return web.json_response(body)

    # --- internals ---------------------------------------------------------------------------------

    async def _session(self, request: web.Request) -> Session | None:
        if _REQUEST_KEY in request and (cached := request[_REQUEST_KEY]) is not None:
            return cached
        session_id = request.cookies.get(self.cookie, "")
        session = await self.sessions.get(session_id) if session_id else None
        request[_REQUEST_KEY] = session
        return session

    def _needs_refresh(self, tokens: TokenSet) -> bool:
        return bool(tokens.expires_at) and self._clock() >= tokens.expires_at - self.settings.auth.refresh_margin


AUTH_GATE = web.AppKey("auth_gate", AuthGate)


def gate_of(request: web.Request) -> AuthGate:
    """The AuthGate registered by AuthGate.setup on this app or a parent app."""
    return request.config_dict[AUTH_GATE]


async def current_professional(request: web.Request) -> Professional | None:
    return await gate_of(request).current_professional(request)


async def require_professional(request: web.Request, next: str | None = None) -> Professional:
    return await gate_of(request).require_professional(request, next)


def require_login(request: web.Request, next: str | None = None) -> NoReturn:
    gate_of(request).require_login(request, next)


async def access_token(request: web.Request) -> str | None:
    return await gate_of(request).access_token(request)


def safe_next(value: str) -> str | None:
    """`value` when it is a path on this box ("/conso/patients/…"), else None: never an open redirect."""
    if not value or len(value) > MAX_NEXT or not value.startswith("/"):
        return None
    # "//host" and "/\\host" are read as another host by browsers; control characters hide such tricks.
    if value.startswith(("//", "/\\")) or "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return None
    return value


def _masked(national_id: str) -> str:
    # Logs name who logged in without the full identifier (house rule: no identities in ordinary logs).
    return national_id[:3] + "…" + national_id[-2:] if len(national_id) > 6 else "…"


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _page(
    request: web.Request,
    status: int,
    title_key: str,
    message_key: str,
    *,
    retry: bool = False,
    form: str = "",
    **params: object,
) -> web.Response:
    m = Messages.of(request)
    title, message = m(title_key), m(message_key, **params)
    link = f'<p><a href="/auth/login">{html.escape(m("auth.login_link"))}</a></p>' if retry else ""
    body = (
        f'<!doctype html><html lang="{m.lang}"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{form}{link}</body></html>"
    )
    # Never framed: a page of another origin must not get a click on the logout button through a frame.
    headers = {
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "frame-ancestors 'none'",
    }
    return web.Response(status=status, text=body, content_type="text/html", headers=headers)
