"""C-GET retrieve on drimbox's upper layer: against a real Orthanc, and the codec and hand-off pieces alone."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import RLELossless

from drimbox.config import DicomSettings, PacsSettings
from drimbox.demo.samples.orthanc import OrthancServer
from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.studies import StudySpec, exam_c_spec, iter_study, write_study
from drimbox.dimse import message as msg
from drimbox.dimse import pdu
from drimbox.dimse.delivery import ReceivedInstance, Sink
from drimbox.dimse.network import DimseUnavailable
from drimbox.dimse.pool import AssociationPool
from drimbox.dimse.retrieve import RetrieveFailure, RetrieveOutcome, iter_retrieve
from drimbox.dimse.storage import storage_contexts

LOCAL = DicomSettings(ae_title="DRIMBOX", host="127.0.0.1", port=0)
STUDY_UID = "1.2.250.1.213.4.5.2.1.103.71"
orthanc_test = [pytest.mark.orthanc, pytest.mark.dcmtk]


# --- helpers shared with test_dimse_move -----------------------------------------------------------


def dataset_bytes(part10: bytes) -> bytes:
    """What follows the File Meta Information of a Part-10 file."""
    assert part10[128:132] == b"DICM"
    (group_length,) = struct.unpack_from("<L", part10, 132 + 8)
    return part10[132 + 12 + group_length :]


def orthanc_file(orthanc: OrthancServer, sop_uid: str) -> bytes:
    """The file Orthanc holds for `sop_uid`, from its REST API."""
    req = urllib.request.Request(f"{orthanc.base_url}/tools/lookup", data=sop_uid.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as rsp:
        instance_id = json.loads(rsp.read())[0]["ID"]
    with urllib.request.urlopen(f"{orthanc.base_url}/instances/{instance_id}/file", timeout=10) as rsp:
        return bytes(rsp.read())


def assert_same_as_orthanc(orthanc: OrthancServer, received: list[ReceivedInstance], expected_uids: set[str]) -> None:
    """Same SOP Instance UIDs, each data set byte for byte and its pixel data hash as Orthanc holds them."""
    assert [i.sop_instance_uid for i in received if i.sop_instance_uid in expected_uids] == [
        i.sop_instance_uid for i in received
    ]
    assert {i.sop_instance_uid for i in received} == expected_uids
    assert len(received) == len(expected_uids)
    for instance in received:
        original = orthanc_file(orthanc, instance.sop_instance_uid)
        assert dataset_bytes(instance.data) == dataset_bytes(original)
        ours, theirs = dcmread(io.BytesIO(instance.data)), dcmread(io.BytesIO(original))
        assert ours.file_meta.TransferSyntaxUID == theirs.file_meta.TransferSyntaxUID == instance.transfer_syntax_uid
        assert ours.file_meta.MediaStorageSOPInstanceUID == ours.SOPInstanceUID == instance.sop_instance_uid
        assert ours.SOPClassUID == instance.sop_class_uid
        assert hashlib.sha256(ours.PixelData).digest() == hashlib.sha256(theirs.PixelData).digest()


def open_connections(port: int) -> int:
    """Established TCP connections to `port` on this host (the PACS's open associations)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
            count += 1
    return count


def dimse_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("drimbox-c-get", "drimbox-c-move"))]


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def study_spec(suffix: str, series: int = 2, per_series: int = 4, rows: int = 64) -> StudySpec:
    spec = exam_c_spec(instances_per_series=per_series, rows=rows, columns=rows)
    return dataclasses.replace(spec, study_uid=f"{STUDY_UID}.{suffix}", series_count=series)


def all_uids(spec: StudySpec) -> set[str]:
    return {spec.sop_uid(s, i) for s in range(spec.series_count) for i in range(spec.series_size(s))}


# --- pieces alone ------------------------------------------------------------------------------------


def test_associate_pdus_round_trip() -> None:
    rq = pdu.AssociateRQ(
        "ORTHANC",
        "DRIMBOX",
        storage_contexts(["1.2.840.10008.5.1.4.1.1.2"]),
        max_length=1 << 20,
        roles={"1.2.840.10008.5.1.4.1.1.2": (False, True)},
    )
    encoded = pdu.encode_rq(rq)
    assert encoded[0] == pdu.ASSOCIATE_RQ and struct.unpack_from(">L", encoded, 2)[0] == len(encoded) - 6
    assert pdu.parse_rq(encoded[6:]) == rq
    ac = pdu.AssociateAC(
        "ORTHANC", "DRIMBOX", [pdu.ContextResult(1, 0, "1.2.840.10008.1.2"), pdu.ContextResult(3, 3)], max_length=16384
    )
    parsed = pdu.parse_ac(pdu.encode_ac(ac)[6:])
    assert parsed.contexts[0] == ac.contexts[0] and parsed.contexts[1].result == 3 and parsed.max_length == 16384
    rj = pdu.parse_rj(pdu.encode_rj(pdu.AssociateRJ(1, 1, 7))[6:])
    assert "called AE title not recognized" in rj.describe()


def test_storage_contexts_stay_within_128_and_cover_every_class_uncompressed() -> None:
    contexts = storage_contexts()
    assert len(contexts) == 127
    assert [c.context_id for c in contexts] == list(range(3, 256, 2))
    uncompressed = {c.abstract_syntax for c in contexts if "1.2.840.10008.1.2.1" in c.transfer_syntaxes}
    assert uncompressed == {c.abstract_syntax for c in contexts}
    # One context per compressed syntax: the PACS can pick the one matching what it stores.
    ct = [c.transfer_syntaxes for c in contexts if c.abstract_syntax == "1.2.840.10008.5.1.4.1.1.2"]
    assert len(ct) == 7 and all(len(ts) == 1 for ts in ct[1:])
    hinted = storage_contexts(["1.2.840.10008.5.1.4.1.1.4"])
    assert {c.abstract_syntax for c in hinted} == {"1.2.840.10008.5.1.4.1.1.4"} and len(hinted) == 7


def test_command_sets_and_file_meta_decode_with_pydicom() -> None:
    rsp = msg.encode_command(
        [
            (msg.COMMAND_FIELD, msg.us(msg.C_GET_RSP)),
            (msg.STATUS, msg.us(0xFF00)),
            (msg.REMAINING, msg.us(3)),
            (msg.COMPLETED, msg.us(2)),
        ]
    )
    command = msg.parse_command(rsp)
    assert command.field == msg.C_GET_RSP and command.status == 0xFF00
    assert command.sub_operations() == (3, 2, 0, 0) and not command.has_data_set
    _, identifier = msg.retrieve_identifier("1.2.3", "1.2.3.4", "1.2.3.4.5")
    header = msg.part10_header("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", "1.2.840.10008.1.2", "ORTHANC")
    ds = dcmread(io.BytesIO(header + identifier))
    assert ds.QueryRetrieveLevel == "IMAGE" and ds.SeriesInstanceUID == "1.2.3.4"
    assert (
        ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
        and ds.file_meta.SourceApplicationEntityTitle == "ORTHANC"
    )


async def test_sink_bounds_the_queue_drops_duplicates_and_wakes_on_stop() -> None:
    sink = Sink(asyncio.get_running_loop(), capacity=2)
    results: list[bool] = []

    def produce() -> None:
        for n in (1, 2, 2, 3, 4):
            results.append(sink.deliver(ReceivedInstance("1.2", f"1.2.{n}", "1.2.840.10008.1.2", b"")))

    producer = threading.Thread(target=produce)
    producer.start()
    await asyncio.sleep(0.3)
    # Two taken, the duplicate dropped at once, the fourth waiting for room.
    assert results == [True, True, True]
    first = await sink.next()
    assert isinstance(first, ReceivedInstance) and first.sop_instance_uid == "1.2.1"
    await asyncio.sleep(0.1)
    assert results == [True, True, True, True]
    sink.stop()
    await asyncio.to_thread(producer.join, 5)
    assert results == [True, True, True, True, False]


# --- against Orthanc ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pacs(orthanc_factory: Callable[..., OrthancServer]) -> OrthancServer:
    """An Orthanc of this module's own (other tests clear the shared one)."""
    return orthanc_factory()


@pytest.fixture(scope="module")
def study(pacs: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> StudySpec:
    spec = study_spec("1")
    pacs.store_files(write_study(tmp_path_factory.mktemp("get"), spec))
    return spec


@pytest.fixture
def pool() -> Iterator[AssociationPool]:
    pool = AssociationPool(max_per_peer=4, idle_seconds=0)
    yield pool
    pool.close()


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_get_study_yields_every_instance_as_orthanc_holds_it(
    pacs: OrthancServer, study: StudySpec, pool: AssociationPool
) -> None:
    outcome = RetrieveOutcome()
    received = [
        i
        async for i in iter_retrieve(
            pacs.pacs_settings(), LOCAL, study.study_uid, method="c-get", outcome=outcome, pool=pool
        )
    ]
    assert_same_as_orthanc(pacs, received, all_uids(study))
    assert (outcome.status, outcome.completed, outcome.failed, outcome.delivered) == (0, 8, 0, 8)


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_get_series_and_instance(pacs: OrthancServer, study: StudySpec, pool: AssociationPool) -> None:
    settings = pacs.pacs_settings()
    series = [i async for i in iter_retrieve(settings, LOCAL, study.study_uid, study.series_uid(1), pool=pool)]
    assert_same_as_orthanc(pacs, series, {study.sop_uid(1, i) for i in range(4)})
    one = [
        i
        async for i in iter_retrieve(
            settings, LOCAL, study.study_uid, study.series_uid(0), study.sop_uid(0, 2), pool=pool
        )
    ]
    assert_same_as_orthanc(pacs, one, {study.sop_uid(0, 2)})


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_get_with_the_sop_classes_the_study_holds(
    pacs: OrthancServer, study: StudySpec, pool: AssociationPool
) -> None:
    settings = pacs.pacs_settings()
    ct = [str(study.sop_class_uid)]
    received = [i async for i in iter_retrieve(settings, LOCAL, study.study_uid, sop_classes=ct, pool=pool)]
    assert_same_as_orthanc(pacs, received, all_uids(study))
    # A wrong hint leaves the PACS no context to send on: a failure naming the sub-operation counts.
    with pytest.raises(RetrieveFailure, match="1 failed") as failure:
        async for _ in iter_retrieve(
            settings, LOCAL, study.study_uid, sop_classes=["1.2.840.10008.5.1.4.1.1.4"], pool=pool
        ):
            pass
    assert failure.value.completed == 0 and failure.value.failed >= 1


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_get_spread_over_one_association_per_series(
    pacs: OrthancServer, study: StudySpec, pool: AssociationPool
) -> None:
    outcome = RetrieveOutcome()
    received = [
        i
        async for i in iter_retrieve(
            pacs.pacs_settings(), LOCAL, study.study_uid, parallel=4, outcome=outcome, pool=pool
        )
    ]
    assert_same_as_orthanc(pacs, received, all_uids(study))
    assert (outcome.status, outcome.completed, outcome.delivered, outcome.associations) == (0, 8, 8, 2)


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_get_unknown_study_is_empty(pacs: OrthancServer, study: StudySpec, pool: AssociationPool) -> None:
    outcome = RetrieveOutcome()
    assert [
        i async for i in iter_retrieve(pacs.pacs_settings(), LOCAL, f"{STUDY_UID}.404", outcome=outcome, pool=pool)
    ] == []
    assert outcome.unmatched and outcome.delivered == 0


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_get_keeps_the_stored_compressed_transfer_syntax(
    pacs: OrthancServer, pool: AssociationPool, tmp_path: Path
) -> None:
    spec = study_spec("2", series=1, per_series=2, rows=32)
    for name, ds in iter_study(spec):
        rle = copy.deepcopy(ds)
        rle.compress(RLELossless, generate_instance_uid=False)
        rle.save_as(tmp_path / name, enforce_file_format=True)
        # storescu would decompress it for want of an RLE context; Orthanc's REST stores it as is.
        req = urllib.request.Request(f"{pacs.base_url}/instances", data=(tmp_path / name).read_bytes(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()
    received = [i async for i in iter_retrieve(pacs.pacs_settings(), LOCAL, spec.study_uid, pool=pool)]
    assert {i.transfer_syntax_uid for i in received} == {RLELossless}
    assert_same_as_orthanc(pacs, received, all_uids(spec))


async def test_pacs_down_is_unavailable_fast() -> None:
    settings = PacsSettings(ae_title="NOBODY", host="127.0.0.1", port=free_port(), timeout=10)
    started = time.monotonic()
    with pytest.raises(DimseUnavailable, match="cannot connect"):
        async for _ in iter_retrieve(settings, LOCAL, STUDY_UID, pool=AssociationPool()):
            pass
    assert time.monotonic() - started < 1.0
    assert wait_until(lambda: not dimse_threads())


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_calling_ae_unknown_to_the_pacs_is_unavailable(
    pacs: OrthancServer, study: StudySpec, pool: AssociationPool
) -> None:
    stranger = DicomSettings(ae_title="STRANGER")
    with pytest.raises(DimseUnavailable, match="STRANGER"):
        async for _ in iter_retrieve(pacs.pacs_settings(), stranger, study.study_uid, pool=pool):
            pass


def _silent_pacs() -> tuple[socket.socket, threading.Thread]:
    """A peer that accepts any association, then never answers: the per-operation time-out must fire."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        header = conn.recv(6, socket.MSG_WAITALL)
        body = conn.recv(struct.unpack(">L", header[2:])[0], socket.MSG_WAITALL)
        rq = pdu.parse_rq(body)
        results = [pdu.ContextResult(c.context_id, 0, c.transfer_syntaxes[0]) for c in rq.contexts]
        conn.sendall(pdu.encode_ac(pdu.AssociateAC(rq.called_ae, rq.calling_ae, results, 16384)))
        while conn.recv(65536):
            pass
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


async def test_silent_pacs_times_out_per_operation() -> None:
    listener, thread = _silent_pacs()
    settings = PacsSettings(ae_title="SILENT", host="127.0.0.1", port=listener.getsockname()[1], timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DimseUnavailable, match=r"no response .* within 1 s"):
        async for _ in iter_retrieve(settings, LOCAL, STUDY_UID, pool=AssociationPool()):
            pass
    assert 0.9 < time.monotonic() - started < 3.0
    thread.join(5)
    listener.close()
    assert not thread.is_alive()


@pytest.mark.orthanc
@pytest.mark.dcmtk
@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_consumer_leaving_cancels_and_leaks_nothing(
    pacs: OrthancServer, study: StudySpec, pool: AssociationPool, how: str
) -> None:
    outcome = RetrieveOutcome()
    agen = iter_retrieve(pacs.pacs_settings(), LOCAL, study.study_uid, queue_size=1, outcome=outcome, pool=pool)
    got: list[ReceivedInstance] = []
    started = time.monotonic()
    if how == "aclose":
        async for instance in agen:
            got.append(instance)
            if len(got) == 2:
                break
        await agen.aclose()
    else:
        two = asyncio.Event()

        async def consume() -> None:
            # aclosing: an async generator left by an exception is otherwise only closed when collected.
            async with contextlib.aclosing(agen):
                async for instance in agen:
                    got.append(instance)
                    if len(got) == 2:
                        two.set()
                        await asyncio.sleep(60)

        task = asyncio.create_task(consume())
        await asyncio.wait_for(two.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(got) == 2 and time.monotonic() - started < 3.0
    # C-CANCEL went out and Orthanc ended the C-GET with status Cancel (0xFE00), well before the 8 instances.
    assert outcome.cancelled and outcome.status == msg.CANCEL and outcome.completed < 8
    assert wait_until(lambda: not dimse_threads())
    assert wait_until(lambda: open_connections(pacs.dicom_port) == 0)


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_pool_bounds_associations_and_reuses_them(pacs: OrthancServer, study: StudySpec) -> None:
    pool = AssociationPool(max_per_peer=1, idle_seconds=30)
    settings = pacs.pacs_settings()
    peak = 0

    async def retrieve() -> int:
        nonlocal peak
        count = 0
        async for _ in iter_retrieve(settings, LOCAL, study.study_uid, pool=pool):
            peak = max(peak, open_connections(pacs.dicom_port))
            count += 1
        return count

    try:
        assert list(await asyncio.gather(retrieve(), retrieve(), retrieve())) == [8, 8, 8]
        assert peak == 1
        # The association went back idle and serves the next retrieve.
        assert open_connections(pacs.dicom_port) == 1
        assert await retrieve() == 8
        assert pool.open_count(settings.host, settings.port, settings.ae_title) == 1
    finally:
        pool.close()
    assert wait_until(lambda: open_connections(pacs.dicom_port) == 0)


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_leaving_while_waiting_for_a_pool_slot_returns_at_once(pacs: OrthancServer, study: StudySpec) -> None:
    pool = AssociationPool(max_per_peer=1, idle_seconds=0)
    settings = pacs.pacs_settings()
    try:
        async with contextlib.aclosing(
            iter_retrieve(settings, LOCAL, study.study_uid, queue_size=1, pool=pool)
        ) as first:
            # The first retrieve holds the only association (its thread blocked on the full queue).
            await anext(first)
            second = iter_retrieve(settings, LOCAL, study.study_uid, pool=pool)
            waiting: asyncio.Task[ReceivedInstance] = asyncio.create_task(anext(second))
            await asyncio.sleep(0.5)
            assert not waiting.done()
            started = time.monotonic()
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert time.monotonic() - started < 1.0
    finally:
        pool.close()
    assert wait_until(lambda: not dimse_threads())


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_pacs_stopped_mid_retrieve_ends_with_a_clear_error(
    orthanc_factory: Callable[..., OrthancServer], tmp_path: Path
) -> None:
    doomed = orthanc_factory()
    spec = study_spec("3", series=1, per_series=40, rows=256)
    doomed.store_files(write_study(tmp_path, spec))
    got = 0
    started = time.monotonic()
    with pytest.raises(DimseUnavailable):
        async for _ in iter_retrieve(
            doomed.pacs_settings(timeout=5), LOCAL, spec.study_uid, queue_size=1, pool=AssociationPool(idle_seconds=0)
        ):
            got += 1
            if got == 3:
                doomed.process.kill()
                doomed.process.wait(5)
            await asyncio.sleep(0.05)
    assert 3 <= got < 40 and time.monotonic() - started < 8
    assert wait_until(lambda: not dimse_threads())
