"""Recording authentication events in the box's audit trail (app[AUDIT]), when the app has one."""

from __future__ import annotations

from aiohttp import web

from drimbox.audit.request import audit_request


async def record(
    request: web.Request, action: str, outcome: str, *, professional: str | None = None, study: str | None = None,
    **detail: str,
) -> None:
    """One event for this request (its client address included); nothing when no audit sink is set up."""
    await audit_request(request, action, outcome, professional=professional, study=study, **detail)
