"""C-FIND on drimbox's upper layer: pooled associations, C-CANCEL, failures, against Orthanc and pynetdicom peers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from drimbox.config import PacsSettings
from drimbox.demo.samples.orthanc import OrthancServer
from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.studies import StudySpec, exam_c_spec, expected_instances, write_study
from drimbox.dimse.find_scu import list_series
from drimbox.dimse.network import DimseFailure, DimseUnavailable
from drimbox.dimse.pool import AssociationPool, default_pool
from drimbox.dimse.qido_find import iter_find
from drimbox.dimse.study_instances import StudyRootQueryRetrieveInformationModelFind, find_study_instances
from drimbox.dimse.ul import Association
from tests.test_dimse_get import open_connections, wait_until

BOX_AET = "DRIMBOX"


def study_query(**values: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def pool() -> Iterator[AssociationPool]:
    pool = AssociationPool(max_per_peer=2, idle_seconds=30)
    yield pool
    pool.close()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Peers of every association the C-FIND code opens, in order."""
    peers: list[str] = []
    real = Association.request

    def counting(host: str, port: int, rq: Any, timeout: float) -> Association:
        peers.append(f"{host}:{port}")
        return real(host, port, rq, timeout)

    monkeypatch.setattr(Association, "request", staticmethod(counting))
    return peers


# --- against Orthanc ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exam(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> StudySpec:
    spec = dataclasses.replace(exam_c_spec(instances_per_series=3, rows=16, columns=16), study_uid="1.2.826.0.1.9.1")
    orthanc.store_files(write_study(tmp_path_factory.mktemp("exam"), spec))
    return spec


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_queries_reuse_one_pooled_association(
    orthanc: OrthancServer, exam: StudySpec, pool: AssociationPool, opened: list[str]
) -> None:
    pacs = orthanc.pacs_settings()
    # Earlier tests leave idle associations in the process-wide pool: counting starts from none.
    default_pool.close_idle()
    assert wait_until(lambda: open_connections(orthanc.dicom_port) == 0)
    assert find_study_instances(pacs, BOX_AET, exam.study_uid, pool=pool) == expected_instances(exam)
    assert open_connections(orthanc.dicom_port) == 1
    found = [ds async for ds in iter_find(pacs, BOX_AET, study_query(StudyInstanceUID=exam.study_uid), pool=pool)]
    assert [str(ds.PatientName) for ds in found] == [exam.patient_name]
    assert list_series(pacs, BOX_AET, exam.study_uid, pool) == [exam.series_uid(0), exam.series_uid(1)]
    assert await asyncio.to_thread(find_study_instances, pacs, BOX_AET, exam.study_uid, pool=pool) is not None
    # Four queries, one association: still open on Orthanc's side, idle in the pool.
    assert opened == [f"{orthanc.host}:{orthanc.dicom_port}"]
    assert open_connections(orthanc.dicom_port) == 1
    assert pool.open_count(pacs.host, pacs.port, pacs.ae_title) == 1
    (idle,) = [assoc for entries in pool._idle.values() for assoc, _ in entries]
    assert idle.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    pool.close()
    assert wait_until(lambda: open_connections(orthanc.dicom_port) == 0)


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_an_association_the_pacs_dropped_is_replaced(
    orthanc: OrthancServer,
    exam: StudySpec,
    pool: AssociationPool,
    opened: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pacs = orthanc.pacs_settings()
    assert find_study_instances(pacs, BOX_AET, exam.study_uid, pool=pool) is not None
    # Gone while idle, without a word (as after a PACS restart or a firewall's idle time-out).
    # The pool checks an idle association before lending it; this one is dead but does not look it yet
    # (the PACS's FIN still on its way): the query fails before any response and runs again on a new one.
    (stale,) = [assoc for idle in pool._idle.values() for assoc, _ in idle]
    stale.sock.shutdown(socket.SHUT_RDWR)
    monkeypatch.setattr(stale, "wait_readable", lambda timeout: timeout != 0)
    assert find_study_instances(pacs, BOX_AET, exam.study_uid, pool=pool) is not None
    assert len(opened) == 2 and stale.closed


@pytest.mark.orthanc
async def test_unknown_calling_ae_is_unavailable_on_every_path(orthanc: OrthancServer, pool: AssociationPool) -> None:
    with pytest.raises(DimseUnavailable, match="does it know NOBODY"):
        [ds async for ds in iter_find(orthanc.pacs_settings(), "NOBODY", study_query(), pool=pool)]
    assert pool.open_count(orthanc.host, orthanc.dicom_port, orthanc.aet) == 0


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_no_patient_identity_in_logs(
    orthanc: OrthancServer, exam: StudySpec, pool: AssociationPool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pacs = orthanc.pacs_settings()
    assert find_study_instances(pacs, BOX_AET, exam.study_uid, pool=pool) is not None
    assert [ds async for ds in iter_find(pacs, BOX_AET, study_query(PatientID=exam.patient_id), pool=pool)]
    for secret in (exam.patient_id, "PAT-TROIS", "DOMINIQUE", "19790328"):
        assert secret not in caplog.text


# --- against pynetdicom peers ---------------------------------------------------------------------


@dataclasses.dataclass
class FakePacs:
    settings: PacsSettings
    connections: list[int]
    cancelled: threading.Event


@pytest.fixture
def fake_pacs() -> Iterator[Callable[[Callable[[Any, threading.Event], Any]], FakePacs]]:
    """A pynetdicom C-FIND SCP whose handler gets (event, cancelled); counts its connections."""
    servers: list[ThreadedAssociationServer] = []

    def start(handler: Callable[[Any, threading.Event], Any]) -> FakePacs:
        connections: list[int] = []
        cancelled = threading.Event()
        ae = AE(ae_title="FAKEPACS")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        handlers: list[Any] = [
            (evt.EVT_C_FIND, lambda event: handler(event, cancelled)),
            (evt.EVT_CONN_OPEN, lambda event: connections.append(1)),
        ]
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        assert server is not None
        servers.append(server)
        settings = PacsSettings(ae_title="FAKEPACS", host="127.0.0.1", port=server.server_address[1], timeout=5.0)
        return FakePacs(settings, connections, cancelled)

    yield start
    for server in servers:
        server.shutdown()


def find_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("drimbox-c-find")]


def answer(number: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = f"1.2.3.{number}"
    ds.PatientName = f"PATIENT^{number}"
    return ds


def many_answers(count: int, pause: float) -> Callable[[Any, threading.Event], Iterator[tuple[int, Dataset | None]]]:
    def handler(event: Any, cancelled: threading.Event) -> Iterator[tuple[int, Dataset | None]]:
        for number in range(count):
            if event.is_cancelled:
                cancelled.set()
                yield 0xFE00, None
                return
            time.sleep(pause)
            yield 0xFF00, answer(number)
        yield 0x0000, None

    return handler


async def test_leaving_early_sends_c_cancel_and_keeps_the_association(
    fake_pacs: Callable[..., FakePacs], pool: AssociationPool
) -> None:
    pacs = fake_pacs(many_answers(500, 0.01))
    got = []
    async for ds in iter_find(pacs.settings, BOX_AET, study_query(), pool=pool, queue_size=2):
        got.append(ds.StudyInstanceUID)
        if len(got) == 3:
            break
    assert got == ["1.2.3.0", "1.2.3.1", "1.2.3.2"]
    assert await asyncio.to_thread(pacs.cancelled.wait, 3.0), "the PACS never saw a C-CANCEL"
    # The DIMSE thread reads the PACS's final response (Cancel), then gives the association back.
    assert await asyncio.to_thread(wait_until, lambda: not find_threads())
    # The cancelled operation was drained: the next query on the same association gets its own answers only.
    again = [ds.StudyInstanceUID async for ds in iter_find(pacs.settings, BOX_AET, study_query(), pool=pool)]
    assert again[:3] == ["1.2.3.0", "1.2.3.1", "1.2.3.2"] and len(again) == 500
    assert len(pacs.connections) == 1


async def test_leaving_while_the_pacs_is_silent_sends_c_cancel(
    fake_pacs: Callable[..., FakePacs], pool: AssociationPool
) -> None:
    def slow(event: Any, cancelled: threading.Event) -> Iterator[tuple[int, Dataset | None]]:
        time.sleep(1.0)
        if event.is_cancelled:
            cancelled.set()
            yield 0xFE00, None
            return
        yield 0xFF00, answer(0)
        yield 0x0000, None

    pacs = fake_pacs(slow)
    agen = iter_find(pacs.settings, BOX_AET, study_query(), pool=pool)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(agen.__anext__(), 0.3)
    assert time.monotonic() - started < 1.0
    assert await asyncio.to_thread(pacs.cancelled.wait, 3.0), "the PACS never saw a C-CANCEL"
    assert wait_until(lambda: pool.open_count(pacs.settings.host, pacs.settings.port, "FAKEPACS") == 1)


async def test_failure_status_is_a_dimse_failure_and_the_association_stays(
    fake_pacs: Callable[..., FakePacs], pool: AssociationPool
) -> None:
    def refuse(event: Any, cancelled: threading.Event) -> Iterator[tuple[int | Dataset, None]]:
        status = Dataset()
        status.Status = 0xA900
        status.ErrorComment = "Identifier does not match SOP class"
        yield status, None

    pacs = fake_pacs(refuse)
    for _ in range(2):
        with pytest.raises(DimseFailure, match="Identifier does not match") as info:
            [ds async for ds in iter_find(pacs.settings, BOX_AET, study_query(), pool=pool)]
        assert info.value.status == 0xA900
    with pytest.raises(DimseFailure):
        find_study_instances(pacs.settings, BOX_AET, "1.2.3", pool=pool)
    assert len(pacs.connections) == 1


async def test_pacs_down_is_unavailable_quickly(pool: AssociationPool) -> None:
    pacs = PacsSettings(ae_title="ORTHANC", host="127.0.0.1", port=free_port(), timeout=10.0)
    started = time.monotonic()
    with pytest.raises(DimseUnavailable, match="no connection"):
        [ds async for ds in iter_find(pacs, BOX_AET, study_query(), pool=pool)]
    with pytest.raises(DimseUnavailable, match="no connection"):
        find_study_instances(pacs, BOX_AET, "1.2.3", pool=pool)
    assert time.monotonic() - started < 2.0
    assert pool.open_count(pacs.host, pacs.port, pacs.ae_title) == 0


async def test_silent_pacs_times_out_per_operation(fake_pacs: Callable[..., FakePacs], pool: AssociationPool) -> None:
    def stall(event: Any, cancelled: threading.Event) -> Iterator[tuple[int, None]]:
        time.sleep(1.5)
        yield 0x0000, None

    pacs = fake_pacs(stall)
    settings = dataclasses.replace(pacs.settings, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DimseUnavailable, match=r"within 0\.5s"):
        [ds async for ds in iter_find(settings, BOX_AET, study_query(), pool=pool)]
    assert time.monotonic() - started < 1.4
    # A silent association is aborted, never reused.
    assert pool.open_count(settings.host, settings.port, "FAKEPACS") == 0


async def test_non_ascii_query_is_sent_as_utf8(fake_pacs: Callable[..., FakePacs], pool: AssociationPool) -> None:
    seen: list[str] = []

    def echo_name(event: Any, cancelled: threading.Event) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        seen.append(str(query.get("SpecificCharacterSet", "")))
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientName = str(query.PatientName)
        yield 0xFF00, ds
        yield 0x0000, None

    pacs = fake_pacs(echo_name)
    found = [
        ds async for ds in iter_find(pacs.settings, BOX_AET, study_query(PatientName="MÉDIONI^Stéphane"), pool=pool)
    ]
    assert seen == ["ISO_IR 192"]
    # The answer came back in Latin-1 and is decoded as such.
    assert [str(ds.PatientName) for ds in found] == ["MÉDIONI^Stéphane"]


def test_identifier_codec_matches_pydicom() -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from drimbox.dimse.identifier import IdentifierError, RawAnswer, encode, tag

    ds = study_query(PatientName="DOE^JOHN", StudyDate="20200101-20201231", ModalitiesInStudy=["CT", "MR"])
    ds.SeriesNumber = "12"
    item = Dataset()
    item.UniversalEntityID = "1.2.250.1.2"
    item.LocalNamespaceEntityID = "RIS"
    ds.IssuerOfAccessionNumberSequence = [item]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDescription = "Crâne"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    assert encode(ds) == fp.getvalue()
    answer = RawAnswer.parse(fp.getvalue())
    assert answer.text(tag("PatientName")) == "DOE^JOHN"
    assert answer.text(tag("ModalitiesInStudy")) == "CT\\MR"
    assert answer.text(tag("StudyDescription")) == "Crâne"
    assert answer.number(tag("SeriesNumber")) == 12
    assert tag("AccessionNumber") not in answer
    (issuer,) = answer.items(tag("IssuerOfAccessionNumberSequence"))
    assert (issuer.text(tag("UniversalEntityID")), issuer.text(tag("LocalNamespaceEntityID"))) == ("1.2.250.1.2", "RIS")
    # As dcmtk (Orthanc) sends sequences: undefined lengths, delimitation items; the charset reaches the items.
    ds["IssuerOfAccessionNumberSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    item.LocalNamespaceEntityID = "RIS Côte"
    ds.PatientName = "DUPONT^René"
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    assert b"\xfe\xff\xdd\xe0" in fp.getvalue()
    answer = RawAnswer.parse(fp.getvalue())
    (issuer,) = answer.items(tag("IssuerOfAccessionNumberSequence"))
    assert issuer.text(tag("LocalNamespaceEntityID")) == "RIS Côte"
    assert answer.text(tag("PatientName")) == "DUPONT^René"
    assert answer.text(tag("StudyDescription")) == "Crâne"
    with pytest.raises(IdentifierError):
        RawAnswer.parse(fp.getvalue()[:-3])
