"""ANS whitelist: the XAdES-B signature, the signer's chain to the configured root, its names, dates, revocation;
tampering refused; host and operator rules; the fetching side (CRL distribution points, trust on first use)."""

from __future__ import annotations

import base64
import datetime
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from lxml import etree

from conformance.ans import ANS_DATA
from drimbox.auth.whitelist import AnsWhitelist, Endpoint, Whitelist, WhitelistError, verify_signed, verify_whitelist
from drimbox.auth.whitelist_trust import Trust
from drimbox.auth.xmlsig import SignatureError, issuer_serial_v2, sign_enveloped, verify_enveloped
from drimbox.config import WhitelistSettings
from drimbox.demo.samples.processes import free_port
from drimbox.sim.certs import SignerKit, WhitelistPki

ANS_SAMPLE = ANS_DATA / "informatif" / "listeblanche" / "LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST_.xml"
NS = "https://github.com/ansforge/DRIM-M_DATA"

LIST = f"""<?xml version="1.0" encoding="UTF-8"?>
<ListeBlancheDRIM-M xmlns="{NS}" versionFormat="1.0.0">
  <DateDeGeneration>2026-01-02T10:00:00Z</DateDeGeneration>
  <ListeDomaines>
    <Domaine><Identifiant>1</Identifiant><db>db1.111.mesimagesmedicales.fr</db><vi>vi1.111.mesimagesmedicales.fr</vi>
      <Denomination>Operateur 01 test</Denomination>
      <DNCertificatOperateur>CN=db1.111.mesimagesmedicales.fr,OU=31598513500187,O=editeur,ST=Paris (75),C=FR</DNCertificatOperateur>
    </Domaine>
    <Domaine><Identifiant>9</Identifiant><db>127.0.0.1:8080</db><vi>127.0.0.1:8080</vi>
      <Denomination>Source box of the demo</Denomination></Domaine>
    <Domaine><Identifiant>10</Identifiant><db>DB.Example.org:8443</db><vi>vi.example.org</vi>
      <Denomination>Another operator</Denomination></Domaine>
  </ListeDomaines>
</ListeBlancheDRIM-M>
""".encode()


FIXTURES = Path(__file__).parent / "fixtures" / "whitelist"
# The ANS's signed TEST list (DRIM-M_DATA informatif/listeblanche/LISTEBLANCHE_DRIM-M_TEST_SIGNEE.xml), byte for
# byte: published for editors to check their verification against.
ANS_SIGNED = FIXTURES / "LISTEBLANCHE_DRIM-M_TEST_SIGNEE.xml"
ANS_SIGNED_AT = datetime.datetime(2024, 7, 12, 5, 37, 19, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> WhitelistPki:
    return WhitelistPki(tmp_path_factory.mktemp("pki"), "http://127.0.0.1:9/whitelist")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> WhitelistPki:
    return WhitelistPki(tmp_path_factory.mktemp("other-pki"), "http://127.0.0.1:9/whitelist")


@pytest.fixture(scope="module")
def signer(pki: WhitelistPki) -> SignerKit:
    return pki.signer()


def sign(xml: bytes, signer: SignerKit, *, chain: bool = True) -> bytes:
    root = etree.fromstring(xml)
    sign_enveloped(root, signer.key, signer.cert, chain=signer.chain if chain else ())
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def trust_of(pki: WhitelistPki, **kw: object) -> Trust:
    return Trust((pki.root,), **kw)  # type: ignore[arg-type]


def crls_of(pki: WhitelistPki) -> list[x509.CertificateRevocationList]:
    return [x509.load_der_x509_crl(pki.crl(name)) for name in ("root.crl", "org.crl")]


def verify(xml: bytes, pki: WhitelistPki, crls: list[x509.CertificateRevocationList] | None = None) -> Whitelist:
    return verify_whitelist(
        xml, trust=trust_of(pki), require_signature=True, crls=crls_of(pki) if crls is None else crls
    )


def reason(xml: bytes, pki: WhitelistPki, crls: list[x509.CertificateRevocationList] | None = None) -> str:
    with pytest.raises(WhitelistError) as info:
        verify(xml, pki, crls)
    return info.value.reason


def test_signed_list_verifies_and_hosts_and_operators_are_read(pki: WhitelistPki, signer: SignerKit) -> None:
    wl = verify(sign(LIST, signer), pki)
    assert wl.signed and wl.generated_at == "2026-01-02T10:00:00Z"
    assert Endpoint("db1.111.mesimagesmedicales.fr", None) in wl.db and Endpoint("127.0.0.1", 8080) in wl.db
    assert Endpoint("db.example.org", 8443) in wl.db and Endpoint("vi.example.org", None) in wl.vi
    # The operator's certificate DN, compared as X.500 does (attribute by attribute, case and spaces aside).
    listed = x509.Name.from_rfc4514_string(
        "CN=db1.111.mesimagesmedicales.fr,OU=31598513500187,O=editeur,ST=Paris (75),C=FR"
    )
    assert wl.admits_operator(listed)
    assert wl.admits_operator(x509.Name.from_rfc4514_string("CN=DB1.111.mesimagesmedicales.fr,OU=31598513500187,"
                                                            "O=Editeur,ST=Paris  (75),C=fr"))  # fmt: skip
    assert not wl.admits_operator(
        x509.Name.from_rfc4514_string("CN=db1.111.mesimagesmedicales.fr,OU=31598513500187,O=editeur,C=FR")
    )
    assert not wl.admits_operator(
        x509.Name.from_rfc4514_string("CN=evil.example,OU=31598513500187,O=editeur,ST=Paris (75),C=FR")
    )


def test_the_signature_has_the_ans_shape(signer: SignerKit) -> None:
    """What the ANS sample shows: exclusive C14N, RSA-SHA256, the list referenced whole by XPath Filter 2.0, the
    SignedProperties with SigningCertificateV2 (SHA-512) and IssuerSerialV2."""
    root = etree.fromstring(sign(LIST, signer))
    ns = {"ds": "http://www.w3.org/2000/09/xmldsig#", "x": "http://uri.etsi.org/01903/v1.3.2#",
          "f": "http://www.w3.org/2002/06/xmldsig-filter2"}  # fmt: skip
    sig = root[-1]
    assert sig.tag == "{http://www.w3.org/2000/09/xmldsig#}Signature"
    assert sig.xpath("ds:SignedInfo/ds:CanonicalizationMethod/@Algorithm", namespaces=ns) == [
        "http://www.w3.org/2001/10/xml-exc-c14n#"
    ]
    assert sig.xpath("ds:SignedInfo/ds:SignatureMethod/@Algorithm", namespaces=ns) == [
        "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    ]
    assert sig.xpath("ds:SignedInfo/ds:Reference[@URI='']/ds:Transforms/ds:Transform/f:XPath[@Filter='subtract']/text()",
                     namespaces=ns) == ["/descendant::ds:Signature"]  # fmt: skip
    assert sig.xpath("ds:SignedInfo/ds:Reference/@Type", namespaces=ns) == [
        "http://uri.etsi.org/01903#SignedProperties"
    ]
    cert = sig.xpath(".//x:SigningCertificateV2/x:Cert", namespaces=ns)[0]
    assert cert.xpath("x:CertDigest/ds:DigestMethod/@Algorithm", namespaces=ns) == [
        "http://www.w3.org/2001/04/xmlenc#sha512"
    ]
    assert sig.xpath("ds:KeyInfo/ds:X509Data/ds:X509SubjectName/text()", namespaces=ns) == [
        signer.cert.subject.rfc4514_string()
    ]


def test_the_ans_signed_sample_verifies_and_its_signer_is_checked(other_pki: WhitelistPki) -> None:
    """The ANS's own signed list: its signature verifies; its signer has the CN/OU the ANS names; but no configured
    root (the IGC-Santé TEST one is not in the tests) makes it trusted, and its certificate expired in 09/2026."""
    xml = ANS_SIGNED.read_bytes()
    verified = verify_enveloped(xml)
    assert verified.signing_time == "2024-07-12T05:37:19Z"
    subject = verified.signer.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Liste Blanche DRIM-M"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "318751275100020"
    assert "TEST AC IGC-SANTE ELEMENTAIRE ORGANISATIONS" in verified.signer.issuer.rfc4514_string()
    # Our DER IssuerSerialV2 is the one DSS wrote for that certificate.
    assert b"MIGlMIGQpIGNMIGKMQswCQYDVQQGEwJGUjETMBEGA1UECgwKQVNJUC1TQU5URTEX" in xml
    assert base64.b64encode(issuer_serial_v2(verified.signer)) in xml
    some_root = other_pki.root
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(xml, trust=Trust((some_root,)), require_signature=True, now=ANS_SIGNED_AT)
    assert info.value.reason == "untrusted"
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(xml, trust=Trust((some_root,)), require_signature=True,
                         now=datetime.datetime(2026, 9, 13, tzinfo=datetime.UTC))  # fmt: skip
    assert info.value.reason == "expired"
    # Its entries, in the namespace of the signed list, read like the unsigned sample's.
    wl, chain = verify_signed(xml, trust=None, require_signature=False)
    assert not chain and len(wl.db) == 6 and len(wl.operators) == 6
    tampered = xml.replace(b"<db>db1.345.mesimagesmedicales.fr</db>", b"<db>db1.345.evil.example</db>")
    with pytest.raises(SignatureError, match="digest mismatch"):
        verify_enveloped(tampered)


@pytest.mark.parametrize(("kind", "expected"), [
    ("untrusted", "untrusted"),  # same names as the simulated IGC-Santé, other keys
    ("revoked", "revoked"),
    ("wrong_cn", "wrong_signer"),
    ("wrong_ou", "wrong_signer"),
    ("expired", "expired"),
])  # fmt: skip
def test_a_list_signed_by_a_flawed_signer_is_refused(pki: WhitelistPki, kind: str, expected: str) -> None:
    assert reason(sign(LIST, pki.signer(kind)), pki) == expected


def test_the_intermediate_may_come_from_the_configuration(pki: WhitelistPki, signer: SignerKit) -> None:
    """The ANS's KeyInfo carries the signer only: the ORG CA then comes from whitelist.intermediates."""
    alone = sign(LIST, signer, chain=False)
    assert reason(alone, pki) == "untrusted"
    wl = verify_whitelist(alone, trust=Trust((pki.root,), (pki.org,)), require_signature=True, crls=crls_of(pki))
    assert wl.signed
    # Intermediates help build the path; they are not trusted by themselves.
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(alone, trust=Trust((), (pki.org,)), require_signature=True, crls=crls_of(pki))
    assert info.value.reason == "untrusted"


def test_revocation_needs_current_crls(pki: WhitelistPki, other_pki: WhitelistPki, signer: SignerKit) -> None:
    signed = sign(LIST, signer)
    assert reason(signed, pki, crls=[]) == "revocation_unknown"
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(signed, trust=trust_of(pki), require_signature=True, crls=crls_of(pki)[:1])  # no ORG CRL
    assert info.value.reason == "revocation_unknown"
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=8)  # both CRLs past their next update
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(signed, trust=trust_of(pki), require_signature=True, crls=crls_of(pki), now=later)
    assert info.value.reason == "revocation_unknown"
    # A CRL with the right issuer name but signed by another key is not the ORG CA's.
    forged = [x509.load_der_x509_crl(pki.crl("root.crl")), x509.load_der_x509_crl(other_pki.crl("org.crl"))]
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(signed, trust=trust_of(pki), require_signature=True, crls=forged)
    assert info.value.reason == "revocation_unknown"
    # Revocation checks off (an operator's explicit choice): the chain still counts.
    assert verify_whitelist(signed, trust=trust_of(pki, check_revocation=False), require_signature=True).signed


def test_an_intermediate_without_a_distribution_point(pki: WhitelistPki, signer: SignerKit) -> None:
    """The signer always needs its CRL; an intermediate that names no CRL point is not asked for one."""
    from drimbox.sim import certs

    # The same ORG CA (same key and name), reissued without a CRL distribution point.
    org_key, root_key = pki._org_key, pki._root_key
    bare_org = certs._ca(pki.org.subject, org_key, pki.root.subject, root_key, None, 30)
    alone = sign(LIST, signer, chain=False)
    trust = Trust((pki.root,), (bare_org,))
    org_crl = [x509.load_der_x509_crl(pki.crl("org.crl"))]
    assert verify_whitelist(alone, trust=trust, require_signature=True, crls=org_crl).signed
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(alone, trust=trust, require_signature=True, crls=[x509.load_der_x509_crl(pki.crl("root.crl"))])
    assert info.value.reason == "revocation_unknown"
    # The ORG CA as the simulator issues it names its CRL point: then the root's CRL is needed too.
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(alone, trust=Trust((pki.root,), (pki.org,)), require_signature=True, crls=org_crl)
    assert info.value.reason == "revocation_unknown"


def test_tampered_lists_are_refused(pki: WhitelistPki, signer: SignerKit) -> None:
    signed = sign(LIST, signer)
    cases = {
        "host changed": signed.replace(b"<db>db1.111.mesimagesmedicales.fr</db>", b"<db>evil.example</db>"),
        "Domaine added": signed.replace(
            b"</ListeDomaines>", b"<Domaine><db>evil.example</db></Domaine></ListeDomaines>"
        ),
        "operator changed": signed.replace(b"OU=31598513500187", b"OU=31598513500188"),
        "date changed": signed.replace(b"2026-01-02T10:00:00Z", b"2027-01-02T10:00:00Z"),
    }
    for name, tampered in cases.items():
        assert tampered != signed, name
        assert reason(tampered, pki) == "bad_signature", name
    root = etree.fromstring(signed)
    value = root[-1].find("{http://www.w3.org/2000/09/xmldsig#}SignatureValue")
    assert value is not None and value.text
    value.text = ("A" if value.text[0] != "A" else "B") + value.text[1:]
    assert reason(etree.tostring(root), pki) == "bad_signature"


def test_signature_wrapping_and_foreign_shapes_are_refused(pki: WhitelistPki, signer: SignerKit) -> None:
    signed = sign(LIST, signer)
    root = etree.fromstring(signed)
    signature = root[-1]
    # A second signature, or the signature moved into a Domaine (where its subtraction would hide content).
    twice = etree.fromstring(signed)
    twice.append(etree.fromstring(etree.tostring(signature)))
    assert reason(etree.tostring(twice), pki) == "bad_signature"
    moved = etree.fromstring(signed)
    moved.find("{*}ListeDomaines/{*}Domaine").append(moved[-1])  # type: ignore[union-attr]
    assert reason(etree.tostring(moved), pki) == "bad_signature"
    # Another signer's certificate slipped into KeyInfo: the signed SigningCertificateV2 digest does not match it.
    other = pki.signer()
    swapped = signed.replace(
        base64.b64encode(signer.cert.public_bytes(serialization.Encoding.DER)),
        base64.b64encode(other.cert.public_bytes(serialization.Encoding.DER)))  # fmt: skip
    assert swapped != signed and reason(swapped, pki) == "bad_signature"
    # Plain XML-DSig (no XAdES SignedProperties) is not the ANS's XAdES-BASELINE-B.
    from signxml.algorithms import SignatureMethod
    from signxml.signer import XMLSigner

    key_pem = signer.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())  # fmt: skip
    plain = XMLSigner(signature_algorithm=SignatureMethod.RSA_SHA256).sign(
        etree.fromstring(LIST), key=key_pem, cert=signer.cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    assert reason(etree.tostring(plain), pki) == "bad_signature"


def test_a_comment_cannot_change_what_is_read(pki: WhitelistPki, signer: SignerKit) -> None:
    """Comments are outside the signed canonical form: one inside <db> must not split the host a reader sees."""
    signed = sign(LIST, signer)
    commented = signed.replace(
        b"<db>db1.111.mesimagesmedicales.fr</db>", b"<db>db1.111<!-- x -->.mesimagesmedicales.fr</db>"
    )
    assert commented != signed
    wl = verify(commented, pki)
    assert Endpoint("db1.111.mesimagesmedicales.fr", None) in wl.db and Endpoint("db1.111", None) not in wl.db


def test_unsigned_list_refused_when_a_signature_is_required(pki: WhitelistPki, signer: SignerKit) -> None:
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(LIST, trust=trust_of(pki), require_signature=True)
    assert info.value.reason == "unsigned"
    wl = verify_whitelist(LIST, trust=None, require_signature=False)
    assert not wl.signed and Endpoint("127.0.0.1", 8080) in wl.db
    # A signed list with no root to check it against is not trusted.
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(sign(LIST, signer), trust=None, require_signature=True)
    assert info.value.reason == "untrusted"


@pytest.mark.skipif(not ANS_SAMPLE.exists(), reason=f"ANS data not found at {ANS_DATA}")
def test_the_ans_sample_list_parses() -> None:
    wl = verify_whitelist(ANS_SAMPLE.read_bytes(), trust=None, require_signature=False)
    assert len(wl.db) == 6 and Endpoint("db2.867.mesimagesmedicales.fr", None) in wl.db
    assert wl.allows("https://db1.345.mesimagesmedicales.fr/dicom-web/studies/1.2.3/series/4.5.6")


def test_hostile_xml_is_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        b"<ListeBlancheDRIM-M><ListeDomaines><Domaine><db>&b;</db></Domaine></ListeDomaines></ListeBlancheDRIM-M>"
    )
    wl = verify_whitelist(bomb, trust=None, require_signature=False)
    assert all("aaaa" not in entry.host for entry in wl.db)  # entities are not expanded
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(b"<not-xml", trust=None, require_signature=False)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
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
    ],
)
def test_host_and_port_rules(url: str, allowed: bool) -> None:
    wl = verify_whitelist(LIST, trust=None, require_signature=False)
    assert wl.allows(url) is allowed


def test_viewer_role() -> None:
    wl = verify_whitelist(LIST, trust=None, require_signature=False)
    assert wl.allows("https://vi1.111.mesimagesmedicales.fr/viewer", role="vi")
    assert not wl.allows("https://vi1.111.mesimagesmedicales.fr/viewer", role="db")
    assert wl.allows("https://vi.example.org/x", role="any")


# --- the fetching side -----------------------------------------------------------------------------


@dataclass
class ListServer:
    url: str
    pki: WhitelistPki
    body: bytes = b""
    hits: int = 0
    crl_hits: list[str] = field(default_factory=list)
    up: bool = True
    crls_up: bool = True
    ca_hits: list[str] = field(default_factory=list)
    cas_up: bool = True

    def settings(self, tmp: Path, **kw: object) -> WhitelistSettings:
        roots = tmp / "roots.pem"
        roots.write_bytes(self.pki.root.public_bytes(serialization.Encoding.PEM))
        values: dict[str, object] = {"url": self.url + "/whitelist", "trust_roots": str(roots), **kw}
        return WhitelistSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def list_server(tmp_path: Path) -> AsyncIterator[ListServer]:
    """The list and the CRLs at their distribution points (this server), as the ANS and IGC-Santé publish them."""
    port = free_port()
    pki = WhitelistPki(tmp_path / "pki", f"http://127.0.0.1:{port}")
    server = ListServer(f"http://127.0.0.1:{port}", pki)
    server.body = sign(LIST, pki.signer())

    async def whitelist(request: web.Request) -> web.Response:
        server.hits += 1
        if not server.up:
            return web.Response(status=503)
        return web.Response(body=server.body, content_type="application/xml")

    async def certificate(request: web.Request) -> web.Response:
        return web.Response(
            body=pki.root.public_bytes(serialization.Encoding.PEM), content_type="application/x-pem-file"
        )

    async def crl(request: web.Request) -> web.Response:
        server.crl_hits.append(request.match_info["name"])
        if not server.crls_up:
            return web.Response(status=404)
        return web.Response(body=pki.crl(request.match_info["name"]), content_type="application/pkix-crl")

    async def ca(request: web.Request) -> web.Response:
        server.ca_hits.append(request.match_info["name"])
        if not server.cas_up:
            return web.Response(status=404)
        return web.Response(body=pki.ca_certificate(request.match_info["name"]), content_type="application/pkix-cert")

    app = web.Application()
    app.add_routes([web.get("/whitelist", whitelist), web.get("/whitelist/certificate", certificate),
                    web.get("/crl/{name}", crl), web.get("/ca/{name}", ca)])  # fmt: skip
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


async def test_fetch_refresh_and_fail_closed(list_server: ListServer, tmp_path: Path) -> None:
    clock = Clock()
    wl = AnsWhitelist(list_server.settings(tmp_path, refresh_interval=3600.0, max_stale=7200.0), clock=clock)
    try:
        assert not wl.is_allowed("http://127.0.0.1:8080/x")  # nothing loaded yet
        assert await wl.check("http://127.0.0.1:8080/dicom-web/studies/1")
        assert not await wl.check("http://127.0.0.1:9999/x")
        assert list_server.hits == 1  # cached between refreshes
        # Revocation from each certificate's distribution point: the ORG CA's CRL (signer), the root's (ORG CA).
        assert sorted(list_server.crl_hits) == ["org.crl", "root.crl"]
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


async def test_the_ans_shape_signer_only_finds_its_issuer_at_its_ca_issuers(
    list_server: ListServer, tmp_path: Path
) -> None:
    """KeyInfo with the signer only (the ANS's list): the ORG CA is fetched from the signer's caIssuers; it only helps
    build the path to the configured root."""
    list_server.body = sign(LIST, list_server.pki.signer(), chain=False)
    wl = AnsWhitelist(list_server.settings(tmp_path))
    try:
        assert (await wl.refresh()).signed
        assert list_server.ca_hits == ["org.cer"]
    finally:
        await wl.close()
    list_server.cas_up = False
    unreachable = AnsWhitelist(list_server.settings(tmp_path))
    configured = tmp_path / "intermediates.pem"
    configured.write_bytes(list_server.pki.org.public_bytes(serialization.Encoding.PEM))
    from_config = AnsWhitelist(list_server.settings(tmp_path, intermediates=str(configured)))
    try:
        with pytest.raises(WhitelistError) as info:
            await unreachable.refresh()
        assert info.value.reason == "untrusted"
        assert (await from_config.refresh()).signed
    finally:
        await unreachable.close()
        await from_config.close()


async def test_no_trust_on_first_use_unless_asked(list_server: ListServer) -> None:
    """A root fetched from the network is trusted only when whitelist.trust_on_first_use says so (the simulator)."""
    cert_url = list_server.url + "/whitelist/certificate"
    default = AnsWhitelist(WhitelistSettings(url=list_server.url + "/whitelist", certificate_url=cert_url))
    opted_in = AnsWhitelist(WhitelistSettings(url=list_server.url + "/whitelist", certificate_url=cert_url,
                                              trust_on_first_use=True))  # fmt: skip
    try:
        with pytest.raises(WhitelistError) as info:
            await default.refresh()
        assert info.value.reason == "untrusted" and "trust_roots" in str(info.value)
        assert not await default.check("http://127.0.0.1:8080/x")
        assert (await opted_in.refresh()).signed
        assert await opted_in.check("http://127.0.0.1:8080/x")
    finally:
        await default.close()
        await opted_in.close()


async def test_crls_from_a_file_or_the_distribution_points(list_server: ListServer, tmp_path: Path) -> None:
    crl_file = tmp_path / "igc.crl.pem"
    crl_file.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in crls_of(list_server.pki)))
    list_server.crls_up = False
    from_file = AnsWhitelist(list_server.settings(tmp_path, crl=str(crl_file)))
    unreachable = AnsWhitelist(list_server.settings(tmp_path))
    try:
        assert (await from_file.refresh()).signed
        assert list_server.crl_hits == []  # the configured CRLs cover the chain: nothing fetched
        with pytest.raises(WhitelistError) as info:
            await unreachable.refresh()  # no CRL anywhere: revocation unknown, refused (fail closed)
        assert info.value.reason == "revocation_unknown" and list_server.crl_hits
    finally:
        await from_file.close()
        await unreachable.close()


@pytest.mark.parametrize(
    ("kind", "expected"), [("revoked", "revoked"), ("untrusted", "untrusted"), ("expired", "expired")]
)
async def test_a_flawed_signer_from_the_server_leaves_no_list(
    list_server: ListServer, tmp_path: Path, kind: str, expected: str
) -> None:
    list_server.body = sign(LIST, list_server.pki.signer(kind))
    wl = AnsWhitelist(list_server.settings(tmp_path))
    try:
        with pytest.raises(WhitelistError) as info:
            await wl.refresh()
        assert info.value.reason == expected
        assert not await wl.check("http://127.0.0.1:8080/x") and wl.current is None
    finally:
        await wl.close()


async def test_tampered_list_from_the_server(list_server: ListServer, tmp_path: Path) -> None:
    list_server.body = list_server.body.replace(b"127.0.0.1:8080", b"127.0.0.1:8081")
    wl = AnsWhitelist(list_server.settings(tmp_path))
    try:
        with pytest.raises(WhitelistError) as info:
            await wl.refresh()
        assert info.value.reason == "bad_signature"
        assert not await wl.check("http://127.0.0.1:8081/x")
    finally:
        await wl.close()


async def test_unsigned_list_from_the_server(list_server: ListServer, tmp_path: Path) -> None:
    list_server.body = LIST
    strict = AnsWhitelist(list_server.settings(tmp_path))
    lenient = AnsWhitelist(WhitelistSettings(url=list_server.url + "/whitelist", require_signature=False))
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
