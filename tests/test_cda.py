"""parse_cda: identifiers from ANS-shaped reports, refusal of unsafe or incomplete CDAs."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda
from drimbox.hl7.cda import CdaError, parse_cda

INS = "279035121518989"
STUDY_C = b'<id root="1.2.250.1.213.4.5.2.1.103"/>'


@pytest.fixture(scope="module")
def cda_c() -> bytes:
    return build_cda(ANS_EXAMS["C"])


def test_exam_c_identifiers_match_the_ans_index(cda_c: bytes) -> None:
    r = parse_cda(cda_c)
    assert r.document_id == "1.2.250.1.213.4.5.4.403"
    assert r.set_id == "D52DE737-001D-4031-B571-0A0ED7C42300"
    assert r.version == 1
    assert (r.ins, r.ins_oid) == (INS, "1.2.250.1.213.1.4.10")
    assert (r.ipp, r.ipp_oid) == ("IPP101", "1.2.250.1.213.4.5.2.4")
    assert (r.patient_family, r.patient_given) == ("PAT-TROIS", "DOMINIQUE")
    assert (r.patient_birth_date, r.patient_sex) == ("19790328", "F")
    assert (r.accession, r.accession_issuer) == ("ACN103", "1.2.250.1.925.994044785528.27")
    assert (r.order_id, r.order_issuer) == ("OPN103", "1.2.250.1.213.4.5.2.6")
    assert r.study_uid == "1.2.250.1.213.4.5.2.1.103"
    assert (r.procedure_code, r.procedure_display) == ("24727-0", "CT Head W contrast IV")
    assert r.modalities == ("CT",)
    assert r.regions == (("774007", "2.16.840.1.113883.6.96", "structure de la tête et/ou du cou"),)
    assert (r.service_start, r.service_stop) == ("20210108102500", "20210108111700")
    assert r.effective_time == "20210108111700+0100"
    assert r.document_code == "18748-4"
    assert r.title == "CR d’imagerie médicale"
    assert r.confidentiality_code == "N"
    assert r.language == "fr-FR"
    assert r.other_study_uids == () and r.other_orders == ()


def test_author_organisation_and_legal_authenticator(cda_c: bytes) -> None:
    r = parse_cda(cda_c)
    assert r.author is not None and r.legal_authenticator is not None
    for person in (r.author, r.legal_authenticator):
        assert (person.id_root, person.id) == ("1.2.250.1.71.4.2.1", "801234560801")
        assert (person.family, person.given, person.prefix, person.suffix) == ("BIDEAULT", "Jacques", "M", "DR")
        assert person.profession_code == "G15_10/SM44"
    assert r.organisation is not None
    assert (r.organisation.id_root, r.organisation.id_extension) == ("1.2.250.1.71.4.2.2", "101235555")
    assert r.organisation.name == "Centre de radiologie Ambroise"
    assert r.organisation.industry_code == "AMBULATOIRE"


def test_one_report_for_two_studies_keeps_the_first_as_primary() -> None:
    r = parse_cda(build_cda(ANS_EXAMS["F"]))
    assert r.study_uid == "1.2.250.1.213.4.5.2.1.106"
    assert r.accession == "ACN106"
    assert r.other_study_uids == ("1.2.250.1.213.4.5.2.1.107",)
    assert [o.accession for o in r.other_orders] == ["ACN107"]
    assert r.modalities == ("MR",)  # the same modality on both events is listed once


@pytest.mark.parametrize(
    ("exam", "doc_id", "version", "study", "accession", "modality"),
    [
        ("E", "1.2.250.1.213.4.5.4.405", 1, "1.2.250.1.213.4.5.2.1.105", "ACN105", "NM"),
        ("G1", "1.2.250.1.213.4.5.4.407", 1, "1.2.250.1.213.4.5.2.1.108", "ACN108", "XA"),
        ("G1_MAJ", "1.2.250.1.213.4.5.4.4072", 2, "1.2.250.1.213.4.5.2.1.108", "ACN108", "XA"),
        ("I", "1.2.250.1.213.4.5.4.410", 1, "1.2.250.1.213.4.5.2.1.110", "ACN110", "NM"),
    ],
)
def test_other_ans_exams(exam: str, doc_id: str, version: int, study: str, accession: str, modality: str) -> None:
    r = parse_cda(build_cda(ANS_EXAMS[exam]))
    assert (r.document_id, r.version, r.study_uid, r.accession, r.modalities) == (
        doc_id,
        version,
        study,
        accession,
        (modality,),
    )


def test_document_id_with_extension_is_root_caret_extension(cda_c: bytes) -> None:
    data = cda_c.replace(b'<id root="1.2.250.1.213.4.5.4.403"/>', b'<id root="1.2.3.4" extension="DOC-7"/>')
    assert parse_cda(data).document_id == "1.2.3.4^DOC-7"


def test_timezone_is_dropped_and_short_precision_kept(cda_c: bytes) -> None:
    data = cda_c.replace(b'<low value="20210108102500+0100"/>', b'<low value="20210108"/>')
    data = data.replace(b'<high value="20210108111700+0100"/>', b'<high value="20210108111700.123-0500"/>')
    r = parse_cda(data)
    assert (r.service_start, r.service_stop) == ("20210108", "20210108111700")


def test_only_qualified_translations_are_modalities_and_regions(cda_c: bytes) -> None:
    other = (
        b'<translation code="SR" codeSystem="1.2.840.10008.2.16.4"><qualifier>'
        b'<name code="999999" codeSystem="1.2.840.10008.2.16.4"/></qualifier></translation>'
    )
    data = cda_c.replace(b"</code>\n      <effectiveTime>", other + b"</code>\n      <effectiveTime>", 1)
    assert data != cda_c
    r = parse_cda(data)
    assert r.modalities == ("CT",)
    assert [code for code, _, _ in r.regions] == ["774007"]


def _identity_free(message: str) -> None:
    for trait in (INS, "PAT-TROIS", "DOMINIQUE", "19790328", "IPP101"):
        assert trait not in message


def test_missing_study_instance_uid_is_an_error_naming_the_element(cda_c: bytes) -> None:
    with pytest.raises(CdaError, match=r"documentationOf/serviceEvent/id \(Study Instance UID\)") as exc:
        parse_cda(cda_c.replace(STUDY_C, b""))
    _identity_free(str(exc.value))


def test_missing_accession_number_is_an_error(cda_c: bytes) -> None:
    data = cda_c.replace(b'extension="ACN103"', b"")
    with pytest.raises(CdaError, match="accessionNumber") as exc:
        parse_cda(data)
    _identity_free(str(exc.value))


def test_missing_document_id_is_an_error(cda_c: bytes) -> None:
    with pytest.raises(CdaError, match="ClinicalDocument/id"):
        parse_cda(cda_c.replace(b'<id root="1.2.250.1.213.4.5.4.403"/>', b""))


def test_a_study_uid_that_is_not_a_dicom_uid_is_refused(cda_c: bytes) -> None:
    with pytest.raises(CdaError, match="not a DICOM UID"):
        parse_cda(cda_c.replace(STUDY_C, b'<id root="1.2.3.abc\'; DROP"/>'))


def test_bad_version_number_is_refused(cda_c: bytes) -> None:
    with pytest.raises(CdaError, match="versionNumber"):
        parse_cda(cda_c.replace(b'<versionNumber value="1"/>', b'<versionNumber value="one"/>'))


def _with_prolog(cda: bytes, prolog: bytes) -> bytes:
    declaration, rest = cda.split(b"\n", 1)
    return declaration + b"\n" + prolog + rest


def test_internal_entities_are_refused(cda_c: bytes) -> None:
    doctype = b'<!DOCTYPE ClinicalDocument [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>\n'
    data = _with_prolog(cda_c, doctype).replace(b"<title>", b"<title>&b;")
    with pytest.raises(CdaError, match="DOCTYPE"):
        parse_cda(data)


def test_external_entity_is_refused_without_reading_it(cda_c: bytes, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    doctype = f'<!DOCTYPE ClinicalDocument [<!ENTITY x SYSTEM "file://{secret}">]>\n'.encode()
    data = _with_prolog(cda_c, doctype).replace(b"<title>", b"<title>&x;")
    with pytest.raises(CdaError) as exc:
        parse_cda(data)
    assert "TOP-SECRET" not in str(exc.value)


def test_doctype_hidden_after_a_long_comment_is_refused(cda_c: bytes) -> None:
    prolog = b"<!--" + b"x" * 10_000 + b"-->\n<!DOCTYPE ClinicalDocument>\n"
    with pytest.raises(CdaError, match="DOCTYPE"):
        parse_cda(_with_prolog(cda_c, prolog))


def test_doctype_in_utf16_is_refused(cda_c: bytes) -> None:
    text = _with_prolog(cda_c, b"<!DOCTYPE ClinicalDocument>\n").decode("utf-8")
    data = text.replace("encoding='UTF-8'", "encoding='UTF-16'").encode("utf-16")
    with pytest.raises(CdaError, match="DOCTYPE"):
        parse_cda(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"   ", b"not xml at all", b"<ClinicalDocument>", b"\x00\xff\xfe garbage", b"<a><b></a>"],
)
def test_garbage_is_a_cda_error(data: bytes) -> None:
    with pytest.raises(CdaError):
        parse_cda(data)


def test_root_element_must_be_an_hl7_clinical_document() -> None:
    with pytest.raises(CdaError, match="ClinicalDocument"):
        parse_cda(b"<?xml version='1.0'?><ClinicalDocument><id root='1.2'/></ClinicalDocument>")


def test_an_embedded_pdf_over_libxml2_default_text_limit_is_read(cda_c: bytes) -> None:
    start = cda_c.index(b'representation="B64">') + len(b'representation="B64">')
    end = cda_c.index(b"</text>", start)
    big = base64.b64encode(b"%PDF-1.4\n" + b"0" * 9_000_000)  # ≈ 12 MB of Base64 in one text node
    r = parse_cda(cda_c[:start] + big + cda_c[end:])
    assert r.study_uid == "1.2.250.1.213.4.5.2.1.103"


def test_repr_never_shows_patient_identity(cda_c: bytes) -> None:
    r = parse_cda(cda_c)
    _identity_free(repr(r))
    assert "1.2.250.1.213.4.5.2.1.103" in repr(r)


def test_missing_optional_parts_give_none() -> None:
    exam = dataclasses.replace(ANS_EXAMS["C"], regions=(), ccam_code=None)
    cda = build_cda(exam)
    cda = cda.replace(b'<versionNumber value="1"/>', b"")
    r = parse_cda(cda)
    assert r.version is None and r.regions == ()


def test_each_study_of_a_two_study_report_gets_its_own_order() -> None:
    r = parse_cda(build_cda(ANS_EXAMS["F"]))
    assert r.exams() == (("1.2.250.1.213.4.5.2.1.106", "ACN106"), ("1.2.250.1.213.4.5.2.1.107", "ACN107"))
    second = r.for_exam(1)
    assert (second.study_uid, second.accession, second.order_id) == ("1.2.250.1.213.4.5.2.1.107", "ACN107", "OPN107")
    assert (second.document_id, second.ins) == (r.document_id, r.ins)  # the same report, the same patient
    assert r.for_exam(0) is r
    with pytest.raises(IndexError):
        r.for_exam(2)
    one = parse_cda(build_cda(ANS_EXAMS["C"]))
    assert one.exams() == (("1.2.250.1.213.4.5.2.1.103", "ACN103"),)


def test_a_second_study_without_uid_or_a_repeated_one_is_refused() -> None:
    cda = build_cda(ANS_EXAMS["F"])
    with pytest.raises(CdaError, match=r"documentationOf\[2\]"):
        parse_cda(cda.replace(b'<id root="1.2.250.1.213.4.5.2.1.107"/>', b""))
    with pytest.raises(CdaError, match="same Study Instance UID"):
        parse_cda(cda.replace(b"1.2.250.1.213.4.5.2.1.107", b"1.2.250.1.213.4.5.2.1.106"))


@pytest.mark.parametrize("letter", ["G2", "M", "N", "Q", "W", "H", "V"])
def test_the_further_ans_exams_read_back_as_specified(letter: str) -> None:
    exam = ANS_EXAMS[letter]
    r = parse_cda(build_cda(exam))
    assert (r.document_id, r.study_uid, r.accession, r.order_id) == (
        exam.document_id, exam.study_uid, exam.accession, exam.order_id,
    )  # fmt: skip
    assert (r.patient_family, r.patient_birth_date, r.ins) == (exam.family, exam.birth_date, "279035121518989")
    assert r.modalities == tuple(code for code, _ in exam.modalities)
