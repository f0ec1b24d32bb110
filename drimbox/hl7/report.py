"""ORU^R01 and MDM^T02/T10/T04 carrying a CDA report: read with hl7apy, checked, made a ReportMessage.

The segment reader here also serves drimbox.hl7.order (OMI^O23 order cancels).
"""

from __future__ import annotations

import binascii
import dataclasses
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException, InvalidName
from hl7apy.parser import parse_segment

from drimbox.hl7.ack import Delimiters, HL7Error, MessageHeader, peek_header
from drimbox.hl7.cda import CdaError, ReportIdentifiers, parse_cda

log = logging.getLogger(__name__)

# (MSH-9.1, MSH-9.2) → (MSH-12, MSH-9.3): DIGEST §4. Anything else is refused.
ACCEPTED = {
    ("ORU", "R01"): ("2.5", "ORU_R01"),
    ("MDM", "T02"): ("2.6", "MDM_T02"),
    ("MDM", "T10"): ("2.6", "MDM_T02"),
    ("MDM", "T04"): ("2.6", "MDM_T02"),
    # ANS exam W: the RIS cancels an order (drimbox.hl7.order).
    ("OMI", "O23"): ("2.5.1", "OMI_O23"),
}
# ORC-1 → (action, the OBX-11 of the report that must go with it, the MDM trigger that must go with it).
ACTIONS = {
    "NW": ("publish", "F", "T02"),
    "RO": ("replace", "C", "T10"),
    "CA": ("withdraw", "D", "T04"),
}
# Segments that must be there, in this order of first appearance.
REQUIRED = {
    "ORU": ("PID", "ORC", "OBR", "OBX"),
    "MDM": ("EVN", "PID", "PV1", "ORC", "TXA", "OBX"),
    "OMI": ("PID", "ORC", "OBR", "IPC"),
}
# PRT first appears in v2.7: a v2.5 ORU carrying one is read with the v2.7 definition of PRT.
_NEWER_VERSION = "2.7"
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_FLAG_SYSTEM = "MetaDMPMSS"
REPORT_KINDS = ("ORU", "MDM")


@dataclass(frozen=True)
class Sender:
    """PRT with PRT-4 = SB: the professional on whose behalf the report is sent (feeds the VIHF)."""

    id: str  # PRT-5.1, e.g. 8 + RPPS
    id_type: str  # PRT-5.13, e.g. RPPS
    id_authority: str  # PRT-5.9.2, the OID of the identifier
    family: str
    given: str
    organisation_name: str  # PRT-8.1
    organisation_id: str  # PRT-8.10
    organisation_id_type: str  # PRT-8.7, e.g. FINEG
    organisation_authority: str  # PRT-8.6.2


@dataclass(frozen=True)
class PatientIds:
    """PID-3 identifiers, kept to cross-check the CDA; the CDA is the authority."""

    ins: str | None = field(default=None, repr=False)
    ins_oid: str | None = None
    ipp: str | None = field(default=None, repr=False)
    ipp_oid: str | None = None


@dataclass(frozen=True)
class ReportMessage:
    header: MessageHeader
    trigger: str  # R01, T02, T10, T04
    action: str  # publish, replace, withdraw
    cda: bytes = field(repr=False)
    report: ReportIdentifiers
    flags: dict[str, bool]
    sender: Sender | None
    unique_document_id: str | None  # TXA-12.1 (MDM)
    parent_document_id: str | None  # TXA-13.1 (MDM T10)
    placer_order: str | None  # OBR-2.1
    filler_order: str | None  # OBR-3.1
    patient: PatientIds

    def for_study(self, study_uid: str) -> ReportMessage:
        """This message as it concerns one of the studies its report names (its order, its accession)."""
        for index, (uid, _) in enumerate(self.report.exams()):
            if uid == study_uid:
                return dataclasses.replace(self, report=self.report.for_exam(index))
        return self  # e.g. a report whose studies changed in a new version: judged by its first study


class _Segment:
    """One segment as parsed by hl7apy, with its fields read back by position."""

    def __init__(self, name: str, sequence: int, fields: dict[int, list[str]], d: Delimiters) -> None:
        self.name = name
        self.sequence = sequence  # 1-based rank among segments with this name: the ERL sequence
        self._fields = fields
        self._d = d

    def raw(self, n: int, rep: int = 1) -> str:
        reps = self._fields.get(n, [])
        return reps[rep - 1] if len(reps) >= rep else ""

    def repetitions(self, n: int) -> list[str]:
        return self._fields.get(n, [])

    def get(self, n: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
        return self._d.get(self.raw(n, rep), comp, sub).strip()

    def components(self, n: int, rep: int = 1) -> list[str]:
        """Components of field n as sent, not unescaped."""
        return self._d.split(self.raw(n, rep), self._d.component)

    def where(self, n: int, *rest: int) -> str:
        return "^".join(str(x) for x in (self.name, self.sequence, n, *rest))


def parse_report_message(raw: bytes) -> ReportMessage:
    """Parse one HL7 message (no MLLP framing). Raises HL7Error, and only HL7Error, if it is refused.

    Segments may be separated by CR, LF or CRLF. The text is decoded per MSH-18 (empty: UTF-8).
    """
    try:
        return _parse(raw)
    except HL7Error:
        raise
    except Exception as exc:  # a defect must still become a NAK, never a dropped connection
        log.warning("unexpected %s while parsing an HL7 message", type(exc).__name__)
        raise HL7Error("AE", "207", "internal error while reading the message") from None


def read_segments(raw: bytes) -> tuple[MessageHeader, dict[str, list[_Segment]]]:
    """Header checks, decoding per MSH-18, and the segments by name (required ones present, in order)."""
    # Some Windows senders prefix a UTF-8 byte order mark; it is not part of the HL7 text.
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    header = _check_header(raw)
    codec = header.codec
    assert codec is not None  # _check_header refused unknown charsets
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        raise HL7Error(
            "AE", "102", f"the message is not valid {header.charset or 'UTF-8'} (MSH-18)", "MSH^1^18"
        ) from None
    segments = _segments(text, header)
    return header, _check_sequence(segments, header.message_type)


def _parse(raw: bytes) -> ReportMessage:
    header, by_name = read_segments(raw)
    kind, trigger = header.message_type, header.trigger_event
    if kind not in REPORT_KINDS:
        raise HL7Error("AR", "200", f"{kind}^{trigger} carries no report", "MSH^1^9^1^1")

    orc = by_name["ORC"][0]
    report_obx = _report_obx(by_name["OBX"])
    action, expected_status, expected_trigger = _action(orc)
    status = report_obx.get(11).upper()
    if not status:
        raise HL7Error("AE", "101", "OBX-11 (result status) of the report is empty", report_obx.where(11))
    if status != expected_status:
        raise HL7Error(
            "AE",
            "207",
            f"OBX-11 '{status}' does not agree with ORC-1 (expected '{expected_status}')",
            report_obx.where(11),
        )
    if kind == "MDM" and trigger != expected_trigger:
        raise HL7Error(
            "AE",
            "207",
            f"trigger {trigger} does not agree with ORC-1 (expected {expected_trigger})",
            orc.where(1),
        )

    unique_id = parent_id = None
    if kind == "MDM":
        txa = by_name["TXA"][0]
        unique_id = txa.get(12) or None
        parent_id = txa.get(13) or None
        if unique_id is None:
            raise HL7Error("AE", "101", "TXA-12 (unique document number) is empty", txa.where(12))
        if trigger == "T10" and parent_id is None:
            raise HL7Error("AE", "101", "TXA-13 (parent document) is required for T10", txa.where(13))

    cda = _decode_cda(report_obx)
    try:
        report = parse_cda(cda)
    except CdaError as exc:
        raise HL7Error("AE", "207", str(exc), report_obx.where(5)) from None

    pid = by_name["PID"][0]
    patient = _patient_ids(pid)
    if patient.ins and report.ins and patient.ins != report.ins:
        raise HL7Error("AE", "207", "the INS in PID-3 differs from the INS of the CDA", pid.where(3))
    _check_identity(pid, report)
    obr = by_name.get("OBR", [])
    return ReportMessage(
        header=header,
        trigger=trigger,
        action=action,
        cda=cda,
        report=report,
        flags=_flags(by_name["OBX"]),
        sender=_sender(by_name.get("PRT", [])),
        unique_document_id=unique_id,
        parent_document_id=parent_id,
        placer_order=(obr[0].get(2) or None) if obr else None,
        filler_order=(obr[0].get(3) or None) if obr else None,
        patient=patient,
    )


def _check_header(raw: bytes) -> MessageHeader:
    """MSH-level checks, in the order that gives the sender the most useful answer."""
    if not raw.lstrip(b" \t\r\n").startswith(b"MSH"):
        raise HL7Error("AR", "100", "the message does not start with an MSH segment", "MSH")
    header = peek_header(raw)
    if header is None:
        raise HL7Error("AR", "102", "MSH-1 is not a usable field separator", "MSH^1^1")
    problem = header.delimiters.problem()
    if problem:
        raise HL7Error("AR", "102", problem, "MSH^1^2")
    if not header.control_id:
        raise HL7Error("AR", "101", "MSH-10 (message control id) is empty", "MSH^1^10")
    if header.codec is None:
        raise HL7Error("AR", "103", "MSH-18 names a character set this box does not support", "MSH^1^18")
    kind, trigger = header.message_type, header.trigger_event
    if kind not in {k for k, _ in ACCEPTED}:
        raise HL7Error("AR", "200", "only ORU^R01, MDM^T02/T10/T04 and OMI^O23 are accepted", "MSH^1^9^1^1")
    if (kind, trigger) not in ACCEPTED:
        raise HL7Error("AR", "201", f"event {kind}^{trigger} is not accepted", "MSH^1^9^1^2")
    version, structure = ACCEPTED[(kind, trigger)]
    if header.message_structure and header.message_structure != structure:
        raise HL7Error("AR", "200", f"message structure must be {structure}", "MSH^1^9^1^3")
    if header.version != version:
        raise HL7Error("AR", "203", f"{kind} is accepted in HL7 v{version} only", "MSH^1^12")
    return header


def _segments(text: str, header: MessageHeader) -> list[_Segment]:
    d = header.delimiters
    encoding = {
        "FIELD": d.field,
        "COMPONENT": d.component,
        "REPETITION": d.repetition,
        "ESCAPE": d.escape,
        "SUBCOMPONENT": d.subcomponent,
        "SEGMENT": "\r",
    }
    counts: dict[str, int] = {}
    out: list[_Segment] = []
    # str.replace/split run in C; a regex split costs more than all the rest on a 30 MB message.
    for line in text.lstrip(" \t\r\n").replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        if not line.strip():
            continue
        name = line[:3]
        if not _SEGMENT_ID.match(name) or (len(line) > 3 and line[3] != d.field):
            raise HL7Error("AE", "100", f"segment {len(out) + 1} does not start with a segment id", "")
        if name == "MSH" and out:
            raise HL7Error("AE", "100", "a second MSH segment was found", "MSH^2")
        parsed = _hl7apy_segment(line, name, header.version, encoding)
        counts[name] = counts.get(name, 0) + 1
        if parsed is None:
            continue  # HL7 v2 receivers ignore segments they do not expect
        out.append(_Segment(name, counts[name], _fields(parsed, encoding), d))
    return out


def _hl7apy_segment(line: str, name: str, version: str, encoding: dict[str, str]) -> Any:
    """Parse with hl7apy, tolerant; a segment unknown to the message's version is tried in v2.7."""
    for v in (version, _NEWER_VERSION):
        try:
            return parse_segment(line, version=v, encoding_chars=encoding, validation_level=VALIDATION_LEVEL.TOLERANT)
        except InvalidName:
            continue
        except HL7apyException:
            raise HL7Error("AE", "102", f"segment {name} cannot be parsed", name) from None
    log.info("ignoring segment %s unknown to HL7 v%s", name, version)
    return None


def _fields(segment: Any, encoding: dict[str, str]) -> dict[int, list[str]]:
    """hl7apy names each field NAME_n and gives one Field per repetition; read them back as ER7."""
    fields: dict[int, list[str]] = {}
    for f in segment.children:
        name = f.name or ""
        index = name.rsplit("_", 1)[-1]
        if index.isdigit():
            fields.setdefault(int(index), []).append(f.to_er7(encoding_chars=encoding))
    return fields


def _check_sequence(segments: list[_Segment], kind: str) -> dict[str, list[_Segment]]:
    by_name: dict[str, list[_Segment]] = {}
    first: dict[str, int] = {}
    for i, s in enumerate(segments):
        by_name.setdefault(s.name, []).append(s)
        first.setdefault(s.name, i)
    previous = "MSH"
    for name in REQUIRED[kind]:
        if name not in first:
            raise HL7Error("AE", "100", f"required segment {name} is missing", name)
        if first[name] < first[previous]:
            raise HL7Error("AE", "100", f"segment {name} must come after {previous}", f"{name}^1")
        previous = name
    return by_name


def _action(orc: _Segment) -> tuple[str, str, str]:
    control = orc.get(1).upper()
    if not control:
        raise HL7Error("AE", "101", "ORC-1 (order control) is empty", orc.where(1))
    if control not in ACTIONS:
        raise HL7Error("AE", "103", f"ORC-1 '{control[:8]}' is not NW, RO or CA", orc.where(1))
    return ACTIONS[control]


def _report_obx(obxs: list[_Segment]) -> _Segment:
    for obx in obxs:
        if obx.get(2).upper() == "ED":
            return obx
    raise HL7Error("AE", "100", "no OBX with value type ED carries the CDA report", "OBX")


def _decode_cda(obx: _Segment) -> bytes:
    value = obx.raw(5)
    if not value.strip():
        raise HL7Error("AE", "101", "OBX-5 (the CDA report) is empty", obx.where(5))
    parts = obx.components(5)
    if (
        len(parts) != 5
        or parts[1].strip().upper() != "TEXT"
        or parts[2].strip().upper() != "XML"
        or parts[3].strip().upper() != "BASE64"
    ):
        raise HL7Error("AE", "102", "OBX-5 must be ^TEXT^XML^Base64^<CDA in Base64>", obx.where(5))
    # The Base64 alphabet holds no delimiter, so the data component is taken as sent, unescaped.
    data = parts[4].strip()
    if not data:
        raise HL7Error("AE", "101", "OBX-5.5 (Base64 data) is empty", obx.where(5, 1, 5))
    try:
        # strict_mode refuses characters outside the alphabet and misplaced padding; the length check
        # catches the excess padding it lets through.
        if len(data) % 4:
            raise binascii.Error("length is not a multiple of 4")
        return binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise HL7Error("AE", "102", "OBX-5.5 is not valid Base64", obx.where(5, 1, 5)) from None


def _flags(obxs: list[_Segment]) -> dict[str, bool]:
    flags: dict[str, bool] = {}
    for obx in obxs:
        if obx.get(3, 3) != _FLAG_SYSTEM:
            continue
        code, value = obx.get(3, 1), obx.get(5, 1).upper()
        if value not in ("Y", "N"):
            raise HL7Error("AE", "103", f"OBX-5 of flag {code[:40]} must be Y or N", obx.where(5))
        flags[code] = value == "Y"
    return flags


def _sender(prts: list[_Segment]) -> Sender | None:
    for prt in prts:
        if prt.get(4).upper() != "SB":
            continue
        get = prt.get
        return Sender(
            id=get(5, 1),
            id_type=get(5, 13),
            id_authority=get(5, 9, 2),
            family=get(5, 2),
            given=get(5, 3),
            organisation_name=get(8, 1),
            organisation_id=get(8, 10),
            organisation_id_type=get(8, 7),
            organisation_authority=get(8, 6, 2),
        )
    return None


def _patient_ids(pid: _Segment) -> PatientIds:
    ins = ins_oid = ipp = ipp_oid = None
    for rep in range(1, len(pid.repetitions(3)) + 1):
        value, kind = pid.get(3, 1, rep=rep), pid.get(3, 5, rep=rep).upper()
        if not value:
            continue
        if kind == "INS" and ins is None:
            ins, ins_oid = value, pid.get(3, 4, 2, rep=rep) or None
        elif kind == "PI" and ipp is None:
            ipp, ipp_oid = value, pid.get(3, 4, 2, rep=rep) or None
    return PatientIds(ins=ins, ins_oid=ins_oid, ipp=ipp, ipp_oid=ipp_oid)


def _fold(value: str) -> str:
    """A name as identity-vigilance compares it: case, accents, apostrophes and spacing do not count."""
    decomposed = unicodedata.normalize("NFKD", value)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(letters.replace("'", " ").replace("\u2019", " ").casefold().split())


def _check_identity(pid: _Segment, report: ReportIdentifiers) -> None:
    """The identity traits the RIS sends (PID-5/7/8) must be those of the CDA (ANS exam M: same INS, another
    patient's traits). An INS is qualified with its traits; publishing under a mismatch would file the images in
    the wrong record. The messages (and logs) name the field, never a value."""
    # A date known only to the year or month (PID-7 "1979") is compared as far as it goes.
    birth = pid.get(7)[:8]
    if birth and report.patient_birth_date and not report.patient_birth_date.startswith(birth):
        raise HL7Error("AE", "207", "the birth date in PID-7 differs from the CDA's", pid.where(7))
    # Only a definite sex contradicts: U (unknown) or O (other) on one side says nothing against the other.
    sex, cda_sex = pid.get(8).upper(), (report.patient_sex or "").upper()
    if sex in ("M", "F") and cda_sex in ("M", "F") and sex != cda_sex:
        raise HL7Error("AE", "207", "the administrative sex in PID-8 differs from the CDA's", pid.where(8))
    # The birth name: the repetition of type L (legal), else the first one.
    names = range(1, len(pid.repetitions(5)) + 1)
    legal = next((r for r in names if pid.get(5, 7, rep=r).upper() == "L"), 1)
    family = pid.get(5, 1, rep=legal)
    if family and report.patient_family and _fold(family) != _fold(report.patient_family):
        raise HL7Error("AE", "207", "the birth name in PID-5 differs from the CDA's", pid.where(5, legal, 1))
