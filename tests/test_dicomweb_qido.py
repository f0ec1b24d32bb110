"""QIDO-RS: query parsing and matching rules, and searches through dicomweb-client against the folder backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from drimbox.dicomweb.backend import QueryLevel, TagMatch
from drimbox.dicomweb.params import BadRequest
from drimbox.dicomweb.qido import STUDY_TAGS, element_matches, parse_query
from drimbox.dimse.identifier import decode, encode
from tests.support.dicomweb import MULTIFRAME_STUDY, SampleData, serve, write_samples
from tests.support.folder_backend import FolderBackend


def test_parse_query_resolves_keywords_tags_and_lists() -> None:
    query = parse_query(
        QueryLevel.SERIES,
        [
            ("Modality", "CT"),
            ("0020000E", "1.2.3,1.2.4"),
            ("includefield", "BodyPartExamined,00081030"),
            ("limit", "5"),
            ("offset", "2"),
            ("fuzzymatching", "true"),
        ],
        study_uid="1.2.3",
    )
    assert query.value(0x0020000D) == "1.2.3"
    assert query.value(0x00080060) == "CT"
    assert query.value(0x0020000E) == "1.2.3\\1.2.4"  # C-FIND's list syntax
    assert {0x00180015, 0x00081030, 0x00080060} <= query.return_tags
    assert not STUDY_TAGS <= query.return_tags  # the study is fixed by the path: its attributes are not added
    assert (query.limit, query.offset, query.fuzzy, query.include_all) == (5, 2, True, False)
    assert parse_query(QueryLevel.SERIES, [("includefield", "all")]).include_all
    assert STUDY_TAGS <= parse_query(QueryLevel.SERIES, []).return_tags


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ([("NoSuchKeyword", "x")], "unknown attribute"),
        ([("StudyInstanceUID", "1.2.*")], "not a UID"),
        ([("SeriesInstanceUID", "1.2,abc")], "not a UID"),
        ([("StudyDate", "2021-01-08")], "StudyDate"),
        ([("StudyDate", "yesterday")], "StudyDate"),
        ([("Rows", "5*")], "wildcards"),
        ([("limit", "0")], "limit"),
        ([("limit", "100000")], "limit"),
        ([("offset", "-1")], "offset"),
        ([("fuzzymatching", "maybe")], "fuzzymatching"),
        ([("PatientName", "A"), ("PatientName", "B")], "more than once"),
        ([("00400275.00321060", "x")], "sequences"),
    ],
)
def test_parse_query_rejects_with_a_reason(params: list[tuple[str, str]], fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        parse_query(QueryLevel.STUDY, params)


@pytest.mark.parametrize(
    ("vr", "pattern", "value", "fuzzy", "expected"),
    [
        ("PN", "PAT-TROIS*", "PAT-TROIS^DOMINIQUE", False, True),
        ("PN", "pat-trois*", "PAT-TROIS^DOMINIQUE", False, False),
        ("PN", "pat-trois*", "PAT-TROIS^DOMINIQUE", True, True),
        ("PN", "domi", "PAT-TROIS^DOMINIQUE", True, True),
        ("LO", "ACN10?", "ACN103", False, True),
        ("DA", "20210101-20210131", "20210108", False, True),
        ("DA", "-20201231", "20210108", False, False),
        ("DA", "20210108-", "20210108", False, True),
        ("TM", "10-11", "102500", False, True),
        ("TM", "1030-", "102500", False, False),
        ("UI", "1.2\\1.3", "1.3", False, True),
        ("CS", "CT", ["MR", "CT"], False, True),
        ("CS", "", None, False, True),
        ("CS", "CT", None, False, False),
        ("US", "64", 64, False, True),
    ],
)
def test_matching_rules(vr: str, pattern: str, value: object, fuzzy: bool, expected: bool) -> None:
    assert element_matches(TagMatch(0x00100010, vr, pattern), value, fuzzy) is expected


@pytest.fixture
def samples(tmp_path: Path) -> SampleData:
    return write_samples(tmp_path / "data")


@pytest.fixture
async def server(samples: SampleData) -> AsyncIterator[str]:
    backend = await FolderBackend.open(samples.root)
    async with serve(backend, max_results=50) as url:
        yield url


@pytest.fixture
def client(server: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{server}/dicom-web")


async def test_search_studies_with_filters(client: DICOMwebClient, samples: SampleData, server: str) -> None:
    spec = samples.spec
    both = await asyncio.to_thread(client.search_for_studies)
    assert {s["0020000D"]["Value"][0] for s in both} == {spec.study_uid, MULTIFRAME_STUDY}
    [exam_c] = await asyncio.to_thread(
        client.search_for_studies,
        search_filters={"PatientName": "PAT-TROIS*", "StudyDate": "20210101-20210131", "ModalitiesInStudy": "CT"},
    )
    assert exam_c["00201208"]["Value"] == [6] and exam_c["00201206"]["Value"] == [2]
    assert exam_c["00080061"]["Value"] == ["CT"]
    # dicomweb-client sends `Host: 127.0.0.1` without the port: the URL follows the Host header.
    assert exam_c["00081190"]["Value"] == [f"http://127.0.0.1/dicom-web/studies/{spec.study_uid}"]
    fuzzy = await asyncio.to_thread(
        client.search_for_studies, search_filters={"PatientName": "dominique"}, fuzzymatching=True
    )
    assert len(fuzzy) == 2  # the multi-frame study was made from the same patient's slices
    by_modality = await asyncio.to_thread(client.search_for_studies, search_filters={"ModalitiesInStudy": "OT"})
    assert [s["0020000D"]["Value"][0] for s in by_modality] == [MULTIFRAME_STUDY]
    none = await asyncio.to_thread(client.search_for_studies, search_filters={"AccessionNumber": "NOPE"})
    assert none == []


async def test_search_series_and_instances(client: DICOMwebClient, samples: SampleData) -> None:
    spec = samples.spec
    series = await asyncio.to_thread(client.search_for_series, spec.study_uid, fields=["BodyPartExamined"])
    assert [s["0020000E"]["Value"][0] for s in series] == [spec.series_uid(0), spec.series_uid(1)]
    assert series[0]["00180015"]["Value"] == ["HEAD"] and series[0]["00201209"]["Value"] == [3]
    assert "00100010" not in series[0]  # study attributes only when the study is not in the path
    instances = await asyncio.to_thread(client.search_for_instances, spec.study_uid, spec.series_uid(1))
    assert [i["00080018"]["Value"][0] for i in instances] == [spec.sop_uid(1, i) for i in range(3)]
    assert instances[0]["00280010"]["Value"] == [64]
    listed = await asyncio.to_thread(
        client.search_for_instances, search_filters={"SOPInstanceUID": f"{spec.sop_uid(0, 0)},{spec.sop_uid(1, 2)}"}
    )
    assert {i["00080018"]["Value"][0] for i in listed} == {spec.sop_uid(0, 0), spec.sop_uid(1, 2)}
    assert listed[0]["00100010"]["Value"] == [{"Alphabetic": "PAT-TROIS^DOMINIQUE"}]  # all levels above
    in_study = await asyncio.to_thread(client.search_for_instances, spec.study_uid)
    assert len(in_study) == 6
    everything = await asyncio.to_thread(
        client.search_for_instances, spec.study_uid, spec.series_uid(0), fields=["all"]
    )
    assert "00180050" in everything[0] and "7FE00010" not in everything[0]  # SliceThickness, never pixels


async def test_limit_offset_warning_and_statuses(server: str, samples: SampleData) -> None:
    url = f"{server}/dicom-web/studies/{samples.spec.study_uid}/instances"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, params={"limit": "4"}) as resp:
            assert resp.status == 200 and len(await resp.json()) == 4
            assert "additional results" in resp.headers["Warning"]
        async with session.get(url, params={"limit": "4", "offset": "4"}) as resp:
            assert resp.status == 200 and len(await resp.json()) == 2 and "Warning" not in resp.headers
            assert resp.content_type == "application/dicom+json"
        async with session.get(url, params={"SOPInstanceUID": samples.spec.sop_uid(1, 0)}) as resp:
            [found] = await resp.json()
            series_uid, sop_uid = samples.spec.series_uid(1), samples.spec.sop_uid(1, 0)
            assert found["00081190"]["Value"] == [
                f"{server}/dicom-web/studies/{samples.spec.study_uid}/series/{series_uid}/instances/{sop_uid}"
            ]
        async with session.get(url, params={"offset": "6"}) as resp:
            assert resp.status == 204
        async with session.get(url, params={"limit": "51"}) as resp:
            assert resp.status == 400 and "limit" in (await resp.json())["error"]
        async with session.get(f"{server}/dicom-web/studies/1.2.x/series") as resp:
            assert resp.status == 400
        async with session.get(f"{server}/dicom-web/studies", headers={"Accept": "application/dicom+xml"}) as resp:
            assert resp.status == 406


async def test_public_url_in_retrieve_urls(samples: SampleData) -> None:
    backend = await FolderBackend.open(samples.root)
    async with serve(backend, public_url="https://box.example.fr/") as url, aiohttp.ClientSession() as session:
        async with session.get(f"{url}/dicom-web/studies", params={"StudyInstanceUID": MULTIFRAME_STUDY}) as resp:
            [study] = await resp.json()
    assert study["00081190"]["Value"] == [f"https://box.example.fr/dicom-web/studies/{MULTIFRAME_STUDY}"]


class _Answers:
    """A backend whose search answers as a PACS's C-FIND does: raw (unconverted) data sets, one at a time."""

    def __init__(self, count: int) -> None:
        self.answers = []
        for n in range(count):
            ds = Dataset()
            # Every tenth answer in Latin-1, the others in UTF-8: the same bytes read differently.
            ds.SpecificCharacterSet = "ISO_IR 100" if n % 10 == 0 else "ISO_IR 192"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = (
                "1.2.826.0.1.3680043.10.1313.5",
                "1.2.826.0.1.3680043.10.1313.5.1",
            )
            ds.SOPInstanceUID, ds.SOPClassUID = f"1.2.826.0.1.3680043.10.1313.5.1.{n + 1}", "1.2.840.10008.5.1.4.1.1.2"
            ds.InstanceNumber, ds.Rows = n + 1, 512
            ds.add_new(0x00100010, "PN", "Hélène^Dupont".encode())
            self.answers.append(encode(ds))

    async def search(self, query: Any) -> AsyncIterator[Dataset]:
        for data in self.answers:
            await asyncio.sleep(0)
            yield decode(data)


async def test_a_long_answer_keeps_its_order_and_each_answer_its_own_values() -> None:
    """Answers are converted while the next ones arrive, in batches sharing the values they repeat: the page still
    lists them in the PACS's order, each with its own values and character set."""
    backend = _Answers(450)
    async with serve(backend, max_results=1000) as url, aiohttp.ClientSession() as session:  # type: ignore[arg-type]
        params = {"limit": "420", "includefield": "00100010"}
        async with session.get(
            f"{url}/dicom-web/studies/1.2.826.0.1.3680043.10.1313.5/instances", params=params
        ) as resp:
            assert resp.status == 200 and "additional results" in resp.headers["Warning"]
            page = await resp.json()
    assert [a["00200013"]["Value"] for a in page] == [[n + 1] for n in range(420)]
    assert all(a["00081190"]["Value"][0].endswith(f"/instances/1.2.826.0.1.3680043.10.1313.5.1.{n + 1}")
               for n, a in enumerate(page))  # fmt: skip
    names = [a["00100010"]["Value"][0]["Alphabetic"] for a in page]
    assert names[1] == "Hélène^Dupont" and names[0] == "HÃ©lÃ¨ne^Dupont"  # UTF-8 bytes read as Latin-1
    assert {names[n] for n in range(0, 420, 10)} == {names[0]} and names.count("Hélène^Dupont") == 420 - 42
