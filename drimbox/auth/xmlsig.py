"""Enveloped XAdES-BASELINE-B signature of a whole XML document, in the shape the ANS signs its whitelist with."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from lxml import etree

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
FILTER2 = "http://www.w3.org/2002/06/xmldsig-filter2"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
SIGNED_PROPERTIES = "http://uri.etsi.org/01903#SignedProperties"
# What the ANS sample's reference to the list removes: every ds:Signature (there must be exactly one).
SUBTRACT_SIGNATURES = "/descendant::ds:Signature"

_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "http://www.w3.org/2001/04/xmlenc#sha256": hashes.SHA256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": hashes.SHA384,
    "http://www.w3.org/2001/04/xmlenc#sha512": hashes.SHA512,
}
_SIGNATURES: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": ("rsa", hashes.SHA256),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": ("rsa", hashes.SHA384),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": ("rsa", hashes.SHA512),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256": ("ec", hashes.SHA256),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384": ("ec", hashes.SHA384),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512": ("ec", hashes.SHA512),
}
SHA256, SHA512 = "http://www.w3.org/2001/04/xmlenc#sha256", "http://www.w3.org/2001/04/xmlenc#sha512"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"


class SignatureError(Exception):
    """The document's signature is missing, malformed, of an unsupported shape, or does not verify."""


@dataclass(frozen=True)
class Verified:
    """A verified signature: the signer (named by SigningCertificateV2) and every certificate KeyInfo carried."""

    signer: x509.Certificate
    certificates: tuple[x509.Certificate, ...]
    signing_time: str


def parser() -> etree.XMLParser:
    # No entities, no network, no huge trees; comments dropped (they are outside the signed canonical form, and
    # one inside <db> would split the text a reader sees).
    return etree.XMLParser(
        resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False, remove_comments=True
    )


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _c14n(node: etree._Element | etree._ElementTree, algorithm: str) -> bytes:
    if algorithm not in (EXC_C14N, C14N):
        raise SignatureError(f"canonicalization {algorithm!r} not supported")
    data: bytes = etree.tostring(node, method="c14n", exclusive=algorithm == EXC_C14N, with_comments=False)
    return data


def _digest(algorithm: str, data: bytes) -> bytes:
    if algorithm not in _DIGESTS:
        raise SignatureError(f"digest {algorithm!r} not supported")
    h = hashes.Hash(_DIGESTS[algorithm]())
    h.update(data)
    return h.finalize()


def _remove_keeping_tail(element: etree._Element) -> None:
    """Remove an element and its subtree but not the text after it (an XPath subtraction keeps that text node)."""
    parent = element.getparent()
    if parent is None:
        raise SignatureError("the signature is the document")
    if element.tail:
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def _document_without_signature(xml: bytes) -> etree._ElementTree:
    root = etree.fromstring(xml, parser())
    for signature in root.findall(_q(DS, "Signature")):
        _remove_keeping_tail(signature)
    return root.getroottree()


def _the_signature(root: etree._Element) -> etree._Element:
    signatures = list(root.iter(_q(DS, "Signature")))
    if not signatures:
        raise SignatureError("no signature")
    # One signature, enveloped at the top: then removing "every ds:Signature" and "the enveloping one" are the
    # same, and nothing of the list can hide inside an unsigned element.
    if len(signatures) != 1 or signatures[0].getparent() is not root:
        raise SignatureError("expected exactly one ds:Signature, child of the document element")
    return signatures[0]


def _one(parent: etree._Element, path: str, what: str) -> etree._Element:
    found = parent.findall(path, {"ds": DS, "xades": XADES})
    if len(found) != 1:
        raise SignatureError(f"expected one {what}, found {len(found)}")
    return found[0]


def _transforms(reference: etree._Element) -> list[etree._Element]:
    holder = reference.find(_q(DS, "Transforms"))
    return [] if holder is None else list(holder)


def _whole_document_c14n(reference: etree._Element, xml: bytes) -> bytes:
    """The canonical form of the list without its signature, for the reference URI="" (two shapes accepted)."""
    transforms = _transforms(reference)
    if not transforms:
        raise SignatureError("the reference to the document must remove the signature")
    first, rest = transforms[0], transforms[1:]
    algorithm = first.get("Algorithm")
    if algorithm == FILTER2:
        xpaths = first.findall(_q(FILTER2, "XPath"))
        if len(xpaths) != 1 or xpaths[0].get("Filter") != "subtract" or (xpaths[0].text or "").strip() != SUBTRACT_SIGNATURES \
                or xpaths[0].nsmap.get("ds") != DS:  # fmt: skip
            raise SignatureError("XPath Filter 2.0: only 'subtract /descendant::ds:Signature' is accepted")
    elif algorithm != ENVELOPED:
        raise SignatureError(f"the reference to the document starts with an unsupported transform {algorithm!r}")
    if len(rest) > 1:
        raise SignatureError("too many transforms on the reference to the document")
    c14n = rest[0].get("Algorithm", "") if rest else C14N
    return _c14n(_document_without_signature(xml), c14n)


def _fragment_c14n(reference: etree._Element, target: etree._Element) -> bytes:
    transforms = _transforms(reference)
    if len(transforms) > 1:
        raise SignatureError("too many transforms on a reference")
    return _c14n(target, transforms[0].get("Algorithm", "") if transforms else C14N)


def _check_value(public_key: object, algorithm: str, value: bytes, data: bytes) -> None:
    if algorithm not in _SIGNATURES:
        raise SignatureError(f"signature algorithm {algorithm!r} not supported")
    kind, digest = _SIGNATURES[algorithm]
    try:
        if kind == "rsa" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(value, data, padding.PKCS1v15(), digest())
        elif kind == "ec" and isinstance(public_key, ec.EllipticCurvePublicKey):
            half = len(value) // 2  # XML-DSig writes r || s, not DER
            der = encode_dss_signature(int.from_bytes(value[:half], "big"), int.from_bytes(value[half:], "big"))
            public_key.verify(der, data, ec.ECDSA(digest()))
        else:
            raise SignatureError("the signer's key does not match the signature algorithm")
    except InvalidSignature:
        raise SignatureError("the signature value does not verify") from None


def _b64(text: str | None) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except ValueError:
        raise SignatureError("bad base64") from None


def verify_enveloped(xml: bytes) -> Verified:
    """Verify the document's enveloped XAdES-B signature: its two references (the whole document, the
    SignedProperties), the signing certificate named in SigningCertificate(V2), the signature value.

    Trust in the signer (chain, names, dates, revocation) is not decided here.
    """
    try:
        root = etree.fromstring(xml, parser())
    except etree.XMLSyntaxError as exc:
        raise SignatureError(f"not XML: {exc}") from None
    signature = _the_signature(root)
    signed_info = _one(signature, "ds:SignedInfo", "SignedInfo")
    properties = _one(
        signature, "ds:Object/xades:QualifyingProperties/xades:SignedProperties", "xades:SignedProperties"
    )
    whole = props = 0
    for reference in signed_info.findall(_q(DS, "Reference")):
        uri = reference.get("URI")
        if uri == "":
            data, whole = _whole_document_c14n(reference, xml), whole + 1
        elif uri and uri.startswith("#"):
            targets = [e for e in root.iter() if e.get("Id") == uri[1:]]
            if len(targets) != 1:
                raise SignatureError(f"reference {uri[:60]!r} does not name exactly one element")
            target = targets[0]
            if target is properties:
                if reference.get("Type") != SIGNED_PROPERTIES:
                    raise SignatureError("the reference to the SignedProperties lacks its Type")
                props += 1
            elif signature not in target.iterancestors():
                raise SignatureError("a reference points outside the signature and is not the whole document")
            data = _fragment_c14n(reference, target)
        else:
            raise SignatureError("only same-document references are accepted")
        method = _one(reference, "ds:DigestMethod", "DigestMethod").get("Algorithm", "")
        if _digest(method, data) != _b64(_one(reference, "ds:DigestValue", "DigestValue").text):
            raise SignatureError(f"digest mismatch on reference {uri!r}: the document was changed after signing")
    if whole != 1 or props != 1:
        raise SignatureError("expected one reference to the whole document and one to the XAdES SignedProperties")
    certificates = tuple(_certificates(signature))
    signer = _signing_certificate(properties, certificates)
    c14n = _one(signed_info, "ds:CanonicalizationMethod", "CanonicalizationMethod").get("Algorithm", "")
    algorithm = _one(signed_info, "ds:SignatureMethod", "SignatureMethod").get("Algorithm", "")
    value = _b64(_one(signature, "ds:SignatureValue", "SignatureValue").text)
    _check_value(signer.public_key(), algorithm, value, _c14n(signed_info, c14n))
    time = properties.find(f"{{{XADES}}}SignedSignatureProperties/{{{XADES}}}SigningTime")
    return Verified(signer, certificates, (time.text or "").strip() if time is not None else "")


def _certificates(signature: etree._Element) -> list[x509.Certificate]:
    found = []
    for element in signature.findall(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate"):
        try:
            found.append(x509.load_der_x509_certificate(_b64(element.text)))
        except ValueError:
            raise SignatureError("a KeyInfo certificate is not DER X.509") from None
    if not found:
        raise SignatureError("KeyInfo carries no X509Certificate")
    return found


def _signing_certificate(properties: etree._Element, certificates: tuple[x509.Certificate, ...]) -> x509.Certificate:
    """XAdES-B names its signer by digest (SigningCertificateV2, or V1): the KeyInfo certificate that matches."""
    cert_digests = properties.findall(f".//{{{XADES}}}SigningCertificateV2/{{{XADES}}}Cert/{{{XADES}}}CertDigest") or \
        properties.findall(f".//{{{XADES}}}SigningCertificate/{{{XADES}}}Cert/{{{XADES}}}CertDigest")  # fmt: skip
    if len(cert_digests) != 1:
        raise SignatureError("XAdES-B needs exactly one SigningCertificate(V2) digest")
    method = _one(cert_digests[0], "ds:DigestMethod", "CertDigest/DigestMethod").get("Algorithm", "")
    expected = _b64(_one(cert_digests[0], "ds:DigestValue", "CertDigest/DigestValue").text)
    for cert in certificates:
        if _digest(method, cert.public_bytes(serialization.Encoding.DER)) == expected:
            return cert
    raise SignatureError("no KeyInfo certificate matches the signed SigningCertificate digest")


# -- signing (the simulator) ------------------------------------------------------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def issuer_serial_v2(cert: x509.Certificate) -> bytes:
    """DER IssuerSerial (RFC 5035): GeneralNames { directoryName issuer }, serialNumber."""
    serial = cert.serial_number
    serial_bytes = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # one spare byte keeps it positive
    while len(serial_bytes) > 1 and serial_bytes[0] == 0 and serial_bytes[1] < 0x80:
        serial_bytes = serial_bytes[1:]
    general_names = _der(0x30, _der(0xA4, cert.issuer.public_bytes()))
    return _der(0x30, general_names + _der(0x02, serial_bytes))


def sign_enveloped(
    root: etree._Element, key: rsa.RSAPrivateKey, cert: x509.Certificate, *, signing_time: datetime | None = None,
    mime_type: str = "application/octet-stream", chain: Sequence[x509.Certificate] = (),
) -> None:  # fmt: skip
    """Append to `root` an enveloped XAdES-BASELINE-B signature shaped as the ANS's: exclusive C14N, RSA-SHA256,
    the list referenced whole minus its signature (XPath Filter 2.0), SigningCertificateV2 (SHA-512); KeyInfo
    carries `cert`, then `chain` (CA certificates that help a verifier build the path)."""
    ident = "id-" + uuid.uuid4().hex
    document_digest = _digest(SHA256, _c14n(root.getroottree(), EXC_C14N))
    sig = etree.SubElement(root, _q(DS, "Signature"), nsmap={"ds": DS}, Id=ident)
    info = etree.SubElement(sig, _q(DS, "SignedInfo"))
    etree.SubElement(info, _q(DS, "CanonicalizationMethod"), Algorithm=EXC_C14N)
    etree.SubElement(info, _q(DS, "SignatureMethod"), Algorithm=RSA_SHA256)
    ref = etree.SubElement(info, _q(DS, "Reference"), Id=f"r-{ident}-1", URI="")
    transforms = etree.SubElement(ref, _q(DS, "Transforms"))
    xpath_transform = etree.SubElement(transforms, _q(DS, "Transform"), Algorithm=FILTER2)
    xpath = etree.SubElement(xpath_transform, _q(FILTER2, "XPath"), nsmap={"dsig-filter2": FILTER2}, Filter="subtract")
    xpath.text = SUBTRACT_SIGNATURES
    etree.SubElement(transforms, _q(DS, "Transform"), Algorithm=EXC_C14N)
    etree.SubElement(ref, _q(DS, "DigestMethod"), Algorithm=SHA256)
    etree.SubElement(ref, _q(DS, "DigestValue")).text = base64.b64encode(document_digest).decode()
    props_ref = etree.SubElement(info, _q(DS, "Reference"), Type=SIGNED_PROPERTIES, URI=f"#xades-{ident}")
    etree.SubElement(etree.SubElement(props_ref, _q(DS, "Transforms")), _q(DS, "Transform"), Algorithm=EXC_C14N)
    etree.SubElement(props_ref, _q(DS, "DigestMethod"), Algorithm=SHA256)
    props_digest = etree.SubElement(props_ref, _q(DS, "DigestValue"))
    value = etree.SubElement(sig, _q(DS, "SignatureValue"), Id=f"value-{ident}")
    x509_data = etree.SubElement(etree.SubElement(sig, _q(DS, "KeyInfo")), _q(DS, "X509Data"))
    etree.SubElement(x509_data, _q(DS, "X509SubjectName")).text = cert.subject.rfc4514_string()
    der = cert.public_bytes(serialization.Encoding.DER)
    for cert_der in (der, *(ca.public_bytes(serialization.Encoding.DER) for ca in chain)):
        etree.SubElement(x509_data, _q(DS, "X509Certificate")).text = base64.b64encode(cert_der).decode()
    qualifying = etree.SubElement(etree.SubElement(sig, _q(DS, "Object")), _q(XADES, "QualifyingProperties"),
                                  nsmap={"xades": XADES}, Target=f"#{ident}")  # fmt: skip
    props = etree.SubElement(qualifying, _q(XADES, "SignedProperties"), Id=f"xades-{ident}")
    signature_props = etree.SubElement(props, _q(XADES, "SignedSignatureProperties"))
    moment = (signing_time or datetime.now(UTC)).astimezone(UTC)
    etree.SubElement(signature_props, _q(XADES, "SigningTime")).text = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    cert_element = etree.SubElement(
        etree.SubElement(signature_props, _q(XADES, "SigningCertificateV2")), _q(XADES, "Cert")
    )
    cert_digest = etree.SubElement(cert_element, _q(XADES, "CertDigest"))
    etree.SubElement(cert_digest, _q(DS, "DigestMethod"), Algorithm=SHA512)
    etree.SubElement(cert_digest, _q(DS, "DigestValue")).text = base64.b64encode(hashlib.sha512(der).digest()).decode()
    etree.SubElement(cert_element, _q(XADES, "IssuerSerialV2")).text = base64.b64encode(issuer_serial_v2(cert)).decode()
    data_props = etree.SubElement(props, _q(XADES, "SignedDataObjectProperties"))
    data_format = etree.SubElement(data_props, _q(XADES, "DataObjectFormat"), ObjectReference=f"#r-{ident}-1")
    etree.SubElement(data_format, _q(XADES, "MimeType")).text = mime_type
    props_digest.text = base64.b64encode(_digest(SHA256, _c14n(props, EXC_C14N))).decode()
    signed = key.sign(_c14n(info, EXC_C14N), padding.PKCS1v15(), hashes.SHA256())
    value.text = base64.b64encode(signed).decode()
