"""A contextual launch that carries the professional's Pro Santé Connect access token logs them in directly.

The doctor's software has already logged the professional in with Pro Santé Connect; asking again would be a
second login for nothing. The token comes as `Authorization: Bearer …` (a software that posts itself) or as the
form field `access_token` (RFC 6750 §2.2: a browser form cannot set headers). No ANS launch field is known for
it [unsure]. It is checked by introspection at the provider, never from a cache; a refused token answers a
401 page and never falls back to whatever session the browser already had.

The launch is posted from other origins by design, so any page can post one (CSRF): a token of ANOTHER
professional than the one whose session the browser holds never replaces that session (409, a page that offers
to log out first); a token of the same professional refreshes the session.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import audit_request
from drimbox.auth.csrf import logout_form
from drimbox.auth.professional import Professional
from drimbox.auth.tokens import TokenError
from drimbox.i18n import Messages

if TYPE_CHECKING:
    from drimbox.auth.routes import AuthGate

log = logging.getLogger(__name__)
LAUNCH_PATH = "/conso/launch"
FORM_FIELD = "access_token"


class _Unreadable(Exception):
    pass


class OtherProfessional(Exception):
    """A launch token names someone else than the professional whose session this browser holds."""

    def __init__(self, current: Professional, other: Professional) -> None:
        super().__init__("the browser is logged in as another professional")
        self.current = current
        self.other = other


async def _launch_token(request: web.Request) -> str | None:
    """The access token the launch carries, None when it carries none; _Unreadable when two are given."""
    scheme, _, header_token = request.headers.get("Authorization", "").partition(" ")
    header_token = header_token.strip() if scheme.lower() == "bearer" else ""
    form_token = ""
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        # Read once here; aiohttp keeps the parsed form for the launch handler's own request.post().
        value = (await request.post()).get(FORM_FIELD)
        form_token = value.strip() if isinstance(value, str) else ""
    if header_token and form_token:
        # RFC 6750 §2: a client must not send a token in more than one way.
        raise _Unreadable()
    return header_token or form_token or None


def launch_token_middleware(gate: AuthGate) -> Middleware:
    """Middleware: on POST /conso/launch with a token, a session for its professional before the launch runs."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.path != LAUNCH_PATH:
            return await handler(request)
        try:
            token = await _launch_token(request)
        except _Unreadable:
            return _page(request, 400, "auth.launch_refused", "auth.launch_two_tokens")
        if token is None:
            return await handler(request)
        try:
            professional, session_id = await gate.login_with_token(request, token)
        except TokenError as exc:
            log.info("launch refused: access token %s", exc.reason)
            await audit_request(request, "auth.launch-token", REFUSED, reason=exc.reason)
            if exc.status == 503:
                return _page(request, 503, "auth.psc_unavailable", "auth.token_unavailable")
            return _page(request, 401, "auth.login_refused", "auth.token_refused", reason=exc.reason)
        except OtherProfessional as exc:
            log.info("launch refused: its token is for another professional than the browser's session")
            await audit_request(request, "auth.launch-token", REFUSED, professional=exc.other.id,
                                reason="another_professional", session_professional=exc.current.id)  # fmt: skip
            current = exc.current
            name = Messages.of(request).person(current.family, current.given, current.id)
            return _page(request, 409, "auth.other_title", "auth.other_message", extra=logout_form(request), name=name)
        await audit_request(request, "auth.launch-token", SUCCESS, professional=professional.id)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # The launch answers with a redirect to the exam list: it carries the new session's cookie.
            gate.set_session_cookie(exc, session_id)
            raise
        gate.set_session_cookie(response, session_id)
        return response

    return middleware


def _page(request: web.Request, status: int, title_key: str, message_key: str, *, extra: str = "",
          **params: object) -> web.Response:  # fmt: skip
    m = Messages.of(request)
    title, message = m(title_key), m(message_key, **params)
    body = (
        f'<!doctype html><html lang="{m.lang}"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f'<body><h1>{html.escape(title)}</h1><p id="error">{html.escape(message)}</p>{extra}</body></html>'
    )
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
               "Content-Security-Policy": "frame-ancestors 'none'"}  # fmt: skip
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="drimbox", error="invalid_token"'
    return web.Response(status=status, text=body, content_type="text/html", headers=headers)
