"""The exam list top-down: access (TD0.2/TD0.3) → ITI-18 → ITI-43 per KOS (cached) → exams, and what is new."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from drimbox.config import Settings
from drimbox.consumer import exams as ex
from drimbox.consumer.access import AccessIntent, AccessRules
from drimbox.consumer.auth import ProfessionalLike
from drimbox.consumer.exams import Exam
from drimbox.consumer.kos_read import read_kos
from drimbox.consumer.lookup import (
    AccessRefused,
    DmpLookup,
    DmpUnavailable,
    ExamFilters,
    LookupFailed,
    PatientRef,
)
from drimbox.consumer.store import ConsumerStore
from drimbox.manifest import KosError, KosSummary
from drimbox.xds.client import DmpClient
from drimbox.xds.query import DocumentEntryInfo
from drimbox.xds.vihf import VihfIdentity

log = logging.getLogger(__name__)


class ExamNotFound(LookupFailed):
    status = 404


def _problem_code(exc: LookupFailed) -> str:
    if isinstance(exc, DmpUnavailable):
        return "dmp_unavailable"
    return "access_refused" if isinstance(exc, AccessRefused) else "dmp_refused"


@dataclass
class ExamList:
    patient: PatientRef
    filters: ExamFilters
    exams: list[Exam]
    previous_visit: float | None  # when the previous consultation of this patient by this professional began

    @property
    def new_count(self) -> int:
        return sum(1 for e in self.exams if e.is_new)


class ExamCatalog:
    """The patient's exams as the DMP lists them for the logged-in professional."""

    def __init__(self, settings: Settings, store: ConsumerStore, client: DmpClient, rules: AccessRules) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.rules = rules
        self.lookup = DmpLookup(client, access_check=settings.consumer.access_check)
        self._kos_slots = asyncio.Semaphore(settings.consumer.kos_concurrency)

    async def close(self) -> None:
        await self.client.close()
        await self.rules.close()

    async def list_exams(
        self, pro: ProfessionalLike, patient: PatientRef, filters: ExamFilters, intent: AccessIntent | None = None
    ) -> ExamList:
        """Every approved KOS of the patient within the filters; raises LookupFailed when there is no list."""
        intent = intent or AccessIntent()
        async with self.rules.consultation(pro, patient, intent, what="exams") as identity:
            await self.lookup.ensure_access(patient, identity, intent.informed)
            entries = await self.lookup.find_manifests(patient, filters, identity)
            exams = list(await asyncio.gather(*(self._exam(entry, patient, identity) for entry in entries)))
        # Free text is the box's own filter: the DMP's FindDocuments has no parameter for it.
        exams = [x for x in exams if filters.has_text(x.description)]
        visit = await self.store.record_visit(
            pro.id, patient.key, [e.kos_uid for e in exams], self.settings.consumer.visit_window
        )
        for exam in exams:
            exam.is_new = exam.kos_uid in visit.new
        unavailable = sum(1 for e in exams if e.status != ex.AVAILABLE)
        log.info("exam list of %s: %d exam(s), %d new, %d unavailable", patient.masked, len(exams),
                 len(visit.new), unavailable)  # fmt: skip
        return ExamList(patient, filters, ex.newest_first(exams), visit.previous)

    async def exam(self, pro: ProfessionalLike, kos_uid: str, intent: AccessIntent | None = None) -> Exam:
        """One exam with its series, if the DMP still lists its KOS as approved for this professional."""
        patient_key = await self.store.manifest_patient(kos_uid)
        if patient_key is None:
            raise ExamNotFound("this box has not listed this manifest: open the patient's exam list first")
        ins, _, oid = patient_key.partition("|")
        patient = PatientRef(ins, oid)
        async with self.rules.consultation(
            pro, patient, intent or AccessIntent(), what="exam", kos=kos_uid
        ) as identity:
            # The cached KOS says which patient; the DMP says, now, whether this professional may still see it.
            entry = await self.lookup.current_entry(kos_uid, patient, identity)
            if entry is None:
                raise ExamNotFound("the DMP no longer lists this manifest (withdrawn or replaced)")
            exam = await self._exam(entry, patient, identity)
        if exam.status != ex.AVAILABLE:
            raise LookupFailed(f"the manifest cannot be read: {exam.problem}")
        return exam

    async def _exam(self, entry: DocumentEntryInfo, patient: PatientRef, identity: VihfIdentity) -> Exam:
        """The exam of one DMP entry; a KOS that cannot be had makes it `unavailable`, not the list fail."""
        try:
            kos = await self._kos(entry, patient, identity)
        except LookupFailed as exc:
            return ex.unavailable(entry, exc.message, _problem_code(exc))
        except KosError as exc:
            return ex.unavailable(entry, f"the manifest is not a readable KOS: {exc}", "unreadable")
        problem = ex.kos_patient_problem(kos, patient.ins, patient.oid)
        if problem:
            return ex.unavailable(entry, problem)
        return ex.from_kos(kos, entry)

    async def _kos(self, entry: DocumentEntryInfo, patient: PatientRef, identity: VihfIdentity) -> KosSummary:
        cached = await self.store.manifest(entry.unique_id)
        if cached is not None and cached[0] == patient.key:
            return (await read_kos(cached[1]))[0]
        async with self._kos_slots:
            data = await self.lookup.retrieve_kos(entry, patient, identity)
        kos = (await read_kos(data))[0]
        if kos.sop_instance_uid != entry.unique_id:
            raise KosError("its SOP Instance UID is not the DMP entry's uniqueId")
        # Kept only once read and checked: a KOS never changes, the next list needs no ITI-43 for it.
        if ex.kos_patient_problem(kos, patient.ins, patient.oid) is None:
            await self.store.save_manifest(entry.unique_id, patient.key, data)
        return kos
