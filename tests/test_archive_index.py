"""Native archive without the network: durable files, the index and its QIDO / C-FIND matching, refusals."""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from drimbox.archive import Archive, ArchiveFull, ArchiveUnavailable, QueryError, UnreadableDataset
from drimbox.archive.store import INCOMING, file_meta, split_part10
from drimbox.demo.samples.studies import StudySpec, exam_c_spec, iter_study

EXPLICIT = "1.2.840.10008.1.2.1"

STUDY_A = dataclasses.replace(exam_c_spec(instances_per_series=3, rows=16, columns=16))
STUDY_B = StudySpec(
    study_uid="1.2.826.0.1.3680043.8.498.200",
    patient_id="PID200",
    patient_name="DUPONT^Jean",
    patient_birth_date="19500101",
    patient_sex="M",
    accession_number="ACN200",
    study_date="20220315",
    study_time="083000",
    study_description="IRM genou",
    modality="MR",
    series_count=1,
    instances_per_series=2,
    rows=16,
    columns=16,
)
STUDY_C = dataclasses.replace(
    STUDY_B,
    study_uid="1.2.826.0.1.3680043.8.498.300",
    patient_id="PID300",
    patient_name="dupont^marie",
    accession_number="ACN301",
    study_date="20230701",
    study_time="171500",
    modality="CT",
    series_count=2,
    instances_per_series=1,
)


def part10(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def encoded(spec: StudySpec) -> list[bytes]:
    """Each instance of `spec` as Part-10 bytes (Explicit VR Little Endian)."""
    return [part10(ds) for _, ds in iter_study(spec)]


def dataset_part(data: bytes) -> bytes:
    return data[split_part10(data)[1] :]


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    arc = Archive.open(tmp_path / "var")
    yield arc
    arc.close()


@pytest.fixture
def filled(archive: Archive) -> Archive:
    for spec in (STUDY_A, STUDY_B, STUDY_C):
        for data in encoded(spec):
            archive.store_part10(data, source_ae="TEST")
    return archive


def uids(matches: Sequence[Mapping[str, object]], key: str = "StudyInstanceUID") -> list[object]:
    return [m[key] for m in matches]


async def test_study_level_attributes_and_counts(filled: Archive) -> None:
    studies = await filled.search("study", {})
    assert uids(studies) == [STUDY_A.study_uid, STUDY_B.study_uid, STUDY_C.study_uid]
    a = studies[0]
    assert a["PatientName"] == "PAT-TROIS^DOMINIQUE"
    assert a["PatientID"] == STUDY_A.patient_id
    assert a["ReferringPhysicianName"] == "MEDIONI^Stéphane"
    assert a["ModalitiesInStudy"] == ["CT"]
    assert a["NumberOfStudyRelatedSeries"] == 2
    assert a["NumberOfStudyRelatedInstances"] == 6
    assert studies[1]["ModalitiesInStudy"] == ["MR"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"PatientName": "DUPONT*"}, [STUDY_B.study_uid, STUDY_C.study_uid]),  # PN: case-insensitive
        ({"PatientName": "dupont^jean"}, [STUDY_B.study_uid]),
        ({"PatientName": "*TROIS*"}, [STUDY_A.study_uid]),
        ({"PatientID": "PID?00"}, [STUDY_B.study_uid, STUDY_C.study_uid]),
        ({"PatientID": "pid200"}, []),  # LO: exact and case-sensitive
        ({"AccessionNumber": "ACN20?"}, [STUDY_B.study_uid]),
        ({"StudyDate": "20220315"}, [STUDY_B.study_uid]),
        ({"StudyDate": "20220101-"}, [STUDY_B.study_uid, STUDY_C.study_uid]),
        ({"StudyDate": "-20220101"}, [STUDY_A.study_uid]),
        ({"StudyDate": "20210101-20221231"}, [STUDY_A.study_uid, STUDY_B.study_uid]),
        ({"StudyTime": "080000-120000"}, [STUDY_A.study_uid, STUDY_B.study_uid]),
        ({"StudyDate": "20220101-", "StudyTime": "-120000"}, [STUDY_B.study_uid]),
        ({"StudyInstanceUID": f"{STUDY_A.study_uid}\\{STUDY_C.study_uid}"}, [STUDY_A.study_uid, STUDY_C.study_uid]),
        ({"StudyInstanceUID": f"{STUDY_C.study_uid},{STUDY_B.study_uid}"}, [STUDY_B.study_uid, STUDY_C.study_uid]),
        ({"ModalitiesInStudy": "MR"}, [STUDY_B.study_uid]),
        ({"ModalitiesInStudy": "CT\\MR"}, [STUDY_A.study_uid, STUDY_B.study_uid, STUDY_C.study_uid]),
        ({"StudyDescription": "IRM*"}, [STUDY_B.study_uid, STUDY_C.study_uid]),
        ({"PatientName": "*", "StudyDate": ""}, [STUDY_A.study_uid, STUDY_B.study_uid, STUDY_C.study_uid]),
        ({"PatientName": "[DUPONT*"}, []),  # '[' is literal, not a GLOB class
    ],
)
async def test_study_matching(filled: Archive, filters: dict[str, str], expected: list[str]) -> None:
    assert uids(await filled.search("study", filters)) == expected


async def test_series_level(filled: Archive) -> None:
    series = await filled.search("series", {"StudyInstanceUID": STUDY_A.study_uid}, includefields=["PatientName"])
    assert uids(series, "SeriesInstanceUID") == [STUDY_A.series_uid(0), STUDY_A.series_uid(1)]
    assert series[0]["SeriesNumber"] == 1
    assert series[0]["SeriesDescription"] == "Serie C1 sans injection"
    assert series[0]["NumberOfSeriesRelatedInstances"] == 3
    assert series[0]["PatientName"] == "PAT-TROIS^DOMINIQUE"
    mr = await filled.search("series", {"Modality": "MR"})
    assert uids(mr, "SeriesInstanceUID") == [STUDY_B.series_uid(0)]
    # Relational: a series query on a patient attribute, across studies.
    ct_dupont = await filled.search("series", {"PatientName": "DUPONT*", "Modality": "CT"})
    assert uids(ct_dupont, "SeriesInstanceUID") == [STUDY_C.series_uid(0), STUDY_C.series_uid(1)]


async def test_instance_level_and_paging(filled: Archive) -> None:
    everything = await filled.search("instance", {})
    assert len(everything) == 6 + 2 + 2
    pages = [await filled.search("instance", {}, limit=3, offset=o) for o in range(0, 12, 3)]
    assert [m for page in pages for m in page] == everything
    assert await filled.search("instance", {}, limit=0) == []
    one = await filled.search(
        "instance", {"SeriesInstanceUID": STUDY_A.series_uid(1), "InstanceNumber": "2"}, includefields=["all"]
    )
    assert uids(one, "SOPInstanceUID") == [STUDY_A.sop_uid(1, 1)]
    match = one[0]
    assert (match["Rows"], match["Columns"], match["NumberOfFrames"]) == (16, 16, None)
    assert match["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2"
    assert match["AvailableTransferSyntaxUID"] == EXPLICIT
    assert match["PatientBirthDate"] == "19790328"
    assert match["IssuerOfAccessionNumberSequence"] == [
        {"UniversalEntityID": "1.2.250.1.925.994044785528.27", "UniversalEntityIDType": "ISO"}
    ]
    sop_list = f"{STUDY_B.sop_uid(0, 1)}\\{STUDY_C.sop_uid(1, 0)}"
    assert uids(await filled.search("instance", {"SOPInstanceUID": sop_list}), "SOPInstanceUID") == [
        STUDY_B.sop_uid(0, 1),
        STUDY_C.sop_uid(1, 0),
    ]


@pytest.mark.parametrize(
    ("level", "filters"),
    [
        ("study", {"Modality": "CT"}),  # below the level
        ("study", {"NoSuchKeyword": "x"}),
        ("study", {"StudyDate": "2021-01-08"}),
        ("study", {"StudyDate": "yesterday"}),
        ("series", {"SeriesNumber": "one"}),
        ("study", {"NumberOfStudyRelatedInstances": "3"}),
        ("patient", {}),
    ],
)
async def test_bad_queries_name_the_attribute(filled: Archive, level: str, filters: dict[str, str]) -> None:
    with pytest.raises(QueryError):
        await filled.search(level, filters)  # type: ignore[arg-type]


async def test_files_are_part10_with_the_dataset_bytes_as_received(archive: Archive) -> None:
    sent = encoded(STUDY_A)
    for data in sent:
        stored = archive.store_part10(data, source_ae="MODALITY")
        assert stored.outcome == "new"
    files = await archive.iter_instance_paths(STUDY_A.study_uid)
    assert [f.sop_uid for f in files] == [STUDY_A.sop_uid(s, i) for s in range(2) for i in range(3)]
    for data, f in zip(sent, files, strict=True):
        assert f.path == archive.root / f.study_uid / f.series_uid / f"{f.sop_uid}.dcm"
        written = f.path.read_bytes()
        assert f.size == len(written)
        assert dataset_part(written) == dataset_part(data)
        meta = dcmread(f.path, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == EXPLICIT
        assert meta.MediaStorageSOPInstanceUID == f.sop_uid
        assert meta.SourceApplicationEntityTitle == "MODALITY"
    series = await archive.iter_instance_paths(STUDY_A.study_uid, STUDY_A.series_uid(1))
    assert len(series) == 3
    single = await archive.iter_instance_paths(STUDY_A.study_uid, sop_uid=STUDY_A.sop_uid(0, 2))
    assert [f.sop_uid for f in single] == [STUDY_A.sop_uid(0, 2)]
    assert await archive.iter_instance_paths("1.2.3.4") == []
    assert list((archive.root / INCOMING).iterdir()) == []


def test_same_instance_twice_is_kept_then_replaced_then_moved(archive: Archive) -> None:
    first = next(iter_study(STUDY_A))[1]
    original = part10(first)
    assert archive.store_part10(original).outcome == "new"
    # A retried store (same bytes): nothing rewritten.
    assert archive.store_part10(original).outcome == "unchanged"
    first.SeriesDescription = "Corrigee"
    corrected = part10(first)
    stored = archive.store_part10(corrected)
    assert stored.outcome == "replaced"
    assert dataset_part(stored.path.read_bytes()) == dataset_part(corrected)
    assert archive.index.search("series", {})[0]["SeriesDescription"] == "Corrigee"
    # The same SOP Instance UID now in another series: it moves; the emptied series disappears.
    first.SeriesInstanceUID = STUDY_A.series_uid(5)
    moved = archive.store_part10(part10(first))
    assert moved.outcome == "replaced"
    assert not stored.path.exists() and moved.path.exists()
    assert uids(archive.index.search("series", {}), "SeriesInstanceUID") == [STUDY_A.series_uid(5)]
    assert len(archive.index.search("instance", {})) == 1


def test_concurrent_stores_share_commits(archive: Archive) -> None:
    spec = dataclasses.replace(STUDY_A, instances_per_series=40)
    datas = encoded(spec)
    errors: list[BaseException] = []

    def worker(chunk: list[bytes]) -> None:
        try:
            for data in chunk:
                archive.store_part10(data)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(datas[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(archive.index.search("instance", {})) == 80


@pytest.mark.parametrize(
    ("mangle", "status"),
    [
        (lambda ds: os.urandom(3000), None),  # garbage: some 0xC0xx status
        (lambda ds: ds + b"\x10\x00", 0xC000),  # a partial element header after the last element
        (lambda ds: ds + b"\x00\x00", 0xC000 - 1),  # zero padding is tolerated (stored)
        (lambda ds: ds[:-7], 0xC000),  # cut short inside the pixel data
        (lambda ds: ds.replace(b"1.2.250.1.213.4.5.2.1.103.1.1\x00", b"1.2.250.1.213.4.5.2.1.103.1.9\x00"), 0xC002),
    ],
)
def test_unusable_data_sets_are_refused_and_not_indexed(archive: Archive, mangle: object, status: int | None) -> None:
    data = dataset_part(encoded(STUDY_A)[0])
    if status == 0xC000 - 1:
        archive.store(mangle(data), EXPLICIT, sop_uid=STUDY_A.sop_uid(0, 0))  # type: ignore[operator]
        return
    with pytest.raises(UnreadableDataset) as refused:
        archive.store(mangle(data), EXPLICIT, sop_uid=STUDY_A.sop_uid(0, 0))  # type: ignore[operator]
    if status is None:
        assert 0xC000 <= refused.value.status <= 0xCFFF
    else:
        assert refused.value.status == status
    assert archive.index.search("instance", {}) == []
    assert not (archive.root / STUDY_A.study_uid).exists()


def test_unknown_transfer_syntax_and_not_part10(archive: Archive) -> None:
    data = encoded(STUDY_A)[0]
    with pytest.raises(UnreadableDataset) as refused:
        archive.store(dataset_part(data), "1.2.3.4.5")
    assert refused.value.status == 0xC003
    with pytest.raises(UnreadableDataset):
        archive.store_part10(dataset_part(data))


def test_disk_full_is_out_of_resources(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, buffers: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("drimbox.archive.store.os.writev", full)
    with pytest.raises(ArchiveFull) as refused:
        archive.store_part10(encoded(STUDY_A)[0])
    assert refused.value.status == 0xA700
    assert archive.index.search("instance", {}) == []
    assert list((archive.root / INCOMING).iterdir()) == []


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make `directory` unwritable, even for root (immutable attribute), and restore it afterwards."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a directory read-only")
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i not permitted here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_read_only_archive_is_a_processing_failure(archive: Archive) -> None:
    with read_only(archive.root), pytest.raises(ArchiveUnavailable) as refused:
        archive.store_part10(encoded(STUDY_A)[0])
    assert refused.value.status == 0x0110
    assert archive.index.search("instance", {}) == []


def test_leftovers_of_a_crash_are_swept_at_open(tmp_path: Path) -> None:
    arc = Archive.open(tmp_path)
    arc.store_part10(encoded(STUDY_A)[0])
    arc.close()
    leftover = tmp_path / "archive" / INCOMING / "half-written.tmp"
    leftover.write_bytes(b"\0" * 100)
    arc = Archive.open(tmp_path)
    try:
        assert not leftover.exists()
        assert len(arc.index.search("instance", {})) == 1
    finally:
        arc.close()


@pytest.mark.parametrize("source_ae", ["", "MODALITY", "CT1"])
def test_file_meta_is_what_pydicom_would_write(source_ae: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.45")  # odd length: padded with a NUL
    meta.TransferSyntaxUID = UID(EXPLICIT)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DRIMBOX_010"
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    out = DicomBytesIO()
    write_file_meta_info(out, meta, enforce_standard=True)
    ours = file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", EXPLICIT, source_ae)
    assert ours == b"\0" * 128 + b"DICM" + out.getvalue()


def test_a_series_directory_removed_by_hand_is_made_again(archive: Archive) -> None:
    datas = encoded(STUDY_A)
    first = archive.store_part10(datas[0])
    shutil.rmtree(first.path.parent)
    second = archive.store_part10(datas[1])
    assert second.path.exists()
    assert second.path.parent == first.path.parent
