"""Identifiers out of a CDA R2 imaging report (IMG-CR-IMG): lxml, no DTD, no entities, no network."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from lxml import etree

from drimbox.dimse.uid import is_uid

HL7_NS = "urn:hl7-org:v3"
PS320_NS = "urn:dicom-org:ps3-20"
NS = {"h": HL7_NS, "ps3-20": PS320_NS}

# INS roots: NIR (.8), NIA (.9), test NIR (.10), test NIA (.11).
INS_OIDS = frozenset({"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"})
DCM_CODE_SYSTEM = "1.2.840.10008.2.16.4"
MODALITY_QUALIFIER = "121139"
LOINC = "2.16.840.1.113883.6.1"
REGION_QUALIFIER = "39111-0"

_T = TypeVar("_T")
_TS_RE = re.compile(r"^(\d{4,14})(?:\.\d+)?(?:[+-]\d{2,4})?$")


class CdaError(ValueError):
    """The CDA is unusable; the message names the element, never a patient's identity."""


@dataclass(frozen=True)
class Organisation:
    id_root: str | None
    id_extension: str | None
    name: str | None
    industry_code: str | None  # standardIndustryClassCode, e.g. AMBULATOIRE
    industry_display: str | None


@dataclass(frozen=True)
class Professional:
    id_root: str | None
    id: str | None  # the extension: RPPS-based national identifier for a PS
    family: str | None
    given: str | None
    prefix: str | None
    suffix: str | None
    profession_code: str | None  # e.g. G15_10/SM44
    profession_display: str | None
    profession_system: str | None
    organisation: Organisation | None


@dataclass(frozen=True)
class OrderRef:
    """One inFulfillmentOf/order: the accession number and the placer order it fulfils."""

    accession: str | None
    accession_issuer: str | None
    order_id: str | None
    order_issuer: str | None


@dataclass(frozen=True)
class ReportIdentifiers:
    # Identity traits stay out of repr() so that logging this object never leaks them.
    # "root" or "root^extension": the form XDS uses for uniqueId, so it can be used as is.
    document_id: str
    set_id: str | None
    version: int | None
    document_code: str | None
    title: str | None
    effective_time: str | None  # as written, timezone included
    confidentiality_code: str | None
    language: str | None
    ins: str | None = field(repr=False)
    ins_oid: str | None
    ipp: str | None = field(repr=False)
    ipp_oid: str | None
    patient_family: str | None = field(repr=False)
    patient_given: str | None = field(repr=False)
    patient_birth_date: str | None = field(repr=False)  # YYYYMMDD
    patient_sex: str | None = field(repr=False)
    accession: str
    accession_issuer: str | None
    order_id: str | None
    order_issuer: str | None
    study_uid: str
    procedure_code: str | None
    procedure_code_system: str | None
    procedure_display: str | None
    modalities: tuple[str, ...]
    regions: tuple[tuple[str, str, str], ...]  # (code, codeSystem, displayName)
    service_start: str | None  # YYYYMMDD[hh[mm[ss]]], timezone dropped
    service_stop: str | None
    author: Professional | None
    organisation: Organisation | None
    legal_authenticator: Professional | None
    # A report may cover several exams (ANS exam F): everything after the first one.
    other_study_uids: tuple[str, ...] = ()
    other_orders: tuple[OrderRef, ...] = ()

    def exam_count(self) -> int:
        """How many studies the report names: one KOS is published for each."""
        return 1 + len(self.other_study_uids)

    def for_exam(self, index: int) -> ReportIdentifiers:
        """The report seen from its index-th study (0 is the first), with that study's order and accession.

        The n-th serviceEvent goes with the n-th inFulfillmentOf (ANS exam F lists them in the same order); a
        report with fewer orders than studies gives the remaining studies its first order.
        """
        if index == 0:
            return self
        if not 0 < index < self.exam_count():
            raise IndexError(f"the report names {self.exam_count()} studies, not {index + 1}")
        uids = (self.study_uid, *self.other_study_uids)
        first = OrderRef(self.accession, self.accession_issuer, self.order_id, self.order_issuer)
        orders = (first, *self.other_orders)
        order = orders[index] if index < len(orders) and orders[index].accession else first
        return dataclasses.replace(
            self,
            study_uid=uids[index],
            accession=order.accession or self.accession,
            accession_issuer=order.accession_issuer,
            order_id=order.order_id,
            order_issuer=order.order_issuer,
        )

    def exams(self) -> tuple[tuple[str, str], ...]:
        """(Study Instance UID, accession number) of every study the report names, the first one first."""
        return tuple((e.study_uid, e.accession) for e in map(self.for_exam, range(self.exam_count())))


def _parser() -> etree.XMLParser:
    # huge_tree: an embedded PDF is one text node and may exceed libxml2's 10 MB default; the
    # amplification risks huge_tree would open are closed by refusing every DTD below.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=True,
        remove_comments=True,
        remove_pis=True,
    )


def parse_cda(data: bytes) -> ReportIdentifiers:
    """Read the identifiers a DRIMbox needs; CdaError if the document is unsafe or lacks them."""
    if not data or not data.strip():
        raise CdaError("CDA is empty")
    # A DOCTYPE can only sit in the prolog; refuse it before libxml2 even sees it.
    head = data[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in head:
        raise CdaError("CDA contains a DOCTYPE or entity declaration, which is refused")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise CdaError(f"CDA is not well-formed XML (line {exc.lineno}): {exc.msg}") from None
    except ValueError as exc:  # e.g. an unknown declared encoding
        raise CdaError(f"CDA cannot be read: {exc}") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise CdaError("CDA contains a DOCTYPE or entity declaration, which is refused")
    if any(isinstance(node, etree._Entity) for node in root.iter()):
        raise CdaError("CDA contains an entity reference, which is refused")
    if root.tag != f"{{{HL7_NS}}}ClinicalDocument":
        raise CdaError("root element is not {urn:hl7-org:v3}ClinicalDocument")
    return _identifiers(root)


def _identifiers(doc: etree._Element) -> ReportIdentifiers:
    document_id = _ii(_first(doc, "h:id"))
    if document_id is None:
        raise CdaError("CDA has no ClinicalDocument/id/@root (document unique id)")
    orders = [_order(o) for o in doc.iterfind("h:inFulfillmentOf/h:order", NS)]
    if not orders or orders[0].accession is None:
        raise CdaError("CDA has no inFulfillmentOf/order/ps3-20:accessionNumber/@extension (Accession Number)")
    events = list(doc.iterfind("h:documentationOf/h:serviceEvent", NS))
    study_uids = [_study_uid(e, i) for i, e in enumerate(events)]
    if not study_uids or study_uids[0] is None:
        raise CdaError("CDA has no documentationOf/serviceEvent/id (Study Instance UID)")
    if None in study_uids:
        # A study without its UID could never be published, and would shift the order paired with the next one.
        raise CdaError(f"CDA documentationOf[{study_uids.index(None) + 1}]/serviceEvent has no id (Study Instance UID)")
    if len(set(study_uids)) != len(study_uids):
        raise CdaError("CDA names the same Study Instance UID in two documentationOf/serviceEvent")
    primary = events[0]
    code = _first(primary, "h:code")
    patient_role = _first(doc, "h:recordTarget/h:patientRole")
    ins, ins_oid, ipp, ipp_oid = _patient_ids(patient_role)
    patient = _first(patient_role, "h:patient")
    family, given = _patient_name(_first(patient, "h:name"))
    author = _professional(_first(doc, "h:author/h:assignedAuthor"))
    performer = _professional(_first(primary, "h:performer/h:assignedEntity"))
    custodian = _organisation(_first(doc, "h:custodian/h:assignedCustodian/h:representedCustodianOrganization"))
    return ReportIdentifiers(
        document_id=document_id,
        set_id=_ii(_first(doc, "h:setId")),
        version=_version(_first(doc, "h:versionNumber")),
        document_code=_attr(_first(doc, "h:code"), "code"),
        title=_text(_first(doc, "h:title")),
        effective_time=_attr(_first(doc, "h:effectiveTime"), "value"),
        confidentiality_code=_attr(_first(doc, "h:confidentialityCode"), "code"),
        language=_attr(_first(doc, "h:languageCode"), "code"),
        ins=ins,
        ins_oid=ins_oid,
        ipp=ipp,
        ipp_oid=ipp_oid,
        patient_family=family,
        patient_given=given,
        patient_birth_date=_birth_date(_attr(_first(patient, "h:birthTime"), "value")),
        patient_sex=_attr(_first(patient, "h:administrativeGenderCode"), "code"),
        accession=orders[0].accession,
        accession_issuer=orders[0].accession_issuer,
        order_id=orders[0].order_id,
        order_issuer=orders[0].order_issuer,
        study_uid=study_uids[0],
        procedure_code=_attr(code, "code"),
        procedure_code_system=_attr(code, "codeSystem"),
        procedure_display=_attr(code, "displayName"),
        modalities=_unique(m for e in events for m in _modalities(e)),
        regions=_unique(r for e in events for r in _regions(e)),
        service_start=_timestamp(_attr(_first(primary, "h:effectiveTime/h:low"), "value"), "low"),
        service_stop=_timestamp(_attr(_first(primary, "h:effectiveTime/h:high"), "value"), "high"),
        author=author,
        # The author's organisation is the one DMP metadata names; fall back for sparse headers.
        organisation=(author and author.organisation) or (performer and performer.organisation) or custodian,
        legal_authenticator=_professional(_first(doc, "h:legalAuthenticator/h:assignedEntity")),
        other_study_uids=tuple(u for u in study_uids[1:] if u is not None),
        other_orders=tuple(orders[1:]),
    )


def _first(parent: etree._Element | None, path: str) -> etree._Element | None:
    if parent is None:
        return None
    return parent.find(path, NS)


def _attr(element: etree._Element | None, name: str) -> str | None:
    if element is None:
        return None
    value = element.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _text(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    text = " ".join("".join(element.itertext()).split())
    return text or None


def _ii(element: etree._Element | None) -> str | None:
    """An HL7 v3 II as one string: root, or root^extension."""
    root = _attr(element, "root")
    if root is None:
        return None
    extension = _attr(element, "extension")
    return f"{root}^{extension}" if extension else root


def _version(element: etree._Element | None) -> int | None:
    value = _attr(element, "value")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):  # str.isdigit() also accepts "²", which int() refuses
        raise CdaError("CDA versionNumber/@value is not a positive integer")
    return int(value)


def _order(order: etree._Element) -> OrderRef:
    accession = _first(order, "ps3-20:accessionNumber")
    order_id = _first(order, "h:id")
    return OrderRef(
        accession=_attr(accession, "extension"),
        accession_issuer=_attr(accession, "root"),
        order_id=_attr(order_id, "extension"),
        order_issuer=_attr(order_id, "root"),
    )


def _study_uid(event: etree._Element, index: int) -> str | None:
    for element in event.iterfind("h:id", NS):
        uid = _attr(element, "root")
        if uid is None:
            continue
        # A Study Instance UID ends up in C-FIND keys and URLs: accept only what DICOM PS3.5 §9 allows.
        if not is_uid(uid):
            raise CdaError(f"CDA documentationOf[{index + 1}]/serviceEvent/id/@root is not a DICOM UID")
        return uid
    return None


def _patient_ids(role: etree._Element | None) -> tuple[str | None, str | None, str | None, str | None]:
    ins = ins_oid = ipp = ipp_oid = None
    if role is None:
        return ins, ins_oid, ipp, ipp_oid
    for element in role.iterfind("h:id", NS):
        root, extension = _attr(element, "root"), _attr(element, "extension")
        if root is None or extension is None:
            continue
        if root in INS_OIDS:
            if ins is None:
                ins, ins_oid = extension, root
        elif ipp is None:
            ipp, ipp_oid = extension, root
    return ins, ins_oid, ipp, ipp_oid


def _qualified(elements: list[etree._Element], qualifier: str) -> etree._Element | None:
    """The element with that qualifier, else the first one."""
    for element in elements:
        if element.get("qualifier") == qualifier:
            return element
    return elements[0] if elements else None


def _patient_name(name: etree._Element | None) -> tuple[str | None, str | None]:
    if name is None:
        return None, None
    families = list(name.iterfind("h:family", NS))
    givens = list(name.iterfind("h:given", NS))
    # The birth name (BR) is the identity trait the INS is qualified against.
    return _text(_qualified(families, "BR")), _text(_qualified(givens, "BR"))


def _birth_date(value: str | None) -> str | None:
    if value is None or len(value) < 8 or not (value[:8].isascii() and value[:8].isdigit()):
        return None
    return value[:8]


def _timestamp(value: str | None, which: str) -> str | None:
    if value is None:
        return None
    match = _TS_RE.match(value)
    if match is None:
        raise CdaError(f"CDA documentationOf/serviceEvent/effectiveTime/{which}/@value is not a TS")
    return match.group(1)


def _translations(event: etree._Element) -> Iterable[etree._Element]:
    code = _first(event, "h:code")
    return () if code is None else code.iterfind(".//h:translation", NS)


def _qualifier_code(translation: etree._Element) -> str | None:
    return _attr(_first(translation, "h:qualifier/h:name"), "code")


def _modalities(event: etree._Element) -> Iterable[str]:
    for translation in _translations(event):
        code = _attr(translation, "code")
        # An unqualified DCM translation is still a modality (acquisition context codes are DCM too,
        # but they never sit on serviceEvent/code); a qualified one must say 121139.
        if (
            code
            and translation.get("codeSystem") == DCM_CODE_SYSTEM
            and (_qualifier_code(translation) in (None, MODALITY_QUALIFIER))
        ):
            yield code


def _regions(event: etree._Element) -> Iterable[tuple[str, str, str]]:
    for translation in _translations(event):
        if _qualifier_code(translation) == REGION_QUALIFIER:
            yield (
                _attr(translation, "code") or "",
                _attr(translation, "codeSystem") or "",
                _attr(translation, "displayName") or "",
            )


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


def _organisation(element: etree._Element | None) -> Organisation | None:
    if element is None:
        return None
    org_id = _first(element, "h:id")
    industry = _first(element, "h:standardIndustryClassCode")
    return Organisation(
        id_root=_attr(org_id, "root"),
        id_extension=_attr(org_id, "extension"),
        name=_text(_first(element, "h:name")),
        industry_code=_attr(industry, "code"),
        industry_display=_attr(industry, "displayName"),
    )


def _professional(entity: etree._Element | None) -> Professional | None:
    if entity is None:
        return None
    person_id = _first(entity, "h:id")
    code = _first(entity, "h:code")
    name = _first(entity, "h:assignedPerson/h:name")
    return Professional(
        id_root=_attr(person_id, "root"),
        id=_attr(person_id, "extension"),
        family=_text(_first(name, "h:family")),
        given=_text(_first(name, "h:given")),
        prefix=_text(_first(name, "h:prefix")),
        suffix=_text(_first(name, "h:suffix")),
        profession_code=_attr(code, "code"),
        profession_display=_attr(code, "displayName"),
        profession_system=_attr(code, "codeSystem"),
        organisation=_organisation(_first(entity, "h:representedOrganization")),
    )
