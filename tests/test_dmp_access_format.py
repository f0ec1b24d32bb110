"""TD0.2/TD0.3 on the wire: the box's requests have the reference DRIMbox's shape and pass the DMP schemas."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree

from drimbox.config import Settings
from drimbox.sim.soap_server import parse_request
from drimbox.xds import access, schema, soap, td02, td03
from drimbox.xds import namespaces as ns
from drimbox.xds.access import AccessFormatError, AccessStatus
from drimbox.xds.client import DmpClient, XdsRejected
from drimbox.xds.structure import structure_signer
from tests.support.consumer import INS, INS_OID, PATIENT, source_identity

FIXTURES = Path(__file__).parent / "fixtures" / "dmp"
V = f"{{{td02.HL7_NS}}}"
SAML_ATTRIBUTE = f"{{{ns.SAML2}}}Attribute"
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"


def body_of(path: Path) -> etree._Element:
    envelope = schema.parse_xml(path.read_bytes())
    body = envelope.find(f"{{{ns.SOAP12}}}Body")
    assert body is not None
    return body[0]


def shape(element: etree._Element, ignore: frozenset[str] = frozenset()) -> list[tuple[str, tuple[str, ...]]]:
    """Every element as (path, attribute names), the attributes that carry no per-message value compared."""
    out = []
    element = copy.deepcopy(element)  # a root of its own: paths start at the payload, not at the Envelope
    for node in element.iter(etree.Element):
        path = "/".join(etree.QName(n).localname for n in [*reversed(list(node.iterancestors())), node])
        out.append((path, tuple(sorted(etree.QName(a).localname for a in node.attrib if a not in ignore))))
    return out


def test_the_reference_drimbox_requests_pass_our_schemas_and_read_as_ours() -> None:
    request = body_of(FIXTURES / "td02-request-reference.xml")
    schema.validate(request)
    parsed = td02.parse_request(request)
    assert (parsed.ins, parsed.oid) == (INS, INS_OID)
    declare = body_of(FIXTURES / "td03-request-reference.xml")
    schema.validate(declare)
    assert td03.parse_request(declare) == (access.ADD, None)


def test_our_requests_have_the_reference_shape_and_codes() -> None:
    ours, reference = td02.build_request(INS, INS_OID), body_of(FIXTURES / "td02-request-reference.xml")
    schema.validate(ours)
    assert shape(ours) == shape(reference)
    fixed = ("interactionId", "processingCode", "processingModeCode", "acceptAckCode",
             "controlActProcess", "controlActProcess/reasonCode", "receiver/device/id",
             "controlActProcess/queryByParameter/statusCode",
             "controlActProcess/queryByParameter/parameterList/patientIdentifier/value")  # fmt: skip
    for path in fixed:
        mine, theirs = ours.find(V + path.replace("/", "/" + V)), reference.find(V + path.replace("/", "/" + V))
        assert mine is not None and theirs is not None and dict(mine.attrib) == dict(theirs.attrib), path
    reference_td03 = copy.deepcopy(body_of(FIXTURES / "td03-request-reference.xml"))
    reference_td03.tail = None
    assert etree.tostring(td03.build_request(), method="c14n", exclusive=True) == etree.tostring(
        reference_td03, method="c14n", exclusive=True
    )
    assert td03.build_request(access.REMOVE).findtext(f"{{{td03.HABILITATIONS_NS}}}action") == "SUPPRESSION"


def _mutated(change: str) -> etree._Element:
    request = td02.build_request(INS, INS_OID)
    control = request.find(V + "controlActProcess")
    assert control is not None
    if change == "reason":
        reason = control.find(V + "reasonCode")
        assert reason is not None
        reason.set("code", "TEST_OTHER")
    elif change == "no patient":
        params = control.find(f"{V}queryByParameter/{V}parameterList")
        assert params is not None
        params.remove(params[-1])
    elif change == "order":
        sender = request.find(V + "sender")
        assert sender is not None
        request.insert(6, sender)  # before the receiver
    elif change == "stray":
        etree.SubElement(control, V + "subject")
    return request


@pytest.mark.parametrize("change", ["reason", "no patient", "order", "stray"])
def test_the_schema_refuses_a_request_the_dmp_would_refuse(change: str) -> None:
    with pytest.raises(schema.SchemaError):
        schema.validate(_mutated(change))


def test_the_schema_refuses_an_unknown_td03_action() -> None:
    request = td03.build_request()
    request[0].text = "MODIFICATION"
    with pytest.raises(schema.SchemaError):
        schema.validate(request)
    with pytest.raises(ValueError):
        td03.build_request("MODIFICATION")


def test_answers_read_as_the_reference_reads_them() -> None:
    request = td02.parse_request(td02.build_request(INS, INS_OID))
    for authorization in sorted(access.AUTHORIZATIONS):
        answer = td02.build_answer(request, AccessStatus(True, authorization, treating_physician=True))
        schema.validate(answer)
        assert td02.parse_answer(answer, INS) == AccessStatus(True, authorization, treating_physician=True)
        # The reference DRIMbox's front end takes the first code="..." after the text AUTORISATION.
        text = etree.tostring(answer, encoding="unicode")
        assert text.split("AUTORISATION", 1)[1].split('code="', 1)[1].split('"', 1)[0] == authorization
    not_found = td02.build_answer(request, AccessStatus(False, access.NON_EXISTANTE))
    schema.validate(not_found)
    assert not_found.find(f"{V}controlActProcess/{V}subject") is None
    assert td02.parse_answer(not_found, INS) == AccessStatus(False, access.NON_EXISTANTE)
    refused = td02.build_answer(request, None, error=("DMPInvalidData", "bad request"))
    schema.validate(refused)
    with pytest.raises(td02.Td02Refused) as exc:
        td02.parse_answer(refused, INS)
    assert (exc.value.code, exc.value.text) == ("DMPInvalidData", "bad request")


def _line_value(answer: etree._Element, keyword: str) -> etree._Element:
    for line in answer.iterfind(V + "attentionLine"):
        if line.find(V + "keyWordText").get("code") == keyword:  # type: ignore[union-attr]
            value = line.find(V + "value")
            assert value is not None
            return value
    raise AssertionError(keyword)


def test_a_wrong_answer_is_not_taken_for_an_authorisation() -> None:
    request = td02.parse_request(td02.build_request(INS, INS_OID))
    answer = td02.build_answer(request, AccessStatus(True, access.VALIDE))
    with pytest.raises(AccessFormatError, match="not about the patient"):
        td02.parse_answer(answer, "248039121518052")
    spelled = copy.deepcopy(answer)
    _line_value(spelled, "AUTORISATION").set("code", "INTERDIT")  # the reference front end's spelling
    assert td02.parse_answer(spelled, INS).authorization == access.INTERDITE
    odd = copy.deepcopy(answer)
    _line_value(odd, "AUTORISATION").set("code", "PEUT_ETRE")
    with pytest.raises(AccessFormatError, match="PEUT_ETRE"):
        td02.parse_answer(odd, INS)
    missing = copy.deepcopy(answer)
    for line in list(missing.iterfind(V + "attentionLine")):
        missing.remove(line)
    with pytest.raises(AccessFormatError, match="AUTORISATION"):
        td02.parse_answer(missing, INS)
    code = answer.find(f"{V}controlActProcess/{V}queryAck/{V}queryResponseCode")
    assert code is not None
    code.set("code", "QE")
    with pytest.raises(AccessFormatError, match="QE"):
        td02.parse_answer(answer, INS)


class Capture:
    """A stand-in DMP that records what the box sends and answers in the DMP's format."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, etree._Element, etree._Element]] = []
        self.answer: etree._Element | None = None

    async def handle(self, http: web.Request) -> web.Response:
        request = parse_request(http.headers["Content-Type"], await http.read())
        self.seen.append((http.path, request.action, request.payload, request.header))
        if self.answer is not None:
            payload = self.answer
        elif request.action == access.ACTION_TD02:
            payload = td02.build_answer(td02.parse_request(request.payload), AccessStatus(True, access.EXPIREE))
        else:
            payload = td03.build_answer(access.DMP_OK)
        action = access.ACTION_TD02_RESPONSE if request.action == access.ACTION_TD02 else access.ACTION_TD03_RESPONSE
        return web.Response(body=soap.build_response(action, payload, request.message_id),
                            content_type="application/soap+xml")  # fmt: skip


@pytest.fixture
async def capture() -> AsyncIterator[tuple[Capture, str]]:
    dmp = Capture()
    app = web.Application()
    app.router.add_post("/services/{service}", dmp.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield dmp, f"http://127.0.0.1:{server.port}/services"
    await server.close()


def _resource_id(header: etree._Element) -> str:
    for attr in header.iter(SAML_ATTRIBUTE):
        if attr.get("Name") == RESOURCE_ID:
            return "".join(attr.itertext()).strip()
    raise AssertionError("no resource-id in the VIHF")


async def test_the_client_sends_both_calls_where_and_as_the_dmp_expects(
    capture: tuple[Capture, str], tmp_path: Path
) -> None:
    dmp, base = capture
    settings = Settings()
    settings.box.var_dir = str(tmp_path / "box")
    async with DmpClient(base, signer=structure_signer(settings), identity=source_identity()) as client:
        status = await client.patient_access(PATIENT)
        assert status == AccessStatus(True, access.EXPIREE) and not status.granted
        assert (await client.declare_access(PATIENT)).granted
        (td02_path, td02_action, td02_body, td02_header), (td03_path, td03_action, td03_body, td03_header) = dmp.seen
        assert (td02_path, td02_action) == ("/services/patients", "urn:hl7-org:v3:PRPA_IN201307UV02")
        assert (td03_path, td03_action) == ("/services/habilitations",
                                            "urn:si-dmp-habilitations:HabilitationsEndPoint:setAuthorization")  # fmt: skip
        for body in (td02_body, td03_body):
            schema.validate(body)
        assert td02.parse_request(td02_body).ins == INS and td03.parse_request(td03_body) == ("AJOUT", None)
        # The VIHF travels in wsse:Security and names the patient in both calls (TD0.3's only patient).
        assert _resource_id(td02_header) == _resource_id(td03_header) == PATIENT
        # A DMP answer that breaks the schema is refused, not guessed at.
        dmp.answer = td03.build_answer("NOT_A_STATUS")
        with pytest.raises(XdsRejected, match="malformed answer"):
            await client.declare_access(PATIENT)
