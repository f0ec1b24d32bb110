"""The source's XDM export of a published exam: its live KOS, the DMP metadata it was published with, signed anew."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from drimbox.config import Settings
from drimbox.dimse.study_instances import InstanceRef, StudyInstances
from drimbox.hl7.ack import HL7Error
from drimbox.hl7.report import ReportMessage, parse_report_message
from drimbox.manifest import KosError, parse_kos
from drimbox.manifest.modality import SOP_CLASS_MODALITY
from drimbox.source.dmp_gateway import XdsDmpGateway
from drimbox.source.kos_store import read_kos
from drimbox.source.outbox import Outbox, Publication
from drimbox.xds.metadata import MetadataError, SubmissionSignature, oid_from_uuid
from drimbox.xds.signature import SignedDocument, sign_submission
from drimbox.xds.structure import structure_signer
from drimbox.xds.xdm import build_package


class ExportError(LookupError):
    """Nothing to export for this study (never published, withdrawn, or its files are gone)."""


async def _message(outbox: Outbox, live: Publication) -> ReportMessage:
    """The report behind the live KOS: its own message, or (after an IOCM revision) the study's latest report."""
    candidates = [live, *reversed(await outbox.search(study_uid=live.study_uid))]
    for pub in candidates:
        raw = await outbox.raw_message(pub.id)
        if raw is not None:
            try:
                return await asyncio.to_thread(parse_report_message, raw)
            except HL7Error:
                continue
    raise ExportError("the report of this study's publication is no longer in the outbox")


def _study(kos: bytes, study_uid: str) -> StudyInstances:
    """The study as the KOS tells it: what the metadata falls back on when the report leaves something out."""
    summary = parse_kos(kos)
    instances = [InstanceRef(s.series_uid, i.sop_class_uid, i.sop_instance_uid, SOP_CLASS_MODALITY.get(i.sop_class_uid, ""))
                 for s in summary.series for i in s.instances]  # fmt: skip
    return StudyInstances(study_uid, study_date=summary.study_date, study_time=summary.study_time, instances=instances)


async def export_study(settings: Settings, outbox: Outbox, study_uid: str, *, now: datetime | None = None) -> bytes:
    """The XDM ZIP of the study's live KOS (raises ExportError when there is none)."""
    live = await outbox.current_published(study_uid)
    if live is None or not live.kos_uid:
        raise ExportError("this study has no KOS published in the DMP now")
    try:
        kos = await read_kos(settings.var_path / "kos", outbox, live.kos_uid)
        study = await asyncio.to_thread(_study, kos, study_uid)
    except (OSError, KosError):
        raise ExportError("the published KOS of this study is missing or unreadable on this box") from None
    message = await _message(outbox, live)
    gateway = XdsDmpGateway(settings)
    try:
        entry = gateway.document_entry(message, study, live.kos_uid)
        submission = gateway.submission_set(message)
    finally:
        await gateway.close()
    signer = await asyncio.to_thread(structure_signer, settings)
    xml = await asyncio.to_thread(
        sign_submission, signer.key, signer.certificate, f"sig-{uuid.uuid4().hex}",
        submission.unique_id, [SignedDocument(live.kos_uid, kos)],
    )  # fmt: skip
    try:
        return await asyncio.to_thread(build_package, entry, submission, kos, SubmissionSignature(oid_from_uuid(), xml),
                                       now=now or datetime.now(UTC))  # fmt: skip
    except MetadataError as exc:
        raise ExportError(f"the exam's metadata cannot be written: {exc}") from None
