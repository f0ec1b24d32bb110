"""One publication job, top-down: report → C-FIND in the PACS → checks → KOS → ITI-41 (or withdrawal) in the DMP."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from drimbox.audit.events import SUCCESS, AuditEvent, AuditSink
from drimbox.config import Settings
from drimbox.dimse.study_instances import DimseFailure, DimseUnavailable, StudyInstances, afind_study_instances
from drimbox.hl7.ack import HL7Error
from drimbox.hl7.cda import ReportIdentifiers
from drimbox.hl7.report import ReportMessage, parse_report_message
from drimbox.manifest import KosError, parse_kos
from drimbox.manifest.kos import KosRequest, build_kos, kos_to_bytes
from drimbox.source.kos_store import read_kos
from drimbox.source.outbox import Outbox, Publication
from drimbox.state import faults
from drimbox.state.durable import write_atomic

log = logging.getLogger(__name__)


class TransientError(Exception):
    """The PACS or the DMP could not be reached or was busy: retry later with back-off."""


class Waiting(Exception):
    """The images are not in the PACS yet: retry at the waiting interval, within the waiting window."""


class PermanentError(Exception):
    """Retrying will not help; `state` is `failed` (the DMP refused) or `rejected` (the data disagree)."""

    def __init__(self, state: str, message: str) -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class Outcome:
    state: str


class DmpGateway(Protocol):
    """What the publisher needs from the DMP (drimbox.source.dmp_gateway implements it over XDS.b)."""

    async def submit_kos(
        self, message: ReportMessage, study: StudyInstances, kos: bytes, kos_uid: str, replaces: str | None
    ) -> str: ...

    async def find_entry_uuid(self, message: ReportMessage, kos_uid: str) -> str | None: ...

    async def withdraw(self, message: ReportMessage, entry_uuid: str) -> None: ...


class Publisher:
    """Runs one job of the outbox. Raises Waiting, TransientError or PermanentError; else returns the outcome."""

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        dmp: DmpGateway,
        on_study_changed: Callable[[str], Awaitable[None]] | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.dmp = dmp
        # Called when a published KOS is replaced or withdrawn: cached images of the study are stale.
        self.on_study_changed = on_study_changed
        self.kos_dir = settings.var_path / "kos"
        self.audit = audit

    async def run(self, job: Publication) -> Outcome:
        if job.action == "cancel":
            return await self.cancel(job)
        message = await self._message(job)
        if job.action == "withdraw":
            return await self.withdraw(job, message)
        if job.action == "revise":
            return await self.revise(job, message)
        return await self.publish(job, message)

    async def publish(self, job: Publication, message: ReportMessage, study: StudyInstances | None = None) -> Outcome:
        report = message.report
        t0 = time.perf_counter()
        if study is None:
            study = await self._find_kept(report.study_uid)
            if not study.instances:
                raise PermanentError("rejected", "every instance of the study was rejected by the PACS (IOCM)")
        t1 = time.perf_counter()
        faults.checkpoint("publish.found")
        self._check_matches(report, study)
        kos_uid, kos = await self._kos(job, message, study)
        t2 = time.perf_counter()
        previous = await self.outbox.current_published(report.study_uid)
        replaces = previous.entry_uuid if previous is not None and previous.id != job.id else None
        faults.checkpoint("publish.before_iti41")
        entry_uuid = await self.dmp.submit_kos(message, study, kos, kos_uid, replaces)
        faults.checkpoint("publish.replaced" if replaces else "publish.registered")
        await self._audit(
            "dmp.replace" if replaces else "dmp.register", message, kos_uid, job=job, entry_uuid=entry_uuid
        )
        log.info(
            "publication %d: C-FIND %d instances %.0f ms, KOS %.0f ms, ITI-41%s %.0f ms",
            job.id,
            len(study.instances),
            (t1 - t0) * 1000,
            (t2 - t1) * 1000,
            " (RPLC)" if replaces else "",
            (time.perf_counter() - t2) * 1000,
        )
        await self.outbox.update(job.id, entry_uuid=entry_uuid)
        if previous is not None and previous.id != job.id:
            await self.outbox.update(previous.id, state="replaced")
            await self._study_changed(report.study_uid)
        return Outcome("published")

    async def revise(self, job: Publication, message: ReportMessage) -> Outcome:
        """An IOCM rejection note arrived: replace the live KOS by one without the rejected instances, or
        withdraw it when none is left.

        The revision only ever removes: it names the live KOS's instances that the PACS still holds and no note
        rejected. An instance that reached the PACS since (pushed by anyone) waits for a new report to be published.
        """
        live = await self.outbox.current_published(job.study_uid)
        if live is None or live.kos_uid is None:
            return Outcome("unchanged")  # withdrawn or replaced by a newer report meanwhile: that one is current
        referenced = await self._referenced(live.kos_uid)
        if not referenced:
            raise PermanentError("failed", f"the live KOS {live.kos_uid} is unreadable here: cannot revise it safely")
        study = await self._find_kept(job.study_uid)
        study = dataclasses.replace(study, instances=[i for i in study.instances if i.sop_instance_uid in referenced])
        if not study.instances:
            return await self.withdraw(job, message)
        if {i.sop_instance_uid for i in study.instances} == referenced:
            return Outcome("unchanged")
        return await self.publish(job, message, study)

    async def _referenced(self, kos_uid: str) -> set[str]:
        """The SOP Instance UIDs a KOS this box wrote names (empty if its file is gone or unreadable)."""
        try:
            data = await read_kos(self.kos_dir, self.outbox, kos_uid)
        except OSError:
            return set()

        def read() -> set[str]:
            try:
                return {i.sop_instance_uid for s in parse_kos(data).series for i in s.instances}
            except KosError:
                return set()

        return await asyncio.to_thread(read)

    async def _find_kept(self, study_uid: str) -> StudyInstances:
        """The study as the PACS lists it, less the instances IOCM rejection notes withdrew."""
        rejected = await self.outbox.rejected_instances(study_uid)
        try:
            study = await self._find(study_uid)
        except Waiting:
            if rejected:
                # The PACS applied the rejection itself (deleted them): nothing of the study is left to publish.
                return StudyInstances(study_uid=study_uid)
            raise
        if rejected:
            study = dataclasses.replace(
                study, instances=[i for i in study.instances if i.sop_instance_uid not in rejected]
            )
        return study

    async def withdraw(self, job: Publication, message: ReportMessage) -> Outcome:
        previous = await self.outbox.current_published(message.report.study_uid)
        if previous is None or previous.entry_uuid is None:
            raise PermanentError("rejected", "no published KOS for this study: nothing to withdraw")
        await self.dmp.withdraw(message, previous.entry_uuid)
        faults.checkpoint("withdraw.done")
        await self._audit("dmp.withdraw", message, previous.kos_uid, job=job, entry_uuid=previous.entry_uuid)
        await self.outbox.update(previous.id, state="withdrawn")
        await self._study_changed(message.report.study_uid)
        return Outcome("withdrawn")

    async def cancel(self, job: Publication) -> Outcome:
        """The RIS cancelled the order (OMI^O23): withdraw the study's live KOS, if one is still live by now.

        The withdrawal is made in the name of the report that published the KOS (its author, its patient): the
        order cancel carries no professional of its own.
        """
        live = await self.outbox.current_published(job.study_uid)
        if live is None or live.entry_uuid is None:
            return Outcome("cancelled")
        message = await self._message(live)
        await self.dmp.withdraw(message, live.entry_uuid)
        faults.checkpoint("withdraw.done")
        await self._audit(
            "dmp.withdraw", message, live.kos_uid, job=job, entry_uuid=live.entry_uuid, cause="order-cancel"
        )
        await self.outbox.update(live.id, state="withdrawn")
        await self._study_changed(job.study_uid)
        return Outcome("withdrawn")

    async def _audit(
        self, action: str, message: ReportMessage, kos_uid: str | None, job: Publication, **detail: str
    ) -> None:
        """The DMP now holds (or no longer holds) this patient's manifest: who, on whose behalf (the report's author,
        or for a revision the DICOM peer whose IOCM note caused it: the author never asked for it)."""
        if self.audit is None:
            return
        r = message.report
        name = f"{r.patient_family or ''}^{r.patient_given or ''}" if r.patient_family or r.patient_given else None
        professional = r.author.id if r.author else None
        source = self.settings.dmp.url
        if job.action == "revise":
            note = await self.outbox.rejection_of(job.id)
            professional = None
            if note is not None:
                source = note.peer or source
                detail = {**detail, "cause": "iocm", "iocm_note": note.note_uid, "iocm_peer": note.peer,
                          "rejected_instances": str(len(note.sop_uids))}  # fmt: skip
        event = AuditEvent(action, SUCCESS, professional=professional, patient=r.ins or r.ipp,
                           patient_name=name, study=r.study_uid, kos=kos_uid, source=source,
                           detail={"accession": r.accession, **detail})  # fmt: skip
        try:
            await self.audit.record(event)
        except Exception as exc:
            # The DMP already holds it: failing here would only resubmit. The error log is the trace of the gap.
            log.error("audit trail: %s; %s of %s not recorded", exc, action, kos_uid)

    async def _study_changed(self, study_uid: str) -> None:
        if self.on_study_changed is not None:
            await self.on_study_changed(study_uid)

    async def _message(self, job: Publication) -> ReportMessage:
        raw = await self.outbox.raw_message(job.id)
        if raw is None:
            raise PermanentError("failed", "the HL7 message of this publication is missing from the outbox")
        try:
            message = await asyncio.get_running_loop().run_in_executor(None, parse_report_message, raw)
        except HL7Error as exc:  # accepted once, so only a parser change can bring us here
            raise PermanentError("failed", f"stored message no longer parses: {exc.text}") from None
        # A report naming several studies has one job per study: this one publishes (or withdraws) its own.
        return message.for_study(job.study_uid)

    async def _find(self, study_uid: str) -> StudyInstances:
        try:
            study = await afind_study_instances(self.settings.pacs, self.settings.dicom.ae_title, study_uid)
        except DimseUnavailable as exc:
            raise TransientError(f"PACS unavailable: {exc}") from None
        except DimseFailure as exc:
            raise TransientError(f"PACS C-FIND failed: {exc}") from None
        if study is None or not study.instances:
            raise Waiting("no instance of the study in the PACS yet")
        return study

    def _check_matches(self, report: ReportIdentifiers, study: StudyInstances) -> None:
        if (study.accession_number or "") != report.accession:
            raise PermanentError(
                "rejected",
                f"the PACS has accession number {study.accession_number or '(empty)'!r} for this study,"
                f" the report says {report.accession!r}",
            )
        known_ids = {i for i in (report.ins, report.ipp) if i}
        if study.patient_id not in known_ids:
            # Not echoed: patient identifiers stay out of states and logs.
            raise PermanentError(
                "rejected", "the PACS's Patient ID for this study is neither the report's INS nor its IPP"
            )
        # Same identifier, other traits (ANS exam M): these images may be another patient's. Not echoed either.
        if (
            study.patient_birth_date
            and report.patient_birth_date
            and study.patient_birth_date != report.patient_birth_date
        ):
            raise PermanentError("rejected", "the PACS's Patient Birth Date for this study differs from the report's")
        sex = study.patient_sex.upper()
        if (
            sex in ("M", "F")
            and (report.patient_sex or "").upper() in ("M", "F")
            and sex != (report.patient_sex or "").upper()
        ):
            raise PermanentError("rejected", "the PACS's Patient Sex for this study differs from the report's")

    async def _kos(self, job: Publication, message: ReportMessage, study: StudyInstances) -> tuple[str, bytes]:
        """Build the KOS once and keep it: a replay after a crash, on this instance or another sharing the outbox,
        resubmits the very same manifest (its bytes are in the outbox with its UID)."""
        if job.kos_uid:
            try:
                return job.kos_uid, await read_kos(self.kos_dir, self.outbox, job.kos_uid)
            except OSError:
                pass  # a KOS made before the outbox kept the bytes, its file lost: build it anew
        kos_uid, kos = await asyncio.to_thread(_build_kos_bytes, study, self._kos_request(message))
        await asyncio.to_thread(_write_durably, self.kos_dir / f"{kos_uid}.dcm", kos)
        faults.checkpoint("publish.kos_written")
        await self.outbox.save_kos(job.id, kos_uid, kos)
        return kos_uid, kos

    def _kos_request(self, message: ReportMessage) -> KosRequest:
        r = message.report
        s = self.settings
        return KosRequest(
            ins=r.ins or "",
            ins_oid=r.ins_oid or "1.2.250.1.213.1.4.10",
            ipp=r.ipp or "",
            ipp_oid=r.ipp_oid or "",
            accession=r.accession,
            accession_issuer=r.accession_issuer or "",
            placer_order=r.order_id or message.placer_order or "",
            placer_order_issuer=r.order_issuer or "",
            filler_order=message.filler_order or "",
            procedure_code=r.procedure_code or "",
            procedure_scheme=r.procedure_code_system or "",
            procedure_meaning=r.procedure_display or "",
            description=r.title or "",
            public_url=s.box.public_url,
            retrieve_ae_title=s.dicom.ae_title,
            retrieve_location_uid=s.box.repository_uid,
            uid_root=s.box.uid_root,
            institution_name=(r.organisation.name or "") if r.organisation else "",
        )


def _build_kos_bytes(study: StudyInstances, request: KosRequest) -> tuple[str, bytes]:
    """Off the event loop: a 1000-instance manifest takes pydicom a noticeable while."""
    ds = build_kos(study, request)
    return str(ds.SOPInstanceUID), kos_to_bytes(ds)


def _write_durably(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # `<uid>.tmp`: what a crash leaves behind, kos_orphans finds by that name and removes.
    write_atomic(path, data, tmp=path.with_suffix(".tmp"))
