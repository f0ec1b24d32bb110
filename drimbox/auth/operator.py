"""Who may call the box's operator API (the operator's bearer token, hashed in [auth] operator_token) and upload."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import audit_request
from drimbox.auth.routes import gate_of
from drimbox.auth.tokens import BearerTokenChecker, TokenError
from drimbox.i18n import Messages
from drimbox.xds.habilitation import ImagingMatrix

OPERATOR = "operator"


def operator_token_hash(token: str) -> str:
    """The value to write in [auth] operator_token for this token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def is_operator(request: web.Request, configured: str) -> bool:
    """True when the request carries `Authorization: Bearer <the operator token>` (compared by hash)."""
    if not configured:
        return False
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 512:
        return False
    return hmac.compare_digest(operator_token_hash(token.strip()), configured)


def refusal(reason: str, message: str, status: int = 401) -> web.HTTPException:
    """A JSON 401/403 the handler raises (RFC 6750: a 401 names the Bearer scheme)."""
    headers = {"WWW-Authenticate": 'Bearer realm="drimbox"', "Cache-Control": "no-store"} if status == 401 else {}
    body = json.dumps({"error": message, "reason": reason})
    cls = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
    return cls(text=body, content_type="application/json", headers=headers)


async def require_operator(request: web.Request) -> str:
    """OPERATOR for the operator token; else a 401 JSON answer, recorded in the audit trail with who asked.

    A session is never enough for the operator's API (publication states of every patient, emptying the cache,
    issuing report links): those are the RIS's and the administrator's, not a reading doctor's.
    """
    gate = gate_of(request)
    if is_operator(request, gate.settings.auth.operator_token):
        return OPERATOR
    professional = await gate.current_professional(request)
    await audit_request(request, "auth.operator", REFUSED, professional=professional.id if professional else None,
                        path=request.path, reason="operator_required")  # fmt: skip
    raise refusal("operator_required", Messages.of(request)("auth.operator_refused"))


def uploader_check(
    tokens: BearerTokenChecker, configured: str, matrix: ImagingMatrix | None = None
) -> Callable[[web.Request], Awaitable[web.Response | None]]:
    """STOW-RS on a Native source: the operator token, or the PSC bearer token of a professional the imaging
    habilitation `matrix` allows (a secretary's or a pharmacist's answers 403); None when allowed. Audited either way.
    """
    allowed = matrix or ImagingMatrix()

    async def check(request: web.Request) -> web.Response | None:
        if is_operator(request, configured):
            await audit_request(request, "auth.stow", SUCCESS, professional=OPERATOR)
            return None
        try:
            professional = await tokens.check_request(request)
        except TokenError as exc:
            await audit_request(request, "auth.stow", REFUSED, reason=exc.reason)
            return exc.response()
        not_allowed = allowed.refusal(professional.profession, [professional.specialty])
        if not_allowed is not None:
            await audit_request(request, "auth.stow", REFUSED, professional=professional.id, reason="not_habilitated")
            error = Messages.of(request)("auth.stow_refused")
            return web.json_response({"error": error, "reason": "not_habilitated", "detail": not_allowed}, status=403)
        await audit_request(request, "auth.stow", SUCCESS, professional=professional.id)
        return None

    return check
