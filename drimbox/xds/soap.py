"""SOAP 1.2 envelopes with WS-Addressing and the VIHF header; XDS.b responses and SOAP faults, both ways."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from lxml import etree

from drimbox.xds import mtom, schema
from drimbox.xds import namespaces as ns

S, A, RS, X = (f"{{{u}}}" for u in (ns.SOAP12, ns.WSA, ns.RS, ns.XDSB))
WSA_ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


class SoapProtocolError(ValueError):
    """A message that is not the SOAP 1.2 / XDS.b we expect (wrong envelope, no payload, unknown element)."""


@dataclass(frozen=True)
class RegistryError:
    code: str  # errorCode, e.g. XDSRegistryMetadataError
    context: str  # codeContext: the registry's explanation
    location: str = ""
    severity: str = ns.SEVERITY_ERROR

    @property
    def is_error(self) -> bool:
        return not self.severity.endswith(":Warning")


@dataclass
class RegistryResponse:
    """rs:RegistryResponse (or the RegistryResponseType part of a query or retrieve response)."""

    status: str
    errors: list[RegistryError] = field(default_factory=list)
    request_id: str | None = None

    @property
    def success(self) -> bool:
        return self.status == ns.STATUS_SUCCESS

    @property
    def partial(self) -> bool:
        return self.status == ns.STATUS_PARTIAL

    @property
    def failure(self) -> bool:
        return not (self.success or self.partial)


@dataclass(frozen=True)
class SoapFault:
    code: str  # Sender, Receiver, MustUnderstand, VersionMismatch, DataEncodingUnknown
    reason: str
    subcodes: tuple[str, ...] = ()
    detail: str = ""


class SoapFaultError(Exception):
    """The peer answered with a SOAP Fault."""

    def __init__(self, fault: SoapFault) -> None:
        super().__init__(f"SOAP Fault {fault.code}{''.join('/' + s for s in fault.subcodes)}: {fault.reason}")
        self.fault = fault


@dataclass(frozen=True)
class SoapRequest:
    message_id: str
    action: str
    envelope: bytes


@dataclass(frozen=True)
class SoapMessage:
    """A parsed SOAP message: WS-Addressing headers, the body payload and the MTOM attachments."""

    action: str | None
    message_id: str | None
    relates_to: str | None
    payload: etree._Element
    attachments: dict[str, bytes]
    header: etree._Element | None = None


@dataclass(frozen=True)
class DocumentRequest:
    repository_unique_id: str
    document_unique_id: str
    home_community_id: str | None = None


@dataclass(frozen=True)
class RetrievedDocument:
    repository_unique_id: str
    document_unique_id: str
    mime_type: str
    data: bytes
    home_community_id: str | None = None


@dataclass
class RetrieveResponse:
    response: RegistryResponse
    documents: list[RetrievedDocument]


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    el = etree.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


class _Envelope:
    """An envelope under construction: WS-Addressing headers are created in place, under the soap prefix."""

    def __init__(self) -> None:
        self.root = etree.Element(S + "Envelope", nsmap={"soap": ns.SOAP12, "wsa": ns.WSA})
        self.header = _sub(self.root, S + "Header")
        self.body = _sub(self.root, S + "Body")

    def wsa(self, name: str, text: str, must_understand: bool = False) -> etree._Element:
        el = _sub(self.header, A + name, text)
        if must_understand:
            el.set(S + "mustUnderstand", "1")
        return el

    def serialize(self, payload: etree._Element) -> bytes:
        self.body.append(copy.deepcopy(payload))  # appending would move the caller's element
        # No pretty printing: whitespace inside the signed VIHF is covered by its signature.
        return etree.tostring(self.root, xml_declaration=True, encoding="UTF-8")


def build_request(
    action: str,
    to: str,
    payload: etree._Element,
    *,
    security: etree._Element | None = None,
    message_id: str | None = None,
) -> SoapRequest:
    """A SOAP 1.2 request; the payload is validated against the XSDs first (SchemaError if it is wrong)."""
    schema.validate(payload)
    message_id = message_id or f"urn:uuid:{uuid.uuid4()}"
    env = _Envelope()
    env.wsa("Action", action, must_understand=True)
    env.wsa("MessageID", message_id)
    _sub(_sub(env.header, A + "ReplyTo"), A + "Address", WSA_ANONYMOUS)
    env.wsa("To", to)
    if security is not None:
        _sub(env.header, f"{{{ns.WSSE}}}Security").append(security)
    return SoapRequest(message_id, action, env.serialize(payload))


def build_response(action: str, payload: etree._Element, relates_to: str | None = None) -> bytes:
    """A SOAP 1.2 response envelope (for servers: the simulator and test peers)."""
    env = _Envelope()
    env.wsa("Action", action, must_understand=True)
    env.wsa("MessageID", f"urn:uuid:{uuid.uuid4()}")
    if relates_to:
        env.wsa("RelatesTo", relates_to)
    return env.serialize(payload)


def build_fault(code: str, reason: str, subcode: str | None = None, relates_to: str | None = None) -> bytes:
    """A SOAP 1.2 Fault envelope; `code` is Sender or Receiver, `subcode` a plain local name."""
    env = _Envelope()
    env.wsa("Action", "http://www.w3.org/2005/08/addressing/soap/fault")
    if relates_to:
        env.wsa("RelatesTo", relates_to)
    fault = _sub(env.body, S + "Fault")
    code_el = _sub(fault, S + "Code")
    _sub(code_el, S + "Value", f"soap:{code}")
    if subcode:
        _sub(_sub(code_el, S + "Subcode"), S + "Value", subcode)
    _sub(_sub(fault, S + "Reason"), S + "Text", reason, **{XML_LANG: "en"})
    return etree.tostring(env.root, xml_declaration=True, encoding="UTF-8")


def _local(qname: str) -> str:
    return qname.rpartition(":")[2].strip()


def parse_fault(fault: etree._Element) -> SoapFault:
    code = _local(fault.findtext(f"{S}Code/{S}Value") or "")
    subcodes = tuple(_local(v.text or "") for v in fault.iterfind(f".//{S}Subcode/{S}Value"))
    reason = " ".join((t.text or "").strip() for t in fault.iterfind(f"{S}Reason/{S}Text"))
    detail_el = fault.find(S + "Detail")
    detail = " ".join(t.strip() for t in detail_el.itertext() if t.strip()) if detail_el is not None else ""
    return SoapFault(code or "Receiver", reason, subcodes, detail)


def parse_message(content_type: str, body: bytes) -> SoapMessage:
    """Read a plain or MTOM SOAP 1.2 message; SoapFaultError for a Fault, SoapProtocolError if malformed."""
    try:
        raw = mtom.decode(content_type, body)
        env = schema.parse_xml(raw.envelope)
    except (mtom.MtomError, schema.SchemaError) as exc:
        raise SoapProtocolError(str(exc)) from None
    if env.tag != S + "Envelope":
        raise SoapProtocolError(f"root element is {etree.QName(env).text}, not a SOAP 1.2 Envelope")
    header, body_el = env.find(S + "Header"), env.find(S + "Body")
    payloads = [] if body_el is None else [c for c in body_el if isinstance(c.tag, str)]
    if len(payloads) != 1:
        raise SoapProtocolError(f"SOAP Body holds {len(payloads)} elements, expected 1")
    if payloads[0].tag == S + "Fault":
        raise SoapFaultError(parse_fault(payloads[0]))

    def wsa(name: str) -> str | None:
        text = header.findtext(A + name) if header is not None else None
        return text.strip() if text else None

    payload = payloads[0]
    return SoapMessage(wsa("Action"), wsa("MessageID"), wsa("RelatesTo"), payload, raw.attachments, header)


def parse_registry_response(element: etree._Element) -> RegistryResponse:
    """Status and errors of any RegistryResponseType (rs:RegistryResponse, query:AdhocQueryResponse, ...)."""
    status = element.get("status")
    if not status:
        raise SoapProtocolError(f"{etree.QName(element).localname} has no status attribute")
    errors = [
        RegistryError(
            e.get("errorCode", ""),
            e.get("codeContext", ""),
            e.get("location", ""),
            e.get("severity", ns.SEVERITY_ERROR),
        )
        for e in element.iterfind(f"{RS}RegistryErrorList/{RS}RegistryError")
    ]
    return RegistryResponse(status, errors, element.get("requestId"))


def build_registry_response(errors: Sequence[RegistryError] = (), status: str | None = None) -> etree._Element:
    """rs:RegistryResponse; the status defaults to Failure when any error has severity Error."""
    if status is None:
        status = ns.STATUS_FAILURE if any(e.is_error for e in errors) else ns.STATUS_SUCCESS
    root = etree.Element(RS + "RegistryResponse", nsmap={"rs": ns.RS}, status=status)
    _add_errors(root, errors)
    return root


def _add_errors(parent: etree._Element, errors: Sequence[RegistryError]) -> None:
    if not errors:
        return
    highest = ns.SEVERITY_ERROR if any(e.is_error for e in errors) else ns.SEVERITY_WARNING
    error_list = _sub(parent, RS + "RegistryErrorList", highestSeverity=highest)
    for e in errors:
        attrs = {"errorCode": e.code, "codeContext": e.context, "severity": e.severity}
        if e.location:
            attrs["location"] = e.location
        _sub(error_list, RS + "RegistryError", **attrs)


def build_retrieve_request(documents: Sequence[DocumentRequest]) -> etree._Element:
    """ITI-43 payload: xdsb:RetrieveDocumentSetRequest."""
    if not documents:
        raise ValueError("RetrieveDocumentSetRequest needs at least one DocumentRequest")
    root = etree.Element(X + "RetrieveDocumentSetRequest", nsmap={"xdsb": ns.XDSB})
    for d in documents:
        req = _sub(root, X + "DocumentRequest")
        if d.home_community_id:
            _sub(req, X + "HomeCommunityId", d.home_community_id)
        _sub(req, X + "RepositoryUniqueId", d.repository_unique_id)
        _sub(req, X + "DocumentUniqueId", d.document_unique_id)
    return root


def parse_retrieve_response(element: etree._Element, attachments: dict[str, bytes]) -> RetrieveResponse:
    """ITI-43 response: its status and errors, and each document's bytes (XOP attachment or inline base64)."""
    if element.tag != X + "RetrieveDocumentSetResponse":
        raise SoapProtocolError(f"expected RetrieveDocumentSetResponse, got {etree.QName(element).localname}")
    status_el = element.find(RS + "RegistryResponse")
    if status_el is None:
        raise SoapProtocolError("RetrieveDocumentSetResponse without rs:RegistryResponse")
    documents = []
    for d in element.iterfind(X + "DocumentResponse"):
        doc = d.find(X + "Document")
        if doc is None:
            raise SoapProtocolError("DocumentResponse without Document")
        try:
            data = mtom.resolve_include(doc, attachments)
        except mtom.MtomError as exc:
            raise SoapProtocolError(str(exc)) from None
        documents.append(RetrievedDocument(
            d.findtext(X + "RepositoryUniqueId", ""), d.findtext(X + "DocumentUniqueId", ""),
            d.findtext(X + "mimeType", ""), data, d.findtext(X + "HomeCommunityId")))  # fmt: skip
    return RetrieveResponse(parse_registry_response(status_el), documents)


def build_retrieve_response(
    documents: Sequence[RetrievedDocument], errors: Sequence[RegistryError] = ()
) -> tuple[etree._Element, list[mtom.Attachment]]:
    """ITI-43 response payload with each document as an XOP attachment (for servers and test peers)."""
    if any(e.is_error for e in errors):
        status = ns.STATUS_PARTIAL if documents else ns.STATUS_FAILURE
    else:
        status = ns.STATUS_SUCCESS
    root = etree.Element(X + "RetrieveDocumentSetResponse", nsmap={"xdsb": ns.XDSB, "rs": ns.RS})
    _add_errors(_sub(root, RS + "RegistryResponse", status=status), errors)
    attachments = []
    for d in documents:
        resp = _sub(root, X + "DocumentResponse")
        if d.home_community_id:
            _sub(resp, X + "HomeCommunityId", d.home_community_id)
        _sub(resp, X + "RepositoryUniqueId", d.repository_unique_id)
        _sub(resp, X + "DocumentUniqueId", d.document_unique_id)
        _sub(resp, X + "mimeType", d.mime_type)
        cid = f"{uuid.uuid4().hex}@drimbox"
        _sub(_sub(resp, X + "Document"), f"{{{ns.XOP}}}Include", href=f"cid:{cid}")
        attachments.append(mtom.Attachment(cid, d.data, d.mime_type))
    return root, attachments
