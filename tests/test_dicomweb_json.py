"""DICOM JSON (Annex F): values, PN, InlineBinary / BulkDataURI (nested too), headers read without pixel data."""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
)

from drimbox.demo.samples.studies import exam_c_spec, write_study
from drimbox.dicomweb.backend import FileBody, StoredInstance
from drimbox.dicomweb.json_model import (
    ElementMemo,
    dataset_json,
    instance_json,
    instance_json_bytes,
    metadata_from_instances,
    read_header,
    resolve_bulk_path,
)
from drimbox.dicomweb.json_model import encode as json_bytes
from drimbox.dimse.identifier import decode, encode
from tests.support.dicomweb import serve
from tests.support.folder_backend import FolderBackend

STUDY, SERIES, SOP = (
    "1.2.826.0.1.3680043.10.1234.9",
    "1.2.826.0.1.3680043.10.1234.9.1",
    "1.2.826.0.1.3680043.10.1234.9.1.1",
)
BIG = bytes(range(256)) * 8  # 2 KiB: above the inline threshold


def crafted(path: Path) -> Path:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, SOP
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.PatientName = "Dupont^Jeanne=デュポン^ジャンヌ"
    ds.OtherPatientNames = ["A^B", "C^D"]
    ds.ImageType = ["DERIVED", "", "OTHER"]
    ds.PatientWeight = "72.5"
    ds.ReferencedFrameNumber = [1, 3]
    ds.add_new(0x00081030, "LO", "")  # empty value: vr only
    ds.add_new(0x00209165, "AT", [0x00100010, 0x7FE00010])
    ds.add_new(0x00720028, "UV", [2**60])  # beyond a JSON number's exact range
    ds.add_new(0x00091010, "OB", b"\x01\x02\x03\x04")  # private, small
    item = Dataset()
    item.add_new(0x00091011, "OB", BIG)
    item.CodeValue = "X"
    ds.add_new(0x00091020, "SQ", Sequence([item]))
    ds.add_new(0x00400275, "SQ", Sequence())
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(SOP)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_annex_f_values(tmp_path: Path) -> None:
    ds = read_header(crafted(tmp_path / "x.dcm"))
    j = instance_json(ds, "/dw")
    prefix = f"/dw/studies/{STUDY}/series/{SERIES}/instances/{SOP}/bulkdata"
    assert j["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Dupont^Jeanne", "Ideographic": "デュポン^ジャンヌ"}],
    }
    assert j["00101001"]["Value"] == [{"Alphabetic": "A^B"}, {"Alphabetic": "C^D"}]
    assert j["00080008"]["Value"] == ["DERIVED", None, "OTHER"]
    assert j["00101030"] == {"vr": "DS", "Value": [72.5]}
    assert j["00081160"] == {"vr": "IS", "Value": [1, 3]}
    assert j["00081030"] == {"vr": "LO"}
    assert j["00209165"] == {"vr": "AT", "Value": ["00100010", "7FE00010"]}
    assert j["00720028"] == {"vr": "UV", "Value": [str(2**60)]}
    assert j["00091010"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"\x01\x02\x03\x04").decode()}
    nested = j["00091020"]["Value"][0]
    assert nested["00091011"] == {"vr": "OB", "BulkDataURI": f"{prefix}/00091020/0/00091011"}
    assert nested["00080100"] == {"vr": "SH", "Value": ["X"]}
    assert j["00400275"] == {"vr": "SQ"}
    assert not any(tag.startswith("0002") for tag in j)
    assert dataset_json(ds, None, tags={0x00100010}) == {"00100010": j["00100010"]}
    assert "00091011" not in dataset_json(ds, None)["00091020"]["Value"][0]  # nowhere to point: left out


def test_same_as_pydicom_and_pixels_never_loaded(tmp_path: Path) -> None:
    [path, *_] = write_study(tmp_path, exam_c_spec(instances_per_series=1, rows=64, columns=64))
    header = read_header(path)
    ours = instance_json(header, "/dicom-web")
    reference = pydicom.dcmread(path).to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda e: "X")
    assert ours.keys() == reference.keys()
    assert {k: v for k, v in ours.items() if k != "7FE00010"} == {k: v for k, v in reference.items() if k != "7FE00010"}
    assert ours["7FE00010"]["vr"] == "OW" and ours["7FE00010"]["BulkDataURI"].endswith("/bulkdata/7FE00010")
    raw = header.get_item(0x7FE00010, keep_deferred=True)
    assert raw is not None and raw.value is None  # still on disk


def test_resolve_bulk_path(tmp_path: Path) -> None:
    ds = pydicom.dcmread(crafted(tmp_path / "x.dcm"))
    assert resolve_bulk_path(ds, "00091020/0/00091011").value == BIG
    assert resolve_bulk_path(ds, "00091010").value == b"\x01\x02\x03\x04"
    for bad in ("00091020/1/00091011", "00091020/0", "7FE00010", "0009101"):
        with pytest.raises(KeyError):
            resolve_bulk_path(ds, bad)


async def test_bulkdata_route_serves_nested_values(tmp_path: Path) -> None:
    crafted(tmp_path / "x.dcm")
    backend = await FolderBackend.open(tmp_path)
    url_base = f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
    async with serve(backend) as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}{url_base}/metadata") as resp:
            [meta] = await resp.json()
        uri = meta["00091020"]["Value"][0]["00091011"]["BulkDataURI"]
        async with session.get(url + uri, headers={"Accept": "application/octet-stream"}) as resp:
            assert resp.status == 200 and resp.content_type == "application/octet-stream"
            assert await resp.read() == BIG
        async with session.get(url + uri) as resp:  # no Accept: multipart, one part
            reader = aiohttp.MultipartReader.from_response(resp)
            part = await reader.next()
            assert isinstance(part, aiohttp.BodyPartReader) and await part.read() == BIG


async def test_metadata_from_instances_matches_the_cached_path(tmp_path: Path) -> None:
    write_study(tmp_path, exam_c_spec(instances_per_series=2, rows=32, columns=32))
    backend = await FolderBackend.open(tmp_path)
    study = exam_c_spec().study_uid
    cached = [item async for item in backend.metadata(study, base="/dicom-web")]
    generic = [item async for item in metadata_from_instances(backend.iter_instances(study), "/dicom-web")]
    assert len(cached) == 4 and generic == cached


@pytest.mark.filterwarnings("ignore:Failed to decode")  # the Latin-1 name read as UTF-8, on purpose
async def test_a_series_metadata_is_each_instance_s_own(tmp_path: Path) -> None:
    """Built for a whole series (values its instances share converted once), each instance still reads as its own:
    the same bytes under another character set, byte order or VR encoding, and the values that differ."""
    files = []
    latin1_name = "Dupont^Hélène".encode("latin-1")
    kinds = [("ISO_IR 100", ExplicitVRLittleEndian), ("ISO_IR 192", ExplicitVRLittleEndian),
             ("ISO_IR 100", ImplicitVRLittleEndian), ("ISO_IR 100", ExplicitVRBigEndian)]  # fmt: skip
    for n, (charset, syntax) in enumerate(kinds * 20):
        ds = Dataset()
        ds.SpecificCharacterSet = charset
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, f"{SERIES}.{n + 1}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
        ds.add_new(0x00100010, "PN", latin1_name)  # the same bytes: Hélène in Latin-1, not valid UTF-8
        ds.InstanceNumber = n + 1
        # US: 512 little endian and 2 big endian are the same two bytes, 00 02
        ds.Rows, ds.Columns = (2 if syntax == ExplicitVRBigEndian else 512), 256
        ds.ImagePositionPatient = [0, 0, -1.25 * n]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)

    async def stored() -> AsyncIterator[StoredInstance]:
        for path in files:
            yield StoredInstance(STUDY, SERIES, SecondaryCaptureImageStorage, path.stem, "", FileBody(path, 0))

    together = [item async for item in metadata_from_instances(stored(), "/dw")]
    alone = [instance_json_bytes(read_header(path), "/dw") for path in files]
    assert together == alone
    first, utf8 = json.loads(together[0]), json.loads(together[1])
    assert first["00100010"]["Value"] == [{"Alphabetic": "Dupont^Hélène"}]
    assert utf8["00100010"]["Value"] != first["00100010"]["Value"]  # read as UTF-8 (replacement characters)
    assert [json.loads(item)["00280010"]["Value"] for item in together[:4]] == [[512], [512], [512], [2]]
    assert [json.loads(item)["00200032"]["Value"][2] for item in together[:3]] == [0, -1.25, -2.5]


@pytest.mark.parametrize("vr", ["DS", "IS"])
def test_numbers_read_from_their_bytes_are_pydicom_s(vr: str) -> None:
    """A DS or IS value turned into JSON from its bytes gives what pydicom's conversion gives, odd values included."""
    texts = ["72.5", " 1.0 ", "1e3", "-0", "+5", "1\\\\2", "", "  ", "1.0", "00012", "-2147483648",
             "1.5E+02 ", "2\\3.25\\-4", "12345678901234567", "3\\", "\\4"]  # fmt: skip
    texts += ["NaN", "inf"] if vr == "DS" else []  # not integers: pydicom refuses them as IS
    for text in texts:
        ds = Dataset()
        ds.add_new(0x00101030 if vr == "DS" else 0x00200013, vr, text)
        data = encode(ds)  # implicit VR little endian, as a C-FIND answer
        raw, converted = decode(data), decode(data)
        for _ in converted:  # every value converted by pydicom first
            pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's own warnings on the odd values
            # Compared as sent: 12 and 12.0 are equal in Python, not on the wire.
            assert json_bytes(dataset_json(raw, None, memo={})) == json_bytes(dataset_json(converted, None)), (vr, text)


def test_uids_read_from_their_bytes_are_pydicom_s() -> None:
    """A UI value turned into JSON from its bytes gives what pydicom's conversion gives, odd values included."""
    texts = ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "1.2\\3.4", "", " ", "1.2.3 ", " 1.2", "1.2.x", "1.2\\",
             "\\1.2", "1..2", ".", "1.2\\ 3"]  # fmt: skip
    for text in texts:
        ds = Dataset()
        ds.add_new(0x00080018, "UI", text)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's own warnings on the odd values
            data = encode(ds)  # implicit VR little endian, as a C-FIND answer: padded to even length with a NUL
            raw, converted = decode(data), decode(data)
            for _ in converted:  # every value converted by pydicom first
                pass
            assert json_bytes(dataset_json(raw, None, memo={})) == json_bytes(dataset_json(converted, None)), text


def test_a_value_its_vr_cannot_hold_goes_out_as_text() -> None:
    """A DS "abc" (in a PACS's C-FIND answer, say), read from its bytes: sent as the text it is, nothing fails."""
    ds = Dataset()
    ds.add_new(0x00101030, "DS", "999")  # Patient's Weight, made "abc" below (pydicom refuses to write it)
    ds.add_new(0x00200013, "IS", "12\\9")  # Instance Number, its second value made "x"
    ds.add_new(0x00100020, "LO", "ID-1")
    data = encode(ds).replace(b"999", b"abc").replace(b"12\\9", b"12\\x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        memos: list[ElementMemo | None] = [None, {}]
        for memo in memos:
            out = dataset_json(decode(data), None, memo=memo)
            assert out["00101030"] == {"vr": "DS", "Value": ["abc"]}
            assert out["00200013"] == {"vr": "IS", "Value": [12, "x"]}  # what pydicom reads, as text
            assert out["00100020"] == {"vr": "LO", "Value": ["ID-1"]}
