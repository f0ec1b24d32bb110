"""SOAP 1.2 server side: request envelope and WS-Addressing reading, responses (plain or MTOM) and faults."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from aiohttp import web
from lxml import etree

from drimbox.xds import mtom
from drimbox.xds import namespaces as ns
from drimbox.xds.schema import SchemaError, parse_xml

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"
# Header blocks this server processes, so a mustUnderstand on them is honoured rather than refused.
_UNDERSTOOD = frozenset({ns.WSA, ns.WSSE})
_ENV = f"{{{ns.SOAP12}}}"
_WSA = f"{{{ns.WSA}}}"
# Characters XML 1.0 cannot carry (controls, surrogates from undecodable headers, U+FFFE/FFFF): a reason that
# quotes the request must not make the fault itself unserialisable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MAX_REASON = 1000


class SoapFault(Exception):
    """A SOAP 1.2 fault: Sender, Receiver, MustUnderstand or VersionMismatch, with an optional subcode."""

    def __init__(self, reason: str, *, code: str = "Sender", subcode: tuple[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.subcode = subcode


@dataclass(frozen=True)
class SoapRequest:
    action: str
    message_id: str
    header: etree._Element
    payload: etree._Element
    attachments: dict[str, bytes]
    mtom: bool


def _is_true(value: str | None) -> bool:
    return (value or "").strip() in ("1", "true")


def parse_request(content_type: str, body: bytes) -> SoapRequest:
    """Read a SOAP 1.2 request (plain or MTOM); raise SoapFault on anything that is not a usable envelope."""
    try:
        message = mtom.decode(content_type, body)
        envelope = parse_xml(message.envelope)
    except (mtom.MtomError, SchemaError) as exc:
        raise SoapFault(f"unreadable SOAP message: {exc}") from None
    if envelope.tag == f"{{{SOAP11}}}Envelope":
        raise SoapFault("SOAP 1.1 envelope received; this service speaks SOAP 1.2", code="VersionMismatch")
    if envelope.tag != f"{_ENV}Envelope":
        raise SoapFault(f"root element {etree.QName(envelope).text} is not a SOAP 1.2 Envelope")
    header = envelope.find(f"{_ENV}Header")
    body_el = envelope.find(f"{_ENV}Body")
    if header is None or body_el is None:
        raise SoapFault("the SOAP envelope needs a Header (WS-Addressing) and a Body")
    for block in header:
        if not isinstance(block.tag, str):
            continue
        if _is_true(block.get(f"{_ENV}mustUnderstand")) and etree.QName(block).namespace not in _UNDERSTOOD:
            raise SoapFault(f"header block {block.tag} is not understood", code="MustUnderstand")
    action = (header.findtext(f"{_WSA}Action") or "").strip()
    message_id = (header.findtext(f"{_WSA}MessageID") or "").strip()
    missing = [name for name, value in (("Action", action), ("MessageID", message_id)) if not value]
    if missing:
        raise SoapFault(
            f"WS-Addressing header wsa:{missing[0]} is required",
            subcode=(ns.WSA, "MessageAddressingHeaderRequired"),
        )
    payloads = [c for c in body_el if isinstance(c.tag, str)]
    if len(payloads) != 1:
        raise SoapFault(f"the SOAP Body must hold exactly one element, found {len(payloads)}")
    is_mtom = (content_type or "").lower().lstrip().startswith("multipart/related")
    return SoapRequest(action, message_id, header, payloads[0], message.attachments, is_mtom)


def envelope(action: str, relates_to: str | None, payload: etree._Element) -> bytes:
    """A SOAP 1.2 envelope with wsa:Action (mustUnderstand), a fresh wsa:MessageID and wsa:RelatesTo."""
    env = etree.Element(f"{_ENV}Envelope", nsmap={"soap": ns.SOAP12, "wsa": ns.WSA})
    header = etree.SubElement(env, f"{_ENV}Header")
    action_el = etree.SubElement(header, f"{_WSA}Action")
    action_el.set(f"{_ENV}mustUnderstand", "true")
    action_el.text = action
    etree.SubElement(header, f"{_WSA}MessageID").text = f"urn:uuid:{uuid.uuid4()}"
    if relates_to:
        etree.SubElement(header, f"{_WSA}RelatesTo").text = relates_to
    etree.SubElement(env, f"{_ENV}Body").append(payload)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def soap_response(
    action: str,
    relates_to: str | None,
    payload: etree._Element,
    *,
    as_mtom: bool,
    attachments: list[mtom.Attachment] | None = None,
) -> web.Response:
    body = envelope(action, relates_to, payload)
    if as_mtom or attachments:
        content_type, data = mtom.encode(body, attachments or [], action)
        # aiohttp would append its own charset to a Content-Type given as content_type=; set the header raw.
        return web.Response(body=data, headers={"Content-Type": content_type})
    return web.Response(body=body, headers={"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'})


def fault_response(fault: SoapFault, relates_to: str | None = None) -> web.Response:
    """The fault envelope; HTTP 500 for Receiver faults, 400 otherwise (SOAP 1.2 HTTP binding)."""
    nsmap = {"soap": ns.SOAP12}
    if fault.subcode is not None:
        nsmap["sub"] = fault.subcode[0]
    fault_el = etree.Element(f"{_ENV}Fault", nsmap=nsmap)
    code = etree.SubElement(fault_el, f"{_ENV}Code")
    etree.SubElement(code, f"{_ENV}Value").text = f"soap:{fault.code}"
    if fault.subcode is not None:
        sub = etree.SubElement(code, f"{_ENV}Subcode")
        etree.SubElement(sub, f"{_ENV}Value").text = f"sub:{fault.subcode[1]}"
    reason = etree.SubElement(etree.SubElement(fault_el, f"{_ENV}Reason"), f"{_ENV}Text")
    reason.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    reason.text = _NOT_XML.sub("\ufffd", fault.reason[:_MAX_REASON])
    body = envelope(FAULT_ACTION, relates_to, fault_el)
    return web.Response(
        status=500 if fault.code == "Receiver" else 400,
        body=body,
        headers={"Content-Type": "application/soap+xml; charset=UTF-8"},
    )
