"""OMI^O23 order cancels (ANS exam W) and the PID identity check (ANS exam M), as the HL7 reader sees them."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_mdm, build_omi_cancel, build_oru
from drimbox.hl7 import HL7Error, ReportMessage, build_ack, peek_header
from drimbox.hl7.order import CancelledStudy, OrderCancel, parse_inbound

W_STUDY = "1.2.250.1.213.4.5.2.1.124"


def _refused(raw: bytes) -> HL7Error:
    with pytest.raises(HL7Error) as exc:
        parse_inbound(raw)
    for trait in ("279035121518989", "PAT-TROIS", "DOMINIQUE", "19790328", "PatientBis", "20120125"):
        assert trait not in exc.value.text
    return exc.value


def test_an_omi_with_orc_ca_is_an_order_cancel_of_the_ipc_study() -> None:
    m = parse_inbound(build_omi_cancel(control_id="W1"))
    assert isinstance(m, OrderCancel)
    assert m.studies == (CancelledStudy(W_STUDY, "ACN124", "PACS_SOURCE"),)
    assert (m.header.control_id, m.header.version, m.placer_order) == ("W1", "2.5.1", "OPN103")
    assert m.patient.ins == "279035121518989"
    ack = build_ack(m.header, "AA")
    assert b"|ACK^O23^ACK|" in ack and b"MSA|AA|W1\r" in ack


def test_reports_still_go_to_the_report_reader() -> None:
    cda = build_cda(ANS_EXAMS["C"])
    assert isinstance(parse_inbound(build_oru(cda)), ReportMessage)
    assert isinstance(parse_inbound(build_mdm(cda)), ReportMessage)


def test_an_omi_that_does_not_cancel_is_refused() -> None:
    e = _refused(build_omi_cancel(order_control="NW"))
    assert (e.ack_code, e.error_code, e.location) == ("AE", "103", "ORC^1^1")
    assert _refused(build_omi_cancel(order_control="")).error_code == "101"


@pytest.mark.parametrize(
    ("ipc", "code", "where"),
    [
        (b"IPC||PACS_SOURCE|1.2.3|1", "101", "IPC^1^1"),
        (b"IPC|ACN124|PACS_SOURCE||1", "101", "IPC^1^3"),
        (b"IPC|ACN124|PACS_SOURCE|1.2.03.x|1", "102", "IPC^1^3"),
    ],
)
def test_the_ipc_segment_must_name_the_study_and_its_accession(ipc: bytes, code: str, where: str) -> None:
    raw = build_omi_cancel()
    raw = raw[: raw.index(b"IPC|")] + ipc + b"\r"
    e = _refused(raw)
    assert (e.ack_code, e.error_code, e.location) == ("AE", code, where)


def test_an_omi_without_ipc_or_in_another_version_is_refused() -> None:
    raw = build_omi_cancel()
    assert _refused(raw[: raw.index(b"IPC|")]).error_code == "100"
    assert _refused(raw.replace(b"|P|2.5.1", b"|P|2.5")).error_code == "203"


def test_several_ipc_segments_cancel_several_studies() -> None:
    raw = build_omi_cancel() + b"IPC|ACN125|PACS_SOURCE|1.2.250.1.213.4.5.2.1.125|1\r"
    m = parse_inbound(raw)
    assert isinstance(m, OrderCancel)
    assert [s.study_uid for s in m.studies] == [W_STUDY, "1.2.250.1.213.4.5.2.1.125"]


def _with_pid_of(raw: bytes, other: bytes) -> bytes:
    """The PID of another message (the test patient PAT-TROIS's) around this message's CDA."""
    pid = next(line for line in other.split(b"\r") if line.startswith(b"PID|"))
    return b"\r".join(pid if line.startswith(b"PID|") else line for line in raw.split(b"\r"))


def test_exam_m_traits_in_another_patients_pid_are_refused() -> None:
    template = build_oru(build_cda(ANS_EXAMS["C"]))
    e = _refused(_with_pid_of(build_oru(build_cda(ANS_EXAMS["M"])), template))
    assert (e.ack_code, e.error_code, e.location) == ("AE", "207", "PID^1^7")
    # The same report with its own traits in PID is read (the PACS check is next: tests/test_ans_cases.py).
    assert isinstance(parse_inbound(build_oru(build_cda(ANS_EXAMS["M"]))), ReportMessage)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"sex": "M"}, "PID^1^8"),
        ({"family": "PAT-QUATRE"}, "PID^1^5^1^1"),
    ],
)
def test_each_identity_trait_is_compared(change: dict[str, Any], where: str) -> None:
    template = build_oru(build_cda(ANS_EXAMS["C"]))
    other = dataclasses.replace(ANS_EXAMS["C"], **change)
    e = _refused(_with_pid_of(build_oru(build_cda(other)), template))
    assert (e.error_code, e.location) == ("207", where)


def test_a_partial_birth_date_or_an_unknown_sex_does_not_contradict() -> None:
    raw = build_oru(build_cda(ANS_EXAMS["C"]))
    assert isinstance(parse_inbound(raw.replace(b"||19790328|F", b"||1979|U")), ReportMessage)
    assert _refused(raw.replace(b"||19790328|F", b"||1980|F")).location == "PID^1^7"


def test_names_compare_without_case_accents_or_spacing() -> None:
    template = build_oru(build_cda(dataclasses.replace(ANS_EXAMS["C"], family="Pat-Trois")))
    raw = _with_pid_of(build_oru(build_cda(dataclasses.replace(ANS_EXAMS["C"], family="PÂT-TROIS "))), template)
    assert isinstance(parse_inbound(raw), ReportMessage)


def test_fuzzed_order_cancels_only_ever_raise_hl7error() -> None:
    rng = random.Random(20261205)
    seed = build_omi_cancel(control_id="F1")
    for _ in range(600):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data) + 1)
            if rng.random() < 0.5 and data:
                data[min(pos, len(data) - 1)] = rng.choice(b"|^~\\&\r0A.")
            else:
                del data[pos : pos + rng.randint(1, 40)]
        try:
            result = parse_inbound(bytes(data))
        except HL7Error as e:
            assert e.ack_code in ("AE", "AR") and e.text != "internal error while reading the message"
            assert build_ack(peek_header(bytes(data)), e.ack_code, e)
        else:
            assert isinstance(result, (OrderCancel, ReportMessage))
