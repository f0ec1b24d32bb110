"""The patient's login through Mon Espace Santé's OpenID provider: /patient/login, /patient/callback, logout.

The same flow as the professionals' (authorization code + PKCE, state bound to a cookie, nonce, the ID token's
signature, issuer, audience and expiry checked), with its own client registration ([patient]), its own cookie
(`<cookie_name>_patient`, path /patient/) and its own session table: a patient session opens no professional
route, and a professional session no patient route. The ID token must say eIDAS level "substantial" or higher.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import time
from urllib.parse import urlencode

from aiohttp import web

from drimbox.audit.events import FAILURE, PATIENT_ACTOR, REFUSED, SUCCESS
from drimbox.audit.request import audit_request
from drimbox.auth.csrf import hidden_field
from drimbox.auth.oidc import OidcClient, OidcError
from drimbox.auth.routes import AuthGate, safe_next
from drimbox.auth.session import PendingLogin
from drimbox.config import PscSettings, Settings
from drimbox.i18n import Messages
from drimbox.patient import pages
from drimbox.patient.identity import PatientIdentity, acr_level

log = logging.getLogger(__name__)

# Pending logins share the professionals' table: this marks the patient's, so that neither callback takes the other's.
_NEXT_MARK = "patient:"
_CURRENT = web.RequestKey[tuple[str, PatientIdentity] | None]("drimbox_patient_session")


class PatientLogin:
    """The patient's OpenID client and sessions (kept in the box's session store, table patient_sessions)."""

    def __init__(self, settings: Settings, gate: AuthGate, *, oidc: OidcClient | None = None) -> None:
        p = settings.patient
        self.settings, self.gate = settings, gate
        provider = PscSettings(issuer=p.issuer, client_id=p.client_id, client_secret=p.client_secret)
        auth = dataclasses.replace(settings.auth, scopes=list(p.scopes), acr_values=p.acr_values, authorize_params=[])
        self.oidc = oidc or OidcClient(provider, auth)
        self.sessions = gate.sessions
        self.cookie = gate.cookie + "_patient"
        self.login_cookie = gate.cookie + "_patient_login"
        self.redirect_uri = settings.box.public_url.rstrip("/") + "/patient/callback"
        self._secure = settings.box.public_url.startswith("https://") or bool(settings.tls.cert and settings.tls.key)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/patient/login", self._login),
            web.get("/patient/callback", self._callback),
            web.get("/patient/logout", self._logout_form),
            web.post("/patient/logout", self._logout),
            web.get("/patient/logged-out", self._logged_out),
        ]

    async def close(self) -> None:
        await self.oidc.close()

    async def current(self, request: web.Request) -> tuple[str, PatientIdentity] | None:
        """(session id hash, patient) of the request's live patient session, None without one."""
        if _CURRENT in request:
            return request[_CURRENT]
        found = await self.sessions.patient_session(request.cookies.get(self.cookie, ""),
                                                    idle=self.settings.patient.session_idle)  # fmt: skip
        current = (found[0], PatientIdentity.from_json(found[1])) if found else None
        request[_CURRENT] = current
        return current

    def login_redirect(self, request: web.Request) -> web.HTTPSeeOther:
        return web.HTTPSeeOther("/patient/login?" + urlencode({"next": safe_next(request.path_qs) or "/patient/"}))

    async def _login(self, request: web.Request) -> web.StreamResponse:
        m = Messages.of(request)
        next = safe_next(request.query.get("next", "/patient/"))
        if next is None or not next.startswith("/patient/"):
            return pages.message(m, 400, "patient.login_refused", "patient.bad_next")
        try:
            auth = await self.oidc.authorization_request(self.redirect_uri)
        except OidcError as exc:
            log.warning("patient login: provider unavailable (%s)", exc.reason)
            return pages.message(m, 503, "patient.login_failed", "patient.provider_unreachable")
        await self.sessions.save_pending(PendingLogin(auth.state, auth.nonce, auth.code_verifier, _NEXT_MARK + next,
                                                      time.time()))  # fmt: skip
        response = web.Response(status=303, headers={"Location": auth.url})
        response.set_cookie(self.login_cookie, auth.state, max_age=600, path="/patient/", httponly=True,
                            samesite="Lax", secure=self._secure)  # fmt: skip
        return response

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        m, query = Messages.of(request), request.query
        state, cookie_state = query.get("state", ""), request.cookies.get(self.login_cookie, "")
        if not state or not cookie_state or not hmac.compare_digest(state.encode(), cookie_state.encode()):
            return pages.message(m, 400, "patient.login_refused", "patient.state_mismatch", extra=self._retry(m))
        pending = await self.sessions.pop_pending(state)
        if pending is None or not pending.next.startswith(_NEXT_MARK):
            return pages.message(m, 400, "patient.login_refused", "patient.login_expired", extra=self._retry(m))
        if "error" in query:
            return pages.message(m, 401, "patient.login_failed", "patient.provider_refused", extra=self._retry(m))
        if "iss" in query and query["iss"] != self.oidc.issuer:
            return pages.message(m, 400, "patient.login_refused", "patient.other_issuer")
        try:
            tokens = await self.oidc.exchange_code(query.get("code", ""), pending.code_verifier, self.redirect_uri)
            if not tokens.id_token:
                raise OidcError("invalid_token_response", "no id_token")
            claims = await self.oidc.validate_id_token(tokens.id_token, nonce=pending.nonce,
                                                       access_token=tokens.access_token)  # fmt: skip
        except OidcError as exc:
            log.warning("patient login failed: %s", exc.reason)
            await audit_request(request, "patient.login", FAILURE, reason=exc.reason, actor=PATIENT_ACTOR)
            return pages.message(m, 401, "patient.login_failed", "patient.login_incomplete", extra=self._retry(m))
        if acr_level(str(claims.get("acr", ""))) < acr_level(self.settings.patient.acr_values):
            await audit_request(request, "patient.login", REFUSED, reason="acr_too_low", actor=PATIENT_ACTOR)
            return pages.message(m, 403, "patient.login_refused", "patient.acr_too_low")
        try:
            patient = PatientIdentity.from_claims(claims)
        except ValueError:
            await audit_request(request, "patient.login", REFUSED, reason="no_ins", actor=PATIENT_ACTOR)
            return pages.message(m, 403, "patient.login_refused", "patient.no_ins")
        old = request.cookies.get(self.cookie)
        if old:
            await self.sessions.end_patient(old)
        session_id = await self.sessions.create_patient(patient.to_json(), ttl=self.settings.patient.session_ttl)
        log.info("patient login: %s", patient.masked())
        await audit_request(request, "patient.login", SUCCESS, professional=patient.ins, patient=patient.ins,
                            actor=PATIENT_ACTOR, acr=str(claims.get("acr", "")))  # fmt: skip
        response = web.Response(status=303, headers={"Location": pending.next.removeprefix(_NEXT_MARK)})
        response.set_cookie(self.cookie, session_id, max_age=int(self.settings.patient.session_ttl), path="/patient/",
                            httponly=True, samesite="Lax", secure=self._secure)  # fmt: skip
        response.del_cookie(self.login_cookie, path="/patient/")
        return response

    async def _logout_form(self, request: web.Request) -> web.StreamResponse:
        m = Messages.of(request)
        if await self.current(request) is None:
            return pages.message(m, 200, "patient.logged_out_title", "patient.not_logged_in")
        form = (f'<form method="post" action="/patient/logout">{hidden_field(request)}'
                f'<button type="submit" id="logout">{pages.e(m("patient.logout_button"))}</button></form>')  # fmt: skip
        return pages.message(m, 200, "patient.logout_title", "patient.logout_confirm", extra=form)

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        current = await self.current(request)
        session_id = request.cookies.get(self.cookie, "")
        if session_id:
            await self.sessions.end_patient(session_id)
        if current is not None:
            patient = current[1]
            await audit_request(request, "patient.logout", SUCCESS, professional=patient.ins, patient=patient.ins,
                                actor=PATIENT_ACTOR)  # fmt: skip
        response = web.Response(status=303, headers={"Location": "/patient/logged-out"})
        response.del_cookie(self.cookie, path="/patient/")
        return response

    async def _logged_out(self, request: web.Request) -> web.StreamResponse:
        return pages.message(Messages.of(request), 200, "patient.logged_out_title", "patient.logged_out")

    @staticmethod
    def _retry(m: Messages) -> str:
        return f'<p><a class="button" href="/patient/">{pages.e(m("patient.retry"))}</a></p>'
