"""Audit events and the sink interface every component records them through."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

# Outcomes, in the spirit of IHE ATNA EventOutcomeIndicator: success, refused (minor failure: the
# request was understood and denied), failure (serious failure: it could not be done).
SUCCESS = "success"
REFUSED = "refused"
FAILURE = "failure"
# Who acts, when not a professional: `detail["actor"]` says so, `professional` then holds that actor's id (a
# patient's INS for PATIENT_ACTOR; "operator" for the operator token's holder, see drimbox.auth.operator).
PATIENT_ACTOR = "patient"


@dataclass(frozen=True)
class AuditEvent:
    """One access to patient data. Identifiers are kept whole here: the trail is the one place they belong."""

    action: str  # dotted name, e.g. "dicomweb.retrieve", "consumer.exams", "report-link.open", "dmp.register"
    outcome: str  # SUCCESS | REFUSED | FAILURE
    # Who acts: a professional's national id (RPPS-based); a patient's INS with detail actor=patient; None: the box.
    professional: str | None = None
    patient: str | None = None  # INS (or local id when no INS)
    study: str | None = None  # Study Instance UID
    kos: str | None = None  # KOS SOP Instance UID / DMP document uniqueId
    source: str | None = None  # where the request came from (client address, peer box)
    detail: dict[str, str] = field(default_factory=dict)  # e.g. reason, purpose of use, HTTP status
    at: float = field(default_factory=time.time)
    patient_name: str | None = None  # "FAMILY^Given" when known (ATNA ParticipantObjectName); never in logs


class AuditSink(Protocol):
    """Where events go. record() returns once the event is durable (an access is audited before it is served)."""

    async def record(self, event: AuditEvent) -> None: ...


class MemoryAudit:
    """Keeps events in memory: for tests and for boxes started without an audit store."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def client_address(request: web.Request) -> str | None:
    """The peer address of an HTTP request (the TCP peer; forwarded headers are not trusted)."""
    return request.remote


AUDIT = web.AppKey("audit", AuditSink)
