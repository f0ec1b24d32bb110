"""Trust in the whitelist's signer: its chain up to a configured IGC-Santé root, its names, dates and revocation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

# The signer the ANS names (informatif/listeblanche/Readme.md): CN and OU of its IGC-Santé ORG SIGN certificate.
SIGNER_CN = "Liste Blanche DRIM-M"
SIGNER_OU = "318751275100020"
MAX_DEPTH = 5
# A CRL or certificate dated a little in the future is a clock difference, not an attack.
CLOCK_SKEW = timedelta(minutes=5)


class TrustError(Exception):
    """The signer is not trusted; `reason`: untrusted, wrong_signer, expired, revoked, revocation_unknown."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Trust:
    """What the signer is checked against: the roots (trust anchors), extra intermediates, the expected names."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    signer_cn: str = SIGNER_CN
    signer_ou: str = SIGNER_OU
    check_revocation: bool = True


def load_certificates(data: bytes, what: str) -> list[x509.Certificate]:
    """Every PEM certificate in `data` (or one DER certificate)."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise TrustError("untrusted", f"{what}: not PEM or DER X.509 certificates") from None


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)


def load_crls(data: bytes, what: str) -> list[x509.CertificateRevocationList]:
    """Every PEM CRL in `data`, or one DER CRL (what IGC-Santé publishes)."""
    try:
        blocks = _PEM_CRL.findall(data)
        if blocks:
            return [x509.load_pem_x509_crl(block) for block in blocks]
        return [x509.load_der_x509_crl(data)]
    except ValueError:
        raise TrustError("revocation_unknown", f"{what}: not a PEM or DER CRL") from None


def _cn(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _check_dates(cert: x509.Certificate, now: datetime, role: str) -> None:
    if now + CLOCK_SKEW < cert.not_valid_before_utc:
        raise TrustError(
            "expired", f"the {role} certificate {_cn(cert)!r} is not valid before {cert.not_valid_before_utc}"
        )
    if now > cert.not_valid_after_utc:
        raise TrustError("expired", f"the {role} certificate {_cn(cert)!r} expired on {cert.not_valid_after_utc}")


def _extension(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        return None


def check_signer_names(cert: x509.Certificate, trust: Trust) -> None:
    """CN and OU exactly those the ANS signs with; a signing (not CA) certificate."""
    cns = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    ous = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)]
    if cns != [trust.signer_cn]:
        raise TrustError("wrong_signer", f"signer CN {cns!r} is not {trust.signer_cn!r}")
    if trust.signer_ou not in ous:
        raise TrustError("wrong_signer", f"signer OU {ous!r} does not include {trust.signer_ou!r}")
    constraints = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        raise TrustError("wrong_signer", "the signer certificate is a CA")
    usage = _extension(cert, ExtensionOID.KEY_USAGE)
    if isinstance(usage, x509.KeyUsage) and not (usage.digital_signature or usage.content_commitment):
        raise TrustError("wrong_signer", "the signer certificate's key usage forbids signing")


def _issued(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    constraints = _extension(cert, ExtensionOID.BASIC_CONSTRAINTS)
    usage = _extension(cert, ExtensionOID.KEY_USAGE)
    return isinstance(constraints, x509.BasicConstraints) and constraints.ca and \
        (not isinstance(usage, x509.KeyUsage) or usage.key_cert_sign)  # fmt: skip


def signer_chain(
    signer: x509.Certificate, carried: Iterable[x509.Certificate], trust: Trust, now: datetime
) -> list[x509.Certificate]:
    """[signer, intermediates…, root]: each certificate signed by the next, in date, up to one of trust.roots.

    Intermediates come from the configuration or from the signature's KeyInfo; only the roots are trusted as such.
    """
    if not trust.roots:
        raise TrustError("untrusted", "no trusted root configured (whitelist.trust_roots)")
    check_signer_names(signer, trust)
    _check_dates(signer, now, "signer")
    candidates = [c for c in (*trust.intermediates, *carried) if _is_ca(c)]
    chain, current = [signer], signer
    for _ in range(MAX_DEPTH):
        for root in trust.roots:
            if current.issuer == root.subject and _issued(current, root):
                _check_dates(root, now, "root")
                return [*chain, root]
        issuer = next(
            (c for c in candidates if c.subject == current.issuer and c not in chain and _issued(current, c)), None
        )
        if issuer is None:
            raise TrustError("untrusted", f"no trusted path from {_cn(current)!r} to a root of whitelist.trust_roots "
                             f"(issuer {current.issuer.rfc4514_string()!r})")  # fmt: skip
        _check_dates(issuer, now, "intermediate")
        chain.append(issuer)
        current = issuer
    raise TrustError("untrusted", "the signer's chain is too long")


def crl_urls(cert: x509.Certificate) -> list[str]:
    """The certificate's HTTP(S) CRL distribution points (IGC-Santé also lists LDAP ones, not followed)."""
    points = _extension(cert, ExtensionOID.CRL_DISTRIBUTION_POINTS)
    if not isinstance(points, x509.CRLDistributionPoints):
        return []
    return [name.value for point in points for name in point.full_name or []
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(("http://", "https://"))]  # fmt: skip


def ca_issuer_urls(cert: x509.Certificate) -> list[str]:
    """The certificate's HTTP(S) caIssuers (authority information access): where its issuer's certificate is."""
    access = _extension(cert, ExtensionOID.AUTHORITY_INFORMATION_ACCESS)
    if not isinstance(access, x509.AuthorityInformationAccess):
        return []
    return [d.access_location.value for d in access if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS
            and isinstance(d.access_location, x509.UniformResourceIdentifier)
            and d.access_location.value.startswith(("http://", "https://"))]  # fmt: skip


def crl_of(
    issuer: x509.Certificate, crls: Sequence[x509.CertificateRevocationList]
) -> x509.CertificateRevocationList | None:
    """The CRL in `crls` that `issuer` signed, if any."""
    for crl in crls:
        if crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            return crl
    return None


def check_revocation(
    chain: Sequence[x509.Certificate], crls: Sequence[x509.CertificateRevocationList], now: datetime
) -> None:
    """The chain below the root: its issuer's current CRL is known and does not list it.

    The signer always needs one (what the ANS asks). An intermediate needs one when it names a distribution
    point or one is configured; one that names none, with none configured, is taken as its issuer publishes it.
    """
    for position, (cert, issuer) in enumerate(pairwise(chain)):
        crl = crl_of(issuer, crls)
        if crl is None and position > 0 and not crl_urls(cert):
            continue
        if crl is None:
            raise TrustError("revocation_unknown", f"no CRL signed by {_cn(issuer)!r} (whitelist.crl, or the CRL "
                             f"distribution point of {_cn(cert)!r})")  # fmt: skip
        if crl.next_update_utc is not None and now > crl.next_update_utc:
            raise TrustError(
                "revocation_unknown", f"the CRL of {_cn(issuer)!r} is out of date (next update {crl.next_update_utc})"
            )
        if crl.last_update_utc > now + CLOCK_SKEW:
            raise TrustError("revocation_unknown", f"the CRL of {_cn(issuer)!r} is dated in the future")
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise TrustError("revoked", f"the certificate {_cn(cert)!r} (serial {cert.serial_number:x}) is revoked")
