"""Helpers for the DMP simulator tests (running app, signed VIHF, fixture requests), and their own checks."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import functools
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from signxml.algorithms import SignatureConstructionMethod
from signxml.signer import XMLSigner

from conformance.ans import ANS_DATA
from drimbox.config import Settings
from drimbox.sim import DMP_REPOSITORY_UNIQUE_ID, DmpOptions, build_sim_app
from drimbox.xds import metadata, mtom, signature
from drimbox.xds import namespaces as ns

FIXTURES = Path(__file__).parent / "fixtures" / "xds"
ANS_SAMPLES = ANS_DATA / "validator-samples"
INS = "279035121518989"
INS_OID = "1.2.250.1.213.1.4.10"
PATIENT = f"{INS}^^^&{INS_OID}&ISO^NH"
OTHER_INS = "248039121518984"
OTHER_PATIENT = f"{OTHER_INS}^^^&{INS_OID}&ISO^NH"
KOS_UID = "1.2.250.1.999.1.1.2.103.1"
KOS_CID = "kos-exam-c@drimbox.test"
STUDY_UID = "1.2.250.1.213.4.5.2.1.103"
PLACEHOLDER_UUID = "urn:uuid:00000000-0000-0000-0000-000000000000"
NSMAP = {**ns.NSMAP, "xop": ns.XOP}
SOAP = f"{{{ns.SOAP12}}}"


# -- KOS -----------------------------------------------------------------------------------------


def make_kos(sop_uid: str = KOS_UID, patient_id: str = INS, study_uid: str = STUDY_UID) -> bytes:
    """A small Key Object Selection Document (one referenced CT image), deterministic for given UIDs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.88.59")
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID("1.2.250.1.999.1.1.9")
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.PatientName = "PAT-TROIS^DOMINIQUE"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = sop_uid + ".0"
    ds.Modality = "KO"
    ds.AccessionNumber = "ACN103"
    ds.ValueType = "CONTAINER"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = "113030", "DCM", "Manifest"
    ds.ConceptNameCodeSequence = Sequence([concept])
    image = Dataset()
    image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    image.ReferencedSOPInstanceUID = study_uid + ".1.1"
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
    item.ReferencedSOPSequence = Sequence([image])
    ds.ContentSequence = Sequence([item])
    out = BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


# -- VIHF ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def make_credentials(cn: str = "DRIMbox", *, expired: bool = False, issuer: Credentials | None = None) -> Credentials:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Paris (75)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Centre de radiologie Ambroise"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "101235555"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=2))
        .not_valid_after(now - dt.timedelta(days=1) if expired else now + dt.timedelta(days=30))
    )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Credentials(key, cert)


@functools.cache
def default_credentials() -> Credentials:
    return make_credentials()


def _dn_text(cert: x509.Certificate) -> str:
    # Written CN-first as in the ANS sample; the DMP compares attributes, not their order.
    return ", ".join(f"{a.rfc4514_attribute_name}={a.value!s}" for a in reversed(list(cert.subject)))


ATTRIBUTES = {
    "VIHF_Version": "3.0",
    "Identifiant_Structure": "101235555",
    "Secteur_Activite": "SA25^1.2.250.1.71.4.2.4",
    "Authentification_Mode": "INDIRECTE",
    "Ressource_URN": "urn:dmp",
    "urn:oasis:names:tc:xspa:1.0:subject:subject-id": "Jean BIDEAULT",
    "LPS_ID": "drimbox",
    "LPS_Nom": "drimbox",
    "LPS_Version": "0.1.0",
    "LPS_ID_HOMOLOGATION_DMP": "DRIMBOX-TEST",
}


class _Sha1Signer(XMLSigner):
    """The ANS samples sign with rsa-sha1, which signxml refuses to produce unless asked this way."""

    def check_deprecated_methods(self) -> None:
        return None


def build_vihf(
    resource_id: str | None = PATIENT,
    *,
    credentials: Credentials | None = None,
    attributes: dict[str, str | None] | None = None,
    issuer: str | None = None,
    algorithm: str = "rsa-sha256",
    conditions: tuple[dt.datetime, dt.datetime] | None = None,
    tamper: Callable[[etree._Element], None] | None = None,
) -> etree._Element:
    """A signed VIHF like the ANS sample; `attributes` overrides (None removes), `tamper` edits after signing."""
    creds = credentials or default_credentials()
    saml = f"{{{ns.SAML2}}}"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    root = etree.Element(
        f"{saml}Assertion", nsmap={"saml2": ns.SAML2}, ID=f"_{uuid.uuid4().hex}", IssueInstant=now, Version="2.0"
    )
    etree.SubElement(
        root, f"{saml}Issuer", Format=ns.SAML2.replace("2.0:assertion", "1.1:nameid-format:X509SubjectName")
    ).text = issuer if issuer is not None else _dn_text(creds.cert)
    etree.SubElement(root, f"{{{ns.DSIG}}}Signature", nsmap={"ds": ns.DSIG}, Id="placeholder")
    etree.SubElement(etree.SubElement(root, f"{saml}Subject"), f"{saml}NameID").text = "801234560801"
    if conditions is not None:
        etree.SubElement(
            root, f"{saml}Conditions", NotBefore=conditions[0].isoformat(), NotOnOrAfter=conditions[1].isoformat()
        )
    authn = etree.SubElement(root, f"{saml}AuthnStatement", AuthnInstant=now)
    context = etree.SubElement(etree.SubElement(authn, f"{saml}AuthnContext"), f"{saml}AuthnContextClassRef")
    context.text = "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient"
    statement = etree.SubElement(root, f"{saml}AttributeStatement")
    values: dict[str, str | None] = {**ATTRIBUTES, "urn:oasis:names:tc:xacml:2.0:resource:resource-id": resource_id}
    values.update(attributes or {})
    for name, value in values.items():
        if value is not None:
            attr = etree.SubElement(statement, f"{saml}Attribute", Name=name)
            etree.SubElement(attr, f"{saml}AttributeValue").text = value
    hl7 = "urn:hl7-org:v3"
    for name, tag, code in (
        ("urn:oasis:names:tc:xacml:2.0:subject:role", "Role", "10"),
        ("urn:oasis:names:tc:xspa:1.0:subject:purposeofuse", "PurposeOfUse", "normal"),
    ):
        if name in values and values[name] is None:
            continue
        holder = etree.SubElement(etree.SubElement(statement, f"{saml}Attribute", Name=name), f"{saml}AttributeValue")
        etree.SubElement(holder, f"{{{hl7}}}{tag}", nsmap={None: hl7}, code=code)
    signer = (_Sha1Signer if algorithm.endswith("sha1") else XMLSigner)(
        method=SignatureConstructionMethod.enveloped,
        signature_algorithm=algorithm,
        digest_algorithm="sha1" if algorithm.endswith("sha1") else "sha256",
        c14n_algorithm="http://www.w3.org/2001/10/xml-exc-c14n#",
    )
    pem = creds.cert.public_bytes(serialization.Encoding.PEM).decode()
    signed: etree._Element = signer.sign(root, key=creds.key, cert=pem, reference_uri=root.get("ID"))
    if tamper is not None:
        tamper(signed)
    return signed


# -- requests ------------------------------------------------------------------------------------


def load(name: str) -> etree._Element:
    return etree.fromstring((FIXTURES / name).read_bytes())


def with_vihf(envelope: etree._Element, assertion: etree._Element | None) -> etree._Element:
    header = envelope.find(f"{SOAP}Header")
    assert header is not None
    for old in header.findall(f"{{{ns.WSSE}}}Security"):
        header.remove(old)
    # lxml re-maps an appended element onto prefixes already declared above it (the ANS sample declares
    # xmlns:urn="urn:hl7-org:v3"), which changes the signed bytes: drop declarations nothing uses first.
    etree.cleanup_namespaces(envelope)
    if assertion is not None:
        etree.SubElement(header, f"{{{ns.WSSE}}}Security", nsmap={"wsse": ns.WSSE}).append(assertion)
    return envelope


def find1(root: etree._Element, path: str) -> etree._Element:
    found = root.find(path, NSMAP)
    assert found is not None, path
    return found


def set_ei(envelope: etree._Element, scheme: str, value: str, owner: str = "DocumentKOS") -> None:
    for ei in envelope.iterfind(".//rim:ExternalIdentifier", NSMAP):
        if ei.get("identificationScheme") == scheme and ei.get("registryObject") == owner:
            ei.set("value", value)
            return
    raise AssertionError(f"no ExternalIdentifier {scheme} on {owner}")


def slot(obj: etree._Element, name: str) -> etree._Element:
    for s in obj.findall("rim:Slot", NSMAP):
        if s.get("name") == name:
            return s
    raise AssertionError(f"no slot {name}")


def set_slot(obj: etree._Element, name: str, *values: str) -> None:
    value_list = find1(slot(obj, name), "rim:ValueList")
    for old in list(value_list):
        value_list.remove(old)
    for v in values:
        etree.SubElement(value_list, f"{{{ns.RIM}}}Value").text = v


def entry(envelope: etree._Element) -> etree._Element:
    return find1(envelope, ".//rim:ExtrinsicObject")


def classification(obj: etree._Element, scheme: str) -> etree._Element:
    for c in obj.findall("rim:Classification", NSMAP):
        if c.get("classificationScheme") == scheme:
            return c
    raise AssertionError(f"no classification {scheme}")


@dataclass
class Submission:
    envelope: etree._Element
    document: bytes

    def documents(self) -> list[mtom.Attachment]:
        return [mtom.Attachment(KOS_CID, self.document, "application/dicom")]


def submission(
    unique_id: str = KOS_UID, *, patient: str = PATIENT, kos: bytes | None = None, vihf: bool = True
) -> Submission:
    """The fixture ITI-41 for a KOS with this uniqueId: hash, size and submission set uniqueId updated."""
    envelope = load("iti41-kos-exam-c.xml")
    document = kos if kos is not None else make_kos(unique_id, patient.split("^")[0])
    find1(envelope, ".//wsa:MessageID").text = f"urn:uuid:{uuid.uuid4()}"
    set_ei(envelope, ns.DE_UNIQUE_ID, unique_id)
    set_ei(envelope, ns.SS_UNIQUE_ID, f"1.2.250.1.999.1.1.4.{uuid.uuid4().int % 10**12}", "SubmissionSet01")
    for owner in ("DocumentKOS", "SubmissionSet01"):
        set_ei(envelope, ns.DE_PATIENT_ID if owner == "DocumentKOS" else ns.SS_PATIENT_ID, patient, owner)
    set_slot(entry(envelope), "hash", hashlib.sha1(document).hexdigest())
    set_slot(entry(envelope), "size", str(len(document)))
    if vihf:
        with_vihf(envelope, build_vihf(patient))
    return Submission(envelope, document)


def inline(sub: Submission) -> etree._Element:
    """The same request without MTOM: the document as base64 text in xdsb:Document."""
    envelope = copy.deepcopy(sub.envelope)
    doc = find1(envelope, ".//xdsb:Document")
    for inc in list(doc):
        doc.remove(inc)
    doc.text = base64.b64encode(sub.document).decode("ascii")
    return envelope


SIGNATURE_CID = "signature@drimbox.test"


def add_signature(
    envelope: etree._Element, attachments: list[mtom.Attachment] | None, *, credentials: Credentials | None = None
) -> tuple[etree._Element, list[mtom.Attachment] | None]:
    """The ITI-41 as the DMP wants it: plus a signature entry over its documents as they stand now (a copy).

    Signing at send time lets a test alter the request first and still see only the error it is about.
    """
    request = envelope.find(f".//{{{ns.XDSB}}}ProvideAndRegisterDocumentSetRequest")
    if request is None or any(
        c.get("nodeRepresentation") == "E1762" for c in envelope.iterfind(".//rim:Classification", NSMAP)
    ):
        return envelope, attachments
    envelope = copy.deepcopy(envelope)
    request = find1(envelope, ".//xdsb:ProvideAndRegisterDocumentSetRequest")
    by_cid = {a.content_id: a.data for a in attachments or []}
    data: dict[str, bytes] = {}
    for doc in request.iterfind("xdsb:Document", NSMAP):
        inc = doc.find("xop:Include", NSMAP)
        if inc is not None and inc.get("href", "")[4:] in by_cid:
            data[doc.get("id", "")] = by_cid[inc.get("href", "")[4:]]
        elif inc is None and doc.text:
            data[doc.get("id", "")] = base64.b64decode(doc.text)
    rol = find1(request, "lcm:SubmitObjectsRequest/rim:RegistryObjectList")
    ss = rol.find("rim:RegistryPackage", NSMAP)
    ss_id, ss_uid = (ss.get("id", ""), "") if ss is not None else ("", "")
    for ei in rol.iterfind(".//rim:ExternalIdentifier", NSMAP):
        if ei.get("identificationScheme") == ns.SS_UNIQUE_ID:
            ss_uid = ei.get("value", "")
    signed = []
    for eo in rol.iterfind("rim:ExtrinsicObject", NSMAP):
        uid = next((ei.get("value", "") for ei in eo.iterfind("rim:ExternalIdentifier", NSMAP)
                    if ei.get("identificationScheme") == ns.DE_UNIQUE_ID), "")  # fmt: skip
        signed.append(signature.SignedDocument(uid, data.get(eo.get("id", ""), b"")))
    creds = credentials or default_credentials()
    xml = signature.sign_submission(creds.key, creds.cert, "sig-test", ss_uid, signed)
    sig = metadata.SubmissionSignature(f"1.2.250.1.999.1.1.5.{uuid.uuid4().int % 10**12}", xml, "Signature01")
    kos = rol.find("rim:ExtrinsicObject", NSMAP)
    if kos is not None and ss is not None:
        # Build the signature's metadata the way the box does, from a minimal entry carrying the KOS's context.
        scratch = etree.Element(f"{{{ns.RIM}}}RegistryObjectList")
        metadata.signature_entry(scratch, sig, _context_entry(kos), _context_submission(ss))
        rol.append(scratch[0])
    for kind, source, target in ((ns.ASSOC_HAS_MEMBER, ss_id, "Signature01"),
                                 (metadata.ASSOC_SIGNS, "Signature01", ss_id)):  # fmt: skip
        assoc = etree.SubElement(rol, f"{{{ns.RIM}}}Association", id=f"as-{kind[-7:]}-sig", associationType=kind,
                                 sourceObject=source, targetObject=target)  # fmt: skip
        status = etree.SubElement(assoc, f"{{{ns.RIM}}}Slot", name="SubmissionSetStatus")
        etree.SubElement(etree.SubElement(status, f"{{{ns.RIM}}}ValueList"), f"{{{ns.RIM}}}Value").text = "Original"
    doc = etree.SubElement(request, f"{{{ns.XDSB}}}Document", id="Signature01")
    if attachments is None:
        doc.text = base64.b64encode(xml).decode("ascii")
        return envelope, None
    etree.SubElement(doc, f"{{{ns.XOP}}}Include", href=f"cid:{SIGNATURE_CID}")
    return envelope, [*attachments, mtom.Attachment(SIGNATURE_CID, xml, "text/xml")]


def _values(obj: etree._Element, name: str) -> list[str]:
    return [v.text or "" for s in obj.iterfind("rim:Slot", NSMAP) if s.get("name") == name
            for v in s.iterfind("rim:ValueList/rim:Value", NSMAP)]  # fmt: skip


def _context_entry(kos: etree._Element) -> metadata.KosDocumentEntry:
    def code(scheme: str, default: metadata.Code) -> metadata.Code:
        for c in kos.iterfind("rim:Classification", NSMAP):
            if c.get("classificationScheme") == scheme:
                return metadata.Code(c.get("nodeRepresentation", ""), (_values(c, "codingScheme") or [""])[0])
        return default

    patient = next((ei.get("value", "") for ei in kos.iterfind("rim:ExternalIdentifier", NSMAP)
                    if ei.get("identificationScheme") == ns.DE_PATIENT_ID), PATIENT)  # fmt: skip
    return metadata.KosDocumentEntry(
        unique_id="1.2.3", patient_id=patient or PATIENT, source_patient_id=patient, source_patient_info=[],
        creation_time="20260101", service_start="20260101", author=metadata.Author(),
        healthcare_facility_type=code(ns.DE_HEALTHCARE_FACILITY_TYPE_CODE, metadata.Code("SA07", "1.2.250.1.71.4.2.4")),
        practice_setting=code(ns.DE_PRACTICE_SETTING_CODE, metadata.Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9")),
    )  # fmt: skip


def _context_submission(ss: etree._Element) -> metadata.SubmissionSet:
    return metadata.SubmissionSet(
        unique_id="1.2.3",
        source_id="1.2.3",
        submission_time=(_values(ss, "submissionTime") or ["20260101"])[0],
        author=metadata.Author(person="801234560801^BIDEAULT^Jean^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"),
        patient_id=PATIENT,
    )


# -- running the simulator -----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    envelope: etree._Element
    attachments: dict[str, bytes]
    content_type: str

    @property
    def payload(self) -> etree._Element:
        return next(c for c in find1(self.envelope, "soap:Body") if isinstance(c.tag, str))

    @property
    def action(self) -> str:
        return find1(self.envelope, "soap:Header/wsa:Action").text or ""

    def errors(self) -> list[tuple[str, str, str]]:
        return [
            (e.get("errorCode", ""), e.get("codeContext", ""), e.get("location", ""))
            for e in self.envelope.iterfind(".//rs:RegistryError", NSMAP)
        ]

    @property
    def codes(self) -> list[str]:
        return [e[0] for e in self.errors()]

    @property
    def status_type(self) -> str:
        node = self.payload
        if node.tag == f"{{{ns.XDSB}}}RetrieveDocumentSetResponse":
            node = find1(node, "rs:RegistryResponse")
        return node.get("status", "").rsplit(":", 1)[-1]

    @property
    def fault(self) -> tuple[str, str, str] | None:
        fault = self.envelope.find(".//soap:Fault", NSMAP)
        if fault is None:
            return None
        code = fault.findtext("soap:Code/soap:Value", "", NSMAP)
        sub = fault.findtext("soap:Code/soap:Subcode/soap:Value", "", NSMAP)
        return code.split(":")[-1], sub.split(":")[-1], fault.findtext("soap:Reason/soap:Text", "", NSMAP)


class Sim:
    def __init__(self, client: TestClient) -> None:  # type: ignore[type-arg]
        self.client = client

    async def post(
        self,
        path: str,
        envelope: etree._Element | bytes,
        attachments: list[mtom.Attachment] | None = None,
        *,
        as_mtom: bool = True,
        content_type: str | None = None,
        sign: bool = True,
    ) -> Reply:
        body = (
            envelope
            if isinstance(envelope, bytes)
            else etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
        )
        action = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
        if sign and isinstance(envelope, etree._Element):
            envelope, signed = add_signature(envelope, attachments if as_mtom and content_type is None else None)
            attachments = signed if signed is not None else attachments
            body = etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")
        if as_mtom and content_type is None:
            content_type, body = mtom.encode(body, attachments or [], action)
        headers = {"Content-Type": content_type or "application/soap+xml; charset=UTF-8"}
        resp = await self.client.post(path, data=body, headers=headers)
        raw = await resp.read()
        message = mtom.decode(resp.headers.get("Content-Type", ""), raw)
        return Reply(resp.status, etree.fromstring(message.envelope), message.attachments, resp.headers["Content-Type"])

    async def submit(self, sub: Submission, *, as_mtom: bool = True, sign: bool = True) -> Reply:
        if as_mtom:
            return await self.post("/dmp/repository", sub.envelope, sub.documents(), sign=sign)
        return await self.post("/dmp/repository", inline(sub), as_mtom=False, sign=sign)

    async def documents(self, patient: str = INS, *, signatures: bool = False) -> list[dict[str, Any]]:
        params = {"patient": patient, **({"signatures": "1"} if signatures else {})}
        resp = await self.client.get("/sim/dmp/documents", params=params)
        assert resp.status == 200, await resp.text()
        result: list[dict[str, Any]] = await resp.json()
        return result

    async def query(self, adhoc: etree._Element, patient: str | None = PATIENT) -> Reply:
        envelope = load("iti18-find-documents.xml")
        body = find1(envelope, "soap:Body")
        for old in list(body):
            body.remove(old)
        body.append(adhoc)
        with_vihf(envelope, build_vihf(patient))
        return await self.post("/dmp/registry", envelope, as_mtom=False)


def sim_settings(var_dir: Path, patients: list[str] | None = None) -> Settings:
    settings = Settings()
    settings.sim.var_dir = str(var_dir)
    settings.sim.patients = patients if patients is not None else [INS, OTHER_PATIENT]
    return settings


@asynccontextmanager
async def running_sim(
    var_dir: Path,
    *,
    patients: list[str] | None = None,
    options: DmpOptions | None = None,
    max_request_bytes: int | None = None,
) -> AsyncIterator[Sim]:
    settings = sim_settings(var_dir, patients)
    if max_request_bytes is None:
        app = build_sim_app(settings, dmp_options=options)
    else:
        app = build_sim_app(settings, dmp_options=options, max_request_bytes=max_request_bytes)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Sim(client)
    finally:
        await client.close()


# -- checks of the helpers themselves --------------------------------------------------------------


def test_fixture_kos_is_the_generated_one() -> None:
    # The fixture request's hash and size describe kos-exam-c.dcm, which make_kos() reproduces.
    data = (FIXTURES / "kos-exam-c.dcm").read_bytes()
    assert data == make_kos()
    envelope = load("iti41-kos-exam-c.xml")
    assert (
        slot(entry(envelope), "hash").findtext("rim:ValueList/rim:Value", "", NSMAP) == hashlib.sha1(data).hexdigest()
    )
    assert slot(entry(envelope), "size").findtext("rim:ValueList/rim:Value", "", NSMAP) == str(len(data))


def test_fixture_requests_name_the_simulator_repository() -> None:
    retrieve = load("iti43-retrieve.xml")
    assert find1(retrieve, ".//xdsb:RepositoryUniqueId").text == DMP_REPOSITORY_UNIQUE_ID
