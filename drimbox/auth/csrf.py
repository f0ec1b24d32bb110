"""Cross-site request forgery: a state-changing request that rides on the session cookie must come from this box.

`SameSite=Lax` is not enough: it is about sites, not origins, and ignores ports, so a page on another origin of
the same site (another port of the same host, a sibling service of the same domain) gets the cookie sent with its
POSTs. So every request other than GET/HEAD/OPTIONS that carries the session cookie must prove it comes
from the box's own pages, either way:
- its Origin (or, when the browser sends none or "null", its Referer) is one of the box's own origins: the origin
  of `[box] public_url`, and the one the browser addressed (scheme + Host); or
- it carries the synchronizer token of its session (form field `csrf_token` or header `X-CSRF-Token`), which
  the box's own forms include (the consumer's pages send `Referrer-Policy: no-referrer`, so the browser posts
  their forms with `Origin: null`: the token is what lets them through).
A request without the cookie (a bearer token: box to box, STOW-RS, the operator API) is not at stake: it carries
its own credentials, which no other page can make a browser send. The one exception is the contextual launch
(POST /conso/launch), cross-origin by design since the doctor's software posts it; launch.py keeps it from ever
replacing a live session with someone else's.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from drimbox.audit.events import REFUSED
from drimbox.audit.request import audit_request
from drimbox.i18n import Messages

if TYPE_CHECKING:
    from drimbox.auth.routes import AuthGate

log = logging.getLogger(__name__)

FORM_FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Posted from other origins on purpose: the doctor's software (DPI, RIS) sends the ANS launch form.
CROSS_ORIGIN_BY_DESIGN = frozenset({("POST", "/conso/launch")})
# Where a refusal is JSON (APIs and DICOMweb); elsewhere an HTML page, as the pages around do.
_JSON_PREFIXES = ("/api/", "/conso/api/", "/dicom-web", "/conso/dicom-web")
# The request's own synchronizer token, for the pages its handler renders.
CSRF_TOKEN = web.RequestKey[str]("drimbox_csrf_token")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def token_for(session_id: str) -> str:
    """The session's synchronizer token: an HMAC keyed by the session id, which only its browser holds.

    Nothing to store, valid as long as the session, and it reveals nothing of the cookie it derives from.
    """
    return hmac.new(session_id.encode(), b"drimbox csrf token v1", hashlib.sha256).hexdigest()


def form_token(request: web.Request) -> str:
    """The token the pages of this request put in their forms; "" when the request has no session cookie."""
    token: str = request.get(CSRF_TOKEN, "")
    return token


def hidden_field(request: web.Request) -> str:
    """The hidden <input> a form of the box's own pages carries (nothing when there is no session)."""
    token = form_token(request)
    return f'<input type="hidden" name="{FORM_FIELD}" value="{html.escape(token)}">' if token else ""


def logout_form(request: web.Request) -> str:
    """The logout button: a POST form carrying the session's token (GET /auth/logout only shows this form)."""
    label = html.escape(Messages.of(request)("auth.logout_button"))
    return (f'<form method="post" action="/auth/logout">{hidden_field(request)}'
            f'<button type="submit">{label}</button></form>')  # fmt: skip


def origin_of(url: str) -> str | None:
    """ "scheme://host[:port]" of a URL, lower-cased, the default port left out; None when it has none."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    return f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else "")


def own_origins(request: web.Request, public_url: str) -> set[str]:
    """The box's origins: its public URL's, and the one this request was addressed to (the Host header)."""
    origins = {o for o in (origin_of(public_url), origin_of(f"{request.scheme}://{request.host}")) if o}
    return origins


def from_own_origin(request: web.Request, public_url: str) -> bool:
    """Whether Origin (or, when absent or "null", Referer) names one of the box's own origins."""
    origin = request.headers.get("Origin", "").strip()
    if not origin or origin == "null":
        origin = request.headers.get("Referer", "").strip()
    claimed = origin_of(origin) if origin else None
    return claimed is not None and claimed in own_origins(request, public_url)


async def _carries_token(request: web.Request, expected: str) -> bool:
    sent = request.headers.get(HEADER, "")
    if not sent and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        # aiohttp keeps the parsed form: the handler's own request.post() reads it again.
        value = (await request.post()).get(FORM_FIELD)
        sent = value if isinstance(value, str) else ""
    return bool(sent) and hmac.compare_digest(sent.encode(), expected.encode())


def csrf_middleware(gate: AuthGate) -> Middleware:
    """Middleware: refuse (403) a state-changing request made with the session cookie from another origin."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The operator page's forms carry the operator session's token (drimbox/ops/login.py), the patient's pages
        # the patient session's (drimbox/patient), the others the professional's; any of the cookies makes a
        # request one that must come from the box's own pages.
        operator_page = request.path == "/operator" or request.path.startswith("/operator/")
        patient_page = request.path.startswith("/patient/")  # a patient's session (drimbox/patient) has its own
        cookies = (gate.cookie + "_operator", gate.cookie, gate.cookie + "_patient")
        session_id = request.cookies.get(
            cookies[0] if operator_page else cookies[2] if patient_page else cookies[1], ""
        )
        if session_id:
            request[CSRF_TOKEN] = token_for(session_id)
        rides = any(request.cookies.get(c) for c in cookies)
        if not rides or request.method in SAFE_METHODS or (request.method, request.path) in CROSS_ORIGIN_BY_DESIGN:
            return await handler(request)
        if from_own_origin(request, gate.settings.box.public_url) or (
            session_id and await _carries_token(request, token_for(session_id))
        ):
            return await handler(request)
        professional = await gate.current_professional(request)
        origin = request.headers.get("Origin") or origin_of(request.headers.get("Referer", "")) or "none"
        log.warning("refused %s %s with the session cookie from another origin (%s)", request.method, request.path,
                    origin[:100])  # fmt: skip
        await audit_request(request, "auth.csrf", REFUSED, professional=professional.id if professional else None,
                            reason="cross_origin", method=request.method, path=request.path[:200], origin=origin[:200])  # fmt: skip
        return refusal(request)

    return middleware


def refusal(request: web.Request) -> web.Response:
    m = Messages.of(request)
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if request.path.startswith(_JSON_PREFIXES):
        body = json.dumps({"error": m("auth.csrf_json"), "reason": "cross_origin"})
        return web.Response(status=403, text=body, content_type="application/json", headers=headers)
    title = html.escape(m("auth.csrf_title"))
    page = (f'<!doctype html><html lang="{m.lang}"><head><meta charset="utf-8"><title>{title}</title></head>'
            f'<body><h1>{title}</h1><p id="error">{html.escape(m("auth.csrf_message"))}</p></body></html>')  # fmt: skip
    return web.Response(status=403, text=page, content_type="text/html", headers=headers)
