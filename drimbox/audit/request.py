"""One line at each audited HTTP route: record who did what to whose data from where, before the answer goes out."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Hashable

from aiohttp import web

from drimbox.audit.events import AUDIT, FAILURE, REFUSED, SUCCESS, AuditEvent, client_address
from drimbox.tls import PEER

log = logging.getLogger(__name__)


async def audit_request(
    request: web.Request,
    action: str,
    outcome: str,
    *,
    professional: str | None = None,
    patient: str | None = None,
    patient_name: str | None = None,
    study: str | None = None,
    kos: str | None = None,
    **detail: str | int | None,
) -> None:
    """Record an event for this request in app[AUDIT] (the source address is the TCP peer; with mutual TLS the
    verified client certificate's subject goes in detail["peer_cert"]: which box called, not only from where).

    No sink on the app (a bare test app) → nothing to do. A sink that cannot write stops the access: 503 JSON,
    since an access that cannot be traced must not be served.
    """
    sink = request.app.get(AUDIT)
    if sink is None:
        return
    peer = request.get(PEER)
    if peer:
        detail = {**detail, "peer_cert": peer}
    event = AuditEvent(
        action=action, outcome=outcome, professional=professional, patient=patient, patient_name=patient_name,
        study=study, kos=kos, source=client_address(request),
        detail={k: str(v) for k, v in detail.items() if v is not None},
    )  # fmt: skip
    try:
        await sink.record(event)
    except Exception as exc:
        log.error("audit trail: %s; %s refused", exc, action)
        body = {"error": "the audit trail cannot be written: access refused", "reason": "audit_unavailable"}
        raise web.HTTPServiceUnavailable(text=json.dumps(body), content_type="application/json") from None


def outcome_for(status: int) -> str:
    """An HTTP status as an audit outcome: 2xx/3xx served, 4xx refused, 5xx could not be done."""
    return SUCCESS if status < 400 else REFUSED if status < 500 else FAILURE


def patient_name(family: str | None, given: str | None) -> str | None:
    """DICOM PN order ("FAMILY^Given"), or None when neither is known."""
    if not family and not given:
        return None
    return f"{family or ''}^{given or ''}"


class RecentAccesses:
    """Which accesses were recorded lately: a viewer asks for each frame of a series, the trail wants one record.

    `first(key)` is true once per `ttl` seconds for a key (e.g. professional, KOS, series): the admitted requests
    of one series by one person within that time are one access. Refusals are always recorded.
    """

    def __init__(self, ttl: float = 300.0, size: int = 4096) -> None:
        self.ttl, self.size = ttl, size
        self._seen: OrderedDict[Hashable, float] = OrderedDict()

    def first(self, key: Hashable) -> bool:
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen < self.ttl:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return True
