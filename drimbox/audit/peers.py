"""Audit records of DICOM peers (refused associations, C-STORE associations, IOCM notes), written from SCP threads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from drimbox.audit.events import AuditEvent, AuditSink

log = logging.getLogger(__name__)


class ThreadAudit:
    """Records events from threads that are not the event loop's (pynetdicom's, the SCP's), each durable on return.

    record() blocks its thread until the sink has committed the event, so an SCP can audit before it answers.
    """

    def __init__(self, sink: AuditSink, loop: asyncio.AbstractEventLoop, timeout: float = 10.0) -> None:
        self.sink = sink
        self.loop = loop
        self.timeout = timeout

    def record(self, event: AuditEvent) -> bool:
        """True once the event is durable; False (and an error log) when it could not be written in time."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError("ThreadAudit.record() waits on the event loop: call it from another thread")
        if self.loop.is_closed():
            log.error("audit trail: the event loop is closed; %s (%s) not recorded", event.action, event.outcome)
            return False
        future = asyncio.run_coroutine_threadsafe(self.sink.record(event), self.loop)
        try:
            future.result(self.timeout)
        except Exception as exc:
            future.cancel()
            log.error("audit trail: %s; %s (%s) not recorded", type(exc).__name__, event.action, event.outcome)
            return False
        return True


def peer_event(
    action: str,
    outcome: str,
    calling_ae: str,
    address: str,
    *,
    study: str | None = None,
    patient: str | None = None,
    detail: Mapping[str, str] | None = None,
) -> AuditEvent:
    """An event whose actor is a DICOM peer: no professional, the peer's AE title and address as its source."""
    return AuditEvent(
        action, outcome, professional=None, patient=patient or None, study=study, source=f"{calling_ae}@{address}",
        detail={"calling_ae": calling_ae, "address": address, **(detail or {})},
    )  # fmt: skip
