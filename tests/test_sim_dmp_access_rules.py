"""The simulated DMP as the strict reference of the access rules: matrix, opposition, emergency access, bars."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from lxml import etree

from drimbox.config import Settings
from drimbox.sim import build_sim_app
from drimbox.xds import access
from drimbox.xds import namespaces as ns
from drimbox.xds.client import DmpClient, XdsRejected
from drimbox.xds.metadata import Code
from drimbox.xds.query import DocumentEntryInfo
from drimbox.xds.structure import structure_signer
from drimbox.xds.vihf import ACCESS_REASON, PROFESSION_SCHEME, VihfError, VihfIdentity, VihfSigner, build_assertion
from tests.support.consumer import INS, PATIENT, publish, source_identity, study_spec

pytestmark = pytest.mark.sim
REASON = "arrêt cardiaque, patient inconscient"


async def manifests(dmp: DmpClient) -> list[DocumentEntryInfo]:
    """The patient's KOS entries (each publication also registers its signature, which is no exam)."""
    return [e for e in await dmp.find_documents(PATIENT) if e.is_kos]


@pytest.fixture
async def sim_url(tmp_path: Path) -> AsyncIterator[str]:
    settings = Settings()
    settings.sim.var_dir = str(tmp_path / "sim")
    server = TestServer(build_sim_app(settings), host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


async def sim_json(sim_url: str, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    async with aiohttp.ClientSession() as http, http.request(method, sim_url + path, json=body) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


def person(professional_id: str, profession: str, purpose: str = "normal", reason: str = "") -> VihfIdentity:
    """A professional acting in person through Pro Santé Connect (INDIRECTE_RENFORCEE)."""
    return dataclasses.replace(source_identity(), professional_id=professional_id, professional_name="Test PRO",
                               roles=[Code(profession, PROFESSION_SCHEME, "")],
                               authentication_mode="INDIRECTE_RENFORCEE", purpose_of_use=purpose,
                               access_reason=reason)  # fmt: skip


def settings_of(tmp: Path) -> Settings:
    s = Settings()
    s.box.var_dir = str(tmp / "box")
    return s


def denied(exc: XdsRejected) -> str:
    assert exc.fault is not None and access.ACCESS_DENIED in exc.fault.subcodes, exc
    return exc.fault.reason


async def test_the_matrix_refuses_a_pharmacist_and_lets_a_nurse_read_imaging(sim_url: str, tmp_path: Path) -> None:
    settings = settings_of(tmp_path)
    await publish(f"{sim_url}/dmp", settings, study_spec())
    signer = structure_signer(settings)
    for pro_id, profession, allowed in (("810000000021", "21", False), ("810001234566", "60", True)):
        async with DmpClient(f"{sim_url}/dmp", signer=signer, identity=person(pro_id, profession)) as dmp:
            assert (await dmp.declare_access(PATIENT)).granted
            if allowed:
                assert len(await manifests(dmp)) == 1
                continue
            with pytest.raises(XdsRejected) as refused:
                await dmp.find_documents(PATIENT)
            assert "pharmacien" in denied(refused.value)
    rows = await sim_json(sim_url, "GET", f"/sim/dmp/consultations?patient={INS}")
    assert [(r["professional"], r["purpose"]) for r in rows] == [("810001234566", "normal")]


async def test_a_patient_who_opposes_is_consulted_by_nobody(sim_url: str, tmp_path: Path) -> None:
    settings = settings_of(tmp_path)
    kos_uid = await publish(f"{sim_url}/dmp", settings, study_spec())
    signer = structure_signer(settings)
    async with DmpClient(f"{sim_url}/dmp", signer=signer, identity=person("810100000001", "10")) as dmp:
        assert (await dmp.declare_access(PATIENT)).granted
        (entry,) = await manifests(dmp)
        state = await sim_json(sim_url, "PUT", f"/sim/dmp/patients/{INS}", {"opposition": True})
        assert state == {"patient": PATIENT, "opposition": True, "emergency_access": True}
        # Even with a VALIDE authorisation: no query, no retrieve, no new declaration, no emergency.
        with pytest.raises(XdsRejected) as refused:
            await dmp.find_documents(PATIENT)
        assert "opposes" in denied(refused.value)
        with pytest.raises(XdsRejected) as refused:
            await dmp.retrieve_document(entry.repository_unique_id or "", kos_uid, patient_id=PATIENT)
        assert "opposes" in denied(refused.value)
        declared = await dmp.declare_access(PATIENT)
        assert declared.status == access.DMP_OPPOSITION and "opposes" in declared.context
        emergency = person("810100000002", "10", "bris_de_glace", REASON)
        with pytest.raises(XdsRejected) as refused:
            await dmp.find_documents(PATIENT, identity=emergency)
        assert "opposes" in denied(refused.value)
    rows = await sim_json(sim_url, "GET", f"/sim/dmp/consultations?patient={INS}")
    assert len(rows) == 1 and rows[0]["action"] == ns.ACTION_ITI18  # only the one before the opposition


async def test_emergency_access_needs_a_reason_and_the_patients_leave(sim_url: str, tmp_path: Path) -> None:
    settings = settings_of(tmp_path)
    await publish(f"{sim_url}/dmp", settings, study_spec())
    signer = structure_signer(settings)
    # The VIHF builder refuses an emergency without its reason...
    with pytest.raises(VihfError, match=ACCESS_REASON):
        build_assertion(person("810100000002", "10", "bris_de_glace"), "CN=x", PATIENT)
    # ...and so does the DMP when a VIHF comes without it.
    async with DmpClient(f"{sim_url}/dmp", signer=_ReasonStripper.like(signer),
                         identity=person("810100000002", "10", "bris_de_glace", REASON)) as dmp:  # fmt: skip
        with pytest.raises(XdsRejected) as refused:
            await dmp.find_documents(PATIENT)
        assert refused.value.fault is not None and ACCESS_REASON in refused.value.fault.reason
    emergency = person("810100000002", "10", "bris_de_glace", REASON)
    async with DmpClient(f"{sim_url}/dmp", signer=signer, identity=emergency) as dmp:
        # No authorisation was declared: an emergency access needs none.
        assert len(await manifests(dmp)) == 1
        await sim_json(sim_url, "PUT", f"/sim/dmp/patients/{INS}", {"emergency_access": False})
        with pytest.raises(XdsRejected) as refused:
            await dmp.find_documents(PATIENT)
        assert "refused emergency access" in denied(refused.value)
    rows = await sim_json(sim_url, "GET", f"/sim/dmp/consultations?patient={INS}")
    assert [(r["professional"], r["mode"], r["purpose"], r["reason"]) for r in rows] == [
        ("810100000002", "INDIRECTE_RENFORCEE", "bris_de_glace", REASON)]  # fmt: skip
    await sim_json(sim_url, "PUT", f"/sim/dmp/patients/{INS}", {"emergency_access": "no"}, status=400)
    await sim_json(sim_url, "PUT", "/sim/dmp/patients/not-an-ins", {"opposition": True}, status=400)


async def test_a_barred_professional_gets_no_emergency_access(sim_url: str, tmp_path: Path) -> None:
    settings = settings_of(tmp_path)
    await publish(f"{sim_url}/dmp", settings, study_spec())
    await sim_json(sim_url, "PUT", "/sim/dmp/access", {"patient": INS, "professional": "810100000001",
                                                       "authorization": "INTERDITE"})  # fmt: skip
    emergency = person("810100000001", "10", "bris_de_glace", REASON)
    async with DmpClient(f"{sim_url}/dmp", signer=structure_signer(settings), identity=emergency) as dmp:
        with pytest.raises(XdsRejected) as refused:
            await dmp.find_documents(PATIENT)
        assert "barred" in denied(refused.value) and "emergency access included" in denied(refused.value)
    assert await sim_json(sim_url, "GET", "/sim/dmp/consultations") == []


class _ReasonStripper(VihfSigner):
    """Signs VIHFs with the structure's key after taking Mode_Acces_Raison out (a careless client)."""

    @classmethod
    def like(cls, signer: VihfSigner) -> _ReasonStripper:
        stripper = cls.__new__(cls)
        stripper.__dict__.update(signer.__dict__)
        return stripper

    def issue(self, identity: VihfIdentity, patient_id: str | None, *, now: datetime | None = None,
              validity: timedelta | None = None) -> etree._Element:  # fmt: skip
        assertion = build_assertion(identity, self.issuer, patient_id, now=now, validity=validity)
        for attr in assertion.iter(f"{{{ns.SAML2}}}Attribute"):
            if attr.get("Name") == ACCESS_REASON:
                attr.getparent().remove(attr)  # type: ignore[union-attr]
        return self.sign(assertion)
