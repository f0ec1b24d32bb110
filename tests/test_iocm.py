"""IOCM rejection notes from the PACS revise the published KOS: real Orthanc, real storescu, the simulator's DMP."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.manifest import parse_kos
from drimbox.source.iocm import NotARejection, parse_rejection
from tests.support.fixtures_mesh import get_json
from tests.test_source_e2e import INS, load_exam, send

KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


def rejection_note(study_uid: str, refs: dict[str, list[tuple[str, str]]], code: str = "113001") -> Dataset:
    """A KOS rejection note as a PACS sends it: title from DCM, evidence = the rejected instances by series."""
    ds = Dataset()
    ds.SOPClassUID = KOS_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "KO"
    ds.PatientID = INS
    ds.ValueType = "CONTAINER"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = code, "DCM", "Rejected for Quality Reasons"
    ds.ConceptNameCodeSequence = [title]
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = []
    for series_uid, sops in refs.items():
        series = Dataset()
        series.SeriesInstanceUID = series_uid
        series.ReferencedSOPSequence = []
        for sop_class, sop_uid in sops:
            ref = Dataset()
            ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_uid
            series.ReferencedSOPSequence.append(ref)
        study.ReferencedSeriesSequence.append(series)
    ds.CurrentRequestedProcedureEvidenceSequence = [study]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(KOS_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def storescu(port: int, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-aet", "ORTHANC", "-aec", "DRIMBOX", "127.0.0.1", str(port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )


def kos_instances(sim: Any, kos_uid: str) -> dict[str, list[tuple[str, str]]]:
    kos = parse_kos(sim.document_bytes(kos_uid))
    return {s.series_uid: [(i.sop_class_uid, i.sop_instance_uid) for i in s.instances] for s in kos.series}


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


# --- parsing --------------------------------------------------------------------------------------------


def test_a_rejection_note_names_its_study_instances_and_reason(tmp_path: Path) -> None:
    note = rejection_note(
        "1.2.3",
        {"1.2.3.4": [("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"), ("1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.6")]},
        "113039",
    )
    rejection = parse_rejection(write(note, tmp_path / "n.dcm").read_bytes())
    assert (rejection.study_uid, rejection.sop_uids) == ("1.2.3", frozenset({"1.2.3.4.5", "1.2.3.4.6"}))
    assert rejection.reason == "Data Retention Policy Expired"


@pytest.mark.parametrize("case", ["other title", "two studies", "no evidence", "not dicom", "truncated"])
def test_anything_else_is_not_a_rejection(tmp_path: Path, case: str) -> None:
    note = rejection_note("1.2.3", {"1.2.3.4": [("1.2", "1.2.3.4.5")]}, "113000" if case == "other title" else "113001")
    if case == "two studies":
        other = Dataset()
        other.StudyInstanceUID = "9.8.7"
        other.ReferencedSeriesSequence = note.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        note.CurrentRequestedProcedureEvidenceSequence.append(other)
    if case == "no evidence":
        del note.CurrentRequestedProcedureEvidenceSequence
    data = write(note, tmp_path / "n.dcm").read_bytes()
    data = {"not dicom": b"MSH|^~\\&|junk", "truncated": data[: len(data) // 2]}.get(case, data)
    with pytest.raises(NotARejection):
        parse_rejection(data)


# --- through a running box ------------------------------------------------------------------------------


@pytest.mark.orthanc
@pytest.mark.dcmtk
@pytest.mark.sim
@pytest.mark.box
def test_proxy_rejection_notes_replace_then_withdraw_the_kos(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=6)
    box = source_box(orthanc)
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-1")) == "AA"
    first = box.wait_state("ACN103", ("published",))
    published = kos_instances(sim, first["kos_uid"])
    study_uid = first["study_uid"]
    series_uid, sops = next(iter(published.items()))
    rejected = sops[:2]

    # The PACS rejects two instances: the box answers success, then replaces the KOS by one without them.
    done = storescu(box.dicom_port, write(rejection_note(study_uid, {series_uid: rejected}), tmp_path / "r1.dcm"))
    assert done.returncode == 0, done.stderr
    second = box.wait_state("ACN103", ("published", "unchanged", "failed", "rejected"))
    assert second["state"] == "published" and second["action"] == "revise", second
    remaining = {uid for refs in kos_instances(sim, second["kos_uid"]).values() for _, uid in refs}
    everything = {uid for refs in published.values() for _, uid in refs}
    assert remaining == everything - {uid for _, uid in rejected}
    by_uid = {d["uniqueId"]: d for d in sim.documents(INS)}
    assert by_uid[first["kos_uid"]]["status"].endswith("Deprecated")
    assert by_uid[second["kos_uid"]]["status"].endswith("Approved")

    # The same note again: acknowledged, nothing new. Then the rest is rejected: the KOS is withdrawn.
    assert storescu(box.dicom_port, tmp_path / "r1.dcm").returncode == 0
    rest = {s: [r for r in refs if r not in rejected] for s, refs in published.items()}
    assert (
        storescu(box.dicom_port, write(rejection_note(study_uid, rest, "113037"), tmp_path / "r2.dcm")).returncode == 0
    )
    last = box.wait_state("ACN103", ("withdrawn", "unchanged", "failed", "rejected"))
    assert last["state"] == "withdrawn", last
    assert not {d["uniqueId"]: d for d in sim.documents(INS)}[second["kos_uid"]]["status"].endswith("Approved")
    states = [p["state"] for p in box.publications("ACN103")]
    assert states == ["replaced", "withdrawn", "withdrawn"], states

    # A Proxy box keeps no images: an image pushed to it is refused.
    image = next((tmp_path / "study-C").rglob("*.dcm"))
    pushed = storescu(box.dicom_port, image)
    assert "Refused" in pushed.stdout + pushed.stderr or pushed.returncode != 0


@pytest.mark.dcmtk
@pytest.mark.sim
@pytest.mark.box
def test_native_rejection_note_removes_the_instances_and_revises_the_kos(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    from drimbox.demo.samples.studies import study_for_exam, write_study

    box = source_box(orthanc, box={"profile": "native"})
    files = write_study(tmp_path / "study", study_for_exam(ANS_EXAMS["C"], instances=4))
    for path in files:
        assert storescu(box.dicom_port, path).returncode == 0
    assert send(box, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-1")) == "AA"
    first = box.wait_state("ACN103", ("published",))
    published = kos_instances(sim, first["kos_uid"])
    series_uid, sops = next(iter(published.items()))
    note = write(rejection_note(first["study_uid"], {series_uid: sops[:1]}), tmp_path / "r.dcm")
    assert storescu(box.dicom_port, note).returncode == 0
    second = box.wait_state("ACN103", ("published", "unchanged", "failed", "rejected"))
    assert second["state"] == "published" and second["kos_uid"] != first["kos_uid"], second
    served = get_json(f"{box.url}/dicom-web/studies/{first['study_uid']}/instances")
    assert sops[0][1] not in {i["00080018"]["Value"][0] for i in served}
    assert len(served) == sum(len(v) for v in published.values()) - 1
    # The note itself is not archived as an instance of the study.
    assert all(i["00080016"]["Value"][0] != KOS_CLASS for i in served)
    assert pydicom.dcmread(note).SOPInstanceUID not in {i["00080018"]["Value"][0] for i in served}
