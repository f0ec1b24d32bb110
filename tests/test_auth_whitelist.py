"""ANS whitelist: signed list verified (XML-DSig and XAdES), tampering and foreign signers refused, host rules."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml.algorithms import SignatureMethod
from signxml.signer import XMLSigner
from signxml.xades.xades import XAdESSigner

from conformance.ans import ANS_DATA
from drimbox.auth.whitelist import AnsWhitelist, Endpoint, Whitelist, WhitelistError, verify_whitelist
from drimbox.config import WhitelistSettings
from drimbox.samples.processes import free_port

ANS_SAMPLE = ANS_DATA / "informatif" / "listeblanche" / "LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST_.xml"
NS = "https://github.com/ansforge/DRIM-M_DATA"

LIST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ListeBlancheDRIM-M xmlns="{NS}" versionFormat="1.0.0">
  <DateDeGeneration>2026-01-02T10:00:00Z</DateDeGeneration>
  <ListeDomaines>
    <Domaine><Identifiant>1</Identifiant><db>db1.111.mesimagesmedicales.fr</db><vi>vi1.111.mesimagesmedicales.fr</vi>
      <Denomination>Operateur 01 test</Denomination></Domaine>
    <Domaine><Identifiant>9</Identifiant><db>127.0.0.1:8080</db><vi>127.0.0.1:8080</vi>
      <Denomination>Source box of the demo</Denomination></Domaine>
    <Domaine><Identifiant>10</Identifiant><db>DB.Example.org:8443</db><vi>vi.example.org</vi>
      <Denomination>Another operator</Denomination></Domaine>
  </ListeDomaines>
</ListeBlancheDRIM-M>
""".encode()


@dataclass
class Signer:
    key_pem: bytes
    cert_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


def make_signer(cn: str = "Liste Blanche DRIM-M") -> Signer:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "318751275100020")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return Signer(key_pem, cert.public_bytes(serialization.Encoding.PEM))


def sign(xml: bytes, signer: Signer, *, xades: bool = False) -> bytes:
    root = etree.fromstring(xml)
    cls = XAdESSigner if xades else XMLSigner
    signed = cls(signature_algorithm=SignatureMethod.RSA_SHA256).sign(root, key=signer.key_pem, cert=signer.cert_pem)
    return etree.tostring(signed, xml_declaration=True, encoding="UTF-8")


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_signer()


def test_signed_list_verifies_and_hosts_are_read(signer: Signer) -> None:
    wl = verify_whitelist(sign(LIST, signer), certificate=signer.certificate, require_signature=True)
    assert wl.signed and wl.generated_at == "2026-01-02T10:00:00Z"
    assert Endpoint("db1.111.mesimagesmedicales.fr", None) in wl.db and Endpoint("127.0.0.1", 8080) in wl.db
    assert Endpoint("db.example.org", 8443) in wl.db and Endpoint("vi.example.org", None) in wl.vi


def test_xades_signed_list_verifies(signer: Signer) -> None:
    # The ANS signs its list in XAdES-BASELINE-B: more references than plain XML-DSig.
    wl = verify_whitelist(sign(LIST, signer, xades=True), certificate=signer.certificate, require_signature=True)
    assert wl.signed and Endpoint("127.0.0.1", 8080) in wl.db


@pytest.mark.parametrize("xades", [False, True])
def test_tampered_list_is_refused(signer: Signer, xades: bool) -> None:
    signed = sign(LIST, signer, xades=xades)
    tampered = signed.replace(b"<db>db1.111.mesimagesmedicales.fr</db>", b"<db>evil.example</db>")
    assert tampered != signed
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(tampered, certificate=signer.certificate, require_signature=True)
    assert info.value.reason == "bad_signature"
    # An added Domaine after signing is tampering too.
    added = signed.replace(b"</ListeDomaines>", b"<Domaine><db>evil.example</db></Domaine></ListeDomaines>")
    with pytest.raises(WhitelistError):
        verify_whitelist(added, certificate=signer.certificate, require_signature=True)


def test_list_signed_by_someone_else_is_refused(signer: Signer) -> None:
    other = make_signer()
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(sign(LIST, other), certificate=signer.certificate, require_signature=True)
    assert info.value.reason == "bad_signature"


def test_unsigned_list_refused_when_a_signature_is_required() -> None:
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(LIST, certificate=None, require_signature=True)
    assert info.value.reason == "unsigned"
    wl = verify_whitelist(LIST, certificate=None, require_signature=False)
    assert not wl.signed and Endpoint("127.0.0.1", 8080) in wl.db


@pytest.mark.skipif(not ANS_SAMPLE.exists(), reason=f"ANS data not found at {ANS_DATA}")
def test_the_ans_sample_list_parses() -> None:
    wl = verify_whitelist(ANS_SAMPLE.read_bytes(), certificate=None, require_signature=False)
    assert len(wl.db) == 6 and Endpoint("db2.867.mesimagesmedicales.fr", None) in wl.db
    assert wl.allows("https://db1.345.mesimagesmedicales.fr/dicom-web/studies/1.2.3/series/4.5.6")


def test_hostile_xml_is_refused() -> None:
    bomb = b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>' \
           b'<ListeBlancheDRIM-M><ListeDomaines><Domaine><db>&b;</db></Domaine></ListeDomaines></ListeBlancheDRIM-M>'
    wl = verify_whitelist(bomb, certificate=None, require_signature=False)
    assert all("aaaa" not in entry.host for entry in wl.db)  # entities are not expanded
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(b"<not-xml", certificate=None, require_signature=False)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://db1.111.mesimagesmedicales.fr/dicom-web/studies/1", True),
    ("https://DB1.111.mesimagesmedicales.fr./dicom-web", True),
    ("https://db1.111.mesimagesmedicales.fr:443/x", True),
    ("https://db1.111.mesimagesmedicales.fr:8443/x", False),  # a bare host entry admits the scheme's port only
    ("http://db1.111.mesimagesmedicales.fr/x", False),  # plain http only towards loopback
    ("https://db9.111.mesimagesmedicales.fr/x", False),  # unlisted host
    ("https://vi1.111.mesimagesmedicales.fr/x", False),  # a viewer host is not a box host
    ("https://evil.example/?db1.111.mesimagesmedicales.fr", False),
    ("https://db1.111.mesimagesmedicales.fr@evil.example/x", False),
    ("https://user@db1.111.mesimagesmedicales.fr/x", False),
    ("http://127.0.0.1:8080/dicom-web/studies/1", True),
    ("http://127.0.0.1:8081/dicom-web", False),
    ("http://127.0.0.1/dicom-web", False),
    ("http://localhost:8080/dicom-web", False),  # loopback only when listed as such
    ("https://db.example.org:8443/x", True),
    ("https://db.example.org/x", False),  # a host:port entry admits that port only
    ("https://db.example.org:443/x", False),
    ("ftp://db1.111.mesimagesmedicales.fr/x", False),
    ("https://[::1]:8080/x", False),
    ("not a url", False),
    ("https://db1.111.mesimagesmedicales.fr:99999/x", False),
])
def test_host_and_port_rules(url: str, allowed: bool) -> None:
    wl = verify_whitelist(LIST, certificate=None, require_signature=False)
    assert wl.allows(url) is allowed


def test_viewer_role() -> None:
    wl = verify_whitelist(LIST, certificate=None, require_signature=False)
    assert wl.allows("https://vi1.111.mesimagesmedicales.fr/viewer", role="vi")
    assert not wl.allows("https://vi1.111.mesimagesmedicales.fr/viewer", role="db")
    assert wl.allows("https://vi.example.org/x", role="any")


# --- the fetching side -----------------------------------------------------------------------------


@dataclass
class ListServer:
    url: str
    body: bytes
    cert_pem: bytes
    hits: int = 0
    up: bool = True


@pytest.fixture
async def list_server(signer: Signer) -> AsyncIterator[ListServer]:
    port = free_port()
    server = ListServer(f"http://127.0.0.1:{port}", sign(LIST, signer), signer.cert_pem)

    async def whitelist(request: web.Request) -> web.Response:
        server.hits += 1
        if not server.up:
            return web.Response(status=503)
        return web.Response(body=server.body, content_type="application/xml")

    async def certificate(request: web.Request) -> web.Response:
        return web.Response(body=server.cert_pem, content_type="application/x-pem-file")

    app = web.Application()
    app.add_routes([web.get("/whitelist", whitelist), web.get("/whitelist/certificate", certificate)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server
    await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_fetch_with_certificate_url_refresh_and_fail_closed(list_server: ListServer) -> None:
    clock = Clock()
    settings = WhitelistSettings(url=list_server.url + "/whitelist", certificate_url=list_server.url + "/whitelist/certificate",
                                 refresh_interval=3600.0, max_stale=7200.0)
    wl = AnsWhitelist(settings, clock=clock)
    try:
        assert not wl.is_allowed("http://127.0.0.1:8080/x")  # nothing loaded yet
        assert await wl.check("http://127.0.0.1:8080/dicom-web/studies/1")
        assert not await wl.check("http://127.0.0.1:9999/x")
        assert list_server.hits == 1  # cached between refreshes
        list_server.up = False
        clock.now += 3600
        assert await wl.check("http://127.0.0.1:8080/x")  # refresh failed: the previous list is kept
        assert list_server.hits == 2 and wl.last_error
        clock.now += 10
        assert await wl.check("http://127.0.0.1:8080/x")
        assert list_server.hits == 2  # a failed refresh is not retried at once
        clock.now += 7200
        assert not await wl.check("http://127.0.0.1:8080/x")  # too stale: every host refused
        list_server.up = True
        clock.now += 60
        assert await wl.check("http://127.0.0.1:8080/x")
    finally:
        await wl.close()


async def test_pinned_certificate_file_and_tampered_list_from_the_server(
    list_server: ListServer, signer: Signer, tmp_path: Path
) -> None:
    cert = tmp_path / "whitelist.pem"
    cert.write_bytes(signer.cert_pem)
    list_server.body = list_server.body.replace(b"127.0.0.1:8080", b"127.0.0.1:8081")
    wl = AnsWhitelist(WhitelistSettings(url=list_server.url + "/whitelist", certificate=str(cert), certificate_url=""))
    try:
        with pytest.raises(WhitelistError) as info:
            await wl.refresh()
        assert info.value.reason == "bad_signature"
        assert not await wl.check("http://127.0.0.1:8081/x")
    finally:
        await wl.close()


async def test_unsigned_list_from_the_server(list_server: ListServer) -> None:
    list_server.body = LIST
    strict = AnsWhitelist(WhitelistSettings(url=list_server.url + "/whitelist",
                                            certificate_url=list_server.url + "/whitelist/certificate"))
    lenient = AnsWhitelist(WhitelistSettings(url=list_server.url + "/whitelist", certificate_url="", require_signature=False))
    try:
        assert not await strict.check("http://127.0.0.1:8080/x")
        assert "unsigned" in strict.last_error
        assert await lenient.check("http://127.0.0.1:8080/x")
        assert lenient.current is not None and not lenient.current.signed
    finally:
        await strict.close()
        await lenient.close()


def test_whitelist_object_is_plain_data() -> None:
    wl = Whitelist(db=frozenset({Endpoint("h"), Endpoint("p", 8443)}), vi=frozenset())
    assert wl.allows("https://h/x") and wl.allows("https://h:443/x") and not wl.allows("https://h:1/x")
    assert wl.allows("https://p:8443/x") and not wl.allows("https://p/x")
