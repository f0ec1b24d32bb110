"""IHE DSG submission-set signature: an XAdES ds:Signature whose ds:Manifest digests each submitted document."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, SignatureConstructionMethod
from signxml.exceptions import SignXMLException
from signxml.signer import SignatureReference, XMLSigner
from signxml.verifier import SignatureConfiguration, XMLVerifier

from drimbox.xds import namespaces as ns

DS = f"{{{ns.DSIG}}}"
XADES_NS = "http://uri.etsi.org/01903/v1.3.2#"  # IHE DSG names XAdES 1.3.2
XADES_111_NS = "http://uri.etsi.org/01903/v1.1.1#"  # what the ANS reference DRIMbox writes: read, not written
XADES = f"{{{XADES_NS}}}"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
MANIFEST_ID = "IHEManifest"
SIGNED_PROPERTIES_ID = "S0-SignedProperties"
MANIFEST_TYPE = "http://www.w3.org/2000/09/xmldsig#Manifest"
SIGNED_PROPERTIES_TYPES = frozenset({"http://uri.etsi.org/01903#SignedProperties",
                                     "http://uri.etsi.org/01903/v1.1.1#SignedProperties"})  # fmt: skip
PURPOSE_SOURCE = "1.2.840.10065.1.12.1.14"  # ASTM E1762 "Source" signature purpose
_DIGESTS = {
    "http://www.w3.org/2001/04/xmlenc#sha256": hashlib.sha256,
    "http://www.w3.org/2000/09/xmldsig#sha1": hashlib.sha1,  # the reference DRIMbox signs with SHA-1
}
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"


class SignatureError(ValueError):
    """A submission signature that is missing, malformed, or does not match the documents it names."""


@dataclass(frozen=True)
class SignedDocument:
    """One document the signature covers: its XDS uniqueId and its bytes as submitted."""

    unique_id: str
    data: bytes


def _urn(unique_id: str) -> str:
    return f"urn:oid:{unique_id}"


def _b64digest(algorithm: str, data: bytes) -> str:
    return base64.b64encode(_DIGESTS[algorithm](data).digest()).decode("ascii")


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    el = etree.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _manifest_reference(manifest: etree._Element, uri: str, digest: str) -> None:
    ref = _sub(manifest, DS + "Reference", URI=uri)
    _sub(ref, DS + "DigestMethod", Algorithm=SHA256)
    _sub(ref, DS + "DigestValue", digest)


def _skeleton(signature_id: str, submission_uid: str, documents: Sequence[SignedDocument],
              cert: x509.Certificate, now: datetime) -> etree._Element:  # fmt: skip
    """The ds:Object parts (purpose, manifest, XAdES properties) under a ds:Signature still to be signed."""
    root = etree.Element(DS + "Signature", nsmap={"ds": ns.DSIG}, Id=signature_id)
    manifest = _sub(_sub(root, DS + "Object"), DS + "Manifest", Id=MANIFEST_ID)
    # The submission set has no bytes of its own: its reference binds the signature to this submission only.
    _manifest_reference(manifest, _urn(submission_uid), _b64digest(SHA256, b""))
    for doc in documents:
        _manifest_reference(manifest, _urn(doc.unique_id), _b64digest(SHA256, doc.data))
    qualifying = etree.SubElement(_sub(root, DS + "Object"), XADES + "QualifyingProperties",
                                  {"Target": f"#{signature_id}"}, nsmap={"xades": XADES_NS})  # fmt: skip
    signed = _sub(qualifying, XADES + "SignedProperties", Id=SIGNED_PROPERTIES_ID)
    ssp = _sub(signed, XADES + "SignedSignatureProperties")
    _sub(ssp, XADES + "SigningTime", now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    c = _sub(_sub(ssp, XADES + "SigningCertificate"), XADES + "Cert")
    digest = _sub(c, XADES + "CertDigest")
    _sub(digest, DS + "DigestMethod", Algorithm=SHA256)
    _sub(digest, DS + "DigestValue", _b64digest(SHA256, cert.public_bytes(serialization.Encoding.DER)))
    serial = _sub(c, XADES + "IssuerSerial")
    _sub(serial, DS + "X509IssuerName", cert.issuer.rfc4514_string())
    _sub(serial, DS + "X509SerialNumber", str(cert.serial_number))
    _sub(_sub(ssp, XADES + "SignaturePolicyIdentifier"), XADES + "SignaturePolicyImplied")
    # The purpose (ASTM E1762 "Source") as IHE DSG states it; the reference DRIMbox's text-only
    # ds:SignatureProperty is not valid against xmldsig-core-schema, so it is not copied.
    commitment = _sub(_sub(signed, XADES + "SignedDataObjectProperties"), XADES + "CommitmentTypeIndication")
    _sub(_sub(commitment, XADES + "CommitmentTypeId"), XADES + "Identifier", f"urn:oid:{PURPOSE_SOURCE}")
    _sub(commitment, XADES + "AllSignedDataObjects")
    return root


def sign_submission(
    key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    signature_id: str,
    submission_uid: str,
    documents: Sequence[SignedDocument],
    *,
    now: datetime | None = None,
) -> bytes:
    """The signature document (text/xml) of one ITI-41: RSA-SHA256 over the manifest and the XAdES properties."""
    skeleton = _skeleton(signature_id, submission_uid, documents, cert, now or datetime.now(UTC))
    signer = XMLSigner(method=SignatureConstructionMethod.detached, signature_algorithm="rsa-sha256",
                       digest_algorithm="sha256", c14n_algorithm=EXC_C14N)  # fmt: skip
    types = {f"#{MANIFEST_ID}": MANIFEST_TYPE, f"#{SIGNED_PROPERTIES_ID}": "http://uri.etsi.org/01903#SignedProperties"}

    def typed(sig_root: etree._Element, **_: object) -> None:
        # Runs before SignedInfo is canonicalised and signed, so the Type attributes are covered too.
        for ref in sig_root.iterfind(f"{DS}SignedInfo/{DS}Reference"):
            ref.set("Type", types[ref.get("URI", "")])

    signer.signature_annotators.append(typed)
    refs = [SignatureReference(URI=f"#{MANIFEST_ID}", c14n_method=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0),
            SignatureReference(URI=f"#{SIGNED_PROPERTIES_ID}",
                               c14n_method=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0)]  # fmt: skip
    pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    signed: etree._Element = signer.sign(skeleton, key=key, cert=pem, reference_uri=refs)
    # Exclusive c14n makes the digests independent of where the Objects sit: move them under the real signature.
    signed.set("Id", signature_id)
    for obj in skeleton.findall(DS + "Object"):
        signed.append(obj)
    return etree.tostring(signed, xml_declaration=True, encoding="UTF-8")


@dataclass(frozen=True)
class VerifiedSignature:
    """What a valid submission signature asserts."""

    certificate: x509.Certificate
    submission_uid: str
    digests: dict[str, tuple[str, str]]  # document uniqueId -> (DigestMethod algorithm, DigestValue)


def _parse(data: bytes) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise SignatureError(f"the signature document is not well-formed XML: {exc}") from None
    if root.tag != DS + "Signature":
        raise SignatureError("the signature document is not a ds:Signature")
    return root


def _certificate(root: etree._Element) -> x509.Certificate:
    certs = root.findall(f"{DS}KeyInfo/{DS}X509Data/{DS}X509Certificate")
    if len(certs) != 1:
        raise SignatureError("ds:KeyInfo must carry the signer's certificate (one ds:X509Certificate)")
    try:
        return x509.load_der_x509_certificate(base64.b64decode("".join((certs[0].text or "").split())))
    except ValueError:
        raise SignatureError("ds:X509Certificate is not a DER certificate in base64") from None


def verify_submission(
    data: bytes,
    submission_uid: str,
    documents: Mapping[str, bytes],
    *,
    now: datetime | None = None,
) -> VerifiedSignature:
    """Check a submission signature against this submission's uniqueId and the documents' bytes (uniqueId → bytes).

    Raises SignatureError naming what is wrong (never the documents' content).
    """
    root = _parse(data)
    cert = _certificate(root)
    moment = now or datetime.now(UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise SignatureError("the signing certificate is not valid at this time")
    refs = root.findall(f"{DS}SignedInfo/{DS}Reference")
    by_type = {r.get("Type", ""): r for r in refs}
    if len(refs) != 2 or MANIFEST_TYPE not in by_type or not SIGNED_PROPERTIES_TYPES & by_type.keys():
        raise SignatureError("ds:SignedInfo must reference the ds:Manifest and the XAdES SignedProperties")
    config = SignatureConfiguration(require_x509=True, location="./", expect_references=2)
    try:
        results = XMLVerifier().verify(data, x509_cert=cert, expect_config=config)
    except (SignXMLException, InvalidSignature, ValueError) as exc:
        raise SignatureError(f"the XML signature does not verify: {type(exc).__name__}: {exc}") from None
    signed = {r.signed_xml.get("Id"): r.signed_xml for r in (results if isinstance(results, list) else [results])
              if r.signed_xml is not None}  # fmt: skip
    manifest = signed.get(by_type[MANIFEST_TYPE].get("URI", "").lstrip("#"))
    if manifest is None or manifest.tag != DS + "Manifest":
        raise SignatureError("the signed reference of type Manifest is not a ds:Manifest")
    props_ref = next(by_type[t] for t in SIGNED_PROPERTIES_TYPES if t in by_type)
    props = signed.get(props_ref.get("URI", "").lstrip("#"))
    if props is None or etree.QName(props).localname != "SignedProperties" or \
            etree.QName(props).namespace not in (XADES_NS, XADES_111_NS):  # fmt: skip
        raise SignatureError("the signed reference of type SignedProperties is not a XAdES SignedProperties")
    _check_signing_certificate(props, cert)
    # Read the manifest as signed, never the document as received.
    digests: dict[str, tuple[str, str]] = {}
    for ref in manifest.findall(DS + "Reference"):
        uri = ref.get("URI", "")
        method = ref.find(DS + "DigestMethod")
        value = (ref.findtext(DS + "DigestValue") or "").strip()
        algorithm = method.get("Algorithm", "") if method is not None else ""
        if not uri.startswith("urn:oid:"):
            raise SignatureError(f"manifest reference {uri!r} is not a urn:oid: uniqueId")
        digests[uri[8:]] = (algorithm, value)
    if submission_uid not in digests:
        raise SignatureError("the manifest does not name this submission set's uniqueId")
    digests.pop(submission_uid)
    for uid, payload in documents.items():
        if uid not in digests:
            raise SignatureError(f"the manifest does not cover document {uid}")
        algorithm, value = digests[uid]
        if algorithm not in _DIGESTS:
            raise SignatureError(f"manifest digest method {algorithm!r} is not accepted")
        if _b64digest(algorithm, payload) != value:
            raise SignatureError(f"the manifest digest of document {uid} does not match the document submitted")
    extra = digests.keys() - documents.keys()
    if extra:
        raise SignatureError(f"the manifest names documents that are not in the submission: {', '.join(sorted(extra))}")
    return VerifiedSignature(cert, submission_uid, digests)


def _check_signing_certificate(props: etree._Element, cert: x509.Certificate) -> None:
    """XAdES SigningCertificate must name the certificate that signed (digest of its DER encoding)."""
    xades = f"{{{etree.QName(props).namespace}}}"
    digest = props.find(f"{xades}SignedSignatureProperties/{xades}SigningCertificate/{xades}Cert/{xades}CertDigest")
    if digest is None:
        raise SignatureError("XAdES SigningCertificate/Cert/CertDigest is missing")
    method = digest.find(DS + "DigestMethod")
    if method is None:  # the reference DRIMbox writes them in the XAdES namespace
        method = digest.find(xades + "DigestMethod")
    value = digest.findtext(DS + "DigestValue") or digest.findtext(xades + "DigestValue") or ""
    algorithm = method.get("Algorithm", "") if method is not None else ""
    if algorithm not in _DIGESTS:
        raise SignatureError(f"XAdES CertDigest method {algorithm!r} is not accepted")
    if _b64digest(algorithm, cert.public_bytes(serialization.Encoding.DER)) != value.strip():
        raise SignatureError("XAdES SigningCertificate does not match the certificate in ds:KeyInfo")
