"""Synthetic CT studies (deterministic UIDs and pixels) for the tests, the demo and the perf suite."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from drimbox.dimse.study_instances import InstanceRef, StudyInstances

if TYPE_CHECKING:
    # Only for the type: the report builders pull in lxml and the HL7 layer, which images do not need.
    from drimbox.demo.samples.reports import ExamSpec

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
# Non-CT synthetic exams are written as Secondary Capture, the one image IOD that accepts any modality.
SC_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")

# ANS test data, exam C (DRIM-M_DATA, CR_C.xml): see shared/ans-data/INDEX.md.
EXAM_C_STUDY_UID = "1.2.250.1.213.4.5.2.1.103"
EXAM_C_INS = "279035121518989"
EXAM_C_INS_OID = "1.2.250.1.213.1.4.10"
EXAM_C_IPP = "IPP101"
EXAM_C_IPP_ISSUER = "AUT-AFFECTATION"
EXAM_C_IPP_OID = "1.2.250.1.213.4.5.2.4"
EXAM_C_ACCESSION = "ACN103"
EXAM_C_ACCESSION_OID = "1.2.250.1.925.994044785528.27"
EXAM_C_PLACER_ORDER = "OPN103"
EXAM_C_PLACER_ORDER_OID = "1.2.250.1.213.4.5.2.6"
INS_ISSUER = "ASIP-SANTE-INS-NIR"
_SLICE_THICKNESS = 2.5


@dataclass(frozen=True)
class StudySpec:
    """What to generate: identifiers of the patient and study, and the shape of the series."""

    study_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: str = ""
    patient_sex: str = ""
    issuer_of_patient_id: str = ""
    # Issuer of Patient ID Qualifiers Sequence: Universal Entity ID (type ISO); "" = no sequence.
    patient_id_oid: str = ""
    accession_number: str = ""
    accession_issuer_oid: str = ""
    study_date: str = "20210108"
    study_time: str = "102500"
    study_id: str = "1"
    study_description: str = ""
    referring_physician_name: str = ""
    institution_name: str = ""
    modality: str = "CT"
    body_part: str = "HEAD"
    series_count: int = 2
    instances_per_series: int = 3
    # When > 0, this many instances in all, spread over the series (first series get the remainder).
    instance_total: int = 0
    rows: int = 64
    columns: int = 64
    series_descriptions: tuple[str, ...] = ()
    # Amplitude of a deterministic noise added to the pixels: real CT does not compress 50:1, and a
    # benchmark of compressed studies needs sizes like the ANS data set (~150 kB per JPEG-LS 512² slice).
    noise: int = 0
    # Explicit VR Little Endian, or JPEG-LS lossless (1.2.840.10008.1.2.4.80) encoded with pyjpegls.
    transfer_syntax: str = ExplicitVRLittleEndian

    def series_uid(self, series: int) -> str:
        """Series Instance UID of series `series` (0-based): the study UID plus a suffix, else a 2.25 UID."""
        return _derived_uid(self.study_uid, series + 1)

    def sop_uid(self, series: int, instance: int) -> str:
        """SOP Instance UID of instance `instance` (0-based) of series `series` (0-based)."""
        return _derived_uid(self.study_uid, series + 1, instance + 1)

    def series_description(self, series: int) -> str:
        """Series Description of series `series` (0-based)."""
        if series < len(self.series_descriptions):
            return self.series_descriptions[series]
        return f"Series {series + 1}"

    def series_size(self, series: int) -> int:
        """Number of instances in series `series` (0-based)."""
        if self.instance_total > 0:
            base, extra = divmod(self.instance_total, self.series_count)
            return base + (1 if series < extra else 0)
        return self.instances_per_series

    @property
    def instance_count(self) -> int:
        return sum(self.series_size(s) for s in range(self.series_count))

    @property
    def sop_class_uid(self) -> UID:
        return CT_IMAGE_STORAGE if self.modality == "CT" else SC_IMAGE_STORAGE


def _derived_uid(study_uid: str, *parts: int) -> str:
    uid = ".".join([study_uid, *map(str, parts)])
    if len(uid) <= 64:
        return uid
    # Deterministic too: the same inputs always give the same 2.25 UID.
    return str(generate_uid(prefix=None, entropy_srcs=[uid]))


def exam_c_spec(
    patient_id: Literal["ins", "ipp"] = "ins",
    instances_per_series: int = 5,
    rows: int = 128,
    columns: int = 128,
) -> StudySpec:
    """ANS exam C (CT head, PAT-TROIS^DOMINIQUE), with the INS or the local IPP as Patient ID."""
    if patient_id == "ins":
        pid, issuer, oid = EXAM_C_INS, INS_ISSUER, EXAM_C_INS_OID
    else:
        pid, issuer, oid = EXAM_C_IPP, EXAM_C_IPP_ISSUER, EXAM_C_IPP_OID
    return StudySpec(
        study_uid=EXAM_C_STUDY_UID,
        patient_id=pid,
        issuer_of_patient_id=issuer,
        patient_id_oid=oid,
        patient_name="PAT-TROIS^DOMINIQUE",
        patient_birth_date="19790328",
        patient_sex="F",
        accession_number=EXAM_C_ACCESSION,
        accession_issuer_oid=EXAM_C_ACCESSION_OID,
        study_date="20210108",
        study_time="102500",
        study_id="103",
        study_description="CT Head W contrast IV",
        referring_physician_name="MEDIONI^Stéphane",
        institution_name="Centre de radiologie Ambroise",
        modality="CT",
        body_part="HEAD",
        series_count=2,
        instances_per_series=instances_per_series,
        rows=rows,
        columns=columns,
        series_descriptions=("Serie C1 sans injection", "Serie C2 avec injection"),
    )


def exam_c_study(
    instances: int = 20, rows: int = 128, columns: int = 128, patient_id: Literal["ins", "ipp"] = "ins"
) -> StudySpec:
    """ANS exam C with `instances` instances in all over its two series (for the demo and perf)."""
    spec = exam_c_spec(patient_id, rows=rows, columns=columns)
    return dataclasses.replace(spec, instance_total=max(instances, spec.series_count))


# SNOMED CT region codes of the reports → Body Part Examined (PS3.16 CID 4031 defined terms).
_BODY_PARTS = {"774007": "HEAD", "69536005": "HEAD", "72696002": "KNEE", "80891009": "HEART"}


def study_for_exam(
    exam: ExamSpec,
    instances: int = 20,
    accession: str | None = None,
    rows: int = 128,
    columns: int = 128,
) -> StudySpec:
    """The images that go with a synthetic report (samples.reports.ExamSpec): same patient, study, accession.

    `accession` overrides the report's, to stage a PACS that disagrees with the RIS.
    """
    modality = exam.modalities[0][0] if exam.modalities else "OT"
    region = exam.regions[0][0] if exam.regions else ""
    start = exam.service_start
    return StudySpec(
        study_uid=exam.study_uid,
        patient_id=exam.ins,
        issuer_of_patient_id=INS_ISSUER,
        patient_id_oid=exam.ins_oid,
        patient_name=f"{exam.family}^{exam.given}",
        patient_birth_date=exam.birth_date,
        patient_sex=exam.sex,
        accession_number=exam.accession if accession is None else accession,
        accession_issuer_oid=exam.accession_issuer,
        study_date=start[:8],
        study_time=start[8:14],
        study_id=exam.name,
        study_description=exam.procedure_display,
        institution_name=exam.org_name,
        modality=modality,
        body_part=_BODY_PARTS.get(region, ""),
        series_count=2,
        instance_total=max(instances, 2),
        rows=rows,
        columns=columns,
        series_descriptions=(f"Serie {exam.name}1", f"Serie {exam.name}2"),
    )


def _header(spec: StudySpec) -> Dataset:
    """The attributes every instance of the study shares; per-instance ones are filled in later."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = spec.sop_class_uid
    ds.InstanceCreationDate = spec.study_date
    ds.InstanceCreationTime = spec.study_time
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    if spec.issuer_of_patient_id:
        ds.IssuerOfPatientID = spec.issuer_of_patient_id
    if spec.patient_id_oid:
        qualifier = Dataset()
        qualifier.UniversalEntityID = spec.patient_id_oid
        qualifier.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [qualifier]
    ds.PatientBirthDate = spec.patient_birth_date
    ds.PatientSex = spec.patient_sex
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.StudyID = spec.study_id
    ds.AccessionNumber = spec.accession_number
    if spec.accession_issuer_oid:
        issuer = Dataset()
        issuer.UniversalEntityID = spec.accession_issuer_oid
        issuer.UniversalEntityIDType = "ISO"
        ds.IssuerOfAccessionNumberSequence = [issuer]
    ds.ReferringPhysicianName = spec.referring_physician_name
    if spec.study_description:
        ds.StudyDescription = spec.study_description
    ds.Modality = spec.modality
    ds.BodyPartExamined = spec.body_part
    ds.PatientPosition = "HFS"
    ds.SeriesDate = spec.study_date
    ds.SeriesTime = spec.study_time
    ds.Manufacturer = "drimbox-samples"
    if spec.institution_name:
        ds.InstitutionName = spec.institution_name
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ContentDate = spec.study_date
    ds.ContentTime = spec.study_time
    ds.AcquisitionNumber = 1
    ds.PixelSpacing = [0.5, 0.5]
    if spec.sop_class_uid == CT_IMAGE_STORAGE:
        ds.PositionReferenceIndicator = ""
        ds.FrameOfReferenceUID = _derived_uid(spec.study_uid, 1000)
        ds.KVP = 120
        ds.SliceThickness = _SLICE_THICKNESS
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    else:
        ds.ConversionType = "WSD"
        ds.Laterality = ""
        ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    return ds


class _Phantom:
    """A head-like ellipse (air, skull, brain) whose size follows the slice position: cheap per slice."""

    def __init__(self, rows: int, columns: int, noise: int = 0) -> None:
        self.noise = noise
        self.rng = np.random.default_rng(20240912)
        y = (np.arange(rows, dtype=np.float32) - rows / 2) / (rows / 2)
        x = (np.arange(columns, dtype=np.float32) - columns / 2) / (columns / 2)
        self.r2 = (x[np.newaxis, :] / 0.8) ** 2 + (y[:, np.newaxis] / 0.95) ** 2
        # A fixed texture so that neighbouring slices differ and compression has something to do.
        self.texture = ((np.add.outer(np.arange(rows), 3 * np.arange(columns)) % 37) - 18).astype(np.int16)

    def slice(self, position: float) -> bytes:
        """Stored values (HU + 1024, 12 bits) at `position` in [0, 1], from base to top of the head."""
        scale = max(0.05, 1.0 - (2.0 * position - 1.0) ** 2) ** 0.5
        r2 = self.r2 / (scale * scale)
        image = np.full(r2.shape, 24, dtype=np.int16)  # air, -1000 HU
        image[r2 < 1.0] = 1024 + 1000  # skull
        image[r2 < 0.8] = 1024 + 40  # brain
        image[r2 < 0.8] += self.texture[r2 < 0.8]
        if self.noise:
            image += self.rng.integers(0, self.noise, size=image.shape, dtype=np.int16)
        return image.astype("<u2").tobytes()


def iter_study(spec: StudySpec) -> Iterator[tuple[str, Dataset]]:
    """Yield (file name, data set) for each instance. The same Dataset object is reused: save it at once."""
    ds = _header(spec)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = spec.sop_class_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    phantom = _Phantom(spec.rows, spec.columns, spec.noise)
    compress = spec.transfer_syntax != ExplicitVRLittleEndian
    for s in range(spec.series_count):
        count = spec.series_size(s)
        ds.SeriesInstanceUID = spec.series_uid(s)
        ds.SeriesNumber = s + 1
        ds.SeriesDescription = spec.series_description(s)
        for i in range(count):
            sop_uid = spec.sop_uid(s, i)
            ds.SOPInstanceUID = UID(sop_uid)
            ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
            ds.InstanceNumber = i + 1
            if spec.sop_class_uid == CT_IMAGE_STORAGE:
                z = -100.0 + i * _SLICE_THICKNESS
                ds.ImagePositionPatient = [-0.25 * spec.columns, -0.25 * spec.rows, z]
                ds.SliceLocation = z
            ds.PixelData = phantom.slice(i / max(1, count - 1))
            if compress:
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.compress(UID(spec.transfer_syntax))
            yield f"s{s + 1:02d}_i{i + 1:05d}.dcm", ds


def write_study(directory: Path, spec: StudySpec) -> list[Path]:
    """Write every instance of `spec` as a Part-10 file (Explicit VR Little Endian) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, ds in iter_study(spec):
        path = directory / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def expected_instances(spec: StudySpec) -> StudyInstances:
    """What a Study Root C-FIND of the study written from `spec` should return: for tests without a PACS."""
    return StudyInstances(
        study_uid=spec.study_uid,
        patient_id=spec.patient_id,
        issuer_of_patient_id=spec.issuer_of_patient_id,
        patient_name=spec.patient_name,
        patient_birth_date=spec.patient_birth_date,
        patient_sex=spec.patient_sex,
        accession_number=spec.accession_number,
        accession_issuer_oid=spec.accession_issuer_oid,
        study_date=spec.study_date,
        study_time=spec.study_time,
        study_id=spec.study_id,
        study_description=spec.study_description,
        referring_physician_name=spec.referring_physician_name,
        instances=[
            InstanceRef(
                series_uid=spec.series_uid(s),
                sop_class_uid=spec.sop_class_uid,
                sop_instance_uid=spec.sop_uid(s, i),
                modality=spec.modality,
                series_number=s + 1,
                series_description=spec.series_description(s),
                instance_number=i + 1,
                body_part_examined=spec.body_part,
            )
            for s in range(spec.series_count)
            for i in range(spec.series_size(s))
        ],
    )
