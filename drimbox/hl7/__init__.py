"""HL7 v2 in: MLLP server, ORU^R01 / MDM^T02 report and OMI^O23 order-cancel parsing (hl7apy), ACK and NAK building."""

from drimbox.hl7.ack import HL7Error, MessageHeader, build_ack, peek_header
from drimbox.hl7.mllp import MllpServer, send_message
from drimbox.hl7.order import CancelledStudy, OrderCancel, parse_inbound
from drimbox.hl7.report import PatientIds, ReportMessage, Sender, parse_report_message

__all__ = [
    "CancelledStudy",
    "HL7Error",
    "MessageHeader",
    "MllpServer",
    "OrderCancel",
    "PatientIds",
    "ReportMessage",
    "Sender",
    "build_ack",
    "parse_inbound",
    "parse_report_message",
    "peek_header",
    "send_message",
]
