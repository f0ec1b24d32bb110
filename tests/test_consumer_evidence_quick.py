"""The consumer's evidence check: the quick reading of an instance's identity agrees with pydicom, or defers to it."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from drimbox.consumer.evidence import SeriesEvidence, _quick_read
from drimbox.consumer.retrieval import _instance

STUDY, SERIES, SOP = generate_uid(), generate_uid(), generate_uid()
CT = UID("1.2.840.10008.5.1.4.1.1.2")


def _part10(*, syntax: UID = ExplicitVRLittleEndian, study: str = STUDY, patient: str = "INS-1",
            sequence: bool = False) -> bytes:  # fmt: skip
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = SOP
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.SOPInstanceUID = CT, SOP
    ds.PatientID = patient
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, SERIES
    if sequence:
        ds.ReferencedImageSequence = [Dataset()]
        ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 16, 16, 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\0" * 8
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, little_endian=syntax != "1.2.840.10008.1.2.2",
               implicit_vr=syntax == ImplicitVRLittleEndian)  # fmt: skip
    data = out.getvalue()
    if sequence:  # pydicom writes defined lengths; a PACS often writes undefined ones
        ds["ReferencedImageSequence"].is_undefined_length = True
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        data = out.getvalue()
    return data


EVIDENCE = SeriesEvidence(STUDY, SERIES, frozenset({SOP}), frozenset({"INS-1"}))


def test_a_well_formed_instance_is_read_quickly_without_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    instance = _instance(_part10(patient="INS-1 "))  # LO padding to an even length
    assert _quick_read(instance) == {"SOPInstanceUID": SOP, "PatientID": "INS-1", "StudyInstanceUID": STUDY,
                                     "SeriesInstanceUID": SERIES}  # fmt: skip

    def no_pydicom(*args: object, **kwargs: object) -> None:
        raise AssertionError("pydicom was asked")

    monkeypatch.setattr(pydicom, "dcmread", no_pydicom)
    assert EVIDENCE.refusal(instance) is None


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"study": generate_uid()}, "study_mismatch"), ({"patient": "SOMEONE-ELSE"}, "patient_mismatch")],
)
def test_a_mismatch_is_judged_by_pydicom_with_its_reason(kwargs: dict[str, str], reason: str) -> None:
    data = _part10(study=kwargs.get("study", STUDY), patient=kwargs.get("patient", "INS-1"))
    assert EVIDENCE.refusal(_instance(data)) == reason


def test_what_the_quick_reading_does_not_know_goes_to_pydicom() -> None:
    implicit = _instance(_part10(syntax=ImplicitVRLittleEndian))
    undefined = _instance(_part10(sequence=True))
    assert _quick_read(implicit) is None and _quick_read(undefined) is None
    assert EVIDENCE.refusal(implicit) is None and EVIDENCE.refusal(undefined) is None


def test_an_identity_repeated_out_of_order_is_never_taken_from_the_quick_reading() -> None:
    data = _part10()
    # Another SOP Instance UID after the series UID, before the pixels: pydicom reads it last, so it is the one.
    other = generate_uid().encode()
    other += b"\0" * (len(other) % 2)
    at = data.index(b"\x28\x00\x02\x00US", 132)
    forged = _instance(data[:at] + b"\x08\x00\x18\x00UI" + len(other).to_bytes(2, "little") + other + data[at:])
    assert _quick_read(forged) is None
    assert EVIDENCE.refusal(forged) == "sop_instance_mismatch"
