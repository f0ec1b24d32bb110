"""The operator page's access list: the latest accesses to exams in the audit trail (who, which study, when).

Patients (their INS, actor "patient"), professionals (national id) and the operator token's holder alike; the
operator may see who opened what, which is what the trail is for. Read from the trail's file, read-only.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass
from typing import Any

from drimbox.audit.events import PATIENT_ACTOR
from drimbox.audit.trail import audit_path, recent_records
from drimbox.config import Settings

# What counts as opening an exam: the patient's routes, the source's images and report, the report link.
ACCESS_ACTIONS = ("patient.", "dicomweb.retrieve", "source.report", "report-link.open")
LIMIT = 50


@dataclass(frozen=True)
class Access:
    at: str  # ISO UTC, as the trail writes it
    who: str
    kind: str  # patient | professional | operator | box
    action: str
    study: str
    outcome: str


def _kind(record: dict[str, Any]) -> str:
    detail = record.get("detail") or {}
    if detail.get("actor") == PATIENT_ACTOR:
        return "patient"
    if detail.get("via") == "operator" or record.get("professional") == "operator":
        return "operator"
    return "professional" if record.get("professional") else "box"


async def recent_accesses(settings: Settings, limit: int = LIMIT) -> list[Access] | None:
    """The newest accesses, newest first; None when the box keeps no trail on disk."""
    if not settings.audit.enabled:
        return None
    records = await asyncio.to_thread(
        recent_records, audit_path(settings), ACCESS_ACTIONS, limit, url=settings.state.url
    )
    return [Access(str(r["at"]), str(r.get("professional") or ""), _kind(r), str(r["action"]), str(r.get("study") or ""),
                   str(r["outcome"])) for r in records]  # fmt: skip


def shown_time(at: str, lang: str) -> str:
    try:
        moment = datetime.datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return at
    return moment.strftime("%d/%m/%Y %H:%M:%S UTC" if lang == "fr" else "%Y-%m-%d %H:%M:%S UTC")
