"""Recording authentication events in the box's audit trail (app[AUDIT]), when the app has one."""

from __future__ import annotations

from aiohttp import web

from drimbox.audit import AUDIT, AuditEvent, client_address


async def record(
    request: web.Request, action: str, outcome: str, *, professional: str | None = None, study: str | None = None,
    **detail: str,
) -> None:
    """One event for this request (its client address included); nothing when no audit sink is set up."""
    sink = request.config_dict.get(AUDIT)
    if sink is None:
        return
    event = AuditEvent(action, outcome, professional=professional, study=study, source=client_address(request),
                       detail={k: v for k, v in detail.items() if v})  # fmt: skip
    await sink.record(event)
