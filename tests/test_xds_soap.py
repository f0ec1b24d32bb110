"""SOAP 1.2 / WS-Addressing envelopes, MTOM round trips, XDS.b responses and SOAP faults."""

from __future__ import annotations

import base64

import pytest
from lxml import etree

from drimbox.xds import metadata as m
from drimbox.xds import mtom, query, schema, soap
from drimbox.xds import namespaces as ns
from tests.test_xds_metadata import KOS, PATIENT, make_entry, make_submission

S, A = f"{{{ns.SOAP12}}}", f"{{{ns.WSA}}}"
REPO = "http://127.0.0.1:8090/dmp/repository"


def header_text(envelope: etree._Element, name: str) -> str | None:
    return envelope.findtext(f"{S}Header/{A}{name}")


def test_request_envelope_has_ws_addressing_headers() -> None:
    payload, _ = m.build_provide_and_register(make_entry(), make_submission(), KOS)
    req = soap.build_request(ns.ACTION_ITI41, REPO, payload)
    env = schema.parse_xml(req.envelope)
    assert env.tag == f"{S}Envelope" and req.envelope.startswith(b"<?xml")
    action = env.find(f"{S}Header/{A}Action")
    assert action is not None and action.text == ns.ACTION_ITI41 and action.get(f"{S}mustUnderstand") == "1"
    assert header_text(env, "MessageID") == req.message_id and req.message_id.startswith("urn:uuid:")
    assert header_text(env, "To") == REPO
    assert env.findtext(f"{S}Header/{A}ReplyTo/{A}Address") == soap.WSA_ANONYMOUS
    assert env.find(f"{S}Header/{{{ns.WSSE}}}Security") is None
    body = env.find(f"{S}Body")
    assert body is not None
    assert [etree.QName(c).localname for c in body] == ["ProvideAndRegisterDocumentSetRequest"]
    schema.validate(body[0])
    assert soap.build_request(ns.ACTION_ITI41, REPO, payload).message_id != req.message_id


def test_request_refuses_a_payload_that_breaks_the_schema() -> None:
    payload, _ = m.build_provide_and_register(make_entry(), make_submission(), KOS)
    eo = payload.find(f".//{{{ns.RIM}}}ExtrinsicObject")
    assert eo is not None
    slot = eo.find(f"{{{ns.RIM}}}Slot")
    assert slot is not None
    eo.append(slot)  # a Slot after the ExternalIdentifiers, like the ANS sample's referenceIdList
    with pytest.raises(schema.SchemaError, match="Slot"):
        soap.build_request(ns.ACTION_ITI41, REPO, payload)


def test_security_header_carries_the_assertion() -> None:
    assertion = etree.Element(f"{{{ns.SAML2}}}Assertion", ID="_x")
    req = soap.build_request(ns.ACTION_ITI18, REPO, query.find_documents_query(PATIENT), security=assertion)
    env = schema.parse_xml(req.envelope)
    found = env.find(f"{S}Header/{{{ns.WSSE}}}Security/{{{ns.SAML2}}}Assertion")
    assert found is not None and found.get("ID") == "_x"


def test_mtom_round_trip_of_an_iti41_request() -> None:
    payload, attachments = m.build_provide_and_register(make_entry(), make_submission(), KOS)
    req = soap.build_request(ns.ACTION_ITI41, REPO, payload)
    content_type, body = mtom.encode(req.envelope, attachments, ns.ACTION_ITI41)
    media, params = mtom.parse_content_type(content_type)
    assert media == "multipart/related" and params["type"] == "application/xop+xml"
    assert params["start-info"] == "application/soap+xml" and params["action"] == ns.ACTION_ITI41
    msg = soap.parse_message(content_type, body)
    assert msg.action == ns.ACTION_ITI41 and msg.message_id == req.message_id
    schema.validate(msg.payload)
    doc = msg.payload.find(f"{{{ns.XDSB}}}Document")
    assert doc is not None and mtom.resolve_include(doc, msg.attachments) == KOS


def test_registry_response_success_failure_and_warnings() -> None:
    ok = soap.build_registry_response()
    schema.validate(ok)
    assert soap.parse_registry_response(ok) == soap.RegistryResponse(ns.STATUS_SUCCESS, [])
    errors = [
        soap.RegistryError("XDSRegistryMetadataError", "eventCodeList inconnu", "urn:uuid:1"),
        soap.RegistryError("XDSExtraMetadataNotSaved", "slot ignored", severity=ns.SEVERITY_WARNING),
    ]
    failed = soap.build_registry_response(errors)
    schema.validate(failed)
    parsed = soap.parse_registry_response(failed)
    assert parsed.failure and not parsed.success and parsed.errors == errors
    assert [e.is_error for e in parsed.errors] == [True, False]
    warned = soap.parse_registry_response(soap.build_registry_response(errors[1:]))
    assert warned.success and not warned.failure
    partial = soap.parse_registry_response(soap.build_registry_response(errors[:1], ns.STATUS_PARTIAL))
    assert partial.partial and not partial.failure


def test_response_envelope_relates_to_the_request() -> None:
    body = soap.build_response(ns.ACTION_ITI41_RESPONSE, soap.build_registry_response(), "urn:uuid:req")
    msg = soap.parse_message("application/soap+xml; charset=UTF-8", body)
    assert (msg.action, msg.relates_to) == (ns.ACTION_ITI41_RESPONSE, "urn:uuid:req")
    assert soap.parse_registry_response(msg.payload).success


def test_our_fault_is_parsed() -> None:
    body = soap.build_fault("Sender", "VIHF signature invalid", subcode="InvalidSecurity")
    with pytest.raises(soap.SoapFaultError) as info:
        soap.parse_message("application/soap+xml", body)
    assert info.value.fault == soap.SoapFault("Sender", "VIHF signature invalid", ("InvalidSecurity",), "")


def test_a_foreign_fault_with_other_prefixes_is_parsed() -> None:
    body = b"""<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:w="urn:x">
      <env:Body><env:Fault>
        <env:Code><env:Value>env:Receiver</env:Value>
          <env:Subcode><env:Value>w:Busy</env:Value></env:Subcode></env:Code>
        <env:Reason><env:Text xml:lang="fr">Service indisponible</env:Text></env:Reason>
        <env:Detail><w:info>retry in 30 s</w:info></env:Detail>
      </env:Fault></env:Body></env:Envelope>"""
    with pytest.raises(soap.SoapFaultError) as info:
        soap.parse_message("application/soap+xml", body)
    assert info.value.fault == soap.SoapFault("Receiver", "Service indisponible", ("Busy",), "retry in 30 s")


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("text/xml", b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>',
         "not a SOAP 1.2 Envelope"),
        ("text/html", b"<html><body>Service Unavailable</body></html>", "neither SOAP nor MTOM"),
        ("application/soap+xml", b"<soap:Envelope", "not well-formed"),
        ("application/soap+xml",
         b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>', "DOCTYPE"),
        ("application/soap+xml",
         b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body/></s:Envelope>', "holds 0"),
    ],
)  # fmt: skip
def test_what_is_not_soap_12_is_refused(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(soap.SoapProtocolError, match=message):
        soap.parse_message(content_type, body)


def test_retrieve_request_and_mtom_response() -> None:
    wanted = soap.DocumentRequest("1.2.250.1.999.1.1.1", "1.2.3.4", "urn:oid:1.2.5")
    req = soap.build_retrieve_request([wanted])
    schema.validate(req)
    assert [c.text for c in req[0]] == ["urn:oid:1.2.5", "1.2.250.1.999.1.1.1", "1.2.3.4"]
    doc = soap.RetrievedDocument("1.2.250.1.999.1.1.1", "1.2.3.4", "application/dicom", KOS)
    payload, attachments = soap.build_retrieve_response([doc])
    schema.validate(payload)
    content_type, body = mtom.encode(soap.build_response(ns.ACTION_ITI43_RESPONSE, payload), attachments,
                                     ns.ACTION_ITI43_RESPONSE)  # fmt: skip
    msg = soap.parse_message(content_type, body)
    result = soap.parse_retrieve_response(msg.payload, msg.attachments)
    assert result.response.success and result.documents == [doc]


def test_retrieve_response_with_inline_base64_and_missing_document() -> None:
    xml = f"""<x:RetrieveDocumentSetResponse xmlns:x="{ns.XDSB}" xmlns:rs="{ns.RS}">
      <rs:RegistryResponse status="{ns.STATUS_PARTIAL}"><rs:RegistryErrorList>
        <rs:RegistryError errorCode="XDSMissingDocument" codeContext="1.2.9 unknown"/>
      </rs:RegistryErrorList></rs:RegistryResponse>
      <x:DocumentResponse><x:RepositoryUniqueId>1.2</x:RepositoryUniqueId>
        <x:DocumentUniqueId>1.2.3</x:DocumentUniqueId><x:mimeType>application/dicom</x:mimeType>
        <x:Document>{base64.b64encode(b"inline KOS").decode()}</x:Document></x:DocumentResponse>
    </x:RetrieveDocumentSetResponse>""".encode()
    element = schema.parse_xml(xml)
    schema.validate(element)
    result = soap.parse_retrieve_response(element, {})
    assert result.response.partial and result.response.errors[0].code == "XDSMissingDocument"
    assert [d.data for d in result.documents] == [b"inline KOS"]
    with pytest.raises(soap.SoapProtocolError, match="RetrieveDocumentSetResponse"):
        soap.parse_retrieve_response(soap.build_registry_response(), {})
