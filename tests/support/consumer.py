"""Test doubles and builders for the consumer: a logged-in professional, KOS made and published in the DMP."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from drimbox.config import Settings
from drimbox.consumer import setup_consumer
from drimbox.demo.samples.studies import StudySpec, exam_c_spec, expected_instances
from drimbox.manifest import KosRequest, build_kos, kos_to_bytes
from drimbox.xds import namespaces as ns
from drimbox.xds.client import DmpClient
from drimbox.xds.metadata import Author, Code, KosDocumentEntry, ReferenceId, SubmissionSet, ins_cx, oid_from_uuid, xon
from drimbox.xds.structure import structure_signer
from drimbox.xds.vihf import PROFESSION_SCHEME, VihfIdentity

INS = "279035121518989"
INS_OID = "1.2.250.1.213.1.4.10"
PATIENT = ins_cx(INS, INS_OID)
ACN_ISSUER = "1.2.250.1.925.994044785528.27"
LAUNCH_FORM = {
    "Patient.identifier.value": INS,
    "Patient.identifier.system": f"urn:oid:{INS_OID}",
    "Patient.name.family": "PAT-TROIS",
    "Patient.name.given": "DOMINIQUE",
    "Patient.gender": "female",
    "Patient.birthDate": "1979-03-28",
    "Address.district": "51215",
    "InformationEtConsentement": "true",
    "PatientID": "IPP101",
    "PatientIDIssuer": "1.2.250.1.213.4.5.2.4",
}


@dataclass(frozen=True)
class Pro:
    """A professional as Pro Santé Connect would describe them."""

    id: str = "810100000001"
    family: str | None = "MEDIONI"
    given: str | None = "Stéphane"
    profession_code: str | None = "10"
    specialty_code: str | None = "SM26"
    sector_code: str | None = None
    structure_id: str | None = "1750000001"
    structure_name: str | None = "Cabinet du Dr Medioni"


class FakeAuth:
    """ConsumerAuth double: `pro` is whoever is logged in (None: nobody)."""

    def __init__(self, pro: Pro | None = None) -> None:
        self.pro = pro

    async def current_professional(self, request: web.Request) -> Pro | None:
        return self.pro

    def login_url(self, next_path: str) -> str:
        return "/auth/login?" + urlencode({"next": next_path})

    async def access_token(self, request: web.Request) -> str | None:
        return "test-token" if self.pro else None


def consumer_settings(tmp: Path, dmp_url: str, **consumer: Any) -> Settings:
    s = Settings()
    s.box.var_dir = str(tmp / "consumer-var")
    s.box.roles = ["consumer"]
    s.dmp.url = dmp_url
    s.dmp.timeout = 5.0
    for key, value in consumer.items():
        setattr(s.consumer, key, value)
    return s


def consumer_app_with_images(settings: Settings, sim_url: str, auth: FakeAuth) -> web.Application:
    """What app.py builds for a consumer: the lists and the images (/conso/dicom-web, import), the sim's whitelist."""
    from drimbox.config import WhitelistSettings
    from drimbox.consumer.images import setup_consumer_images

    settings.whitelist = WhitelistSettings(
        url=f"{sim_url}/whitelist", certificate_url=f"{sim_url}/whitelist/certificate", trust_on_first_use=True
    )
    app = web.Application()
    setup_consumer(app, settings, auth)
    setup_consumer_images(app, settings, auth)
    return app


@asynccontextmanager
async def consumer_client(
    settings: Settings, auth: FakeAuth
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application()
    setup_consumer(app, settings, auth)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


# -- KOS in the simulated DMP, as a source box would publish them ----------------------------------------


def study_spec(n: int = 3, modality: str = "CT", date: str = "20210108", **overrides: Any) -> StudySpec:
    """Exam C, or its n-th sibling (another study and accession of the same patient)."""
    spec = exam_c_spec(instances_per_series=3)
    if n != 3:
        spec = dataclasses.replace(spec, study_uid=f"1.2.250.1.213.4.5.2.1.{100 + n}", accession_number=f"ACN10{n}")
    return dataclasses.replace(spec, modality=modality, study_date=date, **overrides)


def make_kos(spec: StudySpec, public_url: str = "http://127.0.0.1:18080") -> tuple[str, bytes]:
    req = KosRequest(ins=INS, ins_oid=INS_OID, accession=spec.accession_number, accession_issuer=ACN_ISSUER,
                     public_url=public_url, retrieve_ae_title="DRIMBOX", retrieve_location_uid="1.2.250.1.999.1.1.1",
                     uid_root="1.2.250.1.999.1.1.2.", description=spec.study_description)  # fmt: skip
    ds = build_kos(expected_instances(spec), req)
    return str(ds.SOPInstanceUID), kos_to_bytes(ds)


def source_identity() -> VihfIdentity:
    return VihfIdentity(professional_id="801234560801", professional_name="Jacques BIDEAULT",
                        roles=[Code("10", PROFESSION_SCHEME, "Médecin")], structure_id="101235555",
                        secteur_activite="SA25^1.2.250.1.71.4.2.4", lps_id="drimbox", lps_name="drimbox",
                        lps_version="0.1.0", lps_homologation="DRIMBOX-TEST")  # fmt: skip


def _author() -> Author:
    return Author(person="801234560801^BIDEAULT^Jacques^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
                  institutions=[xon("Centre de radiologie Ambroise", "101235555")])  # fmt: skip


async def publish(dmp_url: str, settings: Settings, spec: StudySpec, public_url: str = "http://127.0.0.1:18080") -> str:
    """Publish the KOS of `spec` in the DMP at `dmp_url` (ITI-41, VIHF INDIRECTE); its KOS UID."""
    kos_uid, data = make_kos(spec, public_url)
    entry = KosDocumentEntry(
        unique_id=kos_uid, patient_id=PATIENT, source_patient_id=PATIENT, source_patient_info=[f"PID-3|{PATIENT}"],
        creation_time="20240105101500", service_start=spec.study_date + spec.study_time, author=_author(),
        healthcare_facility_type=Code("SA25", "1.2.250.1.71.4.2.4", ""),
        practice_setting=Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", ""), modalities=[spec.modality],
        regions=[Code("774007", "2.16.840.1.113883.6.96", "structure de la tête et/ou du cou")],
        reference_ids=[ReferenceId.accession(spec.accession_number, ACN_ISSUER), ReferenceId.study(spec.study_uid)],
    )  # fmt: skip
    submission = SubmissionSet(unique_id=oid_from_uuid(), source_id="1.2.250.1.999.1.1.3",
                               submission_time="20240105101501", author=_author(), patient_id=PATIENT)  # fmt: skip
    async with DmpClient(dmp_url, signer=structure_signer(settings), identity=source_identity()) as client:
        await client.provide_and_register(entry, submission, data)
    return kos_uid


async def withdraw(dmp_url: str, settings: Settings, kos_uid: str) -> None:
    """Deprecate a published KOS (ITI-57), as a source box does for a replaced or withdrawn report."""
    submission = SubmissionSet(unique_id=oid_from_uuid(), source_id="1.2.250.1.999.1.1.3",
                               submission_time="20240105101502", author=_author(), patient_id=PATIENT)  # fmt: skip
    async with DmpClient(dmp_url, signer=structure_signer(settings), identity=source_identity()) as client:
        (found,) = await client.get_documents(unique_ids=[kos_uid], patient_id=PATIENT)
        await client.update_status(found.entry_uuid, submission, new_status=ns.STATUS_DEPRECATED)
