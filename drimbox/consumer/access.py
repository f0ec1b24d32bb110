"""The consumer's DMP access rules, decided before any DMP call and audited: habilitation, opposition, emergency.

In order, for every exam list and every exam opened (so for every image fetched, see images.check_exam):
1. the habilitation matrix (`[access] imaging_professions`, default drimbox/xds/habilitation.py): a
   profession that may not read imaging, or someone without an RPPS profession, is refused;
2. the patient's opposition: a launch whose InformationEtConsentement is false is recorded (per patient, in
   var_dir/consumer/access.sqlite) and honoured until a later launch says otherwise: no DMP transaction at all
   (not even TD0.3, which would name the patient to the DMP), no image; emergency access does not lift it.
   Only a launch by a professional the matrix lets consult records or lifts an opposition (a secretary's
   software must not block every doctor of the box); another's launch changes nothing. Each change, and each
   launch that would have changed it but was not allowed to, is one audit event `consumer.opposition`;
3. emergency access ("bris de glace"): asked with a mandatory reason, kept for `[access] emergency_ttl` for that
   professional and patient; the VIHF then carries purposeofuse `bris_de_glace` (TRE_R248) and the reason in
   Mode_Acces_Raison, no TD0.3 is declared, and the DMP refuses it when the patient has blocked it;
4. the DMP itself (TD0.2: INTERDITE = the patient barred this professional, emergency or not; ITI-18/43 faults).
Each decision is one audit event `consumer.access` (success or refused, with the rule and the purpose of use).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from drimbox.audit.events import FAILURE, REFUSED, SUCCESS, AuditEvent, AuditSink
from drimbox.config import Settings
from drimbox.consumer import fields
from drimbox.consumer.access_store import AccessStore, Emergency
from drimbox.consumer.auth import ProfessionalLike
from drimbox.consumer.lookup import AccessRefused, LookupFailed, PatientRef, professional_identity
from drimbox.xds.habilitation import DEFAULT_IMAGING_PROFESSIONS, ImagingMatrix
from drimbox.xds.vihf import PURPOSE_EMERGENCY, PURPOSE_NORMAL, VihfIdentity

log = logging.getLogger(__name__)

# The `rule` of a refusal, in the JSON answers and the audit.
HABILITATION = "habilitation"
OPPOSITION = "opposition"
BLOCKED = "blocked"
NO_AUTHORIZATION = "no_authorization"
EMERGENCY_REASON_MAX = 256


@dataclass(frozen=True)
class AccessIntent:
    """What one request asks: the purpose of use, and what its launch said of the patient's consent."""

    purpose: str = PURPOSE_NORMAL
    reason: str = ""  # the professional's reason, for an emergency access
    informed: bool | None = None  # the launch's InformationEtConsentement; None without a launch
    launch_id: str = ""
    source: str | None = None  # client address, for the audit


def emergency_request(values: Mapping[str, str], settings: Settings) -> tuple[str, str]:
    """(purpose, reason) of an emergency request (form or query); InvalidFields when the reason is missing."""
    purpose = values.get("purpose", PURPOSE_EMERGENCY).strip() or PURPOSE_EMERGENCY
    problems: list[tuple[str, str]] = []
    if purpose not in (PURPOSE_NORMAL, PURPOSE_EMERGENCY):
        problems.append(("purpose", f"must be {PURPOSE_NORMAL} or {PURPOSE_EMERGENCY}"))
    reason = ""
    if purpose == PURPOSE_EMERGENCY:
        try:
            reason = fields.text(values.get("reason", ""), EMERGENCY_REASON_MAX)
        except fields.FieldProblem as exc:
            problems.append(("reason", str(exc)))
        if not problems and len(reason) < settings.access.emergency_reason_min:
            problems.append(("reason", f"is required for an emergency access (bris de glace), at least "
                                       f"{settings.access.emergency_reason_min} characters"))  # fmt: skip
    if purpose == PURPOSE_EMERGENCY and not settings.access.emergency:
        problems.append(("purpose", "emergency access is not offered by this box ([access] emergency = false)"))
    if problems:
        raise fields.InvalidFields(problems)
    return purpose, reason


class AccessRules:
    """Decides each consultation before the DMP is asked, and records the outcome in the audit trail."""

    def __init__(self, settings: Settings, store: AccessStore, audit: AuditSink) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit
        self.matrix = ImagingMatrix.of(settings.access.imaging_professions or DEFAULT_IMAGING_PROFESSIONS)
        # Called when a patient's opposition is recorded: whoever keeps grants (the image backend) drops them.
        self.on_opposition: list[Callable[[], None]] = []

    async def close(self) -> None:
        await self.store.close()

    @asynccontextmanager
    async def consultation(
        self, pro: ProfessionalLike, patient: PatientRef, intent: AccessIntent, *, what: str, kos: str | None = None
    ) -> AsyncIterator[VihfIdentity]:
        """The VIHF identity to consult with; raises AccessRefused before any DMP call when a rule refuses.

        Whatever happens inside (the DMP's own answers) is audited as this decision's outcome.
        """
        purpose = PURPOSE_NORMAL
        detail = {"what": what, "purpose": purpose}
        try:
            identity = await self._decide(pro, patient, intent)
            purpose = identity.purpose_of_use
            detail.update(purpose=purpose, reason=identity.access_reason)
            yield identity
        except AccessRefused as exc:
            if purpose == PURPOSE_EMERGENCY:  # refused by the DMP (blocked): the emergency access ends here
                await self.store.end_emergency(pro.id, patient.key)
            await self._record(REFUSED, pro, patient, kos, intent, {**detail, "rule": exc.rule, "reason": exc.message})
            raise
        except LookupFailed as exc:
            await self._record(FAILURE, pro, patient, kos, intent, {**detail, "reason": exc.message})
            raise
        await self._record(SUCCESS, pro, patient, kos, intent, detail)

    async def grant_emergency(self, pro: ProfessionalLike, patient: PatientRef, reason: str) -> None:
        """Keep an emergency access for this professional and patient (the next consultations use it)."""
        await self.store.grant_emergency(pro.id, patient.key, reason, self.settings.access.emergency_ttl)

    async def emergency_in_force(self, pro: ProfessionalLike, patient: PatientRef) -> Emergency | None:
        return await self.store.emergency(pro.id, patient.key)

    async def end_emergency(self, pro: ProfessionalLike, patient: PatientRef) -> None:
        await self.store.end_emergency(pro.id, patient.key)

    async def _decide(self, pro: ProfessionalLike, patient: PatientRef, intent: AccessIntent) -> VihfIdentity:
        refusal = self.matrix.refusal(pro.profession_code, [pro.specialty_code] if pro.specialty_code else [])
        if intent.informed is not None and intent.launch_id:
            await self._apply_consent(pro, patient, intent, may_record=refusal is None)
        if refusal:
            raise AccessRefused(refusal, HABILITATION)
        if await self.store.opposed(patient.key):
            raise AccessRefused(
                "the patient opposes the consultation of their DMP (InformationEtConsentement is false in the "
                "launch from your software): nothing was asked of the DMP and no image is fetched",
                OPPOSITION,
            )
        identity = professional_identity(self.settings, pro)
        if intent.purpose == PURPOSE_EMERGENCY:
            await self.grant_emergency(pro, patient, intent.reason)
            reason = intent.reason
        else:
            emergency = await self.store.emergency(pro.id, patient.key)
            if emergency is None:
                return identity
            reason = emergency.reason
        log.info("emergency access (bris de glace) to the DMP of %s by professional %s", patient.masked, pro.id)
        return dataclasses.replace(identity, purpose_of_use=PURPOSE_EMERGENCY, access_reason=reason)

    async def _apply_consent(
        self, pro: ProfessionalLike, patient: PatientRef, intent: AccessIntent, *, may_record: bool
    ) -> None:
        """The opposition (or its end) a launch carries, recorded once per launch when `may_record`, and audited."""
        opposed = not intent.informed
        previous = await self.store.apply_launch(intent.launch_id, patient.key, opposed, pro.id, record=may_record)
        if previous is None or previous == opposed:
            return  # this launch was applied already, or it changes nothing
        detail = {"opposed": "true" if opposed else "false", "launch": intent.launch_id}
        if not may_record:
            log.info("opposition change by a launch of a professional who may not consult ignored (%s)", patient.masked)
            detail.update(rule=HABILITATION, reason="only a professional who may consult the DMP records or lifts "
                                                    "an opposition: this launch changed nothing")  # fmt: skip
            await self._opposition_event(REFUSED, pro, patient, intent, detail)
            return
        await self._opposition_event(SUCCESS, pro, patient, intent, detail)
        if opposed:
            for forget in self.on_opposition:
                forget()

    async def _opposition_event(
        self, outcome: str, pro: ProfessionalLike, patient: PatientRef, intent: AccessIntent, detail: dict[str, str]
    ) -> None:
        await self.audit.record(AuditEvent(action="consumer.opposition", outcome=outcome, professional=pro.id,
                                           patient=patient.ins, source=intent.source, detail=detail))  # fmt: skip

    async def _record(
        self,
        outcome: str,
        pro: ProfessionalLike,
        patient: PatientRef,
        kos: str | None,
        intent: AccessIntent,
        detail: dict[str, str],
    ) -> None:
        event = AuditEvent(action="consumer.access", outcome=outcome, professional=pro.id, patient=patient.ins,
                           kos=kos, source=intent.source, detail={k: v for k, v in detail.items() if v})  # fmt: skip
        await self.audit.record(event)
