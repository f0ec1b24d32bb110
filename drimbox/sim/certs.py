"""Test certificates: a TLS mesh's CA and leaves (sim, source, consumer), and the whitelist signer's simulated IGC-Santé."""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

PARTIES = ("sim", "source", "consumer")
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
ORGANISATION = "drimbox test PKI (not for production)"


@dataclass(frozen=True)
class Authority:
    """A CA able to sign leaves: its certificate and key, and where they were written."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])  # fmt: skip


def _write(out: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    key_path.chmod(0o600)  # a private key, even a test one, is readable by its owner only
    return cert_path, key_path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(out: Path, name: str = "drimbox test CA", days: int = 3650) -> Authority:
    """A self-signed CA, written as {out}/ca.pem and ca-key.pem."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, _ = _write(out, "ca", cert, key)
    return Authority(cert, key, cert_path)


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(
    ca: Authority, out: Path, stem: str, hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS, *,
    not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None,
) -> tuple[Path, Path]:  # fmt: skip
    """A leaf for `stem` signed by `ca`, good as a server (for `hosts`) and as a client: ({stem}.pem, {stem}-key.pem).

    One certificate per party for both ends: a box is one identity, whether it answers or calls.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"drimbox {stem}"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return _write(out, stem, cert, key)


def issue_test_pki(out: Path, hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS) -> dict[str, Path]:
    """The CA and a leaf per party under `out`: {"ca": …, "sim": …, "sim-key": …, "source": …, …}."""
    ca = make_ca(out)
    files = {"ca": ca.cert_path}
    for party in PARTIES:
        files[party], files[f"{party}-key"] = issue(ca, out, party, hosts)
    return files


def main(out: str, hosts: str) -> int:
    """`drimbox sim certs`: write the test PKI and print the [tls] section each party needs."""
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    files = issue_test_pki(Path(out), names)
    print(f"test CA and certificates for {', '.join(names)} written to {out}\n")
    for party in PARTIES:
        print(f"# {party}\n[tls]\ncert = \"{files[party]}\"\nkey = \"{files[party + '-key']}\"\n"
              f"ca = \"{files['ca']}\"\nclient_ca = \"{files['ca']}\"\n"
              f"client_cert = \"{files[party]}\"\nclient_key = \"{files[party + '-key']}\"\n")  # fmt: skip
    # With mutual TLS a source admits the boxes the whitelist names by certificate DN: the simulator's list must.
    dns = [
        x509.load_pem_x509_certificate(files[p].read_bytes()).subject.rfc4514_string() for p in ("source", "consumer")
    ]
    print(
        "# sim: its whitelist's DNCertificatOperateur, one per sim.whitelist_hosts entry, in order\n[sim]\n"
        "whitelist_operator_dns = [" + ", ".join(f'"{dn}"' for dn in dns) + "]\n"
    )
    return 0


# -- the whitelist's signer: a simulated IGC-Santé (root → ORG intermediate → "Liste Blanche DRIM-M") -------------

WHITELIST_SIGNER_CN = "Liste Blanche DRIM-M"
WHITELIST_SIGNER_OU = "318751275100020"
SIM_ORGANISATION = "drimbox simulateur IGC-Sante TEST (not for production)"
ROOT_CN, ORG_CN = "TEST AC RACINE drimbox-sim", "TEST AC drimbox-sim ELEMENTAIRE ORGANISATIONS"
ROOT_FILE, ROOT_KEY_FILE = "root.pem", "root-key.pem"
CRL_LIFETIME = datetime.timedelta(days=7)


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIM_ORGANISATION),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "IGC-SANTE TEST"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])  # fmt: skip


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                         encipher_only=False, decipher_only=False)  # fmt: skip


def _ca(name: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: ec.EllipticCurvePrivateKey,
        crl_url: str | None, days: int) -> x509.Certificate:  # fmt: skip
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None if crl_url is None else 0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if crl_url is not None:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _load_or_make_root(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The simulated root, made once in `directory` and kept: boxes name its file in whitelist.trust_roots."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / ROOT_FILE, directory / ROOT_KEY_FILE
    # Two simulators (or the demo and its simulator) sharing the directory must agree on one root.
    with open(directory / ".root.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if isinstance(key, ec.EllipticCurvePrivateKey) and cert.public_key() == key.public_key() \
                    and cert.not_valid_after_utc > _now() + datetime.timedelta(days=30):  # fmt: skip
                return cert, key
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _ca(_ca_name(ROOT_CN), key, _ca_name(ROOT_CN), key, None, 3650)
        _write(directory, "root", cert, key)
        return cert, key


def whitelist_root(directory: Path) -> Path:
    """The simulated IGC-Santé root's PEM file in `directory` (made if missing): a box's whitelist.trust_roots."""
    _load_or_make_root(directory)
    return directory / ROOT_FILE


@dataclass(frozen=True)
class SignerKit:
    """A whitelist signer: its key, its certificate, the CA certificates a signature carries with it."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...]


class WhitelistPki:
    """Root (kept on disk), ORG intermediate and signers (made at each start), and the CRLs: the ORG one lists the
    "revoked" signer. Certificates point under `base_url`: CRLs at {base_url}/crl/{root,org}.crl, the ORG CA's
    certificate (the signer's authority information access) at {base_url}/ca/org.cer, as IGC-Santé publishes."""

    def __init__(self, directory: Path, base_url: str) -> None:
        self.root, self._root_key = _load_or_make_root(directory)
        self.base_url = base_url.rstrip("/")
        self._org_key = ec.generate_private_key(ec.SECP256R1())
        self.org = _ca(
            _ca_name(ORG_CN), self._org_key, self.root.subject, self._root_key, f"{self.base_url}/crl/root.crl", 1825
        )
        self.revoked_serial = x509.random_serial_number()

    def signer(self, kind: str = "valid") -> SignerKit:
        """A signer as the ANS's (names, usages, CRL point), or the flawed one `kind` names (see sim.whitelist_signer)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = _now()
        not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1095)
        cn = WHITELIST_SIGNER_CN + " (test)" if kind == "wrong_cn" else WHITELIST_SIGNER_CN
        ou = "000000000000000" if kind == "wrong_ou" else WHITELIST_SIGNER_OU
        if kind == "expired":
            not_before, not_after = now - datetime.timedelta(days=400), now - datetime.timedelta(days=1)
        issuer_cert, issuer_key = self.org, self._org_key
        if kind == "untrusted":
            # Same names as the real chain, other keys: only the signatures tell them apart.
            other_root_key, other_org_key = (
                ec.generate_private_key(ec.SECP256R1()),
                ec.generate_private_key(ec.SECP256R1()),
            )
            other_root = _ca(self.root.subject, other_root_key, self.root.subject, other_root_key, None, 3650)
            issuer_cert = _ca(self.org.subject, other_org_key, other_root.subject, other_root_key, f"{self.base_url}/crl/root.crl",
                              1825)  # fmt: skip
            issuer_key = other_org_key
        subject = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Paris (75)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIM_ORGANISATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ])  # fmt: skip
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_cert.subject).public_key(key.public_key())
            .serial_number(self.revoked_serial if kind == "revoked" else x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(f"{self.base_url}/crl/org.crl")], None, None, None)]),
                critical=False)
            .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(f"{self.base_url}/ca/org.cer"))]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256())
        )  # fmt: skip
        return SignerKit(key, cert, (issuer_cert,))

    def ca_certificate(self, name: str) -> bytes:
        """DER "org.cer" (what the signer's caIssuers names) or "root.cer"."""
        return (self.org if name == "org.cer" else self.root).public_bytes(serialization.Encoding.DER)

    def crl(self, name: str) -> bytes:
        """DER CRL "root.crl" (the root's: nothing revoked) or "org.crl" (the ORG CA's: the revoked signer)."""
        issuer, key = (self.root, self._root_key) if name == "root.crl" else (self.org, self._org_key)
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + CRL_LIFETIME)
        )
        if name == "org.crl":
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(self.revoked_serial).revocation_date(now).build()
            )
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
