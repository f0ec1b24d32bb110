"""C-FIND SCU against a real Orthanc (fed by dcmtk storescu) and against pynetdicom peers that misbehave."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from drimbox.config import PacsSettings
from drimbox.demo.samples import studies
from drimbox.demo.samples.orthanc import OrthancServer
from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.studies import StudySpec, exam_c_spec, expected_instances, write_study
from drimbox.dimse import (
    DimseFailure,
    DimseUnavailable,
    afind_study_instances,
    echo,
    find_study_instances,
    make_ae,
)
from drimbox.dimse.study_instances import StudyRootQueryRetrieveInformationModelFind, Verification
from drimbox.manifest import KosRequest, build_kos, identity_mismatches, kos_to_bytes, parse_kos
from tests.support.dcmtk import dciodvfy

BOX_AET = "DRIMBOX"
orthanc_test = [pytest.mark.orthanc, pytest.mark.dcmtk]


@pytest.fixture(scope="module")
def exam_c(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> StudySpec:
    spec = exam_c_spec(instances_per_series=5, rows=64, columns=64)
    orthanc.clear()  # the session's PACS: another module may have left its own version of exam C in it
    orthanc.store_files(write_study(tmp_path_factory.mktemp("exam_c"), spec))
    return spec


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_find_returns_every_instance_with_its_attributes(orthanc: OrthancServer, exam_c: StudySpec) -> None:
    found = find_study_instances(orthanc.pacs_settings(), BOX_AET, exam_c.study_uid)
    assert found == expected_instances(exam_c)
    assert found.accession_issuer_oid == studies.EXAM_C_ACCESSION_OID
    assert found.referring_physician_name == "MEDIONI^Stéphane"
    assert found.modalities == ["CT"]
    assert list(found.by_series()) == [exam_c.series_uid(0), exam_c.series_uid(1)]


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_find_with_ipp_as_patient_id(orthanc: OrthancServer, tmp_path: Path) -> None:
    spec = exam_c_spec("ipp", instances_per_series=2)
    spec = dataclasses.replace(spec, study_uid=studies.EXAM_C_STUDY_UID + ".2")
    orthanc.store_files(write_study(tmp_path, spec))
    found = find_study_instances(orthanc.pacs_settings(), BOX_AET, spec.study_uid)
    assert found is not None
    assert (found.patient_id, found.issuer_of_patient_id) == ("IPP101", "AUT-AFFECTATION")
    assert len(found.instances) == 4
    req = KosRequest(
        ins=studies.EXAM_C_INS,
        ipp="IPP101",
        accession="ACN103",
        public_url="http://127.0.0.1:8080",
        retrieve_ae_title=BOX_AET,
        retrieve_location_uid="1.2.3",
        uid_root="1.2.3.4",
    )
    assert identity_mismatches(found, req) == []


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_find_reports_instances_that_disagree_on_the_patient(orthanc: OrthancServer, tmp_path: Path) -> None:
    spec = exam_c_spec(instances_per_series=2)
    spec = dataclasses.replace(spec, study_uid=studies.EXAM_C_STUDY_UID + ".3")
    orthanc.store_files(write_study(tmp_path / "a", spec))
    # The same study sent again under another patient: the PACS now holds both.
    again = dataclasses.replace(spec, patient_id="OTHER", series_count=1)
    orthanc.store_files(write_study(tmp_path / "b", again))
    found = find_study_instances(orthanc.pacs_settings(), BOX_AET, spec.study_uid)
    assert found is not None
    assert found.inconsistent == ["PatientID"]
    assert len(found.instances) == 4  # de-duplicated by SOP Instance UID


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_unknown_study_is_none(orthanc: OrthancServer, exam_c: StudySpec) -> None:
    assert find_study_instances(orthanc.pacs_settings(), BOX_AET, "1.2.3.4.5.6.7.8.9") is None


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_orthanc_fixture_serves_the_study_over_dicomweb(orthanc: OrthancServer, exam_c: StudySpec) -> None:
    if not orthanc.dicomweb:
        pytest.skip("orthanc-dicomweb plugin not installed")
    series = orthanc.rest("GET", f"/dicom-web/studies/{exam_c.study_uid}/series")
    assert {s["0020000E"]["Value"][0] for s in series} == {exam_c.series_uid(0), exam_c.series_uid(1)}
    assert set(orthanc.instances()) >= {i.sop_instance_uid for i in expected_instances(exam_c).instances}


def test_wildcards_are_refused_before_any_network() -> None:
    pacs = PacsSettings(port=1)
    for bad in ("*", "1.2.3*", "1.2.?", "", "1.2.3\\4.5", "1." * 40 + "1"):
        with pytest.raises(ValueError, match="Study Instance UID"):
            find_study_instances(pacs, BOX_AET, bad)


@pytest.mark.orthanc
def test_calling_ae_unknown_to_the_pacs_is_unavailable(orthanc: OrthancServer) -> None:
    with pytest.raises(DimseUnavailable, match="does it know NOBODY"):
        find_study_instances(orthanc.pacs_settings(), "NOBODY", "1.2.3")


def test_pacs_down_is_unavailable_quickly() -> None:
    pacs = PacsSettings(ae_title="ORTHANC", host="127.0.0.1", port=free_port(), timeout=10.0)
    started = time.monotonic()
    with pytest.raises(DimseUnavailable, match="no connection"):
        find_study_instances(pacs, BOX_AET, "1.2.3")
    assert time.monotonic() - started < 2.0
    assert echo(pacs, BOX_AET) is False


@pytest.mark.orthanc
def test_echo(orthanc: OrthancServer) -> None:
    assert echo(orthanc.pacs_settings(), BOX_AET) is True


@pytest.mark.orthanc
def test_association_sockets_have_tcp_nodelay(orthanc: OrthancServer) -> None:
    ae = make_ae(BOX_AET, 5.0)
    ae.add_requested_context(Verification)
    assoc = ae.associate(orthanc.host, orthanc.dicom_port, ae_title=orthanc.aet)
    try:
        assert assoc.is_established
        assert assoc.dul.socket is not None
        sock = assoc.dul.socket.socket
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


@pytest.mark.orthanc
@pytest.mark.dcmtk
@pytest.mark.dciodvfy
def test_kos_from_a_real_c_find_passes_dciodvfy(orthanc: OrthancServer, exam_c: StudySpec, tmp_path: Path) -> None:
    found = find_study_instances(orthanc.pacs_settings(), BOX_AET, exam_c.study_uid)
    assert found is not None
    req = KosRequest(
        ins=studies.EXAM_C_INS,
        accession=studies.EXAM_C_ACCESSION,
        accession_issuer=studies.EXAM_C_ACCESSION_OID,
        placer_order=studies.EXAM_C_PLACER_ORDER,
        placer_order_issuer=studies.EXAM_C_PLACER_ORDER_OID,
        procedure_code="ACQH004",
        procedure_scheme="1.2.250.1.213.2.5",
        procedure_meaning="Scanographie du crâne avec injection",
        description="Examen C",
        public_url="http://127.0.0.1:8080",
        retrieve_ae_title=BOX_AET,
        retrieve_location_uid="1.2.250.1.999.1.1.1",
        uid_root="1.2.250.1.999.1.1.2",
    )
    assert identity_mismatches(found, req) == []
    data = kos_to_bytes(build_kos(found, req))
    path = tmp_path / "kos.dcm"
    path.write_bytes(data)
    for profile in (None, "IHEXDSIManifest"):
        report = dciodvfy(path, profile)
        assert report.errors == [], report.output
    summary = parse_kos(data)
    assert (
        summary.instance_uids()
        == summary.content_instance_uids
        == set(orthanc.instances()) & {i.sop_instance_uid for i in expected_instances(exam_c).instances}
    )


# --- pynetdicom peers standing in for PACS behaviours Orthanc does not show ---------------------------


def _answer(**values: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def scp() -> Iterator[Callable[[Callable[[Any], Any]], PacsSettings]]:
    """Start a pynetdicom C-FIND SCP on 127.0.0.1 with the given handler; stopped after the test."""
    servers: list[ThreadedAssociationServer] = []

    def start(handler: Callable[[Any], Any]) -> PacsSettings:
        ae = AE(ae_title="FAKEPACS")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, handler)])
        assert server is not None
        servers.append(server)
        return PacsSettings(ae_title="FAKEPACS", host="127.0.0.1", port=server.server_address[1], timeout=5.0)

    yield start
    for server in servers:
        server.shutdown()


def _strict_hierarchical(spec: StudySpec) -> Callable[[Any], Any]:
    """A PACS that refuses a universal Series UID at IMAGE level and gives patients at STUDY level only."""
    expected = expected_instances(spec)

    def handler(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        level = query.QueryRetrieveLevel
        if level == "IMAGE" and not query.get("SeriesInstanceUID"):
            yield 0xA900, None
        elif level == "STUDY":
            yield (
                0xFF00,
                _answer(
                    StudyInstanceUID=spec.study_uid,
                    PatientID=spec.patient_id,
                    PatientName=spec.patient_name,
                    AccessionNumber=spec.accession_number,
                ),
            )
        elif level == "SERIES":
            for series_uid in expected.by_series():
                yield 0xFF00, _answer(StudyInstanceUID=spec.study_uid, SeriesInstanceUID=series_uid)
        else:
            for inst in expected.by_series()[query.SeriesInstanceUID]:
                yield (
                    0xFF00,
                    _answer(
                        SeriesInstanceUID=inst.series_uid,
                        SOPInstanceUID=inst.sop_instance_uid,
                        SOPClassUID=inst.sop_class_uid,
                        InstanceNumber=inst.instance_number,
                    ),
                )
        yield 0x0000, None

    return handler


def test_strictly_hierarchical_pacs_is_queried_series_by_series(scp: Callable[..., PacsSettings]) -> None:
    spec = exam_c_spec(instances_per_series=3)
    found = find_study_instances(scp(_strict_hierarchical(spec)), BOX_AET, spec.study_uid)
    assert found is not None
    assert {i.sop_instance_uid for i in found.instances} == {
        i.sop_instance_uid for i in expected_instances(spec).instances
    }
    assert (found.patient_id, found.accession_number) == (spec.patient_id, spec.accession_number)


def test_failure_status_is_a_dimse_failure(scp: Callable[..., PacsSettings]) -> None:
    def refuse(event: Any) -> Iterator[tuple[int, None]]:
        yield 0xC001, None

    with pytest.raises(DimseFailure) as info:
        find_study_instances(scp(refuse), BOX_AET, "1.2.3")
    assert info.value.status == 0xC001


def test_silent_pacs_times_out_as_unavailable(scp: Callable[..., PacsSettings]) -> None:
    def stall(event: Any) -> Iterator[tuple[int, None]]:
        time.sleep(1.5)
        yield 0x0000, None

    pacs = dataclasses.replace(scp(stall), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DimseUnavailable, match=r"within 0\.5s"):
        find_study_instances(pacs, BOX_AET, "1.2.3")
    assert time.monotonic() - started < 1.4


async def test_afind_leaves_the_event_loop_free(scp: Callable[..., PacsSettings]) -> None:
    spec = exam_c_spec(instances_per_series=1)
    inner = _strict_hierarchical(spec)

    def slow(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        time.sleep(0.1)
        yield from inner(event)

    pacs = scp(slow)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        found = await afind_study_instances(pacs, BOX_AET, spec.study_uid)
    finally:
        task.cancel()
    assert found is not None and len(found.instances) == 2
    assert ticks >= 10  # about 0.4 s of queries ran while the loop kept ticking
