"""Fuzzing XML in: the CDA parser, SOAP/MTOM responses read by the DMP client, and requests read by the simulator."""

from __future__ import annotations

import copy
import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st
from lxml import etree

from drimbox.demo.samples.reports import ExamSpec, build_cda
from drimbox.hl7.cda import CdaError, ReportIdentifiers, parse_cda
from drimbox.sim import build_sim_app
from drimbox.sim.app import MAX_REQUEST_BYTES
from drimbox.sim.soap_server import SoapFault, SoapRequest, parse_request
from drimbox.xds import mtom, soap
from drimbox.xds import namespaces as ns
from drimbox.xds.metadata import MetadataError
from drimbox.xds.query import parse_document_entries
from tests.fuzz.support import LoopbackApp, budget, peak_rss, raw_http
from tests.test_sim_dmp_support import KOS_CID, PATIENT, build_vihf, load, sim_settings, submission, with_vihf

FIXTURES = Path(__file__).parent.parent / "fixtures" / "xds"
CDA = build_cda(ExamSpec())
ITI41 = (FIXTURES / "iti41-kos-exam-c.xml").read_bytes()
ITI18 = (FIXTURES / "iti18-find-documents.xml").read_bytes()
KOS = (FIXTURES / "kos-exam-c.dcm").read_bytes()
SECRET = Path(__file__).resolve().parent / "xxe-secret.txt"  # what XXE payloads point at; never to come back

# What an attacker puts in XML, each a class of its own.
LAUGHS = (b'<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">' + b"".join(
    b'<!ENTITY %c "%s">' % (ord("b") + i, (b"&%c;" % (ord("a") + i)) * 10) for i in range(9)
) + b"]>")  # fmt: skip
HOSTILE_PROLOGS = [
    LAUGHS,
    b'<!DOCTYPE x [<!ENTITY e SYSTEM "file://' + str(SECRET).encode() + b'">]>',
    b'<!DOCTYPE x SYSTEM "http://127.0.0.1:9/evil.dtd">',
    b'<!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>',
    b'<!DOCTYPE x PUBLIC "-//X//Y" "file:///etc/passwd">',
    b"<?xml-stylesheet href='http://127.0.0.1:9/x.xsl'?>",
]
HOSTILE_FRAGMENTS = [
    b"&e;", b"&j;", b"&amp;", b"&#0;", b"&#x110000;", b"<![CDATA[<x>]]>", b"<!-- -- -->", b"<?pi x?>",
    b'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd" parse="text"/>',
    b"<a>" * 300 + b"</a>" * 300, b"<a>" * 3000, b"x" * 70_000, b"\x00", b"\xff\xfe", b"\xc3", b"]]>", b"<",
    b'<a b="1" b="2"/>', b"<p:x/>", b'<x xmlns="">', b"</ClinicalDocument>", b"\xef\xbb\xbf",
]  # fmt: skip
ENCODINGS = [b"UTF-8", b"utf-16", b"ISO-8859-1", b"bogus", b"EBCDIC-US", b"UTF-32", b""]


@st.composite
def mutated_xml(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with hostile prologs, fragments at element boundaries, cuts, and odd encodings."""
    data = base
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(["prolog", "fragment", "fragment", "cut", "encoding", "bytes", "attr", "text", "text"])
        )
        if op == "prolog":
            decl_end = data.find(b"?>") + 2 if data.startswith(b"<?xml") else 0
            data = data[:decl_end] + draw(st.sampled_from(HOSTILE_PROLOGS)) + data[decl_end:]
        elif op == "fragment":
            marks = [m.start() for m in re.finditer(rb"<", data)] or [0]
            pos = draw(st.sampled_from(marks))
            data = data[:pos] + draw(st.sampled_from(HOSTILE_FRAGMENTS)) + data[pos:]
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "encoding":
            enc = draw(st.sampled_from(ENCODINGS))
            data = re.sub(rb'encoding="[^"]*"', b'encoding="' + enc + b'"', data, count=1)
        elif op == "bytes":
            pos = draw(st.integers(0, len(data)))
            data = data[:pos] + draw(st.binary(max_size=8)) + data[pos + draw(st.integers(0, 8)) :]
        else:  # an attribute value or element text replaced by odd text (unicode digits, huge, empty, quotes)
            pattern = rb'="([^"]*)"' if op == "attr" else rb">([^<]+)</"
            values = [m.span(1) for m in re.finditer(pattern, data)]
            if values:
                start, end = draw(st.sampled_from(values))
                text = draw(st.one_of(st.text(max_size=20), st.sampled_from(["²", "٣", "1" * 100, "&lt;", "\u202e"])))
                data = (
                    data[:start]
                    + text.encode("utf-8").replace(b"&", b"&amp;").replace(b"<", b"&lt;").replace(b'"', b"&quot;")
                    + data[end:]
                )
    return data


def no_secret(value: object) -> None:
    assert "drimbox-xxe-sentinel" not in repr(value), "a file's content came back through an entity"


# -- CDA ----------------------------------------------------------------------------------------------


@given(st.one_of(mutated_xml(CDA), st.binary(max_size=300)))
@example(re.sub(rb'versionNumber value="[^"]*"', 'versionNumber value="²"'.encode(), CDA))  # found: int("²")
def test_cda_parser_returns_identifiers_or_cda_error(data: bytes) -> None:
    try:
        result = parse_cda(data)
    except CdaError as exc:
        no_secret(exc)
    else:
        assert isinstance(result, ReportIdentifiers)
        no_secret(result)


@pytest.mark.parametrize("payload", [
    LAUGHS + CDA[CDA.index(b"<ClinicalDocument") :].replace(b"<title>", b"<title>&j;", 1),
    CDA.replace(b"<title>", b"<title>" + b"<a>" * 200_000, 1),
    CDA.replace(b"<title>", b"<title>" + b"x" * (40 << 20), 1),
], ids=["billion-laughs", "deep-nesting", "40MB-text-node"])  # fmt: skip
def test_cda_hostile_shapes_are_refused_or_read_with_bounded_memory(payload: bytes) -> None:
    with peak_rss() as growth:
        try:
            parse_cda(payload)
        except CdaError:
            pass
    # A 40 MB text node is legal (an embedded PDF): it may cost its own size a few times, never more.
    assert growth() < 4 * len(payload) + (64 << 20), f"RSS grew {growth() >> 20} MB"


# -- SOAP/MTOM as the DMP client reads it -------------------------------------------------------------


def _response(payload: bytes) -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"'
        b' xmlns:wsa="http://www.w3.org/2005/08/addressing"><soap:Header><wsa:Action>urn:x</wsa:Action>'
        b"<wsa:RelatesTo>urn:uuid:1</wsa:RelatesTo></soap:Header><soap:Body>"
        + payload
        + b"</soap:Body></soap:Envelope>"
    )


_RIM_LIST = ITI41[ITI41.index(b"<rim:RegistryObjectList>") : ITI41.index(b"</rim:RegistryObjectList>") + 25]
QUERY_RESPONSE = _response(
    b'<query:AdhocQueryResponse xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0" '
    b'xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0" '
    b'status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success">' + _RIM_LIST + b"</query:AdhocQueryResponse>"
)
RETRIEVE_RESPONSE = _response(
    b'<xdsb:RetrieveDocumentSetResponse xmlns:xdsb="urn:ihe:iti:xds-b:2007" '
    b'xmlns:rs="urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0" xmlns:xop="http://www.w3.org/2004/08/xop/include">'
    b'<rs:RegistryResponse status="urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"/>'
    b"<xdsb:DocumentResponse><xdsb:RepositoryUniqueId>1.2.3</xdsb:RepositoryUniqueId>"
    b"<xdsb:DocumentUniqueId>1.2.3.4</xdsb:DocumentUniqueId><xdsb:mimeType>application/dicom</xdsb:mimeType>"
    b'<xdsb:Document><xop:Include href="cid:doc1@drimbox"/></xdsb:Document></xdsb:DocumentResponse>'
    b"</xdsb:RetrieveDocumentSetResponse>"
)
FAULT_RESPONSE = _response(
    b"<soap:Fault><soap:Code><soap:Value>soap:Sender</soap:Value><soap:Subcode><soap:Value>x:y</soap:Value>"
    b'</soap:Subcode></soap:Code><soap:Reason><soap:Text xml:lang="en">no</soap:Text></soap:Reason></soap:Fault>'
)


@st.composite
def mtom_bodies(draw: st.DrawFn, envelope: bytes, attachment: bytes = KOS) -> tuple[str, bytes]:
    """An MTOM package of `envelope` (possibly mutated) with bad boundaries, Content-IDs, separators, cuts."""
    env = draw(st.one_of(st.just(envelope), mutated_xml(envelope)))
    cid = draw(st.sampled_from(["doc1@drimbox", "", "doc1@drimbox>", "<doc1@drimbox", "doc1%40drimbox", "x" * 5000]))
    content_type, body = mtom.encode(env, [mtom.Attachment(cid, attachment[: draw(st.integers(0, len(attachment)))])],
                                     "urn:x")  # fmt: skip
    boundary = re.search(r'boundary="([^"]+)"', content_type)
    assert boundary is not None
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["no-boundary", "other-boundary", "empty-boundary", "start", "crlf", "cut",
                                   "headers", "dup-part", "media"]))  # fmt: skip
        if op == "no-boundary":
            content_type = content_type.replace(f'boundary="{boundary[1]}"', "")
        elif op == "other-boundary":
            content_type = content_type.replace(boundary[1], draw(st.text(max_size=80)).replace("\r", ""))
        elif op == "empty-boundary":
            content_type = content_type.replace(f'"{boundary[1]}"', '""')
        elif op == "start":
            start = draw(st.text(max_size=20))
            content_type = re.sub(r'start="[^"]*"', 'start="' + start.replace("\\", "\\\\") + '"', content_type)
        elif op == "crlf":
            body = body.replace(b"\r\n\r\n", draw(st.sampled_from([b"\n\n", b"\r\n", b"", b"\r\r"])), 1)
        elif op == "cut":
            body = body[: draw(st.integers(0, len(body)))]
        elif op == "headers":
            body = body.replace(b"Content-ID:", draw(st.sampled_from([b"X:", b"Content-ID:\x00", b"content-id :"])))
        elif op == "dup-part":
            first = body.find(b"--" + boundary[1].encode(), 1)
            if first > 0:
                body = body[:first] + body[first:] + body[first:]
        else:
            content_type = draw(st.sampled_from(["", "text/plain", "multipart/mixed", "application/soap+xml"])) + (
                content_type[content_type.find(";") :] if draw(st.booleans()) else ""
            )
    return content_type, body


CLIENT_INPUT = st.one_of(
    mtom_bodies(RETRIEVE_RESPONSE),
    mutated_xml(QUERY_RESPONSE).map(lambda b: ("application/soap+xml; charset=UTF-8", b)),
    mutated_xml(FAULT_RESPONSE).map(lambda b: ("application/soap+xml", b)),
    st.tuples(st.text(max_size=60), st.binary(max_size=200)),
)


@given(CLIENT_INPUT)
@example(('multipart/related; boundary="\u0100"', "--\u0100".encode()))  # found: boundary.encode("latin-1") raised
@example(("application/soap+xml", QUERY_RESPONSE.replace(b"<rim:Value>766<", "<rim:Value>²<".encode())))  # int("²")
def test_dmp_client_reads_responses_or_raises_its_errors(answer: tuple[str, bytes]) -> None:
    content_type, body = answer
    try:
        message = soap.parse_message(content_type, body)
    except soap.SoapFaultError as exc:
        assert isinstance(exc.fault, soap.SoapFault)
        return
    except soap.SoapProtocolError:
        return
    no_secret(message.payload.text)
    name = etree.QName(message.payload).localname
    try:
        if name == "RetrieveDocumentSetResponse":
            soap.parse_retrieve_response(message.payload, message.attachments)
        elif name == "AdhocQueryResponse":
            soap.parse_registry_response(message.payload)
            parse_document_entries(message.payload)
        else:
            soap.parse_registry_response(message.payload)
    except (soap.SoapProtocolError, MetadataError):
        pass


# -- SOAP/MTOM as the simulator reads requests --------------------------------------------------------

SIM_INPUT = st.one_of(
    mtom_bodies(ITI41),
    mutated_xml(ITI18).map(lambda b: ("application/soap+xml; charset=UTF-8", b)),
    st.tuples(st.text(max_size=60), st.binary(max_size=200)),
)


@given(SIM_INPUT)
@example(('multipart/related; boundary="\u0100"', "--\u0100".encode()))
def test_simulator_reads_requests_or_answers_a_fault(request: tuple[str, bytes]) -> None:
    try:
        parsed = parse_request(*request)
    except SoapFault as fault:
        assert fault.code in ("Sender", "VersionMismatch", "MustUnderstand")
        no_secret(fault.reason)
    else:
        assert isinstance(parsed, SoapRequest)


class SimUnderTest(LoopbackApp):
    def __init__(self, tmp: Path) -> None:
        super().__init__(build_sim_app(sim_settings(tmp)))


@pytest.fixture(scope="module")
def sim_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimUnderTest]:
    sim = SimUnderTest(tmp_path_factory.mktemp("sim"))
    yield sim
    sim.close()


@budget(0.5)
@given(st.sampled_from(["/dmp/registry", "/dmp/repository"]), SIM_INPUT)
# Found: a non-UTF-8 byte in `start` came back in the fault reason and made the fault itself fail (plain 500).
@example(
    "/dmp/repository", ('multipart/related; boundary="b"; start="\x80"', b"--b\r\nContent-ID: <r>\r\n\r\nx\r\n--b--")
)
def test_simulator_http_answers_hostile_requests_with_a_sender_fault(
    sim_http: SimUnderTest, path: str, request: tuple[str, bytes]
) -> None:
    content_type, body = request
    headers = {"Content-Type": content_type.encode("latin-1", "replace").decode("latin-1").replace("\r", "").replace(
        "\n", "")}  # fmt: skip
    answer = raw_http(sim_http.port, "POST", path.encode(), headers, body)
    # 400: a Sender fault (the request's fault); 500 would be the simulator's own failure.
    assert answer.status in (400, 413, 415), (answer.status, answer.body[:300])
    # aiohttp itself refuses a header with control characters (text/plain 400) before the simulator sees it.
    if answer.status == 400 and not answer.body.startswith(b"Invalid header"):
        assert answer.headers["content-type"].startswith("application/soap+xml") and b"Fault>" in answer.body


def test_simulator_refuses_a_huge_attachment_with_413(sim_http: SimUnderTest) -> None:
    content_type, body = mtom.encode(ITI41, [mtom.Attachment("doc1@drimbox", b"\0" * (MAX_REQUEST_BYTES + 1))], "urn:x")
    answer = raw_http(sim_http.port, "POST", b"/dmp/repository", {"Content-Type": content_type}, body)
    assert answer.status == 413


# -- the simulator's DMP rules, behind a valid signed VIHF ----------------------------------------------------

_SERIAL = itertools.count(int(time.time()))
_XML_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
_RULE_VALUES = st.one_of(st.sampled_from(["²", "", " ", "x" * 5000, "1.2.3", "1.2..3", "urn:uuid:x", "20241301250000",
                                          "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH", "^^^", "-1", "99999999999999999999"]),
                         _XML_TEXT)  # fmt: skip


@budget(0.3)
@given(st.data())
def test_simulator_rules_answer_every_signed_submission(sim_http: SimUnderTest, data: st.DataObject) -> None:
    # A fresh KOS and uniqueId each time, so mutations are judged by the rules rather than refused as duplicates.
    signed = submission(f"1.2.250.1.999.1.1.2.777.{next(_SERIAL)}")
    envelope = signed.envelope
    nodes = [el for el in envelope.iter(f"{{{ns.SOAP12}}}Body") for el in el.iter() if isinstance(el.tag, str)]
    assert nodes, "the submission has a body to mutate"
    for _ in range(data.draw(st.integers(1, 3))):
        node = data.draw(st.sampled_from(nodes))
        op = data.draw(st.sampled_from(["text", "attr", "attr", "drop", "dup"]))
        if op == "text":
            node.text = data.draw(_RULE_VALUES)
        elif op == "attr" and node.attrib:
            node.set(data.draw(st.sampled_from(sorted(node.attrib))), data.draw(_RULE_VALUES))
        elif op == "drop" and node.getparent() is not None:
            node.getparent().remove(node)  # type: ignore[union-attr]
        elif op == "dup" and node.getparent() is not None:
            node.addnext(copy.deepcopy(node))
    document = data.draw(st.sampled_from([signed.document, b"", signed.document[:200], b"not dicom"]))
    content_type, body = mtom.encode(etree.tostring(envelope), [mtom.Attachment(KOS_CID, document)], "urn:x")
    answer = raw_http(sim_http.port, "POST", b"/dmp/repository", {"Content-Type": content_type}, body)
    event(f"HTTP {answer.status}" + (" Success" if b"ResponseStatusType:Success" in answer.body else ""))
    # 200: a RegistryResponse (Success or Failure with its errors); 400: a Sender fault. 500 is the simulator's bug.
    assert answer.status in (200, 400), (answer.status, answer.body[-400:])


_QUERY_VALUES = st.one_of(st.sampled_from([
    "'", "''", "('')", "(", ")", "('a'", "('a','b')", "'a','b'", "('IMG-KOS^^1.2.250.1.213.1.1.4.12')", "(,)", "'^^^'",
    "'279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH'", "'%'", "'_'", "20241301", "'2024'", "2024010112000099", "-1",
    "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved'", "'x' OR '1'='1", "'" + "a" * 5000 + "'", "²",
]), _XML_TEXT)  # fmt: skip
_QUERY_SLOTS = ["$XDSDocumentEntryPatientId", "$XDSDocumentEntryStatus", "$XDSDocumentEntryTypeCode",
                "$XDSDocumentEntryFormatCode", "$XDSDocumentEntryCreationTimeFrom", "$XDSDocumentEntryServiceStartTimeTo",
                "$XDSDocumentEntryClassCode", "$XDSDocumentEntryReferenceIdList", "$XDSDocumentEntryEntryUUID",
                "$XDSDocumentEntryUniqueId", "$uuid", "$XDSDocumentEntryPracticeSettingCode"]  # fmt: skip


@budget(0.3)
@given(st.lists(st.tuples(st.sampled_from(_QUERY_SLOTS), st.lists(_QUERY_VALUES, min_size=0, max_size=3)), max_size=4),
       st.sampled_from(["urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d", "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4",
                        "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155", "urn:uuid:00000000-0000-0000-0000-000000000000"]))  # fmt: skip
def test_simulator_answers_every_signed_stored_query(
    sim_http: SimUnderTest, slots: list[tuple[str, list[str]]], query_id: str
) -> None:
    envelope = load("iti18-find-documents.xml")
    adhoc = envelope.find(f".//{{{ns.RIM}}}AdhocQuery")
    assert adhoc is not None
    adhoc.set("id", query_id)
    for name, values in slots:
        for old in adhoc.findall(f"{{{ns.RIM}}}Slot[@name='{name}']"):
            adhoc.remove(old)
        slot = etree.SubElement(adhoc, f"{{{ns.RIM}}}Slot", name=name)
        value_list = etree.SubElement(slot, f"{{{ns.RIM}}}ValueList")
        for value in values:
            etree.SubElement(value_list, f"{{{ns.RIM}}}Value").text = value
    with_vihf(envelope, build_vihf(PATIENT))
    body = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
    answer = raw_http(sim_http.port, "POST", b"/dmp/registry", {"Content-Type": "application/soap+xml"}, body)
    event(f"HTTP {answer.status}" + (" Success" if b"ResponseStatusType:Success" in answer.body else ""))
    assert answer.status in (200, 400), (answer.status, answer.body[-400:])
