"""The operator page's login: the operator token in a form opens a server-side session with a cookie of its own."""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from drimbox.audit.events import REFUSED, SUCCESS, client_address
from drimbox.audit.request import audit_request
from drimbox.auth.operator import OPERATOR, operator_token_hash
from drimbox.auth.routes import AuthGate

# A session lives this long at most, whatever its use; [auth] operator_idle ends it sooner when left alone.
OPERATOR_TTL = 2 * 3600.0
# Failed logins from one address within this window: past MAX_FAILURES, every try is refused unchecked (429).
FAILURE_WINDOW = 15 * 60.0
MAX_FAILURES = 5
# Each failure answers this much later: guessing at the speed of the network is not an option.
FAILURE_DELAY = 1.0


def cookie_name(gate: AuthGate) -> str:
    """The operator session's cookie: never the professionals' one, so neither kind opens the other's session."""
    return gate.cookie + "_operator"


class OperatorLogin:
    """Operator sessions in the box's session store (auth.sqlite: shared by every process of the box)."""

    def __init__(self, gate: AuthGate) -> None:
        self.gate = gate
        self.cookie = cookie_name(gate)
        self.idle = gate.settings.auth.operator_idle
        # Secure whenever the box serves HTTPS, be it itself ([tls]) or behind a proxy (public_url).
        s = gate.settings
        self.secure = s.box.public_url.startswith("https://") or bool(s.tls.cert and s.tls.key)

    async def is_operator(self, request: web.Request) -> bool:
        """Whether the request carries a live operator session cookie (a professional's session never is one)."""
        session_id = request.cookies.get(self.cookie, "")
        return bool(session_id) and await self.gate.sessions.operator_session(session_id, idle=self.idle)

    async def log_in(self, request: web.Request, token: str, response: web.StreamResponse) -> str | None:
        """Check `token` against [auth] operator_token; on success set the session cookie on `response`.

        Returns None when logged in, else the refusal's reason code ("too_many_failures", "no_operator_token",
        "bad_token"), audited with the client's address.
        """
        store, remote = self.gate.sessions, client_address(request) or "?"
        if await store.operator_failures(remote, window=FAILURE_WINDOW) >= MAX_FAILURES:
            await audit_request(request, "auth.operator-login", REFUSED, reason="too_many_failures")
            return "too_many_failures"
        configured = self.gate.settings.auth.operator_token
        token = token.strip()
        if not configured or not token or len(token) > 512:
            ok = False
        else:
            ok = hmac.compare_digest(operator_token_hash(token), configured)
        if not ok:
            await store.operator_failures(remote, window=FAILURE_WINDOW, add=True)
            reason = "no_operator_token" if not configured else "bad_token"
            await audit_request(request, "auth.operator-login", REFUSED, reason=reason)
            await asyncio.sleep(FAILURE_DELAY)
            return reason
        session_id = await store.create_operator(ttl=OPERATOR_TTL)
        await audit_request(request, "auth.operator-login", SUCCESS, professional=OPERATOR)
        response.set_cookie(self.cookie, session_id, path="/operator", httponly=True, samesite="Strict",
                            secure=self.secure, max_age=int(OPERATOR_TTL))  # fmt: skip
        return None

    async def log_out(self, request: web.Request, response: web.StreamResponse) -> None:
        session_id = request.cookies.get(self.cookie, "")
        if session_id:
            await self.gate.sessions.end_operator(session_id)
            await audit_request(request, "auth.operator-logout", SUCCESS, professional=OPERATOR)
        response.del_cookie(self.cookie, path="/operator")
