"""parse_report_message: accepted ORU/MDM, every refusal with its HL7 error code, and robustness."""

from __future__ import annotations

import base64
import dataclasses
import random

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_mdm, build_omi_cancel, build_oru
from drimbox.hl7 import HL7Error, parse_report_message, peek_header

INS = "279035121518989"
IDENTITY = (INS, "PAT-TROIS", "DOMINIQUE", "19790328", "IPP101")


@pytest.fixture(scope="module")
def cda() -> bytes:
    return build_cda(ANS_EXAMS["C"])


def _error(raw: bytes) -> HL7Error:
    with pytest.raises(HL7Error) as exc:
        parse_report_message(raw)
    for trait in IDENTITY:
        assert trait not in exc.value.text
    return exc.value


def _segment(raw: bytes, name: bytes, new: bytes) -> bytes:
    """Replace the first segment called ``name`` with ``new`` (empty: delete it)."""
    lines = raw.split(b"\r")
    i = next(i for i, s in enumerate(lines) if s.startswith(name + b"|"))
    return b"\r".join(lines[:i] + ([new] if new else []) + lines[i + 1 :])


@pytest.mark.parametrize(
    ("action", "control", "status"),
    [("publish", "NW", "F"), ("replace", "RO", "C"), ("withdraw", "CA", "D")],
)
def test_oru_actions(cda: bytes, action: str, control: str, status: str) -> None:
    raw = build_oru(cda, action, control_id="MSG0001")  # type: ignore[arg-type]
    assert f"ORC|{control}|".encode() in raw and f"||||||{status}|".encode() in raw
    m = parse_report_message(raw)
    assert (m.trigger, m.action) == ("R01", action)
    assert m.header.control_id == "MSG0001" and m.header.version == "2.5"
    assert m.cda == cda
    assert m.report.study_uid == "1.2.250.1.213.4.5.2.1.103"
    assert (m.placer_order, m.filler_order) == ("OPN103", "ACN103")
    assert m.unique_document_id is None


@pytest.mark.parametrize(("trigger", "action"), [("T02", "publish"), ("T10", "replace"), ("T04", "withdraw")])
def test_mdm_triggers(cda: bytes, trigger: str, action: str) -> None:
    raw = build_mdm(cda, trigger, control_id="M1", parent_document_id="1.2.250.1.213.4.5.4.400")  # type: ignore[arg-type]
    m = parse_report_message(raw)
    assert (m.trigger, m.action) == (trigger, action)
    assert m.header.version == "2.6"
    assert m.unique_document_id == "1.2.250.1.213.4.5.4.403"
    assert m.parent_document_id == "1.2.250.1.213.4.5.4.400"
    assert m.report.accession == "ACN103"


def test_flags_sender_and_patient_ids(cda: bytes) -> None:
    flags = {"MASQUE_PS": True, "INVISIBLE_PATIENT": False, "DESTDMP": True, "CONNEXION_SECRETE": False}
    m = parse_report_message(build_oru(cda, flags=flags))
    assert m.flags == flags
    assert m.sender is not None
    assert (m.sender.id, m.sender.id_type, m.sender.id_authority) == ("801234560801", "RPPS", "1.2.250.1.71.4.2.1")
    assert (m.sender.family, m.sender.given) == ("BIDEAULT", "Jacques")
    assert (m.sender.organisation_name, m.sender.organisation_id) == ("Centre de radiologie Ambroise", "101235555")
    assert (m.patient.ins, m.patient.ins_oid) == (INS, "1.2.250.1.213.1.4.10")
    assert (m.patient.ipp, m.patient.ipp_oid) == ("IPP101", "1.2.250.1.213.4.5.2.4")
    for trait in IDENTITY:
        assert trait not in repr(m)


@pytest.mark.parametrize("charset", ["UNICODE UTF-8", "8859/15", "8859/1", ""])
def test_charsets(charset: str) -> None:
    # Œ exists in ISO 8859-15 and UTF-8, not in Latin-1.
    name = "Clinique Saint-Éloi" if charset == "8859/1" else "Clinique Saint-Éloi (Œuvre)"
    exam = dataclasses.replace(ANS_EXAMS["C"], org_name=name)
    cda = build_cda(exam)
    raw = build_oru(cda, charset=charset)
    accented = exam.org_name.encode({"8859/15": "iso-8859-15", "8859/1": "latin-1"}.get(charset, "utf-8"))
    assert accented in raw
    m = parse_report_message(raw)
    assert m.sender is not None and m.sender.organisation_name == exam.org_name
    assert m.header.charset == charset


def test_bytes_that_do_not_match_msh18_are_a_data_type_error(cda: bytes) -> None:
    exam = dataclasses.replace(ANS_EXAMS["C"], org_name="Clinique Saint-Éloi")
    raw = build_oru(build_cda(exam), charset="8859/15").replace(b"|8859/15|", b"|UNICODE UTF-8|")
    e = _error(raw)
    assert (e.ack_code, e.error_code, e.location) == ("AE", "102", "MSH^1^18")


def test_unknown_charset_is_rejected(cda: bytes) -> None:
    e = _error(build_oru(cda).replace(b"|UNICODE UTF-8|", b"|ISO IR87|"))
    assert (e.ack_code, e.error_code, e.location) == ("AR", "103", "MSH^1^18")


@pytest.mark.parametrize("separator", [b"\n", b"\r\n"])
def test_lf_and_crlf_segment_separators(cda: bytes, separator: bytes) -> None:
    raw = build_oru(cda).replace(b"\r", separator)
    assert parse_report_message(raw).action == "publish"


@pytest.mark.parametrize(
    "table",
    [
        # field, component, repetition, escape, subcomponent
        {"|": "|", "^": "#", "~": "~", "\\": "\\", "&": "&"},
        {"|": "^", "^": "|", "~": "~", "\\": "\\", "&": "&"},
        {"|": "!", "^": "$", "~": "*", "\\": "?", "&": "%"},
    ],
)
def test_declared_delimiters_are_honoured(cda: bytes, table: dict[str, str]) -> None:
    standard = build_oru(cda, control_id="D1")
    text = standard.decode("utf-8")
    assert not any(c in text for c in set(table.values()) - set(table))
    raw = text.translate(str.maketrans("".join(table), "".join(table.values()))).encode("utf-8")
    m, reference = parse_report_message(raw), parse_report_message(standard)
    assert raw.startswith(("MSH" + table["|"] + table["^"]).encode())
    assert (m.action, m.report, m.flags, m.sender, m.patient) == (
        reference.action,
        reference.report,
        reference.flags,
        reference.sender,
        reference.patient,
    )
    assert m.header.control_id == "D1"


@pytest.mark.parametrize("msh2", [b"^^\\&", b"", b"^~", b"^~A&"])
def test_unusable_delimiters_are_rejected(cda: bytes, msh2: bytes) -> None:
    raw = build_oru(cda).replace(b"MSH|^~\\&|", b"MSH|" + msh2 + b"|", 1)
    e = _error(raw)
    assert (e.ack_code, e.error_code) == ("AR", "102")


def test_utf8_byte_order_mark_is_ignored(cda: bytes) -> None:
    m = parse_report_message(b"\xef\xbb\xbf" + build_oru(cda, control_id="BOM"))
    assert m.header.control_id == "BOM" and m.action == "publish"


def test_escaped_text_is_unescaped(cda: bytes) -> None:
    exam = dataclasses.replace(ANS_EXAMS["C"], org_name="Radiologie A|B & C^D")
    m = parse_report_message(build_oru(build_cda(exam)))
    assert m.sender is not None and m.sender.organisation_name == "Radiologie A|B & C^D"


def test_no_msh_is_rejected_and_has_no_header(cda: bytes) -> None:
    raw = build_oru(cda).split(b"\r", 1)[1]
    assert peek_header(raw) is None
    e = _error(raw)
    assert (e.ack_code, e.error_code) == ("AR", "100")


def test_missing_control_id_is_rejected(cda: bytes) -> None:
    raw = build_oru(cda, control_id="X1").replace(b"|X1|P|", b"||P|")
    e = _error(raw)
    assert (e.ack_code, e.error_code, e.location) == ("AR", "101", "MSH^1^10")


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        (b"ORU^R01^ORU_R01", b"ADT^A01^ADT_A01", "200"),
        (b"ORU^R01^ORU_R01", b"ORU^R30^ORU_R30", "201"),
        (b"ORU^R01^ORU_R01", b"ORU^R01^ORU_R99", "200"),
        (b"|P|2.5|", b"|P|2.3|", "203"),
        (b"|P|2.5|", b"|P|2.6|", "203"),
    ],
)
def test_unsupported_type_event_or_version(cda: bytes, old: bytes, new: bytes, code: str) -> None:
    raw = build_oru(cda)
    assert old in raw
    e = _error(raw.replace(old, new, 1))
    assert (e.ack_code, e.error_code) == ("AR", code)
    assert e.location.startswith("MSH^1^")


def test_mdm_in_v25_and_unknown_trigger_are_rejected(cda: bytes) -> None:
    assert _error(build_mdm(cda).replace(b"|P|2.6|", b"|P|2.5|")).error_code == "203"
    assert _error(build_mdm(cda).replace(b"MDM^T02^MDM_T02", b"MDM^T01^MDM_T01")).error_code == "201"


def test_an_omi_order_cancel_is_no_report() -> None:
    # drimbox.hl7.order reads it (tests/test_hl7_order.py); the report parser alone still says it carries none.
    e = _error(build_omi_cancel())
    assert (e.ack_code, e.error_code) == ("AR", "200")


def test_result_status_must_agree_with_order_control(cda: bytes) -> None:
    raw = build_oru(cda).replace(b"||||||F|\rPRT", b"||||||D|\rPRT")
    e = _error(raw)
    assert (e.ack_code, e.error_code, e.location) == ("AE", "207", "OBX^1^11")


def test_mdm_trigger_must_agree_with_order_control(cda: bytes) -> None:
    raw = build_mdm(cda, "T04").replace(b"ORC|CA|", b"ORC|NW|").replace(b"||||||D|\rPRT", b"||||||F|\rPRT")
    e = _error(raw)
    assert (e.ack_code, e.error_code, e.location) == ("AE", "207", "ORC^1^1")


def test_unknown_order_control_is_a_table_error(cda: bytes) -> None:
    e = _error(build_oru(cda).replace(b"ORC|NW|", b"ORC|XO|"))
    assert (e.ack_code, e.error_code, e.location) == ("AE", "103", "ORC^1^1")


def test_replacement_without_parent_document_is_rejected(cda: bytes) -> None:
    e = _error(build_mdm(cda, "T10"))
    assert (e.ack_code, e.error_code, e.location) == ("AE", "101", "TXA^1^13")


def test_lowercase_text_in_obx5_is_accepted(cda: bytes) -> None:
    assert parse_report_message(build_oru(cda).replace(b"|^TEXT^XML^", b"|^text^XML^")).action == "publish"


def _obx5(raw: bytes, value: bytes) -> bytes:
    start = raw.index(b"OBX|1|ED|")
    field_start = raw.index(b"||", start) + 2
    field_end = raw.index(b"|", field_start)
    return raw[:field_start] + value + raw[field_end:]


@pytest.mark.parametrize(
    ("value", "code", "location"),
    [
        (b"", "101", "OBX^1^5"),
        (b"^TEXT^XML^Base64^", "101", "OBX^1^5^1^5"),
        (b"^TEXT^XML^Base64^not base64 at all!", "102", "OBX^1^5^1^5"),
        (b"^TEXT^XML^Base64^QUJD=", "102", "OBX^1^5^1^5"),
        (b"^TEXT^PDF^Base64^QUJD", "102", "OBX^1^5"),
        (b"^TEXT^XML^Hex^QUJD", "102", "OBX^1^5"),
        (b"QUJD", "102", "OBX^1^5"),
    ],
)
def test_report_obx5_format(cda: bytes, value: bytes, code: str, location: str) -> None:
    e = _error(_obx5(build_oru(cda), value))
    assert (e.ack_code, e.error_code, e.location) == ("AE", code, location)


def test_no_ed_obx_is_a_segment_error(cda: bytes) -> None:
    e = _error(build_oru(cda).replace(b"OBX|1|ED|", b"OBX|1|ST|"))
    assert (e.ack_code, e.error_code) == ("AE", "100")


def test_cda_errors_become_ae_207_with_the_cda_message(cda: bytes) -> None:
    broken = cda.replace(b'<id root="1.2.250.1.213.4.5.2.1.103"/>', b"")
    e = _error(build_oru(broken))
    assert (e.ack_code, e.error_code, e.location) == ("AE", "207", "OBX^1^5")
    assert "Study Instance UID" in e.text


def test_cda_with_entities_is_an_application_error(cda: bytes) -> None:
    declaration, rest = cda.split(b"\n", 1)
    evil = declaration + b'\n<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n' + rest
    e = _error(build_oru(evil.replace(b"<title>", b"<title>&e;")))
    assert (e.ack_code, e.error_code) == ("AE", "207")
    assert "DOCTYPE" in e.text


def test_pid_ins_that_differs_from_the_cda_is_refused(cda: bytes) -> None:
    raw = build_oru(cda).replace(b"PID|||279035121518989^", b"PID|||180000000000000^", 1)
    e = _error(raw)
    assert (e.ack_code, e.error_code, e.location) == ("AE", "207", "PID^1^3")


def test_flag_values_must_be_y_or_n(cda: bytes) -> None:
    raw = build_oru(cda).replace(b"MetaDMPMSS||N^^", b"MetaDMPMSS||X^^", 1)
    e = _error(raw)
    assert (e.ack_code, e.error_code) == ("AE", "103") and e.location.startswith("OBX^")


def test_required_segments_and_their_order(cda: bytes) -> None:
    raw = build_oru(cda)
    assert _error(_segment(raw, b"PID", b"")).error_code == "100"
    assert _error(_segment(raw, b"ORC", b"")).error_code == "100"
    obr = next(s for s in raw.split(b"\r") if s.startswith(b"OBR|"))
    moved = _segment(_segment(raw, b"OBR", b""), b"PRT", b"PRT" + b"|" * 3 + b"\r" + obr)
    e = _error(moved)
    assert (e.error_code, e.location) == ("100", "OBX^1")
    assert _error(build_mdm(cda).replace(b"EVN|", b"ZZZ|", 1)).error_code == "100"


def test_unknown_and_z_segments_are_ignored(cda: bytes) -> None:
    raw = _segment(build_oru(cda), b"PV1", b"PV1|1|O\rZDS|1.2.3^RIS\rXYZ|whatever")
    assert parse_report_message(raw).action == "publish"


def test_a_second_msh_is_a_segment_error(cda: bytes) -> None:
    raw = build_oru(cda)
    e = _error(raw + raw.split(b"\r", 1)[0] + b"\r")
    assert e.error_code == "100"


def test_fuzzed_input_only_ever_raises_hl7error(cda: bytes) -> None:
    rng = random.Random(20240601)
    small = build_oru(build_cda(dataclasses.replace(ANS_EXAMS["C"], pdf_text="x")))
    mdm = build_mdm(cda, "T10", parent_document_id="1.2")
    seeds = [small, mdm, build_omi_cancel(), b"MSH|^~\\&|", b"MSH"]
    specials = b"|^~\\&\r\n\x0b\x1c\x00\xff#MSH"
    for i in range(1500):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(5)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = bytes([rng.choice(specials)])
            elif op == 2:
                del data[pos : pos + rng.randint(1, 200)]
            elif op == 3:
                lines = bytes(data).split(b"\r")
                rng.shuffle(lines)
                data = bytearray(b"\r".join(lines))
            else:
                data = data[:pos]
        if i % 7 == 0:
            data = bytearray(rng.randbytes(rng.randint(0, 300)))
        try:
            parse_report_message(bytes(data))
        except HL7Error as e:
            assert e.ack_code in ("AE", "AR") and e.error_code.isdigit()
            # The catch-all exists for safety; reaching it means a defect in the parser.
            assert e.text != "internal error while reading the message"


def test_base64_payload_is_decoded_strictly(cda: bytes) -> None:
    b64 = base64.b64encode(cda)
    raw = build_oru(cda).replace(b64, b64[:100] + b"\\" + b64[100:])
    assert _error(raw).error_code == "102"
