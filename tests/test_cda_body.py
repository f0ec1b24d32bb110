"""What a report page shows of a CDA: the PDF of its nonXMLBody, the text of a structured or plain body, or nothing."""

from __future__ import annotations

import base64

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda
from drimbox.hl7.cda import CdaError
from drimbox.hl7.cda_body import has_pdf_body, read_body

_HEAD = '<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3"/>'


def _cda(component: str) -> bytes:
    return f"{_HEAD}<component>{component}</component></ClinicalDocument>".encode()


def test_the_pdf_of_a_non_xml_body() -> None:
    cda = build_cda(ANS_EXAMS["C"])
    body = read_body(cda)
    assert body.pdf is not None and body.pdf.startswith(b"%PDF-") and body.text == ()
    assert has_pdf_body(cda)


def test_the_text_of_a_structured_body_flattened_never_markup() -> None:
    cda = _cda("<structuredBody><component><section><title>Conclusion</title>"
               "<text><paragraph>Pas d'anomalie <content>décelable</content>.</paragraph>"
               "<list><item>&lt;script&gt;</item></list></text></section></component></structuredBody>")  # fmt: skip
    body = read_body(cda)
    assert body.pdf is None and body.text == ("Conclusion", "Pas d'anomalie décelable.", "<script>")
    assert not has_pdf_body(cda)


def test_a_plain_text_body() -> None:
    text = base64.b64encode(b"Ligne 1\n\nLigne 2").decode()
    body = read_body(_cda(f'<nonXMLBody><text mediaType="text/plain" representation="B64">{text}</text></nonXMLBody>'))
    assert body.text == ("Ligne 1", "Ligne 2")


@pytest.mark.parametrize(
    ("component", "why"),
    [
        ('<nonXMLBody><text mediaType="application/pdf" representation="B64">'
         f'{base64.b64encode(b"<html>").decode()}</text></nonXMLBody>', "not a PDF"),
        ('<nonXMLBody><text mediaType="application/pdf" representation="B64">%%%</text></nonXMLBody>', "base64"),
        ('<nonXMLBody><text mediaType="text/html">x</text></nonXMLBody>', "cannot be shown"),
        ("<structuredBody/>", "no text"),
        ("", "neither"),
    ],
)  # fmt: skip
def test_a_body_nobody_could_read_is_refused(component: str, why: str) -> None:
    with pytest.raises(CdaError, match=why):
        read_body(_cda(component))


def test_a_doctype_is_refused() -> None:
    with pytest.raises(CdaError, match="DOCTYPE"):
        read_body(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><ClinicalDocument xmlns="urn:hl7-org:v3"/>')
