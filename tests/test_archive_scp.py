"""The archive SCP against dcmtk and pynetdicom peers: stored bytes, C-FIND answers, refusals."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import _config

from drimbox.archive import Archive, ArchiveScp
from drimbox.archive.store import file_meta, split_part10
from drimbox.config import DicomSettings, PacsSettings
from drimbox.demo.samples.studies import CT_IMAGE_STORAGE, exam_c_spec, expected_instances, write_study
from drimbox.dimse import find_study_instances, make_ae
from tests.support.dcmtk import require_tool
from tests.test_archive_index import read_only

pytestmark = pytest.mark.dcmtk

AE_TITLE = "DRIMBOX"
SPEC = exam_c_spec(instances_per_series=3, rows=64, columns=64)
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


@dataclass
class Box:
    archive: Archive
    scp: ArchiveScp
    port: int


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    archive = Archive.open(tmp_path / "var")
    scp = ArchiveScp(DicomSettings(ae_title=AE_TITLE, host="127.0.0.1", port=0), archive)
    port = scp.start()
    yield Box(archive, scp, port)
    scp.stop()
    archive.close()


@pytest.fixture(scope="module")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_study(tmp_path_factory.mktemp("study"), SPEC)


def storescu(port: int, files: list[Path], *options: str) -> subprocess.CompletedProcess[str]:
    exe = require_tool("storescu", "dcmtk")
    return subprocess.run(
        [exe, "-v", *options, "127.0.0.1", str(port), *map(str, files)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def acknowledged(log: str) -> list[str]:
    """Files storescu saw answered with success, from its -v log."""
    done: list[str] = []
    current = ""
    for line in log.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (Success)" in line and current:
            done.append(current)
            current = ""
    return done


def dataset_part(data: bytes) -> bytes:
    return data[split_part10(data)[1] :]


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)


# (storescu option, converter producing files in the transfer syntax it proposes)
SYNTAXES = {
    "explicit": ("-xe", None),
    "implicit": ("-xi", ["dcmconv", "+ti"]),
    "deflated": ("-xd", ["dcmconv", "+td"]),
    "jpeg-lossless": ("-xs", ["dcmcjpeg"]),
    "jpeg-ls": ("-xt", ["dcmcjpls"]),
    "rle": ("-xr", ["dcmcrle"]),
}


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_storescu_files_are_stored_byte_for_byte(
    box: Box, study_files: list[Path], tmp_path: Path, syntax: str
) -> None:
    option, converter = SYNTAXES[syntax]
    files = study_files
    if converter is not None:
        require_tool(converter[0], "dcmtk")
        files = []
        for src in study_files:
            dst = tmp_path / src.name
            subprocess.run([*converter, str(src), str(dst)], check=True, capture_output=True, timeout=60)
            files.append(dst)
    proc = storescu(box.port, files, option, "-aec", AE_TITLE)
    assert proc.returncode == 0, proc.stderr
    assert len(acknowledged(proc.stderr)) == len(files)
    for src in files:
        sent = src.read_bytes()
        meta = dcmread(src, stop_before_pixels=True).file_meta
        found = box.archive.index.instance_files(SPEC.study_uid, sop_uid=str(meta.MediaStorageSOPInstanceUID))
        assert len(found) == 1
        stored = found[0].path.read_bytes()
        assert found[0].transfer_syntax_uid == meta.TransferSyntaxUID
        # The data set exactly as storescu sent it (dcmtk writes what it read, for these files).
        # Deflated is re-deflated by storescu and padded to an even length on the wire: compare inflated.
        if syntax == "deflated":
            assert inflate(dataset_part(stored)) == inflate(dataset_part(sent)), f"{src.name} differs"
        else:
            assert dataset_part(stored) == dataset_part(sent), f"{syntax}: {src.name} differs"
        assert dcmread(found[0].path).SOPInstanceUID == meta.MediaStorageSOPInstanceUID


def test_pynetdicom_own_receive_loop_stores_too(tmp_path: Path, study_files: list[Path]) -> None:
    archive = Archive.open(tmp_path / "var")
    scp = ArchiveScp(DicomSettings(port=0), archive, fast_transport=False)
    try:
        proc = storescu(scp.start(), study_files, "-aec", AE_TITLE)
        assert proc.returncode == 0, proc.stderr
        assert len(archive.index.search("instance", {})) == len(study_files)
    finally:
        scp.stop()
        archive.close()


def findscu(port: int, out: Path, level: str, *keys: str) -> list[Dataset]:
    exe = require_tool("findscu", "dcmtk")
    out.mkdir(exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [exe, "-S", "-aec", AE_TITLE, "-X", "-od", str(out), "-k", f"QueryRetrieveLevel={level}"]
    for key in keys:
        args += ["-k", key]
    proc = subprocess.run(
        [*args, "127.0.0.1", str(port)], env=DCMTK_ENV, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_at_every_level(box: Box, study_files: list[Path], tmp_path: Path) -> None:
    assert storescu(box.port, study_files, "-aec", AE_TITLE).returncode == 0
    out = tmp_path / "find"
    studies = findscu(
        box.port,
        out,
        "STUDY",
        "PatientName=pat-trois*",
        "StudyDate=20210101-20211231",
        "StudyInstanceUID",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "AccessionNumber",
        "InstitutionName",
    )
    assert len(studies) == 1
    study = studies[0]
    assert study.StudyInstanceUID == SPEC.study_uid
    assert study.PatientName == "PAT-TROIS^DOMINIQUE"
    assert study.ModalitiesInStudy == "CT"
    assert int(study.NumberOfStudyRelatedInstances) == 6
    assert study.AccessionNumber == "ACN103"
    assert study.InstitutionName == ""  # asked, not indexed: returned empty, never restricting
    assert findscu(box.port, out, "STUDY", "StudyDate=-20201231", "StudyInstanceUID") == []
    series = findscu(box.port, out, "SERIES", f"StudyInstanceUID={SPEC.study_uid}", "SeriesInstanceUID", "SeriesNumber")
    assert sorted(s.SeriesInstanceUID for s in series) == [SPEC.series_uid(0), SPEC.series_uid(1)]
    images = findscu(
        box.port,
        out,
        "IMAGE",
        f"StudyInstanceUID={SPEC.study_uid}",
        f"SeriesInstanceUID={SPEC.series_uid(1)}",
        "SOPInstanceUID",
        "InstanceNumber=2",
    )
    assert [i.SOPInstanceUID for i in images] == [SPEC.sop_uid(1, 1)]


def test_the_source_pipeline_c_find_reads_the_archive(box: Box, tmp_path: Path) -> None:
    spec = exam_c_spec(instances_per_series=4, rows=32, columns=32)
    assert storescu(box.port, write_study(tmp_path / "c", spec), "-aec", AE_TITLE).returncode == 0
    own = PacsSettings(ae_title=AE_TITLE, host="127.0.0.1", port=box.port, timeout=10)
    assert find_study_instances(own, "DRIMBOX-SRC", spec.study_uid) == expected_instances(spec)
    assert find_study_instances(own, "DRIMBOX-SRC", "1.2.3.4.5") is None


def _send(port: int, dataset: Dataset | Path, context_uid: str = CT_IMAGE_STORAGE) -> int:
    ae = make_ae("TESTSCU", 10)
    ae.add_requested_context(context_uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    return int(status.Status)


def test_unparseable_data_set_is_refused(box: Box, tmp_path: Path) -> None:
    sop_uid = "1.2.826.0.1.3680043.8.498.77"
    bad = tmp_path / "bad.dcm"
    # A valid File Meta then bytes that are no data set; sent raw (pynetdicom does not parse it).
    bad.write_bytes(file_meta(CT_IMAGE_STORAGE, sop_uid, ExplicitVRLittleEndian) + b"\x10\x00\x10\x00PN\xff\x7fDOE")
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = _send(box.port, bad)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
    assert 0xC000 <= status <= 0xCFFF
    assert box.archive.index.search("instance", {}) == []


def test_read_only_archive_answers_failure(box: Box, study_files: list[Path]) -> None:
    with read_only(box.archive.root):
        proc = storescu(box.port, study_files[:1], "-aec", AE_TITLE)
        status = _send(box.port, dcmread(study_files[1]))
    assert acknowledged(proc.stderr) == []
    assert "Received Store Response" in proc.stderr
    assert status == 0x0110
    assert box.archive.index.search("instance", {}) == []


def test_unknown_sop_class_is_stored(box: Box, study_files: list[Path]) -> None:
    private_class = "1.2.826.0.1.3680043.8.498.1.99"
    ds = dcmread(study_files[0])
    ds.SOPClassUID = private_class
    ds.file_meta.MediaStorageSOPClassUID = UID(private_class)
    assert _send(box.port, ds, private_class) == 0x0000
    [stored] = box.archive.index.search("instance", {"SOPClassUID": private_class})
    assert stored["SOPInstanceUID"] == SPEC.sop_uid(0, 0)


def test_echo_and_wrong_called_ae(box: Box, study_files: list[Path]) -> None:
    echo = subprocess.run(
        [require_tool("echoscu", "dcmtk"), "-aec", AE_TITLE, "127.0.0.1", str(box.port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr
    proc = storescu(box.port, study_files[:1], "-aec", "NOT-THE-BOX")
    assert proc.returncode != 0
    assert "Called AE Title Not Recognized" in proc.stderr or "rejected" in proc.stderr.lower()
    assert box.archive.index.search("instance", {}) == []


def _wait_no_association(box: Box, timeout: float = 5.0) -> None:
    server = box.scp._server
    assert server is not None
    deadline = time.monotonic() + timeout
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.active_associations == []


def test_aborted_association_and_garbage_peer(box: Box, study_files: list[Path]) -> None:
    ae = make_ae("TESTSCU", 10)
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", box.port, ae_title=AE_TITLE)
    assert assoc.is_established
    assoc.abort()
    _wait_no_association(box)
    with socket.create_connection(("127.0.0.1", box.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Not DICOM: answered with A-ABORT PDUs (type 0x07). pynetdicom then keeps the half-open
        # association until its ACSE time-out; closing our end is all a well-behaved peer can do.
        assert raw.recv(1) == b"\x07"
    # Still serving, meanwhile.
    assert storescu(box.port, study_files[:2], "-aec", AE_TITLE).returncode == 0
    assert len(box.archive.index.search("instance", {})) == 2
