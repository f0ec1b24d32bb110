"""VIHF verification as the DMP does it: the SAML 2 assertion in wsse:Security, signature and attributes."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from drimbox.sim.dmp_metadata import parse_cx
from drimbox.xds import namespaces as ns

RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
SUBJECT_ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
PURPOSE_OF_USE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
REQUIRED_ATTRIBUTES = (
    "VIHF_Version",
    "Identifiant_Structure",
    "Secteur_Activite",
    "Authentification_Mode",
    "Ressource_URN",
    RESOURCE_ID,
    SUBJECT_ID,
    SUBJECT_ROLE,
    PURPOSE_OF_USE,
    "LPS_ID",
    "LPS_Nom",
    "LPS_Version",
    "LPS_ID_HOMOLOGATION_DMP",
)
AUTHENTICATION_MODES = frozenset({"DIRECTE", "INDIRECTE", "INDIRECTE_RENFORCEE"})
# [unsure] the samples say 3.0; recent CI-SIS texts mention 4.0. Both are accepted.
VIHF_VERSIONS = frozenset({"3.0", "4.0"})
# The ANS samples sign with rsa-sha1: refusing SHA-1 would refuse what the real DMP accepts.
_SIGNATURE_METHODS = frozenset(
    {
        SignatureMethod.RSA_SHA1,
        SignatureMethod.RSA_SHA256,
        SignatureMethod.RSA_SHA384,
        SignatureMethod.RSA_SHA512,
        SignatureMethod.ECDSA_SHA256,
        SignatureMethod.ECDSA_SHA384,
        SignatureMethod.ECDSA_SHA512,
    }
)
_DIGESTS = frozenset({DigestAlgorithm.SHA1, DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512})
_SAML = f"{{{ns.SAML2}}}"
_DS = f"{{{ns.DSIG}}}"

# WS-Security 1.0 fault subcodes.
INVALID_SECURITY = "InvalidSecurity"
INVALID_TOKEN = "InvalidSecurityToken"
FAILED_CHECK = "FailedCheck"
FAILED_AUTHENTICATION = "FailedAuthentication"


class VihfRefused(Exception):
    """The VIHF is refused; `subcode` is the wsse fault subcode the DMP answers with."""

    def __init__(self, subcode: str, reason: str) -> None:
        super().__init__(reason)
        self.subcode = subcode
        self.reason = reason


@dataclass(frozen=True)
class VihfPolicy:
    """Which signing certificates are trusted. Empty = test mode: any certificate in KeyInfo (self-signed
    included) is accepted as long as the signature verifies with it; the real DMP checks IGC-Santé chains."""

    trusted: tuple[x509.Certificate, ...] = ()
    check_validity: bool = True


@dataclass(frozen=True)
class Vihf:
    subject: str
    issuer: str
    resource_id: str
    authentication_mode: str
    attributes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def patient(self) -> tuple[str, str] | None:
        return parse_cx(self.resource_id)


def _dn(value: str) -> list[tuple[str, str]]:
    """An RFC 4514-ish DN as sorted (ATTRIBUTE, value) pairs, so order and spacing do not matter."""
    parts, current, escaped = [], "", False
    for ch in value:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    pairs = []
    for part in parts:
        name, _, val = part.partition("=")
        pairs.append((name.strip().upper(), val.strip()))
    return sorted(pairs)


def _cert_dn(cert: x509.Certificate) -> list[tuple[str, str]]:
    return sorted((a.rfc4514_attribute_name.upper(), str(a.value).strip()) for a in cert.subject)


def _certificate(signature: etree._Element) -> x509.Certificate:
    text = signature.findtext(f"{_DS}KeyInfo/{_DS}X509Data/{_DS}X509Certificate")
    if not text or not text.strip():
        raise VihfRefused(INVALID_TOKEN, "the VIHF signature carries no X509Certificate in its KeyInfo")
    try:
        return x509.load_der_x509_certificate(base64.b64decode("".join(text.split()), validate=True))
    except (binascii.Error, ValueError):
        raise VihfRefused(INVALID_TOKEN, "the VIHF KeyInfo certificate is not a base64 DER X.509 certificate") from None


def _check_trust(cert: x509.Certificate, policy: VihfPolicy, now: dt.datetime) -> None:
    if policy.check_validity and not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise VihfRefused(FAILED_CHECK, "the VIHF signing certificate is outside its validity period")
    if not policy.trusted:
        return
    for anchor in policy.trusted:
        if cert == anchor:
            return
        try:
            cert.verify_directly_issued_by(anchor)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise VihfRefused(FAILED_CHECK, "the VIHF signing certificate is not issued by a trusted authority")


def _instant(value: str, what: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise VihfRefused(INVALID_TOKEN, f"the VIHF {what} {value!r} is not an xs:dateTime") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _check_conditions(assertion: etree._Element, now: dt.datetime) -> None:
    """Conditions are optional (the ANS samples have none); when present, the DMP enforces them."""
    conditions = assertion.find(f"{_SAML}Conditions")
    if conditions is None:
        return
    not_before, not_after = conditions.get("NotBefore"), conditions.get("NotOnOrAfter")
    skew = dt.timedelta(minutes=5)
    if not_before and now + skew < _instant(not_before, "Conditions/@NotBefore"):
        raise VihfRefused(FAILED_CHECK, "the VIHF is not valid yet (Conditions/@NotBefore)")
    if not_after and now - skew >= _instant(not_after, "Conditions/@NotOnOrAfter"):
        raise VihfRefused(FAILED_CHECK, "the VIHF has expired (Conditions/@NotOnOrAfter)")


def _attributes(assertion: etree._Element) -> dict[str, list[str]]:
    """Attribute name → values; a value that is an element (Role, PurposeOfUse) is given as its code."""
    attrs: dict[str, list[str]] = {}
    for attr in assertion.iterfind(f"{_SAML}AttributeStatement/{_SAML}Attribute"):
        values = []
        for value in attr.iterfind(f"{_SAML}AttributeValue"):
            child = next((c for c in value if isinstance(c.tag, str)), None)
            values.append((child.get("code", "") if child is not None else (value.text or "")).strip())
        attrs.setdefault(attr.get("Name", ""), []).extend(v for v in values if v)
    return attrs


def verify_vihf(header: etree._Element, policy: VihfPolicy, now: dt.datetime | None = None) -> Vihf:
    """Check the VIHF of a request header; return what it asserts or raise VihfRefused."""
    now = now or dt.datetime.now(dt.UTC)
    security = header.find(f"{{{ns.WSSE}}}Security")
    if security is None:
        raise VihfRefused(INVALID_SECURITY, "no wsse:Security header: the DMP requires a VIHF")
    assertions = security.findall(f"{_SAML}Assertion")
    if len(assertions) != 1:
        raise VihfRefused(
            INVALID_SECURITY, f"wsse:Security must hold one saml2:Assertion (VIHF), found {len(assertions)}"
        )
    assertion = assertions[0]
    assertion_id = assertion.get("ID")
    if assertion.get("Version") != "2.0" or not assertion_id:
        raise VihfRefused(INVALID_TOKEN, "the VIHF must be a SAML 2.0 assertion with an ID")
    signature = assertion.find(f"{_DS}Signature")
    if signature is None:
        raise VihfRefused(FAILED_CHECK, "the VIHF is not signed (no ds:Signature in the assertion)")
    cert = _certificate(signature)
    _check_trust(cert, policy, now)
    # Verify a standalone copy so nothing outside the assertion takes part in the signed content.
    standalone = etree.fromstring(etree.tostring(assertion))
    config = SignatureConfiguration(
        location="./", signature_methods=_SIGNATURE_METHODS, digest_algorithms=_DIGESTS, expect_references=1
    )
    try:
        result = XMLVerifier().verify(standalone, x509_cert=cert, expect_config=config)
    except (SignXMLException, InvalidSignature, ValueError) as exc:
        raise VihfRefused(FAILED_CHECK, f"the VIHF signature does not verify: {type(exc).__name__}: {exc}") from None
    signed = result.signed_xml if not isinstance(result, list) else None
    if signed is None or signed.tag != f"{_SAML}Assertion" or signed.get("ID") != assertion_id:
        raise VihfRefused(FAILED_CHECK, "the VIHF signature does not cover the whole assertion")
    # From here on, read only what was signed.
    issuer = (signed.findtext(f"{_SAML}Issuer") or "").strip()
    if not issuer or _dn(issuer) != _cert_dn(cert):
        raise VihfRefused(INVALID_TOKEN, "the VIHF Issuer must be the subject DN of the signing certificate")
    subject = (signed.findtext(f"{_SAML}Subject/{_SAML}NameID") or "").strip()
    if not subject:
        raise VihfRefused(INVALID_TOKEN, "the VIHF has no Subject/NameID (the professional's identifier)")
    if signed.find(f"{_SAML}AuthnStatement/{_SAML}AuthnContext/{_SAML}AuthnContextClassRef") is None:
        raise VihfRefused(INVALID_TOKEN, "the VIHF has no AuthnStatement/AuthnContext/AuthnContextClassRef")
    _check_conditions(signed, now)
    attrs = _attributes(signed)
    for name in REQUIRED_ATTRIBUTES:
        if not attrs.get(name):
            raise VihfRefused(INVALID_TOKEN, f"the VIHF attribute {name} is missing or empty")
    checks = (
        ("VIHF_Version", VIHF_VERSIONS),
        ("Authentification_Mode", AUTHENTICATION_MODES),
        ("Ressource_URN", frozenset({"urn:dmp"})),
    )
    for name, allowed in checks:
        if attrs[name][0] not in allowed:
            raise VihfRefused(INVALID_TOKEN, f"the VIHF attribute {name} must be one of {', '.join(sorted(allowed))}")
    resource_id = attrs[RESOURCE_ID][0]
    if parse_cx(resource_id) is None:
        raise VihfRefused(INVALID_TOKEN, "the VIHF resource-id must be the patient's INS as id^^^&OID&ISO^NH")
    return Vihf(subject, issuer, resource_id, attrs["Authentification_Mode"][0], attrs)
