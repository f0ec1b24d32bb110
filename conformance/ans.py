"""The ANS test data (DRIMBOX_ANS_DATA, default ../shared/ans-data) rebuilt into full messages."""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import pytest

from drimbox.demo.samples.reports import tiny_pdf

REPO = Path(__file__).resolve().parents[1]
ANS_DATA = Path(os.environ.get("DRIMBOX_ANS_DATA", REPO.parent / "shared" / "ans-data"))
ELIDED = re.compile(rb"ELIDED_BASE64_PAYLOAD_\d+_CHARS_RAW_OFFSETS_\d+_TO_\d+")
PLACEHOLDERS = {
    b"applicationSupplier": b"RIS_ANS",
    b"facilitySupplier": b"CENTRE_AMBROISE",
    b"applicationReceiver": b"DRIMBOX",
    b"facilityReceiver": b"CENTRE_AMBROISE",
    b"idMessage": b"20240912103015",  # the ANS template uses it for MSH-7 and MSH-10
}


def fill(raw: bytes, control_id: bytes = PLACEHOLDERS[b"idMessage"]) -> bytes:
    def placeholder(match: re.Match[bytes]) -> bytes:
        if match.group(1) == b"idMessage":
            return control_id
        return PLACEHOLDERS[match.group(1)]

    return re.sub(rb"\{\{(\w+)\}\}", placeholder, raw)


def excerpt_cda_c() -> bytes:
    """ANS CR_C.xml, its elided PDF replaced by a small real one."""
    excerpt = (ANS_DATA / "cda" / "C" / "CR_C.excerpt.xml").read_bytes()
    assert len(ELIDED.findall(excerpt)) == 1
    return ELIDED.sub(base64.b64encode(tiny_pdf("ANS exam C")), excerpt)


def message(path: str, cda: bytes, control_id: bytes = PLACEHOLDERS[b"idMessage"]) -> bytes:
    raw = (ANS_DATA / "hl7" / path).read_bytes()
    assert len(ELIDED.findall(raw)) == 1
    return fill(ELIDED.sub(base64.b64encode(cda), raw), control_id)


# PID of ANS CR_M-ORU.hl7 (upstream `Référencement DRIMBox/Jeux de données/HL7v2/Examen M/CR_M-ORU.hl7`, not in the
# harvest): unlike the other exams' files, it carries the CDA's PatientBis traits under PAT-TROIS's INS and IPP.
M_PID = (
    b"PID|||279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS^^~IPP101^^^AUT-AFFECTATION&"
    b"1.2.250.1.213.4.5.2.4&ISO^PI||ANS-DRIM^PatientBis^PatientBis^^^^L~ANS-DRIM^^^^^^D||20120125|M|||"
    b"^^^^^^BDL^^51215~28 Av de Breteuil^Escalier A^PARIS^^75007^FRA^H||||||||||||C||||||||N|VALI"
)


def with_pid(raw: bytes, pid: bytes) -> bytes:
    """The message with its PID segment replaced (CRLF kept)."""
    lines = raw.split(b"\r\n")
    return b"\r\n".join(pid if line.startswith(b"PID|") else line for line in lines)


needs_ans_data = pytest.mark.skipif(not (ANS_DATA / "hl7").is_dir(), reason=f"ANS data not found at {ANS_DATA}")
