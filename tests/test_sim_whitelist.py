"""Simulated ANS whitelist: the ANS format and signature shape, its simulated IGC-Santé chain and CRLs, flawed signers."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID
from lxml import etree

from conformance.ans import ANS_DATA
from drimbox.auth.whitelist import WhitelistError, verify_whitelist
from drimbox.auth.whitelist_trust import Trust, ca_issuer_urls, crl_urls
from drimbox.sim.whitelist import NS
from tests.test_sim_psc_support import RunningPsc, running_psc

pytestmark = pytest.mark.sim

ANS_SAMPLE = ANS_DATA / "informatif" / "listeblanche" / "LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST_.xml"
ANS_SIGNED = Path(__file__).parent / "fixtures" / "whitelist" / "LISTEBLANCHE_DRIM-M_TEST_SIGNEE.xml"
DS = "http://www.w3.org/2000/09/xmldsig#"
FIELDS = ("Identifiant", "db", "vi", "Denomination", "DNCertificatOperateur", "SupportContact", "DateMAJ")
# The signed ANS list has it, the older unsigned sample not.
OPTIONAL = ("ResponsableContact",)


def parse_whitelist(data: bytes) -> tuple[str, list[dict[str, str]]]:
    """(DateDeGeneration, domains): a strict reader of the ANS format (either published namespace)."""
    root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    assert etree.QName(root).localname == "ListeBlancheDRIM-M" and root.get("versionFormat") == "1.0.0"
    ns = etree.QName(root).namespace
    generated = root.findtext(f"{{{ns}}}DateDeGeneration")
    assert generated
    domains = []
    for domain in root.iterfind(f"{{{ns}}}ListeDomaines/{{{ns}}}Domaine"):
        fields = {etree.QName(child).localname: (child.text or "").strip() for child in domain}
        assert set(FIELDS) <= set(fields) <= set(FIELDS + OPTIONAL), fields
        domains.append(fields)
    return generated, domains


def fetch(base: str, path: str) -> requests.Response:
    response = requests.get(f"{base}{path}" if path.startswith("/") else path, timeout=10)
    assert response.status_code == 200, response.text
    return response


@dataclass
class Served:
    signed: bytes
    root: x509.Certificate  # /whitelist/certificate
    intermediates: list[x509.Certificate]  # at the signer's caIssuers
    crls: list[x509.CertificateRevocationList]  # at the chain's CRL distribution points

    @property
    def trust(self) -> Trust:
        return Trust((self.root,), tuple(self.intermediates))


async def served(psc: RunningPsc) -> Served:
    """What a box finds: the signed list, the root, and what the certificates point at (issuer, CRLs)."""
    signed = (await asyncio.to_thread(fetch, psc.base, "/whitelist")).content
    root = x509.load_pem_x509_certificate((await asyncio.to_thread(fetch, psc.base, "/whitelist/certificate")).content)
    carried = [x509.load_der_x509_certificate(base64.b64decode(e.text or ""))
               for e in etree.fromstring(signed).iter(f"{{{DS}}}X509Certificate")]  # fmt: skip
    issuers = [x509.load_der_x509_certificate((await asyncio.to_thread(fetch, psc.base, url)).content)
               for cert in carried for url in ca_issuer_urls(cert)]  # fmt: skip
    urls = sorted({url for cert in carried + issuers for url in crl_urls(cert)})
    crls = [x509.load_der_x509_crl((await asyncio.to_thread(fetch, psc.base, url)).content) for url in urls]
    return Served(signed, root, issuers, crls)


@pytest.mark.skipif(not ANS_SAMPLE.exists(), reason=f"ANS data not found at {ANS_DATA}")
def test_the_reader_parses_the_ans_sample() -> None:
    generated, domains = parse_whitelist(ANS_SAMPLE.read_bytes())
    assert generated == "2024-04-22T11:08:12Z" and len(domains) == 6
    assert domains[0]["db"] == "db1.111.mesimagesmedicales.fr" and domains[0]["vi"] == "vi1.111.mesimagesmedicales.fr"


def test_the_reader_parses_the_ans_signed_list_and_the_simulator_uses_its_namespace() -> None:
    _, domains = parse_whitelist(ANS_SIGNED.read_bytes())
    assert len(domains) == 6 and domains[0]["ResponsableContact"]
    assert etree.QName(etree.fromstring(ANS_SIGNED.read_bytes())).namespace == NS


async def test_signed_whitelist_verifies_up_to_the_served_root_with_the_served_crls(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        got = await served(psc)
        unsigned = (await asyncio.to_thread(fetch, psc.base, "/whitelist/unsigned")).content
    signed, root = got.signed, got.root
    assert root.subject == root.issuer  # a self-signed root, the stand-in for the IGC-Santé TEST root
    assert len(got.intermediates) == 1 and len(got.crls) == 2  # the ORG CA; its CRL and the root's
    wl = verify_whitelist(signed, trust=got.trust, require_signature=True, crls=got.crls)
    assert wl.signed and len(wl.db) == 2
    # KeyInfo carries the signer only, as the ANS's list: without its issuer the chain cannot be built.
    keyinfo = etree.fromstring(signed)[-1].findall(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate")
    assert len(keyinfo) == 1
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(signed, trust=Trust((root,)), require_signature=True, crls=got.crls)
    assert info.value.reason == "untrusted"
    # The signer as the ANS's: CN, OU, a signing key usage; CRL point and caIssuers under the simulator.
    signer = x509.load_der_x509_certificate(base64.b64decode(keyinfo[0].text or ""))
    assert signer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Liste Blanche DRIM-M"
    assert signer.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "318751275100020"
    usage = signer.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    assert isinstance(usage, x509.KeyUsage) and usage.digital_signature and usage.content_commitment
    assert crl_urls(signer) == [f"{psc.base}/whitelist/crl/org.crl"]
    assert ca_issuer_urls(signer) == [f"{psc.base}/whitelist/ca/org.cer"]
    # Enveloped, last child; without its signature the list is the unsigned one.
    tree = etree.fromstring(signed)
    assert tree[-1].tag == f"{{{DS}}}Signature"
    tree.remove(tree[-1])
    assert parse_whitelist(etree.tostring(tree)) == parse_whitelist(unsigned)
    # The shape of the ANS's: the list referenced whole through XPath Filter 2.0, exclusive C14N.
    assert b'Filter="subtract">/descendant::ds:Signature<' in signed and b"xml-exc-c14n#" in signed


async def test_whitelist_lists_the_configured_hosts_and_operator_dns(tmp_path: Path) -> None:
    dn = "CN=box-a.example,OU=31598513500187,O=editeur,ST=Paris (75),C=FR"
    async with running_psc(tmp_path, whitelist_hosts=["box-a.example", "10.0.0.7"], whitelist_operator_dns=[dn]) as psc:
        unsigned = (await asyncio.to_thread(fetch, psc.base, "/whitelist/unsigned")).content
    generated, domains = parse_whitelist(unsigned)
    assert [(d["Identifiant"], d["db"], d["vi"]) for d in domains] == [
        ("1", "box-a.example", "box-a.example"), ("2", "10.0.0.7", "10.0.0.7"),
    ]  # fmt: skip
    assert [d["DNCertificatOperateur"] for d in domains] == [dn, "CN=10.0.0.7,OU=drimbox-sim,O=drimbox,C=FR"]
    assert all(d["DateMAJ"] == generated for d in domains)
    assert b"Signature" not in unsigned


async def test_default_hosts_are_the_loopback_names(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        _, domains = parse_whitelist((await asyncio.to_thread(fetch, psc.base, "/whitelist")).content)
    # Every port of the loopback names: the test boxes pick theirs at run time (the demo lists exact URLs).
    assert [d["db"] for d in domains] == ["127.0.0.1:*", "localhost:*"]


@pytest.mark.parametrize(("kind", "expected"), [
    ("untrusted", "untrusted"), ("revoked", "revoked"), ("wrong_cn", "wrong_signer"), ("wrong_ou", "wrong_signer"),
    ("expired", "expired"),
])  # fmt: skip
async def test_the_simulator_signs_with_a_flawed_signer_when_told(tmp_path: Path, kind: str, expected: str) -> None:
    async with running_psc(tmp_path, whitelist_signer=kind) as psc:
        got = await served(psc)
    with pytest.raises(WhitelistError) as info:
        verify_whitelist(got.signed, trust=got.trust, require_signature=True, crls=got.crls)
    assert info.value.reason == expected


async def test_the_root_is_kept_across_restarts_and_its_key_is_private(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        first = (await asyncio.to_thread(fetch, psc.base, "/whitelist/certificate")).content
    async with running_psc(tmp_path) as psc:
        got = await served(psc)
    assert got.root == x509.load_pem_x509_certificate(first)  # boxes keep trusting the root they were given
    assert verify_whitelist(got.signed, trust=got.trust, require_signature=True, crls=got.crls).signed
    assert (tmp_path / "whitelist" / "root-key.pem").stat().st_mode & 0o077 == 0


async def test_an_unknown_crl_or_ca_is_404(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        for path in ("/whitelist/crl/other.crl", "/whitelist/ca/other.cer"):
            response = await asyncio.to_thread(requests.get, f"{psc.base}{path}", timeout=10)
            assert response.status_code == 404, path
