"""Fuzzing DICOM in: data set parsing of the archive, C-STORE into both SCPs, our PDU parser, and STOW-RS."""

from __future__ import annotations

import json
import logging
import socket
import struct
import warnings
import zlib
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import event, example, given
from hypothesis import strategies as st
from pydicom import dcmread, dcmwrite
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from pynetdicom import _config

from drimbox.archive import Archive, ArchiveScp
from drimbox.archive.attributes import MAX_DEFLATE_RATIO, MIN_INFLATE_LIMIT, InstanceAttributes, read_attributes
from drimbox.archive.errors import ArchiveError
from drimbox.archive.store import file_meta, split_part10
from drimbox.config import DicomSettings
from drimbox.dicomweb.routes import dicomweb_routes
from drimbox.dicomweb.stow import stow_routes
from drimbox.dimse import make_ae
from drimbox.dimse.message import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    C_STORE_RQ,
    COMMAND_DATA_SET_TYPE,
    COMMAND_FIELD,
    MESSAGE_ID,
    PRIORITY,
    encode_command,
    parse_command,
    ui,
    us,
)
from drimbox.dimse.pdu import (
    AssociateRQ,
    PduError,
    ProposedContext,
    encode_rq,
    parse_ac,
    parse_rj,
    parse_rq,
)
from drimbox.dimse.store_scp import StoreSCP
from drimbox.manifest.kos import KosError
from drimbox.manifest.parse import KosSummary, parse_kos
from drimbox.source.native_backend import NativeBackend
from tests.fuzz.support import BackgroundLoop, budget, peak_memory, raw_http

CT = "1.2.840.10008.5.1.4.1.1.2"
AE_TITLE = "FUZZSCP"
# pydicom warns about every oddity it reads past; on garbage that is the expected noise.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]


def sample(transfer_syntax: str, n: int = 1) -> bytes:
    """A small CT instance as a Part-10 file in `transfer_syntax`."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, f"1.2.826.0.1.3680043.8.498.{n}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1000", "1.2.826.0.1.3680043.8.498.1001"
    ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = "FUZZ", "FUZZ^TEST", "CT", n
    seq_item = Dataset()
    seq_item.CodeValue, seq_item.CodingSchemeDesignator = "T-1", "SRT"
    ds.AnatomicRegionSequence = [seq_item]
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = bytes(range(32))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = UID(CT), ds.SOPInstanceUID
    out = BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


PART10: dict[str, bytes] = {ts: sample(ts) for ts in SYNTAXES}
DATASETS: dict[str, bytes] = {ts: data[split_part10(data)[1] :] for ts, data in PART10.items()}
# Shapes of hostile element headers: undefined/huge lengths, bad VRs, sequence delimiters out of place.
HOSTILE_ELEMENTS = [
    b"\x10\x00\x10\x00PN\xff\xff", b"\x10\x00\x10\x00XX\x04\x00abcd", b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff",
    b"\xe0\x7f\x10\x00OW\x00\x00\xf0\xff\xff\x7f", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xfe\xff\x00\xe0\xff\xff\xff\xff",
    b"\x08\x00\x18\x00UI\x40\x00" + b"1." * 32, b"\x20\x00\x0d\x00UI\x08\x001.2\n3.4\x00", b"\x20\x00\x0d\x00UI\x04\x00../.",
    b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 999", b"\x08\x00\x16\x00UI\x00\x00", b"\x00\x00\x00\x00UL\x04\x00\xff\xff\xff\xff",
    b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff" * 50,
]  # fmt: skip


@st.composite
def datasets(draw: st.DrawFn) -> tuple[str, bytes]:
    """(transfer syntax the data set is declared in, its bytes): truncated, overwritten, hostile elements, or lied about."""
    ts: str = draw(st.sampled_from(SYNTAXES))
    data = DATASETS[ts]
    if ts == DeflatedExplicitVRLittleEndian:
        data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)  # mutate the plain bytes, deflate after
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "overwrite", "insert", "insert", "length", "lie"]))
        pos = draw(st.integers(0, len(data)))
        if op == "truncate":
            data = data[:pos]
        elif op == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=8))
            data = data[:pos] + patch + data[pos + len(patch) :]
        elif op == "insert":
            data = data[:pos] + draw(st.one_of(st.sampled_from(HOSTILE_ELEMENTS), st.binary(max_size=16))) + data[pos:]
        elif op == "length" and len(data) >= 8:
            at = draw(st.integers(0, len(data) - 4))
            data = (
                data[:at]
                + struct.pack("<L", draw(st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 1, 3])))
                + data[at + 4 :]
            )
        elif op == "lie":
            ts = draw(st.sampled_from([*SYNTAXES, JPEGBaseline8Bit, "1.2.3.4", "", "1.2.840.10008.1.2.1\x00"]))
    if ts == DeflatedExplicitVRLittleEndian and draw(st.booleans()):
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        data = packer.compress(data) + packer.flush()
    return ts, data


# -- the archive's data set reader ---------------------------------------------------------------------


@given(datasets())
@example((ExplicitVRLittleEndian, DATASETS[ExplicitVRLittleEndian].replace(b"1.2.826.0.1.3680043.8.498.1001",
                                                                          b"1.2.826.0.1.3680043.8.498.100\n")))  # fmt: skip
def test_archive_reads_attributes_or_refuses_with_a_dicom_status(case: tuple[str, bytes]) -> None:
    ts, data = case
    try:
        attrs = read_attributes(data, ts)
    except ArchiveError as exc:
        assert 0xA700 <= exc.status <= 0xCFFF or exc.status == 0x0110
    else:
        assert isinstance(attrs, InstanceAttributes)
        for uid in (attrs.study_uid, attrs.series_uid, attrs.sop_uid):
            # What names the files on disk: a UID and nothing else (no separators, no newline, no "..").
            assert uid and len(uid) <= 64 and set(uid) <= set("0123456789."), repr(uid)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = Archive.open(tmp_path_factory.mktemp("archive"))
    yield archive
    archive.close()


@budget(0.5)
@given(st.one_of(
    datasets().map(lambda c: file_meta(CT, "1.2.826.0.1.3680043.8.498.1", c[0] or "1.2.3") + c[1]),
    st.binary(max_size=300).map(lambda b: PART10[ExplicitVRLittleEndian][:132] + b),
))  # fmt: skip
def test_archive_stores_part10_under_its_root_or_refuses(archive: Archive, data: bytes) -> None:
    try:
        stored = archive.store_part10(data, source_ae="FUZZ")
    except ArchiveError:
        return
    assert stored.path.resolve().is_relative_to(archive.root.resolve())


def test_deflate_bomb_is_refused_with_bounded_memory() -> None:
    # 512 MiB of zeros deflate to 0.5 MiB: inflated whole, they held that memory and took minutes to parse.
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    bomb = packer.compress(DATASETS[ExplicitVRLittleEndian][:-40])
    zeros = b"\0" * (1 << 24)
    for _ in range(32):
        bomb += packer.compress(zeros)
    bomb += packer.flush()
    with peak_memory() as peak:
        with pytest.raises(ArchiveError, match="inflates beyond"):
            read_attributes(bomb, DeflatedExplicitVRLittleEndian)
    limit = max(MIN_INFLATE_LIMIT, MAX_DEFLATE_RATIO * len(bomb))  # 50 MiB here, instead of 512
    assert peak() < 3 * limit, f"peak {peak() >> 20} MiB"


# -- our PDU and command set parsers (the Proxy profile's upper layer) -----------------------------------

RQ = encode_rq(AssociateRQ(AE_TITLE, "FUZZSCU", [ProposedContext(1, CT, (ExplicitVRLittleEndian,))], max_length=16384))


@st.composite
def pdu_bodies(draw: st.DrawFn) -> bytes:
    body = RQ[6:]
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(body)))
        op = draw(st.sampled_from(["cut", "patch", "length"]))
        if op == "cut":
            body = body[:pos]
        elif op == "patch":
            patch = draw(st.binary(min_size=1, max_size=4))
            body = body[:pos] + patch + body[pos + len(patch) :]
        elif pos + 2 <= len(body):
            body = body[:pos] + struct.pack(">H", draw(st.sampled_from([0, 1, 2, 3, 0xFFFF]))) + body[pos + 2 :]
    return body


@given(pdu_bodies())
def test_pdu_parser_returns_a_pdu_or_pdu_error(body: bytes) -> None:
    for parse in (parse_rq, parse_ac, parse_rj):
        try:
            parse(body)
        except PduError:
            pass


STORE_COMMAND = encode_command([
    (AFFECTED_SOP_CLASS_UID, ui(CT)), (COMMAND_FIELD, us(C_STORE_RQ)), (MESSAGE_ID, us(1)), (PRIORITY, us(0)),
    (COMMAND_DATA_SET_TYPE, us(0)), (AFFECTED_SOP_INSTANCE_UID, ui("1.2.826.0.1.3680043.8.498.1")),
])  # fmt: skip


@given(st.one_of(st.binary(max_size=200), st.binary(max_size=8).flatmap(
    lambda patch: st.integers(0, len(STORE_COMMAND)).map(lambda i: STORE_COMMAND[:i] + patch + STORE_COMMAND[i + len(patch) :])
)))  # fmt: skip
def test_command_parser_returns_a_command_or_pdu_error(data: bytes) -> None:
    try:
        command = parse_command(data)
        command.field  # noqa: B018 - reading it is the check
        command.text(AFFECTED_SOP_INSTANCE_UID)
    except PduError:
        pass


# -- our C-STORE SCP (C-MOVE destination, IOCM) over a socket, with raw PDUs -----------------------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def store_scp() -> Iterator[tuple[StoreSCP, Records]]:
    scp = StoreSCP(DicomSettings(ae_title=AE_TITLE, host="127.0.0.1", port=0), timeout=2.0,
                   unsolicited=lambda instance, ae: 0x0000).start()  # fmt: skip
    records = Records()
    logging.getLogger("drimbox.dimse").addHandler(records)
    yield scp, records
    logging.getLogger("drimbox.dimse").removeHandler(records)
    scp.stop()


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def pdata(context_id: int, flags: int, data: bytes) -> bytes:
    return pdu(4, struct.pack(">LBB", len(data) + 2, context_id, flags) + data)


_VALID_STORE = pdata(1, 3, STORE_COMMAND) + pdata(1, 2, DATASETS[ExplicitVRLittleEndian])
_PDU_STREAMS = st.one_of(
    pdu_bodies().map(lambda b: pdu(1, b)),
    st.binary(max_size=200),
    st.tuples(st.sampled_from([RQ]), st.lists(st.one_of(
        st.binary(max_size=40).map(lambda b: pdata(1, 3, b)),  # a command set of garbage
        st.binary(max_size=40).map(lambda b: pdata(1, 2, b)),  # a data set fragment before its command
        st.builds(pdata, st.integers(0, 255), st.integers(0, 255), st.binary(max_size=20)),
        st.binary(max_size=8).flatmap(lambda p: st.integers(0, len(_VALID_STORE)).map(
            lambda i: _VALID_STORE[:i] + p + _VALID_STORE[i + len(p) :])),
        st.sampled_from([pdu(5, b"\0" * 4), pdu(7, b"\0" * 4), pdu(9, b""), b"\x04\x00\xff\xff\xff\xff",
                         pdu(1, RQ[6:]), b"\x04\x00\x00\x00\x00\x02\x00\x00"]),
    ), max_size=4)).map(lambda t: t[0] + b"".join(t[1])),
)  # fmt: skip


def talk(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = bytearray()
        try:
            while chunk := sock.recv(1 << 16):
                answer += chunk
        except ConnectionResetError:
            pass
    return bytes(answer)


def echo(port: int) -> int:
    ae = make_ae("FUZZSCU", 10)
    ae.add_requested_context("1.2.840.10008.1.1", ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@budget(0.5)
@given(_PDU_STREAMS)
@example(pdu(1, RQ[6:].replace(b"FUZZSCU         ", b"FUZZ\xe9SCU        ", 1)) + _VALID_STORE)  # found: non-ASCII AE
@example(RQ + pdata(1, 3, encode_command([(MESSAGE_ID, us(1))])))  # found: a command set without Command Field
def test_our_store_scp_survives_hostile_pdus(store_scp: tuple[StoreSCP, Records], stream: bytes) -> None:
    scp, records = store_scp
    talk(scp.port, stream)
    unexpected = [r.getMessage() for r in records.records if "unexpected" in r.getMessage()]
    records.records.clear()
    assert not unexpected, unexpected
    assert echo(scp.port) == 0x0000


# -- the Native archive's C-STORE SCP (pynetdicom) with real associations ----------------------------------


@pytest.fixture(scope="module")
def archive_scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ArchiveScp, Path]]:
    archive = Archive.open(tmp_path_factory.mktemp("native"))
    scp = ArchiveScp(DicomSettings(ae_title=AE_TITLE, host="127.0.0.1", port=0), archive)
    scp.start()
    yield scp, tmp_path_factory.mktemp("files")
    scp.stop()
    archive.close()


@budget(0.25)
@given(datasets())
def test_native_scp_answers_every_c_store_with_a_status(
    archive_scp: tuple[ArchiveScp, Path], case: tuple[str, bytes]
) -> None:
    scp, files = archive_scp
    ts, data = case
    declared = ts if ts in SYNTAXES else ExplicitVRLittleEndian  # pynetdicom only sends in a syntax it knows
    path = files / "fuzz.dcm"
    path.write_bytes(file_meta(CT, "1.2.826.0.1.3680043.8.498.1", declared) + data)
    ae = make_ae("FUZZSCU", 10)
    ae.add_requested_context(CT, declared)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=AE_TITLE)
    assert assoc.is_established
    _config.STORE_SEND_CHUNKED_DATASET = True  # the bytes as written, not re-encoded by pydicom
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    assert "Status" in status, "no C-STORE response"
    code = int(status.Status)
    assert code == 0x0000 or 0xA700 <= code <= 0xCFFF or code == 0x0110, hex(code)
    assert status.get("ErrorComment") != "archive failure", "an unexpected exception in the SCP"


# -- STOW-RS into the Native archive ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    loop = BackgroundLoop()
    archive = Archive.open(tmp_path_factory.mktemp("stow"))
    app = web.Application(client_max_size=64 * 1024 * 1024)
    backend = NativeBackend(archive)
    app.add_routes(stow_routes(backend.stow))
    app.add_routes(dicomweb_routes(backend))  # to read back what was stored
    runner = web.AppRunner(app, access_log=None)

    async def start() -> int:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    yield loop.run(start())
    loop.run(runner.cleanup())
    loop.close()
    archive.close()


@st.composite
def stow_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    parts = draw(st.lists(st.one_of(
        datasets().map(lambda c: file_meta(CT, "1.2.826.0.1.3680043.8.498.1", c[0] or "1.2.3") + c[1]),
        st.sampled_from(list(PART10.values())), st.binary(max_size=100),
    ), max_size=3))  # fmt: skip
    boundary = draw(st.sampled_from(["b0undary", "x", "a" * 70]))
    part_type = draw(st.sampled_from(["application/dicom", "application/dicom+json", "text/plain", ""]))
    body = (
        b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts)
        + f"--{boundary}--\r\n".encode()
    )
    if draw(st.booleans()):
        body = body[: draw(st.integers(0, len(body)))]
    content_type = draw(st.sampled_from([
        f'multipart/related; type="application/dicom"; boundary={boundary}', f"multipart/related; boundary={boundary}",
        "multipart/related", f'multipart/related; boundary="{boundary}"; type="application/dicom+json"',
        "application/dicom", "multipart/related; boundary=", f"multipart/mixed; boundary={boundary}",
    ]))  # fmt: skip
    return content_type, body


@budget(0.5)
@given(st.sampled_from([b"/dicom-web/studies", b"/dicom-web/studies/1.2.826.0.1.3680043.8.498.1000",
                        b"/dicom-web/studies/1.2.3%0A", b"/dicom-web/studies/..%2F..%2Fetc"]), stow_bodies())  # fmt: skip
# Found: a bad study UID in the path (BadRequest outside any guard) and a body that is not multipart (ValueError).
@example(b"/dicom-web/studies/1.2.3%0A", ('multipart/related; type="application/dicom"; boundary=b', b"--b--\r\n"))
@example(b"/dicom-web/studies", ('multipart/related; type="application/dicom"; boundary=b0undary', b""))
@example(
    b"/dicom-web/studies", ('multipart/related; type="application/dicom"; boundary=b', b"--b\r\nC")
)  # InvalidHeader
def test_stow_answers_a_receipt_or_4xx_json(stow: int, path: bytes, request: tuple[str, bytes]) -> None:
    content_type, body = request
    answer = raw_http(stow, "POST", path, {"Content-Type": content_type}, body)
    assert answer.status in (200, 202, 400, 404, 409, 413, 415), (answer.status, answer.body[:300])
    if answer.status != 404:
        assert answer.headers["content-type"].startswith(("application/json", "application/dicom+json")), answer


# -- the KOS manifest, as a consumer reads it from the DMP (ITI-43) -----------------------------------------

KOS = (Path(__file__).parent.parent / "fixtures" / "xds" / "kos-exam-c.dcm").read_bytes()


@st.composite
def kos_files(draw: st.DrawFn) -> bytes:
    data = KOS
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(132, len(data)))
        op = draw(st.sampled_from(["truncate", "overwrite", "insert", "length"]))
        if op == "truncate":
            data = data[:pos]
        elif op == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=6))
            data = data[:pos] + patch + data[pos + len(patch) :]
        elif op == "insert":
            data = data[:pos] + draw(st.one_of(st.sampled_from(HOSTILE_ELEMENTS), st.binary(max_size=12))) + data[pos:]
        elif pos + 4 <= len(data):
            data = (
                data[:pos] + struct.pack("<L", draw(st.sampled_from([0xFFFFFFFF, 0x7FFFFFFF, 1, 3]))) + data[pos + 4 :]
            )
    return data


@given(kos_files())
@example(KOS[:138] + b"\x01\x00" + KOS[140:])  # found: a 1-byte UL raised BytesLengthException, not KosError
def test_kos_parser_returns_a_summary_or_kos_error(data: bytes) -> None:
    try:
        summary = parse_kos(data)
    except KosError:
        return
    assert isinstance(summary, KosSummary)


# -- instances with hostile values, stored (the archive checks only the UIDs), then served back ----------------

_IMAGE_VALUES: dict[str, st.SearchStrategy[object]] = {
    "Rows": st.sampled_from([0, 1, 3, 4, 65535]),
    "Columns": st.sampled_from([0, 1, 4, 65535]),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64]),
    "BitsStored": st.sampled_from([0, 1, 8, 12, 16, 33]),
    "HighBit": st.sampled_from([0, 7, 11, 15, 40]),
    "PixelRepresentation": st.sampled_from([0, 1, 2]),
    "SamplesPerPixel": st.sampled_from([0, 1, 3, 4]),
    "PlanarConfiguration": st.sampled_from([0, 1, 7]),
    "PhotometricInterpretation": st.sampled_from(
        ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "X"]
    ),
    "NumberOfFrames": st.sampled_from(["0", "-1", "abc", "1e9", "", "2", "99999999"]),
    "WindowCenter": st.sampled_from(["abc", "nan", "40", "1e308", "40\\50"]),
    "WindowWidth": st.sampled_from(["0", "-1", "abc", "inf", "400"]),
    "RescaleSlope": st.sampled_from(["0", "nan", "abc", "1e308"]),
    "RescaleIntercept": st.sampled_from(["-1024", "abc"]),
    "PixelData": st.sampled_from([b"", b"\0", bytes(range(32)), bytes(64), bytes(7)]),
    "SOPClassUID": st.sampled_from([CT, "1.2.3", "1.2.840.10008.5.1.4.1.1.88.59"]),
}


def instance_with(serial: int, values: dict[str, object]) -> bytes:
    """The sample CT with a new SOP Instance UID and these attribute values, written whatever they are."""
    ds = dcmread(BytesIO(PART10[ExplicitVRLittleEndian]))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"1.2.826.0.1.3680043.8.498.2.{serial}")
    for keyword, value in values.items():
        if isinstance(value, str):
            # Raw bytes, as a sender would put them: pydicom would refuse to hold "abc" in a DS or IS element.
            raw = value.encode("ascii")
            raw += b" " * (len(raw) % 2)
            tag = Tag(tag_for_keyword(keyword) or 0)
            ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
        else:
            setattr(ds, keyword, value)
    out = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


@st.composite
def hostile_instances(draw: st.DrawFn) -> bytes:
    keywords = draw(st.lists(st.sampled_from(sorted(_IMAGE_VALUES)), min_size=1, max_size=4, unique=True))
    return instance_with(draw(st.integers(10_000, 99_999)), {k: draw(_IMAGE_VALUES[k]) for k in keywords})


_READ_BACK = ["", "/metadata", "/frames/1", "/frames/2", "/rendered", "/thumbnail", "/frames/1/rendered",
              "/bulkdata/7FE00010"]  # fmt: skip
_ACCEPTS = ["*/*", "application/dicom+json", 'multipart/related; type="application/octet-stream"',
            'multipart/related; type="application/dicom"; transfer-syntax=*', "image/jpeg", "image/png",
            'multipart/related; type="image/jls"', 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80']  # fmt: skip


@budget(0.3)
@given(hostile_instances(), st.sampled_from(_READ_BACK), st.sampled_from(_ACCEPTS))
@example(instance_with(1, {"WindowCenter": "abc"}), "/metadata", "*/*")  # found: float("abc") in the JSON model
@example(instance_with(2, {"BitsAllocated": 0}), "/rendered", "*/*")  # found: pydicom's ValueError as a 500
def test_stored_hostile_values_are_served_or_refused_never_500(
    stow: int, data: bytes, suffix: str, accept: str
) -> None:
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b--\r\n"
    stored = raw_http(
        stow,
        "POST",
        b"/dicom-web/studies",
        {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        body,
    )
    assert stored.status in (200, 409), stored
    if stored.status != 200:
        return
    receipt = json.loads(stored.body)
    url = receipt["00081199"]["Value"][0]["00081190"]["Value"][0]
    path = url[url.index("/dicom-web") :] + suffix
    answer = raw_http(stow, "GET", path.encode(), {"Accept": accept})
    event(f"{suffix or 'instance'} HTTP {answer.status}")
    assert answer.status in (200, 204, 400, 404, 406), (answer.status, path, answer.body[:300])
