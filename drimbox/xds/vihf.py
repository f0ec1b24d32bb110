"""The VIHF: the signed SAML 2.0 assertion telling the DMP who acts, for which patient, with what software."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree
from signxml.algorithms import SignatureConstructionMethod
from signxml.signer import XMLSigner

from drimbox.config import DmpSettings
from drimbox.xds import namespaces as ns
from drimbox.xds.metadata import Code

SAML = f"{{{ns.SAML2}}}"
HL7V3 = "urn:hl7-org:v3"
XSI_TYPE = f"{{{ns.XSI}}}type"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
AUTHN_TLS_CLIENT = "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient"
X509_SUBJECT_FORMAT = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
PURPOSE_OF_USE_SCHEME = "1.2.250.1.213.1.1.4.248"
PROFESSION_SCHEME = "1.2.250.1.71.1.2.7"  # e.g. 10 Médecin
SPECIALTY_SCHEME = "1.2.250.1.71.4.2.5"  # e.g. SM26 Qualifié en Médecine Générale
AUTHENTICATION_MODES = frozenset({"DIRECTE", "INDIRECTE", "INDIRECTE_RENFORCEE"})
# The access modes of TRE_R248 ModeAcces (OID above): "normal" is in the ANS samples; "bris_de_glace"
# (emergency access by a professional without the patient's authorisation) and "centre_15" (medical
# regulation) are the other codes of that terminology.
PURPOSE_NORMAL, PURPOSE_EMERGENCY, PURPOSE_REGULATION = "normal", "bris_de_glace", "centre_15"
PURPOSES_OF_USE = {
    PURPOSE_NORMAL: "Accès normal",
    PURPOSE_EMERGENCY: "Accès en bris de glace",
    PURPOSE_REGULATION: "Accès par un centre de régulation médicale",
}
# The VIHF attribute carrying the professional's reason for an emergency access (PSC userinfo has the same name).
ACCESS_REASON = "Mode_Acces_Raison"


class VihfError(ValueError):
    """A VIHF that cannot be built or signed (unknown mode, key and certificate that do not match, ...)."""


@dataclass(frozen=True)
class VihfIdentity:
    """Who acts on the DMP, from which structure and with which software."""

    professional_id: str  # Subject/NameID: the national id of the professional (RPPS-based)
    professional_name: str  # subject-id: "Given FAMILY"
    roles: Sequence[Code]  # profession (PROFESSION_SCHEME) then specialty (SPECIALTY_SCHEME)
    structure_id: str  # Identifiant_Structure
    secteur_activite: str  # Secteur_Activite, "SA25^1.2.250.1.71.4.2.4"
    lps_id: str
    lps_name: str
    lps_version: str
    lps_homologation: str  # LPS_ID_HOMOLOGATION_DMP
    authentication_mode: str = "INDIRECTE"  # the source's automatic push; PSC users: INDIRECTE_RENFORCEE
    purpose_of_use: str = PURPOSE_NORMAL  # TRE_R248: normal, bris_de_glace, centre_15
    access_reason: str = ""  # Mode_Acces_Raison: required by the DMP with bris_de_glace
    vihf_version: str = "3.0"  # [unsure] 3.0 in the ANS samples, 4.0 in newer DMP guides


def vihf_identity(
    dmp: DmpSettings,
    *,
    professional_id: str,
    professional_name: str,
    roles: Sequence[Code],
    authentication_mode: str,
    structure_id: str | None = None,
    secteur_activite: str | None = None,
) -> VihfIdentity:
    """Who acts, in the structure and with the software `[dmp]` names; a professional's own structure and
    sector (from Pro Santé Connect) take the place of the settings' when given."""
    return VihfIdentity(
        professional_id=professional_id,
        professional_name=professional_name,
        roles=roles,
        structure_id=structure_id or dmp.structure_id,
        secteur_activite=secteur_activite or dmp.secteur_activite,
        lps_id=dmp.lps_id,
        lps_name=dmp.lps_name,
        lps_version=dmp.lps_version,
        lps_homologation=dmp.lps_homologation,
        authentication_mode=authentication_mode,
        vihf_version=dmp.vihf_version,
    )


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    el = etree.SubElement(parent, tag, attrib)
    if text is not None:
        el.text = text
    return el


def _attribute(statement: etree._Element, name: str, *values: str) -> etree._Element:
    attr = _sub(statement, SAML + "Attribute", Name=name)
    for v in values:
        _sub(attr, SAML + "AttributeValue", v)
    return attr


def _ce(attr: etree._Element, tag: str, code: Code, system_name: str = "") -> None:
    value = _sub(attr, SAML + "AttributeValue")
    el = etree.SubElement(value, f"{{{HL7V3}}}{tag}", nsmap={None: HL7V3, "xsi": ns.XSI})
    for k, v in (("code", code.code), ("codeSystem", code.scheme), ("codeSystemName", system_name),
                 ("displayName", code.display or code.code), (XSI_TYPE, "CE")):  # fmt: skip
        el.set(k, v)


def build_assertion(
    identity: VihfIdentity,
    issuer: str,
    patient_id: str | None,
    *,
    now: datetime | None = None,
    validity: timedelta | None = None,
) -> etree._Element:
    """The unsigned VIHF, with a signature placeholder right after Issuer (where SAML wants ds:Signature).

    `patient_id` is the INS CX of the patient concerned (resource-id); `validity` adds a Conditions
    element, which the ANS samples do not carry.
    """
    if identity.authentication_mode not in AUTHENTICATION_MODES:
        raise VihfError(f"Authentification_Mode {identity.authentication_mode!r} is not one of "
                        f"{sorted(AUTHENTICATION_MODES)}")  # fmt: skip
    if identity.purpose_of_use not in PURPOSES_OF_USE:
        raise VihfError(f"purpose of use {identity.purpose_of_use!r} is not one of {sorted(PURPOSES_OF_USE)}")
    if identity.purpose_of_use == PURPOSE_EMERGENCY and not identity.access_reason.strip():
        raise VihfError(f"an emergency access (bris_de_glace) needs its reason in {ACCESS_REASON}")
    now = now or datetime.now(UTC)
    # The SAML ID is an xs:ID (NCName): it may not start with a digit, as a bare UUID can.
    root = etree.Element(SAML + "Assertion", nsmap={"saml2": ns.SAML2, "ds": ns.DSIG},
                         ID=f"_{uuid.uuid4().hex}", IssueInstant=_utc(now), Version="2.0")  # fmt: skip
    _sub(root, SAML + "Issuer", issuer, Format=X509_SUBJECT_FORMAT)
    _sub(root, f"{{{ns.DSIG}}}Signature", Id="placeholder")
    _sub(_sub(root, SAML + "Subject"), SAML + "NameID", identity.professional_id)
    if validity is not None:
        _sub(root, SAML + "Conditions", NotBefore=_utc(now), NotOnOrAfter=_utc(now + validity))
    authn = _sub(root, SAML + "AuthnStatement", AuthnInstant=_utc(now))
    _sub(_sub(authn, SAML + "AuthnContext"), SAML + "AuthnContextClassRef", AUTHN_TLS_CLIENT)
    st = _sub(root, SAML + "AttributeStatement")
    _attribute(st, "VIHF_Version", identity.vihf_version)
    _attribute(st, "Identifiant_Structure", identity.structure_id)
    _attribute(st, "Secteur_Activite", identity.secteur_activite)
    _attribute(st, "Authentification_Mode", identity.authentication_mode)
    # The DMP spells it the French way ("Ressource"), as in the ANS samples.
    _attribute(st, "Ressource_URN", "urn:dmp")
    if patient_id:
        _attribute(st, "urn:oasis:names:tc:xacml:2.0:resource:resource-id", patient_id)
    _attribute(st, "urn:oasis:names:tc:xspa:1.0:subject:subject-id", identity.professional_name)
    roles = _attribute(st, "urn:oasis:names:tc:xacml:2.0:subject:role")
    for role in identity.roles:
        _ce(roles, "Role", role)
    purpose = identity.purpose_of_use
    purpose_code = Code(purpose, PURPOSE_OF_USE_SCHEME, PURPOSES_OF_USE.get(purpose, purpose))
    _ce(_attribute(st, "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"), "PurposeOfUse", purpose_code,
        "mode acces VIHF 1.0")  # fmt: skip
    if identity.access_reason.strip():
        _attribute(st, ACCESS_REASON, identity.access_reason.strip())
    _attribute(st, "LPS_ID", identity.lps_id)
    _attribute(st, "LPS_Nom", identity.lps_name)
    _attribute(st, "LPS_Version", identity.lps_version)
    _attribute(st, "LPS_ID_HOMOLOGATION_DMP", identity.lps_homologation)
    return root


class VihfSigner:
    """Signs VIHF assertions with the structure's key; the Issuer is its certificate's subject DN."""

    def __init__(self, key_pem: bytes, cert_pem: bytes, password: bytes | None = None) -> None:
        try:
            key = serialization.load_pem_private_key(key_pem, password=password)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError) as exc:
            raise VihfError(f"cannot read the VIHF signing key or certificate: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise VihfError("the VIHF signing key must be an RSA key (RSA-SHA256 signatures)")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise VihfError("the VIHF signing key does not match the certificate")
        self._key = key
        self._cert_pem = cert_pem.decode("ascii")
        self.certificate = cert
        self.issuer = cert.subject.rfc4514_string()

    @property
    def key(self) -> rsa.RSAPrivateKey:
        """The structure's private key, which also signs the ITI-41 submission sets (xds/signature.py)."""
        return self._key

    @classmethod
    def from_files(cls, key_path: Path, cert_path: Path, password: bytes | None = None) -> VihfSigner:
        return cls(key_path.read_bytes(), cert_path.read_bytes(), password)

    def issue(
        self,
        identity: VihfIdentity,
        patient_id: str | None,
        *,
        now: datetime | None = None,
        validity: timedelta | None = None,
    ) -> etree._Element:
        """A signed VIHF for this identity and patient, ready for wsse:Security."""
        return self.sign(build_assertion(identity, self.issuer, patient_id, now=now, validity=validity))

    def sign(self, assertion: etree._Element) -> etree._Element:
        """Enveloped XML-DSig over the assertion (exc-c14n, RSA-SHA256), certificate in KeyInfo."""
        signer = XMLSigner(
            method=SignatureConstructionMethod.enveloped,
            signature_algorithm="rsa-sha256",
            digest_algorithm="sha256",
            c14n_algorithm=EXC_C14N,
        )
        signed: etree._Element = signer.sign(assertion, key=self._key, cert=self._cert_pem)
        return signed
