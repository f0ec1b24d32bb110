"""The simulated DMP speaks TD0.2/TD0.3 in the DMP's format and refuses, with SOAP faults, what breaks it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from lxml import etree

from drimbox.config import Settings
from drimbox.sim import build_sim_app
from drimbox.sim.dmp_service import DmpOptions
from drimbox.xds import access, schema, soap, td02, td03
from drimbox.xds.client import DmpClient
from drimbox.xds.metadata import Code, ins_cx
from drimbox.xds.structure import structure_signer
from drimbox.xds.vihf import PROFESSION_SCHEME, VihfIdentity
from tests.support.consumer import INS, INS_OID, PATIENT, source_identity

pytestmark = pytest.mark.sim
NO_DMP_INS = "248039121518052"


def doctor() -> VihfIdentity:
    return dataclasses.replace(source_identity(), professional_id="810100000001", professional_name="Test PRO",
                               roles=[Code("10", PROFESSION_SCHEME, "")],
                               authentication_mode="INDIRECTE_RENFORCEE")  # fmt: skip


async def _start(tmp_path: Path, options: DmpOptions | None = None) -> TestServer:
    settings = Settings()
    settings.sim.var_dir = str(tmp_path / "sim")
    server = TestServer(build_sim_app(settings, dmp_options=options), host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def dmp_url(tmp_path: Path) -> AsyncIterator[str]:
    server = await _start(tmp_path)
    yield f"http://127.0.0.1:{server.port}/dmp"
    await server.close()


def settings_of(tmp: Path) -> Settings:
    s = Settings()
    s.box.var_dir = str(tmp / "box")
    return s


async def post(url: str, action: str, envelope: bytes) -> tuple[int, soap.SoapMessage | soap.SoapFaultError]:
    headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'}
    async with aiohttp.ClientSession() as http, http.post(url, data=envelope, headers=headers) as resp:
        body, content_type = await resp.read(), resp.headers.get("Content-Type", "")
    try:
        return resp.status, soap.parse_message(content_type, body)
    except soap.SoapFaultError as fault:
        return resp.status, fault


def envelope(tmp_path: Path, url: str, action: str, payload: etree._Element, patient: str = PATIENT) -> bytes:
    vihf = structure_signer(settings_of(tmp_path)).issue(doctor(), patient)
    return soap.build_request(action, url, payload, security=vihf).envelope


async def test_td02_answers_in_hl7v3_as_the_dmp(dmp_url: str, tmp_path: Path) -> None:
    url = f"{dmp_url}/patients"
    status, answer = await post(url, access.ACTION_TD02,
                                envelope(tmp_path, url, access.ACTION_TD02, td02.build_request(INS, INS_OID)))  # fmt: skip
    assert status == 200 and isinstance(answer, soap.SoapMessage), answer
    assert answer.action == access.ACTION_TD02_RESPONSE
    schema.validate(answer.payload)
    assert td02.parse_answer(answer.payload, INS) == access.AccessStatus(True, access.NON_EXISTANTE)
    # A patient without a DMP: acknowledged (AA), queryResponseCode NF.
    status, answer = await post(url, access.ACTION_TD02, envelope(
        tmp_path, url, access.ACTION_TD02, td02.build_request(NO_DMP_INS, INS_OID), ins_cx(NO_DMP_INS)))  # fmt: skip
    assert status == 200 and isinstance(answer, soap.SoapMessage), answer
    code = answer.payload.find(f"{{{td02.HL7_NS}}}controlActProcess/{{{td02.HL7_NS}}}queryAck/"
                               f"{{{td02.HL7_NS}}}queryResponseCode")  # fmt: skip
    assert code is not None and code.get("code") == "NF"


def _break(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def change(data: bytes) -> bytes:
        assert old in data
        return data.replace(old, new, 1)

    return change


@pytest.mark.parametrize(("service", "action", "change", "expected"), [
    ("patients", access.ACTION_TD02, _break(b'code="TEST_EXST"', b'code="TEST_OTHER"'), "invalid PRPA_IN201307UV02"),
    ("patients", access.ACTION_TD02, _break(b"<semanticsText>Patient.id</semanticsText>", b""), "invalid"),
    ("patients", access.ACTION_TD02, _break(b'root="1.2.250.1.213.1.4.10" extension',
                                            b'root="1.2.3.4" extension'), "INS assigning authority"),
    ("patients", access.ACTION_TD02, _break(f'extension="{INS}"'.encode(), b'extension="12345"'), "15-digit INS"),
    ("patients", access.ACTION_TD02, _break(b'extension="PRPA_IN201307UV02"', b'extension="PRPA_IN201305UV02"'),
     "interactionId"),
    ("habilitations", access.ACTION_TD03, _break(b">AJOUT<", b">MODIFICATION<"), "invalid setAuthorization"),
])  # fmt: skip
async def test_a_malformed_request_gets_a_sender_fault(
    dmp_url: str, tmp_path: Path, service: str, action: str, change: Callable[[bytes], bytes], expected: str
) -> None:
    url = f"{dmp_url}/{service}"
    payload = td02.build_request(INS, INS_OID) if service == "patients" else td03.build_request()
    status, answer = await post(url, action, change(envelope(tmp_path, url, action, payload)))
    assert status == 400 and isinstance(answer, soap.SoapFaultError), answer
    assert answer.fault.code == "Sender" and expected in answer.fault.reason
    # Nothing was declared by a refused TD0.3.
    async with aiohttp.ClientSession() as http, http.get(dmp_url.removesuffix("/dmp") + "/sim/dmp/access") as resp:
        assert await resp.json() == []


async def test_each_call_only_at_its_own_endpoint(dmp_url: str, tmp_path: Path) -> None:
    url = f"{dmp_url}/patients"
    status, answer = await post(url, access.ACTION_TD03, envelope(tmp_path, url, access.ACTION_TD03,
                                                                  td03.build_request()))  # fmt: skip
    assert status == 400 and isinstance(answer, soap.SoapFaultError)
    assert "ActionNotSupported" in answer.fault.subcodes
    async with aiohttp.ClientSession() as http, http.post(f"{dmp_url}/access", data=b"") as resp:
        assert resp.status == 404  # the invented endpoint is gone


async def test_td02_vihf_must_name_the_queried_patient(dmp_url: str, tmp_path: Path) -> None:
    url = f"{dmp_url}/patients"
    data = envelope(tmp_path, url, access.ACTION_TD02, td02.build_request(INS, INS_OID), ins_cx(NO_DMP_INS))
    status, answer = await post(url, access.ACTION_TD02, data)
    assert status == 400 and isinstance(answer, soap.SoapFaultError)
    assert "FailedAuthentication" in answer.fault.subcodes


async def test_td03_names_its_patient_only_through_the_vihf(tmp_path: Path) -> None:
    server = await _start(tmp_path, DmpOptions(require_vihf=False))
    try:
        url = f"http://127.0.0.1:{server.port}/dmp/habilitations"
        request = soap.build_request(access.ACTION_TD03, url, td03.build_request())
        status, answer = await post(url, access.ACTION_TD03, request.envelope)
        assert status == 400 and isinstance(answer, soap.SoapFaultError)
        assert "VIHF" in answer.fault.reason
    finally:
        await server.close()


async def test_td03_declares_for_the_vihf_patient_and_professional(dmp_url: str, tmp_path: Path) -> None:
    signer = structure_signer(settings_of(tmp_path))
    async with DmpClient(dmp_url, signer=signer, identity=doctor()) as dmp:
        assert (await dmp.declare_access(ins_cx(NO_DMP_INS))).status == access.DMP_NOT_FOUND
        assert not (await dmp.patient_access(PATIENT)).granted
        assert (await dmp.declare_access(PATIENT)).status == access.DMP_OK
        assert (await dmp.patient_access(PATIENT)).granted
        assert (await dmp.declare_access(PATIENT, remove=True)).status == access.DMP_OK
        assert (await dmp.patient_access(PATIENT)).authorization == access.NON_EXISTANTE
