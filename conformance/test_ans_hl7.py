"""The ANS DRIM-M_DATA HL7 messages (excerpts, rebuilt into full messages) parse as the ANS intends."""

from __future__ import annotations

import pytest

from conformance.ans import ANS_DATA, M_PID, excerpt_cda_c, fill, message, needs_ans_data, with_pid
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda
from drimbox.hl7 import HL7Error, ReportMessage, build_ack, parse_report_message
from drimbox.hl7.cda import parse_cda
from drimbox.hl7.order import OrderCancel, parse_inbound

pytestmark = needs_ans_data

INS = "279035121518989"


def _parse(raw: bytes) -> ReportMessage:
    assert b"\r\n" in raw  # the ANS files are CRLF: that must be accepted as is
    msg = parse_report_message(raw)
    assert msg.header.control_id == "20240912103015"
    ack = build_ack(msg.header, "AA")
    assert b"MSA|AA|20240912103015\r" in ack
    return msg


def test_ans_cda_excerpt_identifiers() -> None:
    r = parse_cda(excerpt_cda_c())
    assert (r.document_id, r.version, r.set_id) == (
        "1.2.250.1.213.4.5.4.403",
        1,
        "D52DE737-001D-4031-B571-0A0ED7C42300",
    )
    assert (r.ins, r.ins_oid, r.ipp) == ("279035121518989", "1.2.250.1.213.1.4.10", "IPP101")
    assert (r.patient_family, r.patient_given, r.patient_sex, r.patient_birth_date) == (
        "PAT-TROIS",
        "DOMINIQUE",
        "F",
        "19790328",
    )
    assert (r.accession, r.accession_issuer) == ("ACN103", "1.2.250.1.925.994044785528.27")
    assert (r.order_id, r.study_uid) == ("OPN103", "1.2.250.1.213.4.5.2.1.103")
    assert r.modalities == ("CT",)
    assert r.regions == (("774007", "2.16.840.1.113883.6.96", "structure de la tête et/ou du cou"),)
    assert r.author is not None and (r.author.id, r.author.family) == ("801234560801", "BIDEAULT")
    assert r.organisation is not None and r.organisation.id_extension == "101235555"
    assert r.organisation.industry_code == "AMBULATOIRE"
    # The samples' exam C says the same things as the ANS document it imitates.
    assert parse_cda(build_cda(ANS_EXAMS["C"])) == r


@pytest.mark.parametrize(("path", "trigger"), [("C/CR_C-ORU.excerpt.hl7", "R01"), ("C/CR_C-MDM.excerpt.hl7", "T02")])
def test_exam_c_oru_and_mdm_publish(path: str, trigger: str) -> None:
    m = _parse(message(path, excerpt_cda_c()))
    assert (m.trigger, m.action) == (trigger, "publish")
    assert m.report.study_uid == "1.2.250.1.213.4.5.2.1.103"
    assert m.report.accession == "ACN103"
    assert m.flags["INVISIBLE_PATIENT"] is True and m.flags["DESTDMP"] is True
    assert m.flags["MASQUE_PS"] is False and len(m.flags) == 10
    assert m.sender is not None
    assert (m.sender.id, m.sender.id_type, m.sender.organisation_id) == ("801234564895", "RPPS", "750803447")
    assert m.patient.ins == "279035121518989"
    if trigger == "T02":
        assert m.unique_document_id == "1.2.250.1.213.4.5.4.403"
    else:
        assert (m.placer_order, m.filler_order) == ("984375862", "09011600123")


def test_exam_e_publishes() -> None:
    m = _parse(message("E/CR_E-ORU.excerpt.hl7", build_cda(ANS_EXAMS["E"])))
    assert m.action == "publish"
    assert (m.report.study_uid, m.report.accession) == ("1.2.250.1.213.4.5.2.1.105", "ACN105")


def test_exam_g1_maj_is_sent_as_a_new_order() -> None:
    # The ANS G1_MAJ message carries ORC NW / OBX F: an update by a new version, not ORC RO.
    m = _parse(message("G/CR_G1_MAJ-ORU.excerpt.hl7", build_cda(ANS_EXAMS["G1_MAJ"])))
    assert m.action == "publish"
    assert (m.report.document_id, m.report.version) == ("1.2.250.1.213.4.5.4.4072", 2)
    assert m.flags["MODIF_CONF_CODE"] is True


def test_exam_i_withdraws() -> None:
    m = _parse(message("I/CR_I_Depublication-ORU.excerpt.hl7", build_cda(ANS_EXAMS["I"])))
    assert m.action == "withdraw"
    assert (m.report.study_uid, m.report.accession) == ("1.2.250.1.213.4.5.2.1.110", "ACN110")
    assert m.flags["INVISIBLE_REP_LEGAUX"] is True


def test_exam_w_is_an_order_cancel_of_its_study() -> None:
    raw = fill((ANS_DATA / "hl7" / "W" / "CR_W_Suppression-OMI.hl7").read_bytes())
    m = parse_inbound(raw)
    assert isinstance(m, OrderCancel)
    assert [(s.accession, s.study_uid) for s in m.studies] == [("ACN124", "1.2.250.1.213.4.5.2.1.124")]
    assert m.patient.ins == "279035121518989" and m.header.charset == ""  # empty MSH-18: UTF-8
    ack = build_ack(m.header, "AA")
    assert b"MSA|AA|001\r" in ack and b"|ACK^O23^ACK|" in ack and b"|2.5.1" in ack


def test_exam_m_is_read_with_its_own_traits_and_refused_inside_another_patients_pid() -> None:
    # CR_M-ORU's PID carries the CDA's traits (PatientBis) under PAT-TROIS's INS: read (the PACS check is next).
    m = _parse(with_pid(message("C/CR_C-ORU.excerpt.hl7", build_cda(ANS_EXAMS["M"])), M_PID))
    assert (m.report.patient_family, m.report.patient_birth_date, m.patient.ins) == ("ANS-DRIM", "20120125", INS)
    # The same CDA inside the template's PID (PAT-TROIS's traits): the RIS is told at once.
    with pytest.raises(HL7Error) as exc:
        parse_report_message(message("C/CR_C-ORU.excerpt.hl7", build_cda(ANS_EXAMS["M"])))
    assert (exc.value.ack_code, exc.value.error_code) == ("AE", "207")


def test_exam_f_names_two_studies() -> None:
    m = _parse(message("C/CR_C-ORU.excerpt.hl7", build_cda(ANS_EXAMS["F"])))
    assert m.report.exams() == (("1.2.250.1.213.4.5.2.1.106", "ACN106"), ("1.2.250.1.213.4.5.2.1.107", "ACN107"))
    second = m.for_study("1.2.250.1.213.4.5.2.1.107").report
    assert (second.accession, second.accession_issuer) == ("ACN107", "1.2.250.1.925.994044785528.27")
