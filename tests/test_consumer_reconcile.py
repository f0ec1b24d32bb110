"""Import reconciliation: an exam imported with a launch lands in Orthanc under the launch's local patient."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydicom.dataset import Dataset

from drimbox.consumer import reconcile
from drimbox.consumer.reconcile import LocalPatient
from drimbox.demo.samples.processes import free_port
from drimbox.manifest import parse_kos
from tests.support.drim_flow import consumer_settings, protected_front, psc_token, publish_exam, running_consumer

IPP, IPP_ISSUER = "IPP101", "1.2.250.1.213.4.5.2.4"


def _launch(ins: str, ins_oid: str) -> dict[str, Any]:
    return {"ins": ins, "ins_oid": ins_oid, "family": "Pat-Trois", "given": "DOMINIQUE", "gender": "female",
            "birth_date": "1979-03-28", "informed": True, "filters": {}, "patient_id": IPP,
            "patient_id_issuer": IPP_ISSUER}  # fmt: skip


def test_an_instance_takes_the_local_identity_and_keeps_the_others() -> None:
    ds = Dataset()
    ds.PatientID, ds.IssuerOfPatientID, ds.PatientName = "1234567890123", "", "AUTRE^NOM"
    q = Dataset()
    q.UniversalEntityID = "1.2.250.1.213.1.4.10"
    ds.IssuerOfPatientIDQualifiersSequence = [q]
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    local = LocalPatient(IPP, IPP_ISSUER, "1234567890123", "1.2.250.1.213.1.4.10", "Pat-Trois", "DOMINIQUE",
                         "1979-03-28", "female")  # fmt: skip
    reconcile.apply(ds, local, new_uids=False)
    assert (ds.PatientID, ds.IssuerOfPatientID, str(ds.PatientName)) == (IPP, IPP_ISSUER, "PAT-TROIS^DOMINIQUE")
    assert (ds.PatientBirthDate, ds.PatientSex) == ("19790328", "F")
    assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == IPP_ISSUER
    others = [
        (o.PatientID, o.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID) for o in ds.OtherPatientIDsSequence
    ]
    assert others == [("1234567890123", "1.2.250.1.213.1.4.10")]  # the INS, once (it was the source's id too)
    assert ds.StudyInstanceUID == "1.2.3"
    reconcile.apply(ds, local, new_uids=True)
    assert ds.StudyInstanceUID == reconcile.new_uid("1.2.3", local) != "1.2.3"
    assert reconcile.new_uid("1.2.3", local) == reconcile.new_uid("1.2.3", local)  # stable: re-imports skip


async def _import(http: aiohttp.ClientSession, url: str, kos_uid: str, launch: str = "") -> dict[str, Any]:
    async with http.post(f"{url}/conso/api/exams/{kos_uid}/import", data={"launch": launch} if launch else None) as r:
        assert r.status == 202, await r.text()
        status_url = (await r.json())["status_url"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with http.get(url + status_url) as resp:
            report: dict[str, Any] = await resp.json()
        if report["state"] not in ("queued", "running"):
            return report
        await asyncio.sleep(0.1)
    raise AssertionError(f"import never ended: {report}")


def _studies_of(pacs: Any, patient_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = pacs.rest("POST", "/tools/find", {"Level": "Study", "Query": {"PatientID": patient_id},
                                                                      "Expand": True})  # fmt: skip
    return found


@pytest.mark.orthanc
@pytest.mark.dcmtk
@pytest.mark.sim
@pytest.mark.box
@pytest.mark.parametrize("method", ["c-store", "stow-rs"])
async def test_an_import_lands_under_the_local_patient_in_orthanc(
    method: str, orthanc: Any, orthanc_factory: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    pacs = orthanc_factory(box_aet="DRIMCONSO", box_port=free_port())
    port = free_port()
    box = source_box(orthanc, box={"public_url": f"http://127.0.0.1:{port}"})
    pub = await asyncio.to_thread(publish_exam, orthanc, box, tmp_path, instances=6)
    kos_bytes = await asyncio.to_thread(sim.document_bytes, pub["kos_uid"])
    kos = parse_kos(kos_bytes)
    token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
    settings = consumer_settings(tmp_path, sim.url, pacs, method)
    async with (protected_front(box, sim.url, port),
                running_consumer(settings, token, {pub["kos_uid"]: kos_bytes}) as conso,
                aiohttp.ClientSession(headers={"Accept-Language": "fr"}) as http):  # fmt: skip
        launch = await conso.store.save_launch(_launch(kos.patient_id, kos.patient_id_oid), 600)
        report = await _import(http, conso.url, pub["kos_uid"], launch)
        assert (report["state"], report["stored"], report["failed"]) == ("done", 6, 0), report
        [study] = await asyncio.to_thread(_studies_of, pacs, IPP)
        # The local PACS did not hold the study: its UIDs are kept.
        assert study["MainDicomTags"]["StudyInstanceUID"] == kos.study_uid
        assert study["PatientMainDicomTags"]["PatientName"] == "PAT-TROIS^DOMINIQUE"
        assert not await asyncio.to_thread(_studies_of, pacs, kos.patient_id)  # nothing under the source's id
        one = (await asyncio.to_thread(pacs.rest, "GET", f"/studies/{study['ID']}/instances"))[0]["ID"]
        tags = await asyncio.to_thread(pacs.rest, "GET", f"/instances/{one}/tags?simplify")
        assert tags["IssuerOfPatientID"] == IPP_ISSUER and tags["PatientBirthDate"] == "19790328"
        assert kos.patient_id in [o["PatientID"] for o in tags["OtherPatientIDsSequence"]]  # the INS kept
        again = await _import(http, conso.url, pub["kos_uid"], launch)
        assert (again["stored"], again["skipped"]) == (0, 6), again

        # The same UIDs already in the PACS under another patient: the reconciled copy gets its own UIDs.
        await asyncio.to_thread(pacs.clear)
        plain = await _import(http, conso.url, pub["kos_uid"])
        assert plain["stored"] == 6 and await asyncio.to_thread(_studies_of, pacs, kos.patient_id)
        mixed = await _import(http, conso.url, pub["kos_uid"], launch)
        assert (mixed["state"], mixed["stored"]) == ("done", 6), mixed
        [moved] = await asyncio.to_thread(_studies_of, pacs, IPP)
        assert moved["MainDicomTags"]["StudyInstanceUID"] not in ("", kos.study_uid)
        assert len(await asyncio.to_thread(pacs.instances)) == 12

        # Another INS than the exam's: refused, in French.
        someone_else = kos.patient_id[:-1] + ("1" if kos.patient_id.endswith("0") else "0")
        other = await conso.store.save_launch(_launch(someone_else, kos.patient_id_oid), 600)
        async with http.post(f"{conso.url}/conso/api/exams/{pub['kos_uid']}/import", data={"launch": other}) as r:
            body = await r.json()
            assert r.status == 409 and body["reason"] == "ins_mismatch" and "identité nationale" in body["error"]
        # The same refusal from the list's import button is a page, in French.
        async with http.post(f"{conso.url}/conso/imports", data={"launch": other, "kos": pub["kos_uid"]}) as r:
            page = await r.text()
            assert r.status == 409 and "Import refusé" in page and "identité nationale de santé (INS)" in page
        async with http.post(f"{conso.url}/conso/imports", data={"launch": launch}) as r:
            assert r.status == 400 and "Aucun examen choisi" in await r.text()
        # A launch the box no longer knows: refused, never imported under the source's identifiers instead.
        async with http.post(f"{conso.url}/conso/api/exams/{pub['kos_uid']}/import", data={"launch": "x" * 32}) as r:
            assert r.status == 410 and (await r.json())["reason"] == "launch_expired"


@pytest.mark.orthanc
@pytest.mark.dcmtk
@pytest.mark.sim
@pytest.mark.box
async def test_an_import_goes_to_the_chosen_local_pacs(
    orthanc: Any, orthanc_factory: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    first = orthanc_factory(box_aet="DRIMCONSO", box_port=free_port())
    second = orthanc_factory(box_aet="DRIMCONSO", box_port=free_port())
    port = free_port()
    box = source_box(orthanc, box={"public_url": f"http://127.0.0.1:{port}"})
    pub = await asyncio.to_thread(publish_exam, orthanc, box, tmp_path, instances=4)
    kos_bytes = await asyncio.to_thread(sim.document_bytes, pub["kos_uid"])
    token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
    settings = consumer_settings(tmp_path, sim.url, first, "c-store")
    settings.consumer.local_pacs_others = [f"{second.aet}@127.0.0.1:{second.dicom_port}"]
    async with (protected_front(box, sim.url, port),
                running_consumer(settings, token, {pub["kos_uid"]: kos_bytes}) as conso,
                aiohttp.ClientSession() as http):  # fmt: skip
        async with http.post(f"{conso.url}/conso/api/exams/{pub['kos_uid']}/import", data={"target": "2"}) as r:
            assert r.status == 400  # only 0 (local_pacs_*) and 1 are configured
        async with http.post(f"{conso.url}/conso/api/exams/{pub['kos_uid']}/import", data={"target": "1"}) as r:
            assert r.status == 202, await r.text()
            status_url = (await r.json())["status_url"]
        for _ in range(300):
            async with http.get(conso.url + status_url) as resp:
                report = await resp.json()
            if report["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.1)
        assert (report["state"], report["stored"]) == ("done", 4), report
        assert report["target"] == f"{second.aet} (127.0.0.1:{second.dicom_port})"
    assert len(await asyncio.to_thread(second.instances)) == 4 and not await asyncio.to_thread(first.instances)
