"""The KOS manifest: DRIM-M / XDS-I.b content, dciodvfy-clean, and read back by parse_kos."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from drimbox.demo.samples import studies
from drimbox.demo.samples.studies import exam_c_spec, expected_instances
from drimbox.dimse.study_instances import InstanceRef, StudyInstances
from drimbox.manifest import (
    KOS_SOP_CLASS,
    KosError,
    KosRequest,
    build_kos,
    identity_mismatches,
    kos_to_bytes,
    parse_kos,
)
from tests.support.dcmtk import DciodvfyReport, dciodvfy

PUBLIC_URL = "http://127.0.0.1:8080"
UID_ROOT = "1.2.250.1.999.1.1.2."
NOW = datetime(2024, 5, 6, 14, 30, 5, tzinfo=timezone(timedelta(hours=2)))
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

# dicom3tools (2022) does not know Retrieve URL (0008,1190) in the series reference macro, which DRIM-M
# requires; that warning (and the "Standard Extended SOP Class" conclusion it implies) is expected.
EXPECTED_WARNINGS = (
    "Attribute is not present in standard DICOM IOD - (0x0008,0x1190) UR Retrieve URL",
    "Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class",
)


def exam_c_request(**changes: object) -> KosRequest:
    req = KosRequest(
        ins=studies.EXAM_C_INS,
        ins_oid=studies.EXAM_C_INS_OID,
        ipp=studies.EXAM_C_IPP,
        ipp_issuer=studies.EXAM_C_IPP_ISSUER,
        ipp_oid=studies.EXAM_C_IPP_OID,
        accession=studies.EXAM_C_ACCESSION,
        accession_issuer=studies.EXAM_C_ACCESSION_OID,
        placer_order=studies.EXAM_C_PLACER_ORDER,
        placer_order_issuer=studies.EXAM_C_PLACER_ORDER_OID,
        requested_procedure_id="ACN103",
        procedure_code="24727-0",
        procedure_scheme="2.16.840.1.113883.6.1",
        procedure_meaning="CT Head W contrast IV",
        description="Examen C : scanner cérébral avec injection",
        public_url=PUBLIC_URL,
        retrieve_ae_title="DRIMBOX",
        retrieve_location_uid="1.2.250.1.999.1.1.1",
        uid_root=UID_ROOT,
        institution_name="Centre de radiologie Ambroise",
    )
    return dataclasses.replace(req, **changes)  # type: ignore[arg-type]


@pytest.fixture
def study() -> StudyInstances:
    return expected_instances(exam_c_spec(instances_per_series=4))


def check_dciodvfy(report: DciodvfyReport) -> None:
    assert report.errors == [], report.output
    unexpected = [w for w in report.warnings if not any(e in w for e in EXPECTED_WARNINGS)]
    assert unexpected == [], report.output


@pytest.mark.dciodvfy
@pytest.mark.parametrize("profile", [None, "IHEXDSIManifest"])
def test_kos_passes_dciodvfy(study: StudyInstances, tmp_path: Path, profile: str | None) -> None:
    path = tmp_path / "kos.dcm"
    path.write_bytes(kos_to_bytes(build_kos(study, exam_c_request(), now=NOW)))
    report = dciodvfy(path, profile)
    assert "KeyObjectSelectionDocument" in report.output
    check_dciodvfy(report)


@pytest.mark.dciodvfy
def test_kos_with_non_image_instance_passes_dciodvfy(study: StudyInstances, tmp_path: Path) -> None:
    sr = InstanceRef(study.study_uid + ".9", BASIC_TEXT_SR, study.study_uid + ".9.1", "SR", 9, "Dose", 1)
    study.instances.append(sr)
    ds = build_kos(study, exam_c_request(description=""), now=NOW)
    kinds = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID: i.ValueType for i in ds.ContentSequence}
    assert kinds[sr.sop_instance_uid] == "COMPOSITE"
    assert {v for k, v in kinds.items() if k != sr.sop_instance_uid} == {"IMAGE"}
    path = tmp_path / "kos.dcm"
    path.write_bytes(kos_to_bytes(ds))
    for profile in (None, "IHEXDSIManifest"):
        check_dciodvfy(dciodvfy(path, profile))


def test_kos_part10_bytes(study: StudyInstances) -> None:
    data = kos_to_bytes(build_kos(study, exam_c_request(), now=NOW))
    assert data[128:132] == b"DICM"
    ds = pydicom.dcmread(BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == KOS_SOP_CLASS
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert "Stéphane".encode() in data
    assert str(ds.ReferringPhysicianName) == "MEDIONI^Stéphane"
    assert "PixelData" not in ds


def test_kos_patient_study_and_series_modules(study: StudyInstances) -> None:
    ds = build_kos(study, exam_c_request(), now=NOW)
    assert ds.SOPClassUID == KOS_SOP_CLASS
    assert ds.PatientID == "279035121518989"
    assert ds.IssuerOfPatientID == "ASIP-SANTE-INS-NIR"
    qualifier = ds.IssuerOfPatientIDQualifiersSequence[0]
    assert (qualifier.UniversalEntityID, qualifier.UniversalEntityIDType) == ("1.2.250.1.213.1.4.10", "ISO")
    ins, ipp = ds.OtherPatientIDsSequence
    assert (ins.PatientID, ins.IssuerOfPatientID) == ("279035121518989", "ASIP-SANTE-INS-NIR")
    assert ins.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.250.1.213.1.4.10"
    assert (ipp.PatientID, ipp.IssuerOfPatientID) == ("IPP101", "AUT-AFFECTATION")
    assert ipp.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.250.1.213.4.5.2.4"
    assert (str(ds.PatientName), ds.PatientBirthDate) == ("PAT-TROIS^DOMINIQUE", "19790328")
    assert ds.PatientSex == "F"
    assert ds.StudyInstanceUID == "1.2.250.1.213.4.5.2.1.103"
    assert (ds.StudyDate, ds.StudyTime, ds.StudyID) == ("20210108", "102500", "103")
    assert ds.AccessionNumber == "ACN103"
    assert ds.IssuerOfAccessionNumberSequence[0].UniversalEntityID == "1.2.250.1.925.994044785528.27"
    assert ds.Modality == "KO"
    assert ds.SeriesInstanceUID not in {i.series_uid for i in study.instances}
    assert ds.ReferencedPerformedProcedureStepSequence == []
    assert ds.Manufacturer == "drimbox"
    assert (ds.ContentDate, ds.ContentTime, ds.TimezoneOffsetFromUTC) == ("20240506", "143005", "+0200")
    for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID):
        assert uid.startswith(UID_ROOT) and len(uid) <= 64 and uid.is_valid


def test_kos_request_and_sr_root(study: StudyInstances) -> None:
    ds = build_kos(study, exam_c_request(), now=NOW)
    (request,) = ds.ReferencedRequestSequence
    assert request.StudyInstanceUID == study.study_uid
    assert request.AccessionNumber == "ACN103"
    assert request.IssuerOfAccessionNumberSequence[0].UniversalEntityID == "1.2.250.1.925.994044785528.27"
    assert request.PlacerOrderNumberImagingServiceRequest == "OPN103"
    assert request.OrderPlacerIdentifierSequence[0].UniversalEntityID == "1.2.250.1.213.4.5.2.6"
    assert request.FillerOrderNumberImagingServiceRequest == ""
    code = request.RequestedProcedureCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("24727-0", "LN")
    assert code.CodeMeaning == "CT Head W contrast IV"
    assert request.RequestedProcedureDescription == "CT Head W contrast IV"
    assert "CodingSchemeIdentificationSequence" not in ds
    assert request.ReferencedStudySequence == []
    assert ds.ValueType == "CONTAINER"
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113030", "DCM", "Manifest")
    assert ds.ContinuityOfContent == "SEPARATE"
    template = ds.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "2010")
    text = ds.ContentSequence[0]
    assert (text.ValueType, text.RelationshipType) == ("TEXT", "CONTAINS")
    assert text.ConceptNameCodeSequence[0].CodeValue == "113012"
    assert all(item.RelationshipType == "CONTAINS" for item in ds.ContentSequence)


def test_evidence_equals_content_tree_and_retrieve_urls(study: StudyInstances) -> None:
    ds = build_kos(study, exam_c_request(), now=NOW)
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == study.study_uid
    evidence_uids = set()
    for series in evidence.ReferencedSeriesSequence:
        assert series.RetrieveURL == (
            f"{PUBLIC_URL}/dicom-web/studies/{study.study_uid}/series/{series.SeriesInstanceUID}"
        )
        assert series.RetrieveAETitle == "DRIMBOX"
        assert series.RetrieveLocationUID == "1.2.250.1.999.1.1.1"
        refs = series.ReferencedSOPSequence
        evidence_uids |= {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in refs}
    references = [i for i in ds.ContentSequence if i.ValueType in ("IMAGE", "COMPOSITE")]
    content_refs = [i.ReferencedSOPSequence[0] for i in references]
    content_uids = {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in content_refs}
    expected = {(i.sop_class_uid, i.sop_instance_uid) for i in study.instances}
    assert evidence_uids == content_uids == expected
    assert len(ds.ContentSequence) == len(study.instances) + 1


def test_parse_kos_round_trip(study: StudyInstances) -> None:
    ds = build_kos(study, exam_c_request(public_url=PUBLIC_URL + "/"), now=NOW)
    summary = parse_kos(kos_to_bytes(ds))
    assert summary.sop_instance_uid == ds.SOPInstanceUID
    assert summary.study_uid == study.study_uid
    assert summary.accession_number == "ACN103"
    assert summary.accession_issuer_oid == "1.2.250.1.925.994044785528.27"
    assert (summary.patient_id, summary.patient_id_oid) == ("279035121518989", "1.2.250.1.213.1.4.10")
    assert summary.issuer_of_patient_id == "ASIP-SANTE-INS-NIR"
    assert summary.patient_name == "PAT-TROIS^DOMINIQUE"
    assert summary.description == "Examen C : scanner cérébral avec injection"
    by_series = study.by_series()
    assert [s.series_uid for s in summary.series] == list(by_series)
    for series in summary.series:
        # No double slash even though public_url ended with one.
        url = f"{PUBLIC_URL}/dicom-web/studies/{study.study_uid}/series/{series.series_uid}"
        assert series.retrieve_url == url
        assert series.study_uid == study.study_uid
        assert series.retrieve_ae_title == "DRIMBOX"
        assert [i.sop_instance_uid for i in series.instances] == [
            i.sop_instance_uid for i in by_series[series.series_uid]
        ]
    expected = {i.sop_instance_uid for i in study.instances}
    assert summary.instance_uids() == summary.content_instance_uids == expected
    # Without the content tree (an access check): the same patient, study and evidence, no content read.
    evidence = parse_kos(kos_to_bytes(ds), content=False)
    assert (evidence.description, evidence.content_instance_uids) == ("", set())
    assert dataclasses.replace(evidence, description=summary.description,
                               content_instance_uids=summary.content_instance_uids) == summary  # fmt: skip


def test_kos_reuses_given_uids_and_mints_new_ones_otherwise(study: StudyInstances) -> None:
    fixed = exam_c_request(sop_instance_uid=UID_ROOT + "1", series_instance_uid=UID_ROOT + "2")
    ds = build_kos(study, fixed, now=NOW)
    assert (ds.SOPInstanceUID, ds.SeriesInstanceUID) == (UID_ROOT + "1", UID_ROOT + "2")
    a, b = build_kos(study, exam_c_request(), now=NOW), build_kos(study, exam_c_request(), now=NOW)
    assert a.SOPInstanceUID != b.SOPInstanceUID


def test_kos_timezone_offset(study: StudyInstances) -> None:
    ds = build_kos(study, exam_c_request(timezone_offset="-0330"), now=NOW)
    assert ds.TimezoneOffsetFromUTC == "-0330"
    with pytest.raises(KosError, match="timezone_offset"):
        build_kos(study, exam_c_request(timezone_offset="CET"), now=NOW)
    utc = build_kos(study, exam_c_request(), now=datetime(2024, 1, 1, tzinfo=UTC))
    assert utc.TimezoneOffsetFromUTC == "+0000"


def test_kos_refuses_what_it_cannot_build(study: StudyInstances) -> None:
    with pytest.raises(KosError, match="no instance"):
        build_kos(dataclasses.replace(study, instances=[]), exam_c_request())
    with pytest.raises(KosError, match="uid_root"):
        build_kos(study, exam_c_request(uid_root="1.2.x"))
    with pytest.raises(KosError, match="retrieve_location_uid"):
        build_kos(study, exam_c_request(retrieve_location_uid=""))


def test_parse_kos_rejects_what_is_not_a_kos(tmp_path: Path) -> None:
    with pytest.raises(KosError, match="not a readable DICOM"):
        parse_kos(b"not dicom at all")
    one = dataclasses.replace(exam_c_spec(), series_count=1, instances_per_series=1)
    (image,) = studies.write_study(tmp_path, one)
    for content in (True, False):
        with pytest.raises(KosError, match="not Key Object Selection"):
            parse_kos(image.read_bytes(), content=content)


def test_identity_mismatches(study: StudyInstances) -> None:
    req = exam_c_request()
    assert identity_mismatches(study, req) == []
    assert identity_mismatches(dataclasses.replace(study, patient_id="IPP101"), req) == []
    assert identity_mismatches(dataclasses.replace(study, accession_number=""), req) == []
    wrong = dataclasses.replace(study, patient_id="OTHER", accession_number="ACN999")
    wrong.inconsistent = ["PatientID"]
    problems = identity_mismatches(wrong, req)
    assert len(problems) == 3
    assert not any("OTHER" in p or "ACN999" in p for p in problems)  # no identifiers in error texts


@pytest.mark.parametrize(
    ("scheme", "designator", "declared"),
    [
        ("LN", "LN", None),
        ("1.2.250.1.213.2.5", "CCAM", "1.2.250.1.213.2.5"),
        ("CCAM", "CCAM", "1.2.250.1.213.2.5"),
        ("1.2.3.4.5", "99DRIMBOX", "1.2.3.4.5"),
    ],
)
def test_procedure_code_schemes(study: StudyInstances, scheme: str, designator: str, declared: str | None) -> None:
    req = exam_c_request(procedure_code="ACQH004", procedure_scheme=scheme, procedure_meaning="Scanographie")
    ds = build_kos(study, req, now=NOW)
    (code,) = ds.ReferencedRequestSequence[0].RequestedProcedureCodeSequence
    assert code.CodingSchemeDesignator == designator
    if declared is None:
        assert "CodingSchemeIdentificationSequence" not in ds
    else:
        (item,) = ds.CodingSchemeIdentificationSequence
        assert (item.CodingSchemeDesignator, item.CodingSchemeUID) == (designator, declared)
    no_code = build_kos(study, exam_c_request(procedure_code=""), now=NOW)
    assert no_code.ReferencedRequestSequence[0].RequestedProcedureCodeSequence == []
