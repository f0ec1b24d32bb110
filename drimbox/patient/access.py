"""Which exam a patient may open: one whose live KOS (published by this box, not withdrawn nor replaced) names
their INS, that the DMP does not hide from them (INVISIBLE_PATIENT, asked at opening) and that the box's own
configuration does not withhold ([patient] withhold_modalities).

Decision order, each refusal a reason code (the page words it, the audit trail records it): not_published,
withdrawn, kos_unreadable, not_yours, withheld, invisible_patient, dmp_unreachable. The DMP is asked, not only
what the box sent: a professional may make a document visible (or hide it) after its publication. When the DMP
cannot be asked, the exam is not opened (fail closed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from drimbox.config import Settings
from drimbox.dicomweb.scope import Scope
from drimbox.hl7.ack import HL7Error
from drimbox.hl7.report import ReportMessage, parse_report_message
from drimbox.manifest import KosError, parse_kos
from drimbox.manifest.modality import SOP_CLASS_MODALITY
from drimbox.patient.identity import PatientIdentity
from drimbox.source.dmp_gateway import XdsDmpGateway
from drimbox.source.kos_store import read_kos
from drimbox.source.outbox import Outbox, Publication
from drimbox.xds.client import XdsRejected, XdsTransientError

log = logging.getLogger(__name__)
# A decision is kept this long per session and study: the viewer asks for many images, the DMP once.
DECISION_TTL = 60.0


class PatientRefused(Exception):
    def __init__(self, status: int, reason: str, kos: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.kos = status, reason, kos


@dataclass(frozen=True)
class OpenExam:
    """An exam the patient may open: its live publication, its KOS scope, what the KOS says of it."""

    publication: Publication
    kos_uid: str
    scope: Scope
    modalities: tuple[str, ...]
    study_date: str
    message: ReportMessage | None


class PatientAccess:
    """Checks a patient's request for a study; `dmp` is asked for the KOS's current visibility."""

    def __init__(self, settings: Settings, outbox: Outbox, dmp: XdsDmpGateway | None) -> None:
        self.settings, self.outbox, self.dmp = settings, outbox, dmp
        self.withheld = {m.strip().upper() for m in settings.patient.withhold_modalities if m.strip()}
        self._decisions: dict[tuple[str, str], tuple[float, OpenExam | PatientRefused]] = {}

    async def open(self, session: str, patient: PatientIdentity, study: str, *, fresh: bool = False) -> OpenExam:
        """The exam, or PatientRefused; a decision is reused for DECISION_TTL s unless `fresh` (each page load)."""
        key, now = (session, study), time.monotonic()
        cached = self._decisions.get(key)
        if cached is not None and not fresh and now - cached[0] < DECISION_TTL:
            if isinstance(cached[1], PatientRefused):
                raise cached[1]
            return cached[1]
        try:
            decision: OpenExam | PatientRefused = await self._decide(patient, study)
        except PatientRefused as refused:
            decision = refused
        if len(self._decisions) > 4096:
            self._decisions.clear()
        if not (isinstance(decision, PatientRefused) and decision.reason == "dmp_unreachable"):
            self._decisions[key] = (now, decision)
        if isinstance(decision, PatientRefused):
            raise decision
        return decision

    async def _decide(self, patient: PatientIdentity, study: str) -> OpenExam:
        live = await self.outbox.current_published(study)
        if live is None or not live.kos_uid:
            states = {p.state for p in await self.outbox.search(study_uid=study)}
            raise PatientRefused(404 if not states else 410, "withdrawn" if states & {"withdrawn", "replaced"}
                                 else "not_published")  # fmt: skip
        kos_uid = live.kos_uid
        try:
            data = await read_kos(self.settings.var_path / "kos", self.outbox, kos_uid)
            kos = await asyncio.to_thread(parse_kos, data)
        except (OSError, KosError):
            raise PatientRefused(500, "kos_unreadable", kos_uid) from None
        # The INS and its OID both: the same digits under another authority are another person.
        if kos.patient_id != patient.ins or (kos.patient_id_oid and kos.patient_id_oid != patient.oid):
            raise PatientRefused(404, "not_yours", kos_uid)
        series: dict[str, frozenset[str]] = {}
        modalities: set[str] = set()
        for s in kos.series:
            series[s.series_uid] = series.get(s.series_uid, frozenset()) | {i.sop_instance_uid for i in s.instances}
            modalities |= {SOP_CLASS_MODALITY.get(i.sop_class_uid, "") for i in s.instances} - {""}
        message = await self._message(live)
        # The KOS names SOP classes only (Secondary Capture says no modality): the report's modalities count too.
        if message is not None:
            modalities |= {m for m in message.report.modalities if m}
        if modalities & self.withheld:
            raise PatientRefused(403, "withheld", kos_uid)
        if self.settings.patient.check_dmp_visibility:
            await self._check_dmp(kos_uid, message)
        return OpenExam(live, kos_uid, Scope(study, series), tuple(sorted(modalities)), kos.study_date, message)

    async def _message(self, live: Publication) -> ReportMessage | None:
        raw = await self.outbox.raw_message(live.id)
        if raw is None:
            return None
        try:
            return (await asyncio.to_thread(parse_report_message, raw)).for_study(live.study_uid)
        except HL7Error:
            return None

    async def _check_dmp(self, kos_uid: str, message: ReportMessage | None) -> None:
        """INVISIBLE_PATIENT as the DMP holds it now (ITI-18 GetDocuments on the KOS, as the structure)."""
        if self.dmp is None or message is None:
            raise PatientRefused(503, "dmp_unreachable", kos_uid)
        try:
            entries = await self.dmp.client.get_documents(unique_ids=[kos_uid], patient_id=self.dmp._patient_id(message),
                                                          identity=self.dmp.identity(message))  # fmt: skip
        except (XdsTransientError, XdsRejected, OSError) as exc:
            log.warning("patient access: the DMP could not be asked about a KOS (%s)", type(exc).__name__)
            raise PatientRefused(503, "dmp_unreachable", kos_uid) from None
        except Exception as exc:  # a permanent error of the gateway (no INS in the report…): not opened
            log.warning("patient access: the DMP query failed (%s)", type(exc).__name__)
            raise PatientRefused(503, "dmp_unreachable", kos_uid) from None
        entry = next((e for e in entries if e.unique_id == kos_uid), None)
        if entry is None or not entry.approved:
            raise PatientRefused(410, "withdrawn", kos_uid)
        if any(c.code == "INVISIBLE_PATIENT" for c in entry.confidentiality_codes):
            raise PatientRefused(403, "invisible_patient", kos_uid)
