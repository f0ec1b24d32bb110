"""Synthetic studies: right identifiers, deterministic content, valid CT images, fast enough for perf."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pydicom
import pytest

from drimbox.demo.samples import studies
from drimbox.demo.samples.studies import exam_c_spec, exam_c_study, expected_instances, study_for_exam, write_study
from tests.support.dcmtk import dciodvfy


def test_exam_c_identifiers(tmp_path: Path) -> None:
    paths = write_study(tmp_path, exam_c_spec(instances_per_series=2))
    assert len(paths) == 4
    ds = pydicom.dcmread(paths[0])
    assert ds.StudyInstanceUID == "1.2.250.1.213.4.5.2.1.103"
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("279035121518989", "ASIP-SANTE-INS-NIR")
    assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.250.1.213.1.4.10"
    assert (str(ds.PatientName), ds.PatientSex) == ("PAT-TROIS^DOMINIQUE", "F")
    assert ds.PatientBirthDate == "19790328"
    assert ds.AccessionNumber == "ACN103"
    assert ds.IssuerOfAccessionNumberSequence[0].UniversalEntityID == "1.2.250.1.925.994044785528.27"
    assert (ds.Modality, ds.Rows, ds.BitsAllocated) == ("CT", 128, 16)
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in paths}) == 2
    ipp = pydicom.dcmread(write_study(tmp_path / "ipp", exam_c_spec("ipp", instances_per_series=1))[0])
    assert (ipp.PatientID, ipp.IssuerOfPatientID) == ("IPP101", "AUT-AFFECTATION")


def test_content_is_deterministic(tmp_path: Path) -> None:
    spec = exam_c_spec(instances_per_series=3)
    first = [p.read_bytes() for p in write_study(tmp_path / "a", spec)]
    second = [p.read_bytes() for p in write_study(tmp_path / "b", spec)]
    assert first == second
    assert len({data[-2000:] for data in first}) > 1  # slices differ from one another


def test_expected_instances_match_the_files(tmp_path: Path) -> None:
    spec = exam_c_study(instances=7)
    paths = write_study(tmp_path, spec)
    expected = expected_instances(spec)
    assert len(paths) == len(expected.instances) == 7
    on_disk = {(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds in map(pydicom.dcmread, paths)}
    assert on_disk == {(i.series_uid, i.sop_instance_uid) for i in expected.instances}


def test_study_for_a_synthetic_report() -> None:
    reports = pytest.importorskip("drimbox.demo.samples.reports")
    exam = reports.ANS_EXAMS["E"]
    spec = study_for_exam(exam, instances=5, accession="OTHER")
    assert (spec.study_uid, spec.patient_id, spec.accession_number) == (exam.study_uid, exam.ins, "OTHER")
    assert (spec.modality, spec.sop_class_uid, spec.instance_count) == ("NM", studies.SC_IMAGE_STORAGE, 5)


@pytest.mark.dciodvfy
def test_ct_images_pass_dciodvfy(tmp_path: Path) -> None:
    one = dataclasses.replace(exam_c_spec(), series_count=1, instances_per_series=1)
    path = write_study(tmp_path, one)[0]
    report = dciodvfy(path)
    assert "CTImage" in report.output
    assert report.errors == [] and report.warnings == [], report.output


def test_300_ct_slices_of_512_squared_take_seconds(tmp_path: Path) -> None:
    spec = dataclasses.replace(exam_c_spec(rows=512, columns=512), series_count=1, instances_per_series=300)
    started = time.perf_counter()
    paths = write_study(tmp_path, spec)
    elapsed = time.perf_counter() - started
    assert len(paths) == 300 and sum(p.stat().st_size for p in paths) > 300 * 512 * 512 * 2
    assert elapsed < 15, f"{elapsed:.1f} s"
