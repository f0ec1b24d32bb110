"""ANS-shaped CDA imaging reports and the HL7 v2 messages that carry them, for tests, the demo and perf."""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from xml.sax.saxutils import escape as xml_escape

from drimbox.hl7.ack import CHARSETS, escape, new_control_id
from drimbox.hl7.cda import CdaError, ReportIdentifiers, parse_cda

LOINC = "2.16.840.1.113883.6.1"
SNOMED = "2.16.840.1.113883.6.96"
DCM = "1.2.840.10008.2.16.4"
CCAM = "1.2.250.1.213.2.5"
RPPS_OID = "1.2.250.1.71.4.2.1"
STRUCTURE_OID = "1.2.250.1.71.4.2.2"
REPORT_CODE = "18748-4^CR d'imagerie médicale^LN"


@dataclass(frozen=True)
class StudyRef:
    """A further exam covered by the same report (another inFulfillmentOf + serviceEvent)."""

    study_uid: str
    accession: str
    accession_issuer: str
    order_id: str
    order_issuer: str = "1.2.250.1.213.4.5.2.6"


@dataclass(frozen=True)
class ExamSpec:
    """Everything a synthetic report says. Defaults are ANS exam C (CR_C.xml) and its test patient."""

    name: str = "C"
    document_id: str = "1.2.250.1.213.4.5.4.403"
    version: int = 1
    set_id: str = "D52DE737-001D-4031-B571-0A0ED7C42300"
    title: str = "CR d’imagerie médicale"
    effective_time: str = "20210108111700+0100"
    confidentiality: str = "N"
    language: str = "fr-FR"
    ins: str = "279035121518989"
    ins_oid: str = "1.2.250.1.213.1.4.10"
    ipp: str = "IPP101"
    ipp_oid: str = "1.2.250.1.213.4.5.2.4"
    family: str = "PAT-TROIS"
    given: str = "DOMINIQUE"
    sex: str = "F"
    birth_date: str = "19790328"
    study_uid: str = "1.2.250.1.213.4.5.2.1.103"
    accession: str = "ACN103"
    accession_issuer: str = "1.2.250.1.925.994044785528.27"
    order_id: str = "OPN103"
    order_issuer: str = "1.2.250.1.213.4.5.2.6"
    procedure_code: str = "24727-0"
    procedure_display: str = "CT Head W contrast IV"
    ccam_code: str | None = "ACQH004"
    ccam_display: str = (
        "Scanographie du crâne, de son contenu et du tronc, avec injection intraveineuse de produit de contraste"
    )
    modalities: tuple[tuple[str, str], ...] = (("CT", "Tomodensitométrie"),)
    # (code, codeSystem, displayName); only exam C's region is known from the ANS data.
    regions: tuple[tuple[str, str, str], ...] = (("774007", SNOMED, "structure de la tête et/ou du cou"),)
    service_start: str = "20210108102500+0100"
    service_stop: str = "20210108111700+0100"
    author_id: str = "801234560801"
    author_family: str = "BIDEAULT"
    author_given: str = "Jacques"
    author_prefix: str = "M"
    author_suffix: str = "DR"
    author_profession: str = "G15_10/SM44"
    author_profession_display: str = "Médecin - Radio-diagnostic (SM)"
    org_id: str = "101235555"
    org_name: str = "Centre de radiologie Ambroise"
    org_industry: str = "AMBULATOIRE"
    other_studies: tuple[StudyRef, ...] = ()
    pdf_text: str = "Compte rendu d'imagerie - jeu de test synthetique"


_C = ExamSpec()
_ACN_ISSUER_B = "1.2.250.1.213.4.5.2.5"


def _nuclear(**ids: Any) -> ExamSpec:
    return dataclasses.replace(
        _C,
        procedure_code="25007-6",
        procedure_display="MN glande thyroide ; incidences avec I-131 IV",
        ccam_code="KCQL003",
        ccam_display="Scintigraphie de la glande thyroïde",
        modalities=(("NM", "Médecine nucléaire"),),
        **{"regions": (), **ids},
    )


def _angio(**ids: Any) -> ExamSpec:
    return dataclasses.replace(
        _C,
        procedure_code="37174-0",
        procedure_display="angiographie par fluoroscopie arteres coronaires",
        ccam_code="DDQH006",
        ccam_display="Artériographie coronaire",
        modalities=(("XA", "Angiographie par rayons X"),),
        **{"regions": (), **ids},
    )


# Identifiers from ../shared/ans-data/INDEX.md (the ANS DRIM-M_DATA CDA headers). Code labels other
# than exam C's are illustrative.
ANS_EXAMS: dict[str, ExamSpec] = {
    "C": _C,
    "E": _nuclear(
        name="E",
        document_id="1.2.250.1.213.4.5.4.405",
        study_uid="1.2.250.1.213.4.5.2.1.105",
        accession="ACN105",
        accession_issuer=_ACN_ISSUER_B,
        order_id="OPN105",
    ),
    "F": dataclasses.replace(
        _C,
        name="F",
        document_id="1.2.250.1.213.4.5.4.406",
        study_uid="1.2.250.1.213.4.5.2.1.106",
        accession="ACN106",
        order_id="OPN107",
        procedure_code="24802-1",
        procedure_display="RM genou",
        ccam_code="NZQN001",
        ccam_display="Remnographie du genou",
        modalities=(("MR", "Imagerie par résonance magnétique"),),
        regions=(),
        other_studies=(StudyRef("1.2.250.1.213.4.5.2.1.107", "ACN107", "1.2.250.1.925.994044785528.27", "OPN107"),),
    ),
    "G1": _angio(
        name="G1",
        document_id="1.2.250.1.213.4.5.4.407",
        study_uid="1.2.250.1.213.4.5.2.1.108",
        accession="ACN108",
        accession_issuer=_ACN_ISSUER_B,
        order_id="OPN108",
    ),
    "G1_MAJ": _angio(
        name="G1_MAJ",
        document_id="1.2.250.1.213.4.5.4.4072",
        version=2,
        study_uid="1.2.250.1.213.4.5.2.1.108",
        accession="ACN108",
        accession_issuer="1.2.250.1.925.994044.27",
        order_id="OPN108",
        order_issuer="1.2.250.1.748.12345678.12",
        org_id="1750803447",
    ),
    "I": _nuclear(
        name="I",
        document_id="1.2.250.1.213.4.5.4.410",
        study_uid="1.2.250.1.213.4.5.2.1.110",
        accession="ACN110",
        accession_issuer=_ACN_ISSUER_B,
        order_id="OPN110",
    ),
    # G2 names a Study Instance UID no PACS holds: the report is acknowledged, no KOS can be published.
    "G2": _angio(
        name="G2",
        document_id="1.2.250.1.213.4.5.4.408",
        study_uid="1.2.3.4.5.6.7.8.9",
        accession="ACN108",
        order_id="OPN108",
        regions=(("113257007", SNOMED, "système cardiovasculaire"),),
    ),
    # M: the test patient's INS and IPP with another person's traits.
    "M": _nuclear(
        name="M",
        document_id="1.2.250.1.213.4.5.4.414",
        study_uid="1.2.250.1.213.4.5.2.1.114",
        accession="ACN114",
        accession_issuer=_ACN_ISSUER_B,
        order_id="OPN114",
        family="ANS-DRIM",
        given="PatientBis",
        sex="M",
        birth_date="20120125",
    ),
    "N": _angio(
        name="N",
        document_id="1.2.250.1.213.4.5.4.415",
        study_uid="1.2.250.1.213.4.5.2.1.115",
        accession="ACN115",
        order_id="OPN115",
        regions=(("113257007", SNOMED, "système cardiovasculaire"),),
    ),
    # Q codes its modality "RM" (the French label) where DICOM says MR: sent as the ANS wrote it.
    "Q": dataclasses.replace(
        _C,
        name="Q",
        document_id="1.2.250.1.213.4.5.4.418",
        study_uid="1.2.250.1.213.4.5.2.1.118",
        accession="ACN118",
        order_id="OPN118",
        procedure_code="24802-1",
        procedure_display="RM genou",
        ccam_code="NZQN001",
        ccam_display="Remnographie du genou",
        modalities=(("RM", "Imagerie par résonance magnétique"),),
        regions=(("61685007", SNOMED, "membre inférieur"),),
    ),
    # W's document id was not read upstream: 424 follows the numbering of every other exam.
    "W": dataclasses.replace(
        _C,
        name="W",
        document_id="1.2.250.1.213.4.5.4.424",
        study_uid="1.2.250.1.213.4.5.2.1.124",
        accession="ACN124",
        order_id="OPN124",
    ),
}
# The plain CT reports of the ANS plan (same shape as exam C): (letter, number, accession issuer).
for _letter, _n, _issuer in (
    ("H", 109, _ACN_ISSUER_B),
    ("J", 111, _ACN_ISSUER_B),
    ("K", 112, _ACN_ISSUER_B),
    ("L", 113, _C.accession_issuer),
    ("R", 119, _C.accession_issuer),
    ("S", 120, _ACN_ISSUER_B),
    ("U", 122, _ACN_ISSUER_B),
    ("V", 123, _ACN_ISSUER_B),
):
    ANS_EXAMS[_letter] = dataclasses.replace(
        _C,
        name=_letter,
        document_id=f"1.2.250.1.213.4.5.4.{300 + _n}",
        study_uid=f"1.2.250.1.213.4.5.2.1.{_n}",
        accession=f"ACN{_n}",
        accession_issuer=_issuer,
        order_id=f"OPN{_n}",
        regions=(),
    )


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF 1.4 with one line of Helvetica text and a correct xref table."""
    safe = text.encode("latin-1", "replace")
    for char in (b"\\", b"(", b")"):
        safe = safe.replace(char, b"\\" + char)
    stream = b"BT /F1 12 Tf 72 770 Td (" + safe + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


_CDA = """<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:ps3-20="urn:dicom-org:ps3-20">
  <realmCode code="FR"/>
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <templateId root="2.16.840.1.113883.2.8.2.1"/>
  <templateId root="1.2.250.1.213.1.1.1.1"/>
  <templateId root="1.3.6.1.4.1.19376.1.2.20"/>
  <id root="{document_id}"/>
  <code code="18748-4" displayName="CR d'imagerie médicale" codeSystem="{loinc}" codeSystemName="LOINC"/>
  <title>{title}</title>
  <effectiveTime value="{effective_time}"/>
  <confidentialityCode code="{confidentiality}" codeSystem="2.16.840.1.113883.5.25"/>
  <languageCode code="{language}"/>
  <setId root="{set_id}"/>
  <versionNumber value="{version}"/>
  <recordTarget>
    <patientRole>
      <id root="{ins_oid}" extension="{ins}"/>
      <id root="{ipp_oid}" extension="{ipp}"/>
      <patient classCode="PSN">
        <name><family qualifier="BR">{family}</family><given qualifier="BR">{given}</given></name>
        <administrativeGenderCode code="{sex}" codeSystem="2.16.840.1.113883.5.1"/>
        <birthTime value="{birth_date}"/>
      </patient>
    </patientRole>
  </recordTarget>
  <author>
    <time value="{effective_time}"/>
    <assignedAuthor>{person}</assignedAuthor>
  </author>
  <custodian>
    <assignedCustodian>
      <representedCustodianOrganization>
        <id root="{structure_oid}" extension="{org_id}"/>
        <name>{org_name}</name>
      </representedCustodianOrganization>
    </assignedCustodian>
  </custodian>
  <legalAuthenticator>
    <time value="{effective_time}"/>
    <signatureCode code="S"/>
    <assignedEntity>{person}</assignedEntity>
  </legalAuthenticator>
{orders}
{events}
  <component>
    <nonXMLBody>
      <text mediaType="application/pdf" representation="B64">{pdf}</text>
    </nonXMLBody>
  </component>
</ClinicalDocument>
"""
_PERSON = """
      <id root="{rpps_oid}" extension="{author_id}"/>
      <code code="{author_profession}" displayName="{author_profession_display}" codeSystem="1.2.250.1.213.1.1.4.5"/>
      <assignedPerson>
        <name><prefix>{author_prefix}</prefix><given>{author_given}</given><family>{author_family}</family>\
<suffix>{author_suffix}</suffix></name>
      </assignedPerson>
      <representedOrganization>
        <id root="{structure_oid}" extension="{org_id}"/>
        <name>{org_name}</name>
        <standardIndustryClassCode code="{org_industry}" displayName="{org_industry_display}" codeSystem="1.2.250.1.213.1.1.4.9"/>
      </representedOrganization>
    """
_ORDER = """  <inFulfillmentOf>
    <order>
      <id root="{order_issuer}" extension="{order_id}"/>
      <ps3-20:accessionNumber root="{accession_issuer}" extension="{accession}"/>
    </order>
  </inFulfillmentOf>"""
_EVENT = """  <documentationOf>
    <serviceEvent classCode="ACT">
      <id root="{study_uid}"/>
      <code code="{procedure_code}" displayName="{procedure_display}" codeSystem="{loinc}" codeSystemName="LOINC">\
{translations}
      </code>
      <effectiveTime><low value="{service_start}"/><high value="{service_stop}"/></effectiveTime>
      <performer typeCode="PRF"><assignedEntity>{person}</assignedEntity></performer>
    </serviceEvent>
  </documentationOf>"""
_TRANSLATION = """
        <translation code="{code}" displayName="{display}" codeSystem="{system}">\
<qualifier><name code="{qualifier}" codeSystem="{qualifier_system}"/></qualifier></translation>"""


def _xml(value: object) -> str:
    return xml_escape(str(value), {'"': "&quot;"})


def build_cda(exam: ExamSpec) -> bytes:
    """A CDA R2 N1 IMG-CR-IMG report shaped like ANS CR_C.xml, with a tiny PDF as nonXMLBody."""
    values = {f.name: _xml(getattr(exam, f.name)) for f in dataclasses.fields(exam)}
    values.update(loinc=LOINC, rpps_oid=RPPS_OID, structure_oid=STRUCTURE_OID)
    values["org_industry_display"] = _xml(exam.org_industry.title())
    values["person"] = _PERSON.format_map(values)
    translations = []
    if exam.ccam_code:
        translations.append(
            f'\n        <translation code="{_xml(exam.ccam_code)}" displayName="{_xml(exam.ccam_display)}" '
            f'codeSystem="{CCAM}" codeSystemName="CCAM"/>'
        )
    qualified = [(c, d, DCM, "121139", DCM) for c, d in exam.modalities]
    qualified += [(c, d, s, "39111-0", LOINC) for c, s, d in exam.regions]
    for code, display, system, qualifier, qualifier_system in qualified:
        translations.append(
            _TRANSLATION.format(
                code=_xml(code),
                display=_xml(display),
                system=_xml(system),
                qualifier=qualifier,
                qualifier_system=qualifier_system,
            )
        )
    values["translations"] = "".join(translations)
    studies = [StudyRef(exam.study_uid, exam.accession, exam.accession_issuer, exam.order_id, exam.order_issuer)]
    studies += exam.other_studies
    values["orders"] = "\n".join(
        _ORDER.format(**{f.name: _xml(getattr(s, f.name)) for f in dataclasses.fields(s)}) for s in studies
    )
    values["events"] = "\n".join(_EVENT.format_map({**values, "study_uid": _xml(s.study_uid)}) for s in studies)
    values["pdf"] = base64.b64encode(tiny_pdf(f"{exam.pdf_text} - examen {exam.name}")).decode("ascii")
    return _CDA.format_map(values).encode("utf-8")


# MetaDMPMSS flags: label, and the value ANS exam C sends.
_FLAGS: dict[str, tuple[str, bool]] = {
    "MASQUE_PS": ("Masqué aux professionnels de Santé", False),
    "INVISIBLE_PATIENT": ("Document Non Visible par le patient", True),
    "INVISIBLE_REP_LEGAUX": ("Non visible par les représentants Légaux du patient", False),
    "CONNEXION_SECRETE": ("Connexion Secrete", False),
    "MODIF_CONF_CODE": ("Modification Confidentiality Code", False),
    "DESTDMP": ("Destinataire DMP", True),
    "DESTMSSANTEPS": ("Destinataire (Professionnel de Santé, organisation ou BAL applicative)", False),
    "DESTMSSANTEPAT": ("Destinataire Patient", False),
    "ACK_RECEPTION": ("Accusé de réception", False),
    "ACK_LECTURE_MSS": ("Accusé de lecture", False),
}
DEFAULT_FLAGS = {code: value for code, (_, value) in _FLAGS.items()}
_ORU_ACTIONS = {"publish": ("NW", "F"), "replace": ("RO", "C"), "withdraw": ("CA", "D")}
_MDM_ACTIONS = {"T02": ("NW", "F"), "T10": ("RO", "C"), "T04": ("CA", "D")}

Action = Literal["publish", "replace", "withdraw"]
Trigger = Literal["T02", "T10", "T04"]


def _ids(cda: bytes) -> ReportIdentifiers | None:
    try:
        return parse_cda(cda)
    except CdaError:
        return None  # a deliberately broken CDA still gets a message around it


def _common(cda: bytes, exam: ExamSpec | None) -> tuple[ExamSpec, ReportIdentifiers | None]:
    return exam or ANS_EXAMS["C"], _ids(cda)


def _msh(kind: str, version: str, control_id: str | None, charset: str, stamp: str) -> str:
    return (
        f"MSH|^~\\&|RIS_AMBROISE|CENTRE_AMBROISE|DRIMBOX|CENTRE_AMBROISE|{stamp}||{kind}|"
        f"{escape(control_id or new_control_id())}|P|{version}|||||FRA|{charset}|||2.1^CISIS_CDA_HL7_V2"
    )


def _pid(exam: ExamSpec, ids: ReportIdentifiers | None) -> list[str]:
    ins, ins_oid = (ids.ins, ids.ins_oid) if ids and ids.ins else (exam.ins, exam.ins_oid)
    ipp, ipp_oid = (ids.ipp, ids.ipp_oid) if ids and ids.ipp else (exam.ipp, exam.ipp_oid)
    family = escape((ids.patient_family if ids else None) or exam.family)
    given = escape((ids.patient_given if ids else None) or exam.given)
    birth = (ids.patient_birth_date if ids else None) or exam.birth_date
    sex = (ids.patient_sex if ids else None) or exam.sex
    return [
        f"PID|||{escape(ins)}^^^ASIP-SANTE-INS-NIR&{ins_oid}&ISO^INS~{escape(ipp)}^^^AUT-AFFECTATION&{ipp_oid}&ISO^PI"
        f"||{family}^{given}^{given}^^^^L~{family}^^^^^^D||{birth}|{sex}",
        "PV1|1|O|RADIO||||||||||||||||000897406^^^AUT-AFFECTATION&1.2.250.1.213.4.5.2.7&ISO^VN",
    ]


def _tail(
    cda: bytes,
    exam: ExamSpec,
    ids: ReportIdentifiers | None,
    text_type: str,
    status: str,
    flag_type: str,
    flags: dict[str, bool] | None,
) -> list[str]:
    author = ids.author if ids and ids.author else None
    org = ids.organisation if ids and ids.organisation else None
    sender = escape((author.id if author else None) or exam.author_id)
    family = escape((author.family if author else None) or exam.author_family)
    given = escape((author.given if author else None) or exam.author_given)
    org_name = escape((org.name if org else None) or exam.org_name)
    org_id = escape((org.id_extension if org else None) or exam.org_id)
    lines = [
        f"OBX|1|ED|{REPORT_CODE}||^{text_type}^XML^Base64^{base64.b64encode(cda).decode('ascii')}||||||{status}|",
        f"PRT||UC||SB^^participation|{sender}^{family}^{given}^^^^^^ASIP-SANTE-PS&{RPPS_OID}&ISO^D^^^RPPS"
        f"|||{org_name}^^^^^ASIP-SANTE-ST&{STRUCTURE_OID}&ISO^FINEG^^^{org_id}",
    ]
    for n, (code, value) in enumerate((flags if flags is not None else DEFAULT_FLAGS).items(), 2):
        label = escape(_FLAGS.get(code, (code, False))[0])
        lines.append(
            f"OBX|{n}|{flag_type}|{escape(code)}^{label}^MetaDMPMSS||{'Y' if value else 'N'}"
            f"^^expandedYes-NoIndicator||||||F|"
        )
    return lines


def _encode(lines: list[str], charset: str) -> bytes:
    return "\r".join(lines).encode(CHARSETS[charset.upper()]) + b"\r"


def _stamp(timestamp: str | None) -> str:
    return timestamp or datetime.now().strftime("%Y%m%d%H%M%S")


def build_oru(
    cda: bytes,
    action: Action = "publish",
    control_id: str | None = None,
    charset: str = "UNICODE UTF-8",
    *,
    exam: ExamSpec | None = None,
    flags: dict[str, bool] | None = None,
    timestamp: str | None = None,
) -> bytes:
    """ORU^R01 v2.5 carrying ``cda`` (PID and OBR follow the CDA, or ``exam`` if it cannot be read)."""
    exam, ids = _common(cda, exam)
    control, status = _ORU_ACTIONS[action]
    order_id = escape((ids.order_id if ids else None) or exam.order_id)
    accession = escape(ids.accession if ids else exam.accession)
    stamp = _stamp(timestamp)
    lines = [
        _msh("ORU^R01^ORU_R01", "2.5", control_id, charset, stamp),
        *_pid(exam, ids),
        f"ORC|{control}|",
        f"OBR|1|{order_id}^RIS_AMBROISE|{accession}^RIS_AMBROISE|{REPORT_CODE}|||{stamp}||||||||"
        f"{escape(exam.author_id)}^{escape(exam.author_family)}^{escape(exam.author_given)}^^^DR^^^^D^^^RPPS"
        f"||{accession}|||||||F",
        *_tail(cda, exam, ids, "TEXT", status, "CE", flags),
    ]
    return _encode(lines, charset)


def build_mdm(
    cda: bytes,
    trigger: Trigger = "T02",
    control_id: str | None = None,
    parent_document_id: str | None = None,
    charset: str = "UNICODE UTF-8",
    *,
    unique_document_id: str | None = None,
    exam: ExamSpec | None = None,
    flags: dict[str, bool] | None = None,
    timestamp: str | None = None,
) -> bytes:
    """MDM^T02/T10/T04 v2.6 carrying ``cda``; TXA-12 defaults to the CDA's document id."""
    exam, ids = _common(cda, exam)
    control, status = _MDM_ACTIONS[trigger]
    document_id = unique_document_id or (ids.document_id if ids else exam.document_id)
    stamp = _stamp(timestamp)
    lines = [
        _msh(f"MDM^{trigger}^MDM_T02", "2.6", control_id, charset, stamp),
        f"EVN||{stamp}",
        *_pid(exam, ids),
        f"ORC|{control}|",
        f"OBR|1|||{REPORT_CODE}|",
        f"TXA|1|18748-4|TEXT|{stamp}||||||||{escape(document_id)}|{escape(parent_document_id or '')}||||AU"
        f"|||||{escape(exam.author_id)}",
        *_tail(cda, exam, ids, "text", status, "CWE", flags),
    ]
    return _encode(lines, charset)


def build_omi_cancel(
    control_id: str | None = None,
    accession: str = "ACN124",
    study_uid: str = "1.2.250.1.213.4.5.2.1.124",
    *,
    exam: ExamSpec | None = None,
    order_control: str = "CA",
) -> bytes:
    """OMI^O23 v2.5.1 order cancel shaped like ANS CR_W_Suppression-OMI.hl7 (ORC-1 CA, IPC-1 accession, IPC-3 study)."""
    exam = exam or ANS_EXAMS["C"]
    lines = [
        f"MSH|^~\\&|RIS_AMBROISE|CENTRE_AMBROISE|DRIMBOX|CENTRE_AMBROISE|{_stamp(None)}||OMI^O23^OMI_O23|"
        f"{escape(control_id or new_control_id())}|P|2.5.1",
        *_pid(exam, None),
        f"ORC|{escape(order_control)}|",
        f"TQ1|||||||{datetime.now():%Y%m%d}",
        f"OBR|1|{escape(exam.order_id)}^RIS_AMBROISE|{escape(accession)}^RIS_AMBROISE|{REPORT_CODE}|",
        "OBX|1|ST|Modification Examen Imagerie|",
        f"IPC|{escape(accession)}|PACS_SOURCE|{escape(study_uid)}|12346789",
    ]
    return _encode(lines, "UNICODE UTF-8")
