"""Test certificates for a TLS mesh on a bench: a test CA and, per party (sim, source, consumer), a leaf for both ends."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
        .subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
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
        .subject_name(_name(f"drimbox {stem}")).issuer_name(ca.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
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
    return 0
