"""The consumer against the simulated DMP in-process: TD0.2/TD0.3, ITI-18 filters, ITI-43 cache, exam API."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drimbox.consumer.lookup import professional_identity
from drimbox.xds import access, soap, td02
from drimbox.xds.client import DmpClient, XdsRejected, XdsTransientError
from drimbox.xds.metadata import INS_TEST_OID, ins_cx
from drimbox.xds.structure import structure_signer
from tests.support.consumer import (
    ACN_ISSUER,
    INS,
    LAUNCH_FORM,
    PATIENT,
    FakeAuth,
    Pro,
    consumer_client,
    consumer_settings,
    publish,
    source_identity,
    study_spec,
    withdraw,
)

NO_DMP_INS = "248039121518052"  # a valid INS the simulator has no DMP for
pytestmark = pytest.mark.sim


async def sim_json(dmp_url: str, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as http, http.request(method, dmp_url.removesuffix("/dmp") + path,
                                                              json=body) as resp:  # fmt: skip
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_td02_td03_and_the_consultation_rule(dmp_url: str, tmp_path: Path) -> None:
    settings = consumer_settings(tmp_path, dmp_url)
    identity = professional_identity(settings, Pro())
    assert identity.authentication_mode == "INDIRECTE_RENFORCEE" and identity.structure_id == "1750000001"
    async with DmpClient(dmp_url, signer=structure_signer(settings), identity=identity) as dmp:
        none = await dmp.patient_access(ins_cx(NO_DMP_INS))
        assert not none.dmp_exists and none.authorization == access.NON_EXISTANTE
        assert (await dmp.patient_access(PATIENT)).authorization == access.NON_EXISTANTE
        with pytest.raises(XdsRejected) as refused:
            await dmp.find_documents(PATIENT)
        assert refused.value.fault is not None and access.ACCESS_DENIED in refused.value.fault.subcodes
        assert (await dmp.declare_access(PATIENT)).status == access.DMP_OK
        assert (await dmp.patient_access(PATIENT)).granted
        assert await dmp.find_documents(PATIENT) == []
        # The patient bars this professional: nothing the professional declares lifts it.
        await sim_json(dmp_url, "PUT", "/sim/dmp/access", {"patient": INS, "professional": identity.professional_id,
                                                           "authorization": "INTERDITE", "reason": "opposition"})  # fmt: skip
        barred = await dmp.declare_access(PATIENT)
        assert barred.status == access.DMP_EXCLUDED_PS and barred.context == "opposition" and not barred.granted
        assert (await dmp.declare_access(PATIENT, remove=True)).status == access.DMP_EXCLUDED_PS
        assert (await dmp.patient_access(PATIENT)).authorization == access.INTERDITE
        rows = await sim_json(dmp_url, "GET", f"/sim/dmp/access?patient={INS}")
        assert [(r["professional"], r["authorization"]) for r in rows] == [(identity.professional_id, "INTERDITE")]
        await sim_json(dmp_url, "DELETE", "/sim/dmp/access")
        assert (await dmp.patient_access(PATIENT)).authorization == access.NON_EXISTANTE
    # The structure's own automatic mode (the source's) needs no authorisation.
    async with DmpClient(dmp_url, signer=structure_signer(settings), identity=source_identity()) as src:
        assert await src.find_documents(PATIENT) == []


async def test_the_vihf_must_name_the_patient_of_the_access_request(dmp_url: str, tmp_path: Path) -> None:
    settings = consumer_settings(tmp_path, dmp_url)
    identity = professional_identity(settings, Pro())
    vihf = structure_signer(settings).issue(identity, ins_cx(NO_DMP_INS))
    url = f"{dmp_url}/{access.PATIENTS_SERVICE}"
    request = soap.build_request(access.ACTION_TD02, url, td02.build_request(INS, INS_TEST_OID), security=vihf)
    headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{access.ACTION_TD02}"'}
    async with aiohttp.ClientSession() as http, http.post(url, data=request.envelope, headers=headers) as resp:
        assert resp.status == 400 and b"FailedAuthentication" in await resp.read()


async def test_the_exam_list_through_the_dmp(dmp_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="drimbox")
    settings = consumer_settings(tmp_path, dmp_url)
    kos_c = await publish(dmp_url, settings, study_spec())
    kos_mr = await publish(dmp_url, settings, study_spec(4, modality="MR", date="20220301"))
    async with consumer_client(settings, FakeAuth(Pro())) as client:
        resp = await client.post("/conso/launch", data=LAUNCH_FORM)
        assert resp.status == 200, await resp.text()
        page = await resp.text()
        assert page.index("01/03/2022") < page.index("08/01/2021") and ": 2 examen(s)." in page
        assert "Centre de radiologie Ambroise" in page and "127.0.0.1:18080" in page

        async def listed(query: str = "") -> dict[str, Any]:
            r = await client.get(f"/conso/api/patients/{INS}/exams{query}")
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
            return body

        body = await listed()
        assert [x["kos_uid"] for x in body["exams"]] == [kos_mr, kos_c]
        assert body["new_count"] == 2 and body["previous_visit"] is None
        assert body["patient"] == {"ins": INS, "oid": "1.2.250.1.213.1.4.10"}
        c = body["exams"][1]
        assert (c["date"], c["modalities"], c["series_count"], c["instance_count"]) == ("2021-01-08", ["CT"], 2, 6)
        assert (c["accession"], c["sources"], c["status"]) == ("ACN103", ["127.0.0.1:18080"], "available")
        assert [x["kos_uid"] for x in (await listed("?modality=MR"))["exams"]] == [kos_mr]
        assert [x["kos_uid"] for x in (await listed("?from=2021-01-01&to=2021-01-08"))["exams"]] == [kos_c]
        assert (await listed("?to=2021-01-07"))["exams"] == []
        assert len((await listed("?region=774007"))["exams"]) == 2
        by_accession = await listed(f"?accession=ACN104&accession_issuer={ACN_ISSUER}")
        assert [x["kos_uid"] for x in by_accession["exams"]] == [kos_mr] and by_accession["query"][
            "accession"
        ] == "ACN104"
        assert [x["kos_uid"] for x in (await listed("?accession=ACN103"))["exams"]] == [kos_c]
        assert [x["kos_uid"] for x in (await listed("?study=1.2.250.1.213.4.5.2.1.103"))["exams"]] == [kos_c]

        r = await client.get(f"/conso/api/exams/{kos_c}")
        assert r.status == 200
        detail = await r.json()
        assert [s["count"] for s in detail["series"]] == [3, 3] and len(detail["series"][0]["instance_uids"]) == 3
        assert all(s["modality"] == "CT" and s["retrieve_url"].startswith("http://127.0.0.1:18080/dicom-web/studies/")
                   for s in detail["series"])  # fmt: skip
        r = await client.get("/conso/api/exams/1.2.3.4.5")
        assert r.status == 404 and (await r.json())["reason"] == "not_found"
        await withdraw(dmp_url, settings, kos_c)
        r = await client.get(f"/conso/api/exams/{kos_c}")
        assert r.status == 404 and "no longer" in (await r.json())["detail"]
        assert [x["kos_uid"] for x in (await listed())["exams"]] == [kos_mr]
    mine = [r.getMessage() for r in caplog.records if r.name.startswith("drimbox.consumer")]
    assert any("INS…989" in m for m in mine)
    leaks = [m for r in caplog.records if r.name.startswith("drimbox") and INS in (m := r.getMessage())]
    assert leaks == []


async def test_unknown_patient_and_refused_access(dmp_url: str, tmp_path: Path) -> None:
    settings = consumer_settings(tmp_path, dmp_url)
    auth = FakeAuth(Pro())
    async with consumer_client(settings, auth) as client:
        resp = await client.post("/conso/launch", data={**LAUNCH_FORM, "Patient.identifier.value": NO_DMP_INS})
        assert resp.status == 404 and "pas de DMP" in await resp.text()
        r = await client.get(f"/conso/api/patients/{NO_DMP_INS}/exams")
        assert r.status == 404 and (await r.json())["reason"] == "patient_unknown"
        # No authorisation yet, and a launch that does not say the patient was informed: refused.
        resp = await client.post("/conso/launch", data={**LAUNCH_FORM, "InformationEtConsentement": "false"})
        assert resp.status == 403 and "InformationEtConsentement" in await resp.text()
        r = await client.get(f"/conso/api/patients/{INS}/exams")
        assert r.status == 403 and (await r.json())["reason"] == "access_refused"
        assert (await client.post("/conso/launch", data=LAUNCH_FORM)).status == 200  # informed: TD0.3 declared
        assert (await client.get(f"/conso/api/patients/{INS}/exams")).status == 200  # and it lasts
        await sim_json(dmp_url, "PUT", "/sim/dmp/access", {"patient": INS, "professional": Pro().id,
                                                           "authorization": "INTERDITE"})  # fmt: skip
        r = await client.get(f"/conso/api/patients/{INS}/exams")
        assert r.status == 403 and "barred" in (await r.json())["detail"]


async def test_a_kos_that_cannot_be_fetched_leaves_the_rest_listed_and_kos_are_cached(
    dmp_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = consumer_settings(tmp_path, dmp_url, visit_window=0.0)
    kos_c = await publish(dmp_url, settings, study_spec())
    kos_mr = await publish(dmp_url, settings, study_spec(4, modality="MR", date="20220301"))
    fetched: list[str] = []
    original = DmpClient.retrieve_document

    async def flaky(self: DmpClient, repository_uid: str, unique_id: str, **kwargs: Any) -> bytes:
        fetched.append(unique_id)
        if unique_id == kos_mr and fetched.count(kos_mr) == 1:
            raise XdsTransientError("ITI-43", "no answer within 5 s")
        return await original(self, repository_uid, unique_id, **kwargs)

    monkeypatch.setattr(DmpClient, "retrieve_document", flaky)
    async with consumer_client(settings, FakeAuth(Pro())) as client:
        assert (await client.post("/conso/launch", data=LAUNCH_FORM)).status == 200
        body = await (await client.get(f"/conso/api/patients/{INS}/exams")).json()
        by_uid = {x["kos_uid"]: x for x in body["exams"]}
        assert by_uid[kos_mr]["status"] == "available" and by_uid[kos_c]["status"] == "available"
        assert sorted(fetched) == sorted([kos_c, kos_mr, kos_mr])  # C cached after the launch; MR retried
        fetched.clear()
        # A third exam appears: only it is fetched, and only it is new (the window is 0 s: a new visit).
        kos_e = await publish(dmp_url, settings, study_spec(5, modality="NM", date="20230101"))
        body = await (await client.get(f"/conso/api/patients/{INS}/exams")).json()
        assert fetched == [kos_e] and body["new_count"] == 1 and body["previous_visit"] is not None
        assert [x["kos_uid"] for x in body["exams"] if x["new"]] == [kos_e]


async def test_unavailable_exam_in_the_first_list(
    dmp_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = consumer_settings(tmp_path, dmp_url)
    kos_c = await publish(dmp_url, settings, study_spec())
    kos_mr = await publish(dmp_url, settings, study_spec(4, modality="MR", date="20220301"))
    original = DmpClient.retrieve_document

    async def failing(self: DmpClient, repository_uid: str, unique_id: str, **kwargs: Any) -> bytes:
        if unique_id == kos_mr:
            raise XdsTransientError("ITI-43", "no answer within 5 s")
        return await original(self, repository_uid, unique_id, **kwargs)

    monkeypatch.setattr(DmpClient, "retrieve_document", failing)
    async with consumer_client(settings, FakeAuth(Pro())) as client:
        resp = await client.post("/conso/launch", data=LAUNCH_FORM)
        assert resp.status == 200 and "Indisponible : le DMP ne répond pas" in await resp.text()
        body = await (await client.get(f"/conso/api/patients/{INS}/exams")).json()
        by_uid = {x["kos_uid"]: x for x in body["exams"]}
        assert by_uid[kos_mr]["status"] == "unavailable" and by_uid[kos_mr]["date"] == "2022-03-01"
        assert by_uid[kos_mr]["modalities"] == ["MR"] and by_uid[kos_c]["status"] == "available"
        # The DMP itself down: the list says so (503), injected through the simulator.
        await sim_json(dmp_url, "POST", "/sim/dmp/faults", {"unavailable": 1})
        r = await client.get(f"/conso/api/patients/{INS}/exams")
        assert r.status == 503 and (await r.json())["reason"] == "dmp_unavailable"
