"""Simulated ANS whitelist: the ANS format, a XAdES signature that verifies against /whitelist/certificate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import SignatureConfiguration, XMLVerifier
from signxml.exceptions import InvalidDigest, InvalidSignature
from signxml.xades.xades import XAdESVerifier

from conformance.ans import ANS_DATA
from drimbox.sim.whitelist import NS
from tests.test_sim_dmp_support import make_credentials
from tests.test_sim_psc_support import RunningPsc, running_psc

pytestmark = pytest.mark.sim

ANS_SAMPLE = ANS_DATA / "informatif" / "listeblanche" / "LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST_.xml"
DS = "http://www.w3.org/2000/09/xmldsig#"
FIELDS = ("Identifiant", "db", "vi", "Denomination", "DNCertificatOperateur", "SupportContact", "DateMAJ")


def parse_whitelist(data: bytes) -> tuple[str, list[dict[str, str]]]:
    """(DateDeGeneration, domains): a strict reader of the ANS format, as a box would need one."""
    root = etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
    assert root.tag == f"{{{NS}}}ListeBlancheDRIM-M" and root.get("versionFormat") == "1.0.0"
    generated = root.findtext(f"{{{NS}}}DateDeGeneration")
    assert generated
    domains = []
    for domain in root.iterfind(f"{{{NS}}}ListeDomaines/{{{NS}}}Domaine"):
        fields = {etree.QName(child).localname: (child.text or "").strip() for child in domain}
        assert set(fields) == set(FIELDS), fields
        domains.append(fields)
    return generated, domains


def fetch(psc: RunningPsc, path: str) -> requests.Response:
    response = requests.get(f"{psc.base}{path}", timeout=10)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.skipif(not ANS_SAMPLE.exists(), reason=f"ANS data not found at {ANS_DATA}")
def test_the_reader_parses_the_ans_sample() -> None:
    generated, domains = parse_whitelist(ANS_SAMPLE.read_bytes())
    assert generated == "2024-04-22T11:08:12Z" and len(domains) == 6
    assert domains[0]["db"] == "db1.111.mesimagesmedicales.fr" and domains[0]["vi"] == "vi1.111.mesimagesmedicales.fr"


async def test_signed_whitelist_verifies_against_the_served_certificate(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        signed = await asyncio.to_thread(fetch, psc, "/whitelist")
        cert_pem = (await asyncio.to_thread(fetch, psc, "/whitelist/certificate")).text
        unsigned = (await asyncio.to_thread(fetch, psc, "/whitelist/unsigned")).content
    assert signed.headers["Content-Type"].startswith("application/xml")
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Liste Blanche DRIM-M"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "318751275100020"

    results = XAdESVerifier().verify(signed.content, x509_cert=cert_pem)  # XAdES: data, KeyInfo, SignedProperties
    signed_root = results[0].signed_xml
    assert signed_root is not None and signed_root.tag == f"{{{NS}}}ListeBlancheDRIM-M"
    # A verifier without XAdES support still checks it as plain enveloped XML-DSig (three references).
    XMLVerifier().verify(signed.content, x509_cert=cert_pem, expect_config=SignatureConfiguration(expect_references=3))

    # Only what the signature covers is trusted: the verified tree, without the signature, is the unsigned list.
    verified = etree.tostring(signed_root)
    assert parse_whitelist(verified) == parse_whitelist(unsigned)
    root = etree.fromstring(signed.content)
    assert root[-1].tag == f"{{{DS}}}Signature"  # enveloped: the last child of the list


async def test_whitelist_lists_the_configured_hosts(tmp_path: Path) -> None:
    async with running_psc(tmp_path, whitelist_hosts=["box-a.example", "10.0.0.7"]) as psc:
        unsigned = (await asyncio.to_thread(fetch, psc, "/whitelist/unsigned")).content
    generated, domains = parse_whitelist(unsigned)
    assert [(d["Identifiant"], d["db"], d["vi"]) for d in domains] == [
        ("1", "box-a.example", "box-a.example"), ("2", "10.0.0.7", "10.0.0.7"),
    ]  # fmt: skip
    assert all(d["DateMAJ"] == generated for d in domains)
    assert b"Signature" not in unsigned


async def test_default_hosts_are_the_loopback_names(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        _, domains = parse_whitelist((await asyncio.to_thread(fetch, psc, "/whitelist")).content)
    # Every port of the loopback names: the test boxes pick theirs at run time (the demo lists exact URLs).
    assert [d["db"] for d in domains] == ["127.0.0.1:*", "localhost:*"]


async def test_tampering_or_another_key_breaks_the_signature(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        signed = (await asyncio.to_thread(fetch, psc, "/whitelist")).content
        cert_pem = (await asyncio.to_thread(fetch, psc, "/whitelist/certificate")).text
    tampered = signed.replace(b"<db>localhost:*</db>", b"<db>evil.example</db>")
    assert tampered != signed
    with pytest.raises(InvalidDigest):
        XAdESVerifier().verify(tampered, x509_cert=cert_pem)
    root = etree.fromstring(signed)
    added = etree.fromstring(etree.tostring(root.find(f"{{{NS}}}ListeDomaines/{{{NS}}}Domaine")))
    root.find(f"{{{NS}}}ListeDomaines").append(added)  # an extra Domaine slipped in
    with pytest.raises(InvalidDigest):
        XAdESVerifier().verify(etree.tostring(root), x509_cert=cert_pem)
    stranger = make_credentials("Liste Blanche DRIM-M").cert_pem.decode()
    with pytest.raises(InvalidSignature):
        XAdESVerifier().verify(signed, x509_cert=stranger)


async def test_signing_certificate_is_kept_across_restarts(tmp_path: Path) -> None:
    async with running_psc(tmp_path) as psc:
        first = (await asyncio.to_thread(fetch, psc, "/whitelist/certificate")).text
    async with running_psc(tmp_path) as psc:
        again = (await asyncio.to_thread(fetch, psc, "/whitelist/certificate")).text
        signed = (await asyncio.to_thread(fetch, psc, "/whitelist")).content
    assert first == again
    XAdESVerifier().verify(signed, x509_cert=first)
    assert (tmp_path / "whitelist" / "signing-key.pem").stat().st_mode & 0o077 == 0
