"""The RIS of the demo: publishes each exam's CDA report to the DMP itself (ITI-41, signed), as a real RIS does."""

from __future__ import annotations

from drimbox.config import Settings
from drimbox.dimse.study_instances import StudyInstances
from drimbox.hl7.report import parse_report_message
from drimbox.source.dmp_gateway import XdsDmpGateway
from drimbox.xds.report_entry import report_entry


async def publish_report(settings: Settings, oru: bytes) -> str:
    """ITI-41 of the CDA an ORU^R01 carries, with the centre's structure key; returns the report's uniqueId.

    The demo's RIS belongs to the source box's centre: same structure, same key, same author as the KOS.
    """
    message = parse_report_message(oru)
    report = message.report
    gateway = XdsDmpGateway(settings)
    try:
        # The entry of the exam (patient, author, setting, accession and study references), as the CDA's.
        base = gateway.document_entry(message, StudyInstances(study_uid=report.study_uid), report.document_id)
        entry = report_entry(base, message.cda, report)
        await gateway.client.provide_and_register(
            entry,
            gateway.submission_set(message),
            message.cda,
            identity=gateway.identity(message),  # the KOS's VIHF
        )
    finally:
        await gateway.close()
    return entry.unique_id
