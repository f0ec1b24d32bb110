"""What a CDA report says to a reader: the PDF of its nonXMLBody, or the text of its structured body."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from lxml import etree

from drimbox.hl7.cda import HL7_NS, CdaError, _parser

_NS = {"h": HL7_NS}
PDF_MAGIC = b"%PDF-"


@dataclass(frozen=True)
class ReportBody:
    """One of the two: `pdf` (bytes that start as a PDF) or `text` (paragraphs, plain)."""

    pdf: bytes | None = None
    text: tuple[str, ...] = ()


def has_pdf_body(cda: bytes) -> bool:
    try:
        return read_body(cda).pdf is not None
    except CdaError:
        return False


def read_body(cda: bytes) -> ReportBody:
    """The body of a CDA already accepted by parse_cda; CdaError when it has none a reader could see."""
    head = cda[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in head:
        raise CdaError("CDA contains a DOCTYPE or entity declaration, which is refused")
    try:
        root = etree.fromstring(cda, _parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise CdaError(f"CDA cannot be read: {exc}") from None
    text = root.find("h:component/h:nonXMLBody/h:text", _NS)
    if text is not None:
        return _non_xml(text)
    body = root.find("h:component/h:structuredBody", _NS)
    if body is None:
        raise CdaError("CDA has neither a nonXMLBody nor a structuredBody")
    paragraphs: list[str] = []
    for section in body.iterfind(".//h:section", _NS):
        title = section.findtext("h:title", None, _NS)
        if title and title.strip():
            paragraphs.append(title.strip())
        narrative = section.find("h:text", _NS)
        if narrative is not None:
            paragraphs += _narrative(narrative)
    if not paragraphs:
        raise CdaError("the CDA's structuredBody has no text")
    return ReportBody(text=tuple(paragraphs))


# Narrative elements that start a line of their own; the rest (content, sub, sup...) stays inline.
_BLOCKS = frozenset({"paragraph", "item", "tr", "caption", "br"})


def _narrative(block: etree._Element) -> list[str]:
    """The lines of a section's narrative block: its markup is read as text, never passed on as HTML."""
    lines: list[str] = []
    current: list[str] = []

    def flush() -> None:
        words = " ".join("".join(current).split())
        if words:
            lines.append(words)
        current.clear()

    def walk(element: etree._Element) -> None:
        current.append(element.text or "")
        for child in element:
            block = isinstance(child.tag, str) and etree.QName(child).localname in _BLOCKS
            if block:
                flush()
            walk(child)
            if block:
                flush()
            current.append(child.tail or "")

    walk(block)
    flush()
    return lines


def _non_xml(text: etree._Element) -> ReportBody:
    media = (text.get("mediaType") or "").lower()
    content = "".join(text.itertext())
    if text.get("representation", "TXT").upper() == "B64":
        try:
            data = base64.b64decode("".join(content.split()), validate=True)
        except (binascii.Error, ValueError):
            raise CdaError("the nonXMLBody is not valid base64") from None
    else:
        data = content.encode("utf-8")
    if media == "application/pdf":
        if not data.startswith(PDF_MAGIC):
            raise CdaError("the nonXMLBody says application/pdf but is not a PDF")
        return ReportBody(pdf=data)
    if media in ("text/plain", ""):
        lines = tuple(line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip())
        if lines:
            return ReportBody(text=lines)
    raise CdaError(f"the nonXMLBody's media type {media or '(none)'} cannot be shown")
