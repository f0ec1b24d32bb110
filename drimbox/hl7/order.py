"""OMI^O23 with ORC-1 = CA: the RIS cancels an imaging order (ANS exam W); and the dispatch of every inbound message."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from drimbox.dimse.uid import is_uid
from drimbox.hl7.ack import HL7Error, MessageHeader, peek_header
from drimbox.hl7.report import PatientIds, ReportMessage, _Segment, parse_report_message, read_segments
from drimbox.hl7.report import _patient_ids as patient_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CancelledStudy:
    """One IPC segment: the study of the cancelled order and its accession number."""

    study_uid: str  # IPC-3
    accession: str  # IPC-1
    requested_procedure: str  # IPC-2


@dataclass(frozen=True)
class OrderCancel:
    header: MessageHeader
    studies: tuple[CancelledStudy, ...]
    placer_order: str | None  # OBR-2.1
    patient: PatientIds = field(repr=False)


def parse_inbound(raw: bytes) -> ReportMessage | OrderCancel:
    """A report (ORU/MDM) or an order cancel (OMI^O23); HL7Error, and only HL7Error, when it is refused."""
    peeked = peek_header(raw.removeprefix(b"\xef\xbb\xbf"))
    if peeked is None or peeked.message_type != "OMI":
        return parse_report_message(raw)  # which also answers for what is neither
    try:
        header, by_name = read_segments(raw)
        return _cancel(header, by_name)
    except HL7Error:
        raise
    except Exception as exc:  # a defect must still become a NAK, never a dropped connection
        log.warning("unexpected %s while parsing an HL7 message", type(exc).__name__)
        raise HL7Error("AE", "207", "internal error while reading the message") from None


def _cancel(header: MessageHeader, by_name: dict[str, list[_Segment]]) -> OrderCancel:
    orc = by_name["ORC"][0]
    control = orc.get(1).upper()
    if not control:
        raise HL7Error("AE", "101", "ORC-1 (order control) is empty", orc.where(1))
    if control != "CA":
        # A new or changed order means nothing to a DRIMbox: it publishes what a report names.
        raise HL7Error("AE", "103", f"ORC-1 '{control[:8]}' of an OMI^O23 is not CA (cancel)", orc.where(1))
    studies = []
    for ipc in by_name["IPC"]:
        accession, procedure, study_uid = ipc.get(1), ipc.get(2), ipc.get(3)
        if not accession:
            raise HL7Error("AE", "101", "IPC-1 (accession number) is empty", ipc.where(1))
        if not study_uid:
            raise HL7Error("AE", "101", "IPC-3 (Study Instance UID) is empty", ipc.where(3))
        if not is_uid(study_uid):
            raise HL7Error("AE", "102", "IPC-3 is not a DICOM UID", ipc.where(3))
        studies.append(CancelledStudy(study_uid, accession, procedure))
    obr = by_name["OBR"][0]
    return OrderCancel(
        header=header,
        studies=tuple(dict.fromkeys(studies)),
        placer_order=obr.get(2) or None,
        patient=patient_ids(by_name["PID"][0]),
    )
