"""build_ack / peek_header: ACK and NAK content, character sets, escaping, and leniency on garbage."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_mdm, build_oru
from drimbox.hl7 import HL7Error, MessageHeader, build_ack, peek_header

NOW = datetime(2024, 9, 12, 10, 30, 15, tzinfo=timezone(timedelta(hours=2)))


def _fields(ack: bytes, codec: str = "utf-8") -> dict[str, list[str]]:
    assert ack.endswith(b"\r")
    segments = ack.decode(codec).rstrip("\r").split("\r")
    out = {}
    for s in segments:
        parts = s.split("|")
        out[parts[0]] = [parts[0], "|", *parts[1:]] if parts[0] == "MSH" else parts  # index = field number
    return out


@pytest.fixture(scope="module")
def oru() -> bytes:
    return build_oru(build_cda(ANS_EXAMS["C"]), control_id="CTRL-42", charset="8859/15")


def test_aa_swaps_applications_and_echoes_control_id_version_charset(oru: bytes) -> None:
    header = peek_header(oru)
    assert header is not None
    ack = build_ack(header, "AA", now=NOW)
    f = _fields(ack, "iso-8859-15")
    assert list(f) == ["MSH", "MSA"]
    msh = f["MSH"]
    assert msh[1:3] == ["|", "^~\\&"]
    assert (msh[3], msh[4], msh[5], msh[6]) == ("DRIMBOX", "CENTRE_AMBROISE", "RIS_AMBROISE", "CENTRE_AMBROISE")
    assert msh[7] == "20240912103015+0200"
    assert msh[9] == "ACK^R01^ACK"
    assert msh[10] and msh[10] != "CTRL-42" and len(msh[10]) <= 20
    assert (msh[11], msh[12], msh[18]) == ("P", "2.5", "8859/15")
    assert f["MSA"][1:3] == ["AA", "CTRL-42"]


def test_every_ack_has_a_fresh_control_id(oru: bytes) -> None:
    header = peek_header(oru)
    ids = {_fields(build_ack(header, "AA"), "iso-8859-15")["MSH"][10] for _ in range(50)}
    assert len(ids) == 50


def test_mdm_ack_names_its_trigger_and_v26() -> None:
    raw = build_mdm(build_cda(ANS_EXAMS["C"]), "T04", control_id="M-9")
    f = _fields(build_ack(peek_header(raw), "AA"))
    assert (f["MSH"][9], f["MSH"][12]) == ("ACK^T04^ACK", "2.6")


def test_nak_carries_err_with_location_code_severity_and_message(oru: bytes) -> None:
    error = HL7Error("AE", "102", "OBX-5.5 n'est pas du Base64 valide", "OBX^1^5^1^5")
    ack = build_ack(peek_header(oru), "AE", error)
    f = _fields(ack, "iso-8859-15")
    assert f["MSA"][1:3] == ["AE", "CTRL-42"]
    err = f["ERR"]
    assert err[2] == "OBX^1^5^1^5"
    assert err[3] == "102^Data type error^HL70357"
    assert err[4] == "E"
    assert err[8] == "OBX-5.5 n'est pas du Base64 valide"


def test_nak_is_encoded_in_the_message_charset(oru: bytes) -> None:
    error = HL7Error("AE", "207", "réponse", "OBX^1^5")
    ack = build_ack(peek_header(oru), "AE", error)
    assert "réponse".encode("iso-8859-15") in ack
    utf8 = build_ack(peek_header(build_oru(build_cda(ANS_EXAMS["C"]))), "AE", error)
    assert "réponse".encode() in utf8


def test_ar_without_a_header_is_still_a_valid_ack() -> None:
    ack = build_ack(None, "AR", HL7Error("AR", "100", "no MSH", "MSH", severity="F"))
    f = _fields(ack)
    assert f["MSH"][9] == "ACK" and f["MSH"][12] == "2.5"
    assert f["MSA"][1:3] == ["AR", ""]
    assert f["ERR"][3].startswith("100^") and f["ERR"][4] == "F"


def test_nak_without_an_error_object_defaults_to_207(oru: bytes) -> None:
    f = _fields(build_ack(peek_header(oru), "AE"), "iso-8859-15")
    assert f["ERR"][3].startswith("207^")


def test_free_text_is_escaped(oru: bytes) -> None:
    error = HL7Error("AE", "207", "a|b^c&d~e\\f\rg", "OBX^1^5")
    f = _fields(build_ack(peek_header(oru), "AE", error), "iso-8859-15")
    assert list(f) == ["MSH", "MSA", "ERR"]
    assert f["ERR"][8] == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f g"


@pytest.mark.parametrize(("code", "error"), [("AA", None), ("AE", HL7Error("AE", "101", "x", "OBX^1^5"))])
def test_acks_validate_strictly_with_hl7apy(oru: bytes, code: str, error: HL7Error | None) -> None:
    ack = build_ack(peek_header(oru), code, error).decode("iso-8859-15")
    message = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT)
    message.validate()
    assert message.msa.msa_1.to_er7() == code


def test_unknown_charset_falls_back_to_utf8_and_empty_msh18(oru: bytes) -> None:
    header = peek_header(oru.replace(b"|8859/15|", b"|ISO IR87|"))
    assert header is not None and header.codec is None
    f = _fields(build_ack(header, "AR", HL7Error("AR", "103", "charset", "MSH^1^18")))
    assert len(f["MSH"]) < 19 or f["MSH"][18] == ""


def test_invalid_codes_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        build_ack(None, "XX")
    with pytest.raises(ValueError):
        HL7Error("AA", "100", "x")


def test_peek_header_reads_the_fields(oru: bytes) -> None:
    h = peek_header(oru)
    assert isinstance(h, MessageHeader)
    assert (h.field_separator, h.encoding_characters) == ("|", "^~\\&")
    assert (h.message_type, h.trigger_event, h.message_structure) == ("ORU", "R01", "ORU_R01")
    assert (h.control_id, h.processing_id, h.version, h.country, h.charset) == (
        "CTRL-42",
        "P",
        "2.5",
        "FRA",
        "8859/15",
    )
    assert h.codec == "iso-8859-15"


def test_peek_header_after_a_garbage_line_and_with_odd_delimiters() -> None:
    h = peek_header(b"\x00garbage\nMSH#!$?%#APP!1.2.3%X#FAC###20240101##ORU!R01#C\\1#P#2.5")
    assert h is not None
    assert (h.field_separator, h.encoding_characters) == ("#", "!$?%")
    assert h.sending_application == "APP^1.2.3&X"  # rewritten with the standard delimiters
    assert (h.message_type, h.trigger_event, h.control_id, h.version) == ("ORU", "R01", "C\\1", "2.5")
    ack = build_ack(h, "AA")
    assert b"|FAC|APP^1.2.3&X|" not in ack and b"||APP^1.2.3&X|FAC|" in ack
    assert b"MSA|AA|C\\E\\1\r" in ack


def test_peek_header_unescapes_and_caps_echoed_values() -> None:
    h = peek_header(b"MSH|^~\\&|" + b"A" * 5000 + b"|F|||||ORU^R01|ID\\F\\1|P|2.5")
    assert h is not None
    assert len(h.sending_application) <= 256
    assert h.control_id == "ID|1"
    assert len(build_ack(h, "AE")) < 2000


@pytest.mark.parametrize("raw", [b"", b"MSH", b"MSH\r", b"MSHA|", b"PID|1|2", b"\x0b\x1c\x0d", b"MSH\x00^~"])
def test_peek_header_returns_none_without_a_usable_msh(raw: bytes) -> None:
    assert peek_header(raw) is None


def test_peek_header_survives_random_bytes() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        prefix = rng.choice([b"", b"MSH", b"MSH|", b"MSH|^~\\&|", b"x\rMSH"])
        data = prefix + rng.randbytes(rng.randint(0, 120))
        header = peek_header(data)
        if header is not None:
            assert build_ack(header, "AR", HL7Error("AR", "100", "x")).startswith(b"MSH|^~\\&|")
