"""The simulated ANS whitelist of DRIMbox hosts at /whitelist: the ANS format, XAdES-signed by a simulator key."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import methods
from signxml.xades.xades import XAdESDataObjectFormat, XAdESSigner

from drimbox.config import Settings
from drimbox.xds.vihf import self_signed_certificate

NS = "https://github.com/ansforge/DRIM-M_DATA"
FORMAT_VERSION = "1.0.0"
# The subject the ANS signs with (Readme of the ANS sample); a box checks CN and OU, so the simulator copies them.
SIGNER_CN = "Liste Blanche DRIM-M"
SIGNER_OU = "318751275100020"
# Inclusive C14N 1.0: signxml's XAdES SignedProperties digest does not survive exclusive C14N (it fails to
# verify), and C14N 1.0 is what XAdES validators (DSS, the ANS's esignsante) accept everywhere.
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
KEY_FILE, CERT_FILE = "signing-key.pem", "signing-cert.pem"
XML_TYPE = "application/xml"


@dataclass(frozen=True)
class Whitelist:
    """What /whitelist serves, built and signed once when the simulator starts."""

    signed: bytes
    unsigned: bytes
    certificate_pem: bytes


WHITELIST = web.AppKey("whitelist", Whitelist)


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_document(hosts: list[str], generated: datetime) -> etree._Element:
    """<ListeBlancheDRIM-M>: one <Domaine> per entry (host, host:port, loopback host:* or URL), both its db and vi."""
    E = f"{{{NS}}}"
    root = etree.Element(f"{E}ListeBlancheDRIM-M", nsmap={None: NS}, versionFormat=FORMAT_VERSION)
    etree.SubElement(root, f"{E}DateDeGeneration").text = _timestamp(generated)
    domains = etree.SubElement(root, f"{E}ListeDomaines")
    for number, host in enumerate(hosts, start=1):
        domain = etree.SubElement(domains, f"{E}Domaine")
        for tag, text in (
            ("Identifiant", str(number)),
            ("db", host),
            ("vi", host),
            ("Denomination", "DRIMbox de test (simulateur drimbox)"),
            ("DNCertificatOperateur", f"CN={host},OU=drimbox-sim,O=drimbox,C=FR"),
            ("SupportContact", "simulateur drimbox, pas de support"),
            ("DateMAJ", _timestamp(generated)),
        ):
            etree.SubElement(domain, f"{E}{tag}").text = text
    etree.indent(root, space="    ")
    return root


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _self_signed(key: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "drimbox simulateur (test)"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, SIGNER_OU),
        x509.NameAttribute(NameOID.COMMON_NAME, SIGNER_CN),
    ])  # fmt: skip
    return self_signed_certificate(key, name)


def load_signer(directory: Path) -> tuple[rsa.RSAPrivateKey, bytes]:
    """The signing key and its self-signed certificate (PEM), made once in directory and reused after."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    # Two simulators sharing a var_dir must not end up with one's key and the other's certificate.
    with open(directory / f".{KEY_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if isinstance(key, rsa.RSAPrivateKey) and cert.public_key() == key.public_key():
                return key, cert_path.read_bytes()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        cert_pem = _self_signed(key).public_bytes(serialization.Encoding.PEM)
        _write_atomic(key_path, pem, 0o600)
        _write_atomic(cert_path, cert_pem, 0o644)
        return key, cert_pem


def sign_document(root: etree._Element, key: rsa.RSAPrivateKey, cert_pem: bytes) -> bytes:
    """Enveloped XAdES (SigningTime, SigningCertificateV2, DataObjectFormat), RSA-SHA256, certificate in KeyInfo.

    The ANS signs with XAdES-BASELINE-B under an IGC-Santé certificate; this has the same structure, but a
    self-signed certificate, so a box checks it against the one /whitelist/certificate serves.
    """
    signer = XAdESSigner(
        method=methods.enveloped,
        signature_algorithm="rsa-sha256",
        digest_algorithm="sha256",
        c14n_algorithm=C14N,
        data_object_format=XAdESDataObjectFormat(Description="Liste blanche DRIM-M", MimeType="text/xml"),
    )
    signed = signer.sign(root, key=key, cert=cert_pem.decode("ascii"))
    data: bytes = etree.tostring(signed, xml_declaration=True, encoding="UTF-8")
    return data


def build_whitelist(settings: Settings, now: datetime | None = None) -> Whitelist:
    key, cert_pem = load_signer(settings.sim_var_path / "whitelist")
    root = build_document(list(settings.sim.whitelist_hosts), now or datetime.now(UTC))
    unsigned = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return Whitelist(signed=sign_document(root, key, cert_pem), unsigned=unsigned, certificate_pem=cert_pem)


async def signed_list(request: web.Request) -> web.Response:
    return web.Response(body=request.app[WHITELIST].signed, content_type=XML_TYPE, charset="utf-8")


async def unsigned_list(request: web.Request) -> web.Response:
    return web.Response(body=request.app[WHITELIST].unsigned, content_type=XML_TYPE, charset="utf-8")


async def certificate(request: web.Request) -> web.Response:
    return web.Response(body=request.app[WHITELIST].certificate_pem, content_type="application/x-pem-file")


def setup_whitelist(app: web.Application, settings: Settings) -> Whitelist:
    """Mount /whitelist (signed), /whitelist/unsigned and /whitelist/certificate (the signer's PEM)."""
    whitelist = build_whitelist(settings)
    app[WHITELIST] = whitelist
    app.router.add_get("/whitelist", signed_list)
    app.router.add_get("/whitelist/unsigned", unsigned_list)
    app.router.add_get("/whitelist/certificate", certificate)
    return whitelist
