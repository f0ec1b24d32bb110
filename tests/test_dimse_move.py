"""C-MOVE retrieve to drimbox's own C-STORE SCP, and the mediator that routes each sub-operation to its C-MOVE."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from drimbox.config import DicomSettings
from drimbox.demo.samples.orthanc import OrthancServer, nodelay_env
from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.studies import StudySpec, write_study
from drimbox.dimse.delivery import ReceivedInstance, RetrieveFailure, Sink
from drimbox.dimse.network import DimseFailure, DimseUnavailable
from drimbox.dimse.pool import AssociationPool
from drimbox.dimse.retrieve import RetrieveOutcome, iter_retrieve
from drimbox.dimse.store_scp import MoveMediator, PendingMove, StoreSCP, shared_scp, stop_shared_scps
from tests.test_dimse_get import (
    all_uids,
    assert_same_as_orthanc,
    dimse_threads,
    open_connections,
    study_spec,
    wait_until,
)

MOVE_AET = "DRIMBOXMOVE"
LOCAL = DicomSettings(ae_title=MOVE_AET, host="127.0.0.1", port=0)


# --- the mediator alone ------------------------------------------------------------------------------


def _pending(sink: Sink, message_id: int, pacs_ae: str = "PACS", expected: set[str] | None = None) -> PendingMove:
    return PendingMove("BOX", message_id, pacs_ae, sink, frozenset(expected) if expected is not None else None)


async def test_mediator_routes_by_originator_then_by_expected_uids() -> None:
    loop = asyncio.get_running_loop()
    mediator = MoveMediator()
    a, b = _pending(Sink(loop, 1), 7, expected={"1.1", "1.2"}), _pending(Sink(loop, 1), 8)
    mediator.register(a)
    mediator.register(b)
    with pytest.raises(RuntimeError, match="already in flight"):
        mediator.register(_pending(Sink(loop, 1), 7))
    # Move Originator AE Title and Message ID name the C-MOVE...
    assert mediator.route("BOX", 8, "9.9", "PACS") is b
    assert mediator.route("BOX", 7, "1.2", "PACS") is a
    # ...but never hand it an instance it is known not to cover, nor one for a C-MOVE not in flight.
    assert mediator.route("BOX", 7, "9.9", "PACS") is None
    assert mediator.route("BOX", 9, "1.1", "PACS") is None
    assert mediator.route("OTHER", 8, "1.1", "PACS") is None
    # Without originator: the expected UIDs decide; ambiguity refuses.
    assert mediator.route("", None, "1.1", "PACS") is a
    assert mediator.route("", None, "9.9", "PACS") is None
    mediator.unregister(a)
    # The only C-MOVE in flight to that PACS, with no known UID list, takes what that PACS sends.
    assert mediator.route("", None, "9.9", "PACS") is b
    assert mediator.route("", None, "9.9", "ELSEWHERE") is None
    mediator.unregister(b)
    assert mediator.route("BOX", 8, "9.9", "PACS") is None


# --- against Orthanc ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pacs(orthanc_factory: Callable[..., OrthancServer]) -> OrthancServer:
    return orthanc_factory()


@pytest.fixture(scope="module")
def scp(pacs: OrthancServer) -> Iterator[StoreSCP]:
    """Our C-STORE SCP on a free port, declared to Orthanc as a modality."""
    scp = StoreSCP(LOCAL).start()
    pacs.add_modality(MOVE_AET, "127.0.0.1", scp.port)
    yield scp
    scp.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("drimbox-storescp")]


@pytest.fixture(scope="module")
def studies(pacs: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[StudySpec, StudySpec]:
    first, second = study_spec("11"), study_spec("12", series=3, per_series=3)
    directory = tmp_path_factory.mktemp("move")
    pacs.store_files(write_study(directory / "a", first) + write_study(directory / "b", second))
    return first, second


@pytest.fixture
def pool() -> Iterator[AssociationPool]:
    pool = AssociationPool(idle_seconds=0)
    yield pool
    pool.close()


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_move_study_series_and_instance(
    pacs: OrthancServer, scp: StoreSCP, studies: tuple[StudySpec, StudySpec], pool: AssociationPool
) -> None:
    study, _ = studies
    settings = pacs.pacs_settings()
    outcome = RetrieveOutcome()
    received = [
        i
        async for i in iter_retrieve(
            settings, LOCAL, study.study_uid, method="c-move", scp=scp, pool=pool, outcome=outcome
        )
    ]
    assert_same_as_orthanc(pacs, received, all_uids(study))
    assert (outcome.status, outcome.completed, outcome.delivered) == (0, 8, 8)
    series = [
        i
        async for i in iter_retrieve(
            settings, LOCAL, study.study_uid, study.series_uid(0), method="c-move", scp=scp, pool=pool
        )
    ]
    assert_same_as_orthanc(pacs, series, {study.sop_uid(0, i) for i in range(4)})
    one = [
        i
        async for i in iter_retrieve(
            settings,
            LOCAL,
            study.study_uid,
            study.series_uid(1),
            study.sop_uid(1, 3),
            method="c-move",
            scp=scp,
            pool=pool,
        )
    ]
    assert_same_as_orthanc(pacs, one, {study.sop_uid(1, 3)})


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_move_to_the_shared_scp_on_the_box_dicom_port(
    pacs: OrthancServer, studies: tuple[StudySpec, StudySpec], pool: AssociationPool
) -> None:
    local = DicomSettings(ae_title="DRIMBOXSHARED", host="127.0.0.1", port=free_port())
    pacs.add_modality(local.ae_title, local.host, local.port)
    try:
        received = [
            i
            async for i in iter_retrieve(pacs.pacs_settings(), local, studies[0].study_uid, method="c-move", pool=pool)
        ]
        assert {i.sop_instance_uid for i in received} == all_uids(studies[0])
        # The SCP stays up for the next C-MOVE (it is the box's DICOM port), and refuses a second AE title.
        assert shared_scp(local).port == local.port
        with pytest.raises(ValueError, match="already serves AE DRIMBOXSHARED"):
            shared_scp(dataclasses.replace(local, ae_title="OTHER"))
    finally:
        stop_shared_scps()
    assert f"drimbox-storescp-{local.port}" not in [t.name for t in threading.enumerate()]


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_move_unknown_study_is_empty(pacs: OrthancServer, scp: StoreSCP, pool: AssociationPool) -> None:
    outcome = RetrieveOutcome()
    got = [
        i
        async for i in iter_retrieve(
            pacs.pacs_settings(),
            LOCAL,
            "1.2.250.1.213.4.5.2.1.103.71.404",
            method="c-move",
            scp=scp,
            pool=pool,
            outcome=outcome,
        )
    ]
    assert got == [] and outcome.unmatched


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_move_to_a_destination_the_pacs_does_not_know_fails(
    pacs: OrthancServer, studies: tuple[StudySpec, StudySpec], pool: AssociationPool
) -> None:
    stranger = StoreSCP(DicomSettings(ae_title="UNDECLARED", host="127.0.0.1", port=0)).start()
    try:
        with pytest.raises(DimseFailure) as failure:
            async for _ in iter_retrieve(
                pacs.pacs_settings(), LOCAL, studies[0].study_uid, method="c-move", scp=stranger, pool=pool
            ):
                pass
    finally:
        stranger.stop()
    # 0xA801 (Move Destination unknown) by the standard; Orthanc 1.10 answers 0xC000 and logs the reason.
    assert isinstance(failure.value, RetrieveFailure) and failure.value.status in (0xA801, 0xC000)
    assert failure.value.completed == 0


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_concurrent_moves_each_get_only_their_own_instances(
    pacs: OrthancServer, scp: StoreSCP, studies: tuple[StudySpec, StudySpec], pool: AssociationPool
) -> None:
    settings = pacs.pacs_settings()

    async def move(spec: StudySpec, parallel: int = 1) -> list[ReceivedInstance]:
        got = []
        # queue_size=1 and a pause per instance keep the C-MOVEs in flight at the same time (the second
        # study as three C-MOVEs, one per series: four C-MOVEs at once into one SCP).
        async for instance in iter_retrieve(
            settings, LOCAL, spec.study_uid, method="c-move", scp=scp, pool=pool, queue_size=1, parallel=parallel
        ):
            got.append(instance)
            await asyncio.sleep(0.01)
        return got

    for _ in range(3):
        first, second = await asyncio.gather(move(studies[0]), move(studies[1], parallel=3))
        assert {i.sop_instance_uid for i in first} == all_uids(studies[0]) and len(first) == 8
        assert {i.sop_instance_uid for i in second} == all_uids(studies[1]) and len(second) == 9


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_consumer_leaving_a_move_cancels_and_leaks_nothing(
    pacs: OrthancServer, scp: StoreSCP, studies: tuple[StudySpec, StudySpec], pool: AssociationPool
) -> None:
    outcome = RetrieveOutcome()
    got = 0
    started = time.monotonic()
    async with contextlib.aclosing(
        iter_retrieve(
            pacs.pacs_settings(),
            LOCAL,
            studies[1].study_uid,
            method="c-move",
            scp=scp,
            pool=pool,
            queue_size=1,
            outcome=outcome,
        )
    ) as instances:
        async for _ in instances:
            got += 1
            if got == 2:
                break
    assert time.monotonic() - started < 3.0
    assert outcome.cancelled and outcome.completed < 9
    assert wait_until(lambda: not dimse_threads())
    assert wait_until(lambda: open_connections(pacs.dicom_port) == 0)
    # Orthanc's association to our SCP ends too.
    assert wait_until(lambda: open_connections(scp.port) == 0)


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_scp_refuses_stores_no_move_asked_for_and_answers_echo(
    scp: StoreSCP, studies: tuple[StudySpec, StudySpec], tmp_path: Path
) -> None:
    paths = write_study(tmp_path, study_spec("13", series=1, per_series=1))
    storescu, echoscu = shutil.which("storescu"), shutil.which("echoscu")
    assert storescu is not None and echoscu is not None
    pushed = subprocess.run(
        [storescu, "-v", "-aec", MOVE_AET, "127.0.0.1", str(scp.port), str(paths[0])],
        env=nodelay_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # 0x0124: Refused, not authorized: no C-MOVE in flight asked for this instance.
    assert "Received Store Response (Unknown Status: 0x124)" in pushed.stdout + pushed.stderr
    ok = subprocess.run(
        [echoscu, "-aec", MOVE_AET, "127.0.0.1", str(scp.port)],
        env=nodelay_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    wrong = subprocess.run(
        [echoscu, "-aec", "SOMEONE", "127.0.0.1", str(scp.port)],
        env=nodelay_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr


@pytest.mark.orthanc
@pytest.mark.dcmtk
async def test_pacs_stopped_mid_move_ends_with_a_clear_error(
    orthanc_factory: Callable[..., OrthancServer], scp: StoreSCP, tmp_path: Path
) -> None:
    doomed = orthanc_factory()
    doomed.add_modality(MOVE_AET, "127.0.0.1", scp.port)
    spec = study_spec("14", series=1, per_series=40, rows=256)
    doomed.store_files(write_study(tmp_path, spec))
    got = 0
    started = time.monotonic()
    with pytest.raises(DimseUnavailable):
        async for _ in iter_retrieve(
            doomed.pacs_settings(timeout=5),
            LOCAL,
            spec.study_uid,
            method="c-move",
            scp=scp,
            queue_size=1,
            pool=AssociationPool(idle_seconds=0),
        ):
            got += 1
            if got == 3:
                doomed.process.kill()
                doomed.process.wait(5)
            await asyncio.sleep(0.05)
    assert 3 <= got < 40 and time.monotonic() - started < 8
    assert wait_until(lambda: not dimse_threads())
