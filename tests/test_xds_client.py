"""DmpClient against a small XDS.b peer on loopback that decodes MTOM, checks the XSDs and the VIHF."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from lxml import etree
from signxml.verifier import XMLVerifier

from drimbox.metrics import SHARED
from drimbox.state.credentials import generate_test_credentials
from drimbox.xds import metadata, mtom, query, schema, soap
from drimbox.xds import namespaces as ns
from drimbox.xds.client import DmpClient, XdsRejected, XdsTransientError
from drimbox.xds.metadata import Code, MetadataError, ReferenceId
from drimbox.xds.soap import RegistryError
from drimbox.xds.vihf import VihfSigner
from tests.test_xds_metadata import INS, KOS, PATIENT, make_entry, make_submission
from tests.test_xds_vihf import identity

R = f"{{{ns.RIM}}}"
REPOSITORY_UID = "1.2.250.1.999.9.9.1"
RESPONSE_ACTION = {
    ns.ACTION_ITI41: ns.ACTION_ITI41_RESPONSE, ns.ACTION_ITI18: ns.ACTION_ITI18_RESPONSE,
    ns.ACTION_ITI43: ns.ACTION_ITI43_RESPONSE, ns.ACTION_ITI57: ns.ACTION_ITI57_RESPONSE,
}  # fmt: skip
RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
SOAP_TYPE = "application/soap+xml; charset=UTF-8"


@dataclass
class Received:
    endpoint: str
    content_type: str
    message: soap.SoapMessage
    vihf_subject: str | None
    vihf_patient: str | None


@dataclass
class FakeDmp:
    """Registry + repository enough for the client: stores what ITI-41 sends, answers ITI-18/43/57."""

    cert_pem: str
    mode: str = "normal"
    errors: list[RegistryError] = field(default_factory=list)
    status: int = 200
    received: list[Received] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    entries: dict[str, etree._Element] = field(default_factory=dict)
    documents: dict[str, bytes] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/dmp/registry", self.handle)
        app.router.add_post("/dmp/repository", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        if self.mode == "503":
            return web.Response(status=503, text="<html>maintenance</html>", content_type="text/html")
        if self.mode == "404":
            return web.Response(status=404, text="no such service")
        if self.mode == "slow":
            await asyncio.wait_for(self.release.wait(), 10)
        content_type = request.headers.get("Content-Type", "")
        try:
            msg = soap.parse_message(content_type, await request.read())
            schema.validate(msg.payload)
            subject, patient = self.check_vihf(msg)
        except Exception as exc:  # what the client sent is wrong: the test reads `problems`
            self.problems.append(f"{type(exc).__name__}: {exc}")
            return self.respond(400, soap.build_fault("Sender", str(exc)))
        self.received.append(Received(request.path.rsplit("/", 1)[1], content_type, msg, subject, patient))
        if self.mode == "fault-receiver":
            return self.respond(500, soap.build_fault("Receiver", "database unavailable"))
        if self.mode == "fault-sender":
            return self.respond(400, soap.build_fault("Sender", "VIHF refused", "InvalidSecurity"))
        if self.mode in ("failure", "bare-failure"):
            return self.registry_answer(msg, self.errors, self.status)
        handler = {ns.ACTION_ITI41: self.iti41, ns.ACTION_ITI18: self.iti18, ns.ACTION_ITI43: self.iti43,
                   ns.ACTION_ITI57: self.iti57}[msg.action or ""]  # fmt: skip
        return handler(msg)

    def check_vihf(self, msg: soap.SoapMessage) -> tuple[str | None, str | None]:
        assert msg.header is not None
        assertion = msg.header.find(f"{{{ns.WSSE}}}Security/{{{ns.SAML2}}}Assertion")
        assert assertion is not None, "no VIHF"
        XMLVerifier().verify(assertion, x509_cert=self.cert_pem)
        saml = f"{{{ns.SAML2}}}"
        patient = assertion.findtext(f".//{saml}Attribute[@Name='{RESOURCE_ID}']/{saml}AttributeValue")
        return assertion.findtext(f".//{{{ns.SAML2}}}NameID"), patient

    @staticmethod
    def respond(status: int, body: bytes, content_type: str = SOAP_TYPE) -> web.Response:
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    def answer(self, msg: soap.SoapMessage, payload: etree._Element, status: int = 200) -> web.Response:
        action = RESPONSE_ACTION[msg.action or ""]
        return self.respond(status, soap.build_response(action, payload, msg.message_id))

    def registry_answer(self, msg: soap.SoapMessage, errors: list[RegistryError], status: int = 200) -> web.Response:
        payload = soap.build_registry_response(errors)
        if msg.action == ns.ACTION_ITI18 and self.mode != "bare-failure":
            payload.tag = f"{{{ns.QUERY}}}AdhocQueryResponse"
            etree.SubElement(payload, f"{R}RegistryObjectList")
        return self.answer(msg, payload, status)

    def iti41(self, msg: soap.SoapMessage) -> web.Response:
        docs = {d.get("id"): mtom.resolve_include(d, msg.attachments)
                for d in msg.payload.iterfind(f"{{{ns.XDSB}}}Document")}  # fmt: skip
        for eo in msg.payload.iterfind(f".//{R}ExtrinsicObject"):
            info, data = query.parse_document_entry(eo), docs[eo.get("id")]
            if info.hash != hashlib.sha1(data).hexdigest() or info.size != len(data):
                return self.registry_answer(msg, [RegistryError("XDSNonIdenticalHash", info.unique_id)])
            stored = copy.deepcopy(eo)
            stored.set("status", ns.STATUS_APPROVED)
            slot = etree.Element(f"{R}Slot", name="repositoryUniqueId")
            etree.SubElement(etree.SubElement(slot, f"{R}ValueList"), f"{R}Value").text = REPOSITORY_UID
            stored.insert(0, slot)
            self.entries[eo.get("id", "")], self.documents[info.unique_id] = stored, data
        for rplc in msg.payload.iterfind(f".//{R}Association[@associationType='{ns.ASSOC_RPLC}']"):
            self.entries[rplc.get("targetObject", "")].set("status", ns.STATUS_DEPRECATED)
        return self.answer(msg, soap.build_registry_response())

    def iti57(self, msg: soap.SoapMessage) -> web.Response:
        kind = ns.ASSOC_UPDATE_AVAILABILITY_STATUS
        for assoc in msg.payload.iterfind(f".//{R}Association[@associationType='{kind}']"):
            target = self.entries.get(assoc.get("targetObject", ""))
            if target is None:
                unknown = RegistryError("XDSUnresolvedReferenceException", "no such entry")
                return self.registry_answer(msg, [unknown])
            target.set("status", assoc.findtext(f"{R}Slot[@name='NewStatus']/{R}ValueList/{R}Value") or "")
        return self.answer(msg, soap.build_registry_response())

    def iti18(self, msg: soap.SoapMessage) -> web.Response:
        aq = msg.payload.find(f"{R}AdhocQuery")
        assert aq is not None
        params = {s.get("name"): [x.replace("''", "'") for v in s.iterfind(f"{R}ValueList/{R}Value")
                                  for x in re.findall(r"'((?:[^']|'')*)'", v.text or "")]
                  for s in aq.iterfind(f"{R}Slot")}  # fmt: skip
        found = []
        for entry in self.entries.values():
            info = query.parse_document_entry(entry)
            if aq.get("id") == ns.Q_GET_DOCUMENTS:
                wanted = [*params.get("$XDSDocumentEntryUniqueId", []),
                          *params.get("$XDSDocumentEntryEntryUUID", [])]  # fmt: skip
                keep = info.unique_id in wanted or info.entry_uuid in wanted
            else:
                keep = info.patient_id in params["$XDSDocumentEntryPatientId"]
                keep &= info.status in params["$XDSDocumentEntryStatus"]
                refs = params.get("$XDSDocumentEntryReferenceIdList")
                keep &= refs is None or bool({r.to_cx() for r in info.reference_ids} & set(refs))
                keep &= info.is_kos  # stands for the typeCode/formatCode filters: the signature is no manifest
            if keep:
                found.append(copy.deepcopy(entry))
        payload = etree.Element(f"{{{ns.QUERY}}}AdhocQueryResponse", status=ns.STATUS_SUCCESS)
        etree.SubElement(payload, f"{R}RegistryObjectList").extend(found)
        schema.validate(payload)
        return self.answer(msg, payload)

    def iti43(self, msg: soap.SoapMessage) -> web.Response:
        uid = msg.payload.findtext(f".//{{{ns.XDSB}}}DocumentUniqueId") or ""
        if uid not in self.documents:
            missing = RegistryError("XDSMissingDocument", uid)
            payload, attachments = soap.build_retrieve_response([], [missing])
        else:
            doc = soap.RetrievedDocument(REPOSITORY_UID, uid, "application/dicom", self.documents[uid])
            payload, attachments = soap.build_retrieve_response([doc])
        schema.validate(payload)
        envelope = soap.build_response(ns.ACTION_ITI43_RESPONSE, payload, msg.message_id)
        content_type, body = mtom.encode(envelope, attachments, ns.ACTION_ITI43_RESPONSE)
        return self.respond(200, body, content_type)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_test_credentials(tmp_path_factory.mktemp("dmp"), "drimbox client test")


@pytest.fixture
async def dmp(creds: tuple[Path, Path]) -> AsyncIterator[tuple[FakeDmp, str]]:
    fake = FakeDmp(creds[1].read_text())
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, f"http://127.0.0.1:{server.port}/dmp"
    fake.release.set()
    await server.close()
    assert fake.problems == []


def make_client(base: str, creds: tuple[Path, Path], **kwargs: Any) -> DmpClient:
    return DmpClient(base, signer=VihfSigner.from_files(*creds), identity=identity(), **kwargs)


@pytest.fixture
async def client(dmp: tuple[FakeDmp, str], creds: tuple[Path, Path]) -> AsyncIterator[DmpClient]:
    async with make_client(dmp[1], creds, timeout=5.0) as c:
        yield c


def media(content_type: str) -> tuple[str, dict[str, str]]:
    return mtom.parse_content_type(content_type)


async def test_publish_find_retrieve_and_delete(dmp: tuple[FakeDmp, str], client: DmpClient) -> None:
    fake, _ = dmp
    entry = make_entry()
    response = await client.provide_and_register(entry, make_submission(), KOS)
    assert response.success
    sent = fake.received[-1]
    kind, params = media(sent.content_type)
    assert (sent.endpoint, kind, params["type"], params["start-info"], params["action"]) == (
        "repository",
        "multipart/related",
        "application/xop+xml",
        "application/soap+xml",
        ns.ACTION_ITI41,
    )
    assert (sent.vihf_subject, sent.vihf_patient) == ("801234560801", PATIENT)

    (found,) = await client.find_documents(PATIENT, type_codes=[Code(*ns.KOS_TYPE_CODE)])
    sent = fake.received[-1]
    assert (sent.endpoint, media(sent.content_type)[0]) == ("registry", "application/soap+xml")
    assert (found.unique_id, found.repository_unique_id, found.hash) == (
        entry.unique_id, REPOSITORY_UID, hashlib.sha1(KOS).hexdigest())  # fmt: skip
    by_study = await client.find_by_reference_id(PATIENT, [ReferenceId.study("1.2.250.1.213.4.5.2.1.103")])
    by_uid = await client.get_documents(unique_ids=[entry.unique_id], patient_id=PATIENT)
    assert [e.entry_uuid for e in by_study + by_uid] == [entry.entry_uuid] * 2
    assert await client.find_by_reference_id(PATIENT, [ReferenceId.study("1.2.3")]) == []

    data = await client.retrieve_document(REPOSITORY_UID, entry.unique_id, patient_id=PATIENT)
    assert data == KOS
    assert (fake.received[-1].endpoint, media(fake.received[-1].content_type)[0]) == (
        "repository", "multipart/related")  # fmt: skip

    deletion = make_submission(unique_id="1.2.250.1.999.1.1.4.2")
    assert (await client.update_status(found.entry_uuid, deletion)).success
    assert fake.received[-1].endpoint == "registry" and fake.received[-1].message.action == ns.ACTION_ITI57
    assert await client.find_documents(PATIENT) == []
    (deleted,) = await client.find_documents(PATIENT, statuses=[ns.STATUS_DELETED])
    assert deleted.unique_id == entry.unique_id


async def test_replacement_deprecates_the_previous_entry(client: DmpClient) -> None:
    first, second = make_entry(), make_entry(unique_id="1.2.250.1.999.1.1.2.103.2")
    await client.provide_and_register(first, make_submission(), KOS)
    await client.provide_and_register(second, make_submission(unique_id="1.2.250.1.999.1.1.4.3"), KOS + b"v2",
                                      replaces_entry_uuid=first.entry_uuid)  # fmt: skip
    assert [e.unique_id for e in await client.find_documents(PATIENT)] == [second.unique_id]
    old = await client.find_documents(PATIENT, statuses=[ns.STATUS_DEPRECATED])
    assert [e.unique_id for e in old] == [first.unique_id]


async def test_rejection_names_the_dmp_errors_without_the_ins(dmp: tuple[FakeDmp, str], client: DmpClient) -> None:
    fake, _ = dmp
    fake.mode = "failure"
    fake.errors = [
        RegistryError("XDSUnknownPatientId", f"patient {INS} inconnu", "urn:uuid:1"),
        RegistryError("XDSExtraMetadataNotSaved", "ignored", severity=ns.SEVERITY_WARNING),
    ]
    with pytest.raises(XdsRejected) as info:
        await client.provide_and_register(make_entry(), make_submission(), KOS)
    assert info.value.errors == fake.errors and info.value.transaction == "ITI-41"
    text = str(info.value)
    assert "XDSUnknownPatientId: patient <redacted> inconnu (at urn:uuid:1)" in text and INS not in text


@pytest.mark.parametrize(
    ("mode", "errors", "status", "expected"),
    [
        ("failure", ["XDSRegistryBusy"], 200, XdsTransientError),
        ("failure", ["XDSRegistryNotAvailable", "XDSRepositoryBusy"], 200, XdsTransientError),
        ("failure", ["XDSRegistryBusy", "XDSRegistryMetadataError"], 200, XdsRejected),
        ("failure", ["XDSRepositoryError"], 500, XdsRejected),  # a proper SOAP answer, whatever the HTTP code
        ("503", [], 0, XdsTransientError),
        ("404", [], 0, XdsRejected),
        ("fault-receiver", [], 0, XdsTransientError),
        ("fault-sender", [], 0, XdsRejected),
    ],
)
async def test_failures_are_sorted_into_transient_and_rejected(
    dmp: tuple[FakeDmp, str], client: DmpClient, mode: str, errors: list[str], status: int,
    expected: type[Exception],
) -> None:  # fmt: skip
    fake, _ = dmp
    fake.mode, fake.status = mode, status
    fake.errors = [RegistryError(code, "context") for code in errors]
    outcome = "transient" if expected is XdsTransientError else "rejected"
    before = {t: _dmp_calls(t) for t in ("ITI-41", "ITI-18")}
    with pytest.raises(expected):
        await client.provide_and_register(make_entry(), make_submission(), KOS)
    with pytest.raises(expected):
        await client.find_documents(PATIENT)
    # /metrics says the same as the exception, also when the failure came inside an HTTP 200.
    for transaction in ("ITI-41", "ITI-18"):
        counts = _dmp_calls(transaction)
        assert counts[outcome] - before[transaction][outcome] == 1, (transaction, counts)
        assert counts["ok"] == before[transaction]["ok"], (transaction, counts)


def _dmp_calls(transaction: str) -> dict[str, float]:
    """drimbox_dmp_calls_total for one transaction, by outcome (the process's shared registry)."""
    return {
        outcome: SHARED.get_sample_value("drimbox_dmp_calls_total", {"transaction": transaction, "outcome": outcome})
        or 0.0
        for outcome in ("ok", "rejected", "transient")
    }


async def test_closed_and_refused_connections_are_transient(creds: tuple[Path, Path]) -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused_port = s.getsockname()[1]
    try:
        for p in (port, refused_port):
            async with make_client(f"http://127.0.0.1:{p}/dmp", creds) as c:
                with pytest.raises(XdsTransientError, match="ITI-41"):
                    await c.provide_and_register(make_entry(), make_submission(), KOS)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_dmp_that_does_not_answer_in_time_is_transient(
    dmp: tuple[FakeDmp, str], creds: tuple[Path, Path]
) -> None:
    dmp[0].mode = "slow"
    async with make_client(dmp[1], creds, timeout=0.3) as c:
        with pytest.raises(XdsTransientError, match=r"within 0\.3 s"):
            await c.find_documents(PATIENT)


async def test_bad_metadata_never_leaves_the_box(
    dmp: tuple[FakeDmp, str], client: DmpClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(MetadataError):
        await client.provide_and_register(make_entry(title="x" * 2000), make_submission(), KOS)
    real = metadata.build_provide_and_register

    def broken(*args: Any) -> tuple[etree._Element, list[mtom.Attachment]]:
        payload, attachments = real(*args)
        eo = payload.find(f".//{R}ExtrinsicObject")
        slot = eo.find(f"{R}Slot") if eo is not None else None
        assert eo is not None and slot is not None
        eo.append(slot)  # the ANS sample's mistake: a Slot after the ExternalIdentifiers
        return payload, attachments

    monkeypatch.setattr(metadata, "build_provide_and_register", broken)
    with pytest.raises(schema.SchemaError, match="Slot"):
        await client.provide_and_register(make_entry(), make_submission(), KOS)
    assert dmp[0].received == []


async def test_missing_document_and_oversized_answer(dmp: tuple[FakeDmp, str], creds: tuple[Path, Path]) -> None:
    async with make_client(dmp[1], creds) as c:
        with pytest.raises(XdsRejected, match="XDSMissingDocument"):
            await c.retrieve_document(REPOSITORY_UID, "1.2.3.4", patient_id=PATIENT)
        with pytest.raises(ValueError, match="patient_id"):
            await c.retrieve_document(REPOSITORY_UID, "1.2.3.4")
        await c.provide_and_register(make_entry(), make_submission(), KOS)
    async with make_client(dmp[1], creds, max_response_bytes=256) as c:
        with pytest.raises(XdsRejected, match="larger than 256 bytes"):
            await c.find_documents(PATIENT)


async def test_a_signer_needs_an_identity(dmp: tuple[FakeDmp, str], creds: tuple[Path, Path]) -> None:
    async with DmpClient(dmp[1], signer=VihfSigner.from_files(*creds)) as c:
        with pytest.raises(ValueError, match="identity"):
            await c.find_documents(PATIENT)
        found = await c.find_documents(PATIENT, identity=identity(authentication_mode="INDIRECTE_RENFORCEE"))
    assert found == [] and dmp[0].received[-1].vihf_subject == "801234560801"


async def test_a_query_failure_as_a_bare_registry_response_keeps_its_errors(
    dmp: tuple[FakeDmp, str], client: DmpClient
) -> None:
    dmp[0].mode = "bare-failure"
    dmp[0].errors = [RegistryError("XDSStoredQueryMissingParam", "$XDSDocumentEntryStatus")]
    with pytest.raises(XdsRejected, match="XDSStoredQueryMissingParam"):
        await client.find_documents(PATIENT)
