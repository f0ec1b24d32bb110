"""The choice of practice situation: a professional with several (PSC activities) picks the one they act in.

The VIHF names one structure and one activity sector; Pro Santé Connect lists every situation of the
professional and does not say which one they work in now. The launch's `Situation` field names it (consumer side,
drimbox.consumer.situation); otherwise this page asks, once per session, and the choice can be changed here again.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import web

from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import audit_request
from drimbox.auth.csrf import hidden_field
from drimbox.auth.professional import PracticeSituation, Professional
from drimbox.i18n import Messages

if TYPE_CHECKING:
    from drimbox.auth.routes import AuthGate

log = logging.getLogger(__name__)

SITUATION_PATH = "/auth/situation"
_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'",
            "Referrer-Policy": "no-referrer"}  # fmt: skip
# TRE_R02 SecteurActivite: the common sectors a page names in words (auth.sector_*; the code is shown for others).
SECTORS = frozenset({"SA01", "SA02", "SA03", "SA04", "SA05", "SA07", "SA08", "SA09"})


def situation_url(next_path: str) -> str:
    """Where a professional who must choose is sent; back to `next_path` (a local path) after."""
    return f"{SITUATION_PATH}?{urlencode({'next': next_path})}"


async def choose(gate: AuthGate, request: web.Request, structure_id: str) -> Professional | None:
    """The session's professional put in their situation at `structure_id` (kept for the session); None when
    there is no session or the structure is none of theirs."""
    professional = await gate.current_professional(request)
    situation = professional.situation(structure_id) if professional else None
    if professional is None or situation is None:
        return None
    chosen = professional.in_situation(situation)
    if chosen != professional:
        await gate.update_professional(request, chosen)
        await audit_request(request, "auth.situation", SUCCESS, professional=professional.id)
    return chosen


def _label(m: Messages, situation: PracticeSituation) -> str:
    code = situation.sector.partition("^")[0]
    sector = m(f"auth.sector_{code}") if code in SECTORS else code
    parts = [situation.structure_name or situation.structure_id, sector, situation.place]
    return " — ".join(html.escape(p) for p in parts if p)


def choice_page(request: web.Request, professional: Professional, next_path: str, *, unknown: bool = False) -> str:
    """The page listing the professional's situations, each a radio button of one POST form."""
    m = Messages.of(request)
    current = professional.structure_id
    options = "".join(
        f'<p><label><input type="radio" name="structure" value="{html.escape(s.structure_id)}"'
        f"{' checked' if s.structure_id == current or (not current and i == 0) else ''}> {_label(m, s)}"
        f" <small>({html.escape(s.structure_id)})</small></label></p>"
        for i, s in enumerate(professional.situations)
    )
    notice = f'<p role="alert">{html.escape(m("auth.situation_unknown"), quote=False)}</p>' if unknown else ""
    title = html.escape(m("auth.situation_title"), quote=False)
    name = m.person(professional.family, professional.given, professional.id)
    return (
        f'<!doctype html><html lang="{m.lang}"><head><meta charset="utf-8"><title>{title}</title></head><body>'
        f"<h1>{title}</h1><p>{html.escape(m('auth.situation_intro', name=name), quote=False)}</p>{notice}"
        f'<form method="post" action="{SITUATION_PATH}">{hidden_field(request)}'
        f'<input type="hidden" name="next" value="{html.escape(next_path)}">{options}'
        f'<button type="submit">{html.escape(m("auth.situation_submit"))}</button></form></body></html>'
    )


def situation_routes(gate: AuthGate) -> list[web.RouteDef]:
    """GET /auth/situation shows the choice, POST makes it (the CSRF middleware checks the POST is the box's)."""
    from drimbox.auth.routes import safe_next  # routes.py imports this module: read at call time

    async def show(request: web.Request) -> web.StreamResponse:
        next_path = safe_next(request.query.get("next", "/")) or "/"
        professional = await gate.current_professional(request)
        if professional is None:
            gate.require_login(request)
        if not professional.situations:
            raise web.HTTPSeeOther(next_path, headers={"Cache-Control": "no-store"})
        page = choice_page(request, professional, next_path, unknown=request.query.get("unknown") == "1")
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers=_HEADERS)

    async def post(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        next_value, structure = form.get("next"), form.get("structure")
        next_path = safe_next(next_value if isinstance(next_value, str) else "/") or "/"
        professional = await gate.current_professional(request)
        if professional is None:
            raise web.HTTPUnauthorized(text=Messages.of(request)("auth.not_logged_in_box"), headers=_HEADERS)
        chosen = await choose(gate, request, structure if isinstance(structure, str) else "")
        if chosen is None:
            await audit_request(request, "auth.situation", REFUSED, professional=professional.id, reason="unknown")
            page = choice_page(request, professional, next_path, unknown=True)
            return web.Response(status=400, text=page, content_type="text/html", charset="utf-8", headers=_HEADERS)
        log.info("practice situation chosen")
        raise web.HTTPSeeOther(next_path, headers={"Cache-Control": "no-store"})

    return [web.get(SITUATION_PATH, show), web.post(SITUATION_PATH, post)]
