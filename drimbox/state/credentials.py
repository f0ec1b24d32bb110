"""The structure's signing credentials: the key and certificate that sign every VIHF and the audit checkpoints.

`[dmp] signing_key` / `signing_cert` when configured; otherwise a self-signed test pair made once and kept under
var_dir/credentials. Here, below both the XDS stack and the audit trail, so that each finds the same pair.
"""

from __future__ import annotations

import fcntl
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from drimbox.config import Settings
from drimbox.state.durable import write_atomic


def structure_credentials(settings: Settings) -> tuple[Path, Path]:
    """(key path, certificate path) of the structure: `[dmp] signing_key`/`signing_cert`, or the self-signed test
    pair under var_dir/credentials (made on first use). Source, consumer and audit trail share it."""
    d = settings.dmp
    if d.signing_key and d.signing_cert:
        return Path(d.signing_key), Path(d.signing_cert)
    return generate_test_credentials(settings.var_path / "credentials", f"drimbox {d.structure_id}")


def generate_test_credentials(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A self-signed RSA key and certificate for tests and the demo, reused when already there.

    Returns (key path, certificate path). Never for production: the DMP wants an IGC-Santé certificate.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / f"{_slug(common_name)}.key.pem"
    cert_path = directory / f"{_slug(common_name)}.cert.pem"
    # Two processes starting together (box and simulator) must not end up with one's key and the other's cert.
    with open(directory / f".{_slug(common_name)}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if key_path.exists() and cert_path.exists() and _is_rsa_pair(key_path, cert_path):
            return key_path, cert_path
        # else: none yet, or a half-written or mismatched pair: make a new one
        _write_credentials(key_path, cert_path, common_name)
    return key_path, cert_path


def self_signed_certificate(key: rsa.RSAPrivateKey, name: x509.Name, years: int = 10) -> x509.Certificate:
    """A self-signed signing certificate (digitalSignature + nonRepudiation, like an IGC-Santé ORG SIGN one)."""
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, True, *([False] * 7)), critical=True)
        .sign(key, hashes.SHA256())
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_").lower() or "vihf"


def _is_rsa_pair(key_path: Path, cert_path: Path) -> bool:
    """True when the files hold an RSA key and the certificate of its public key (what a VIHF signer needs)."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (ValueError, TypeError, OSError):
        return False
    public = cert.public_key()
    return (
        isinstance(key, rsa.RSAPrivateKey)
        and isinstance(public, rsa.RSAPublicKey)
        and key.public_key().public_numbers() == public.public_numbers()
    )


def _write_credentials(key_path: Path, cert_path: Path, common_name: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "drimbox test"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])  # fmt: skip
    cert = self_signed_certificate(key, name)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(key_path, key_pem, mode=0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
