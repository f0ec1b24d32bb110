"""VIHF SAML assertion: content, a signature a peer can verify, tamper detection, test credentials."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from lxml import etree
from signxml.algorithms import SignatureMethod
from signxml.exceptions import InvalidSignature
from signxml.verifier import SignatureConfiguration, VerifyResult, XMLVerifier

from drimbox.state.credentials import generate_test_credentials
from drimbox.xds import namespaces as ns
from drimbox.xds import query, soap, vihf
from drimbox.xds.metadata import Code
from tests.test_xds_metadata import PATIENT

SAML = f"{{{ns.SAML2}}}"
DS = f"{{{ns.DSIG}}}"
HL7 = "{urn:hl7-org:v3}"


def identity(**overrides: str) -> vihf.VihfIdentity:
    fields = dict(
        professional_id="801234560801", professional_name="Jean BIDEAULT",
        structure_id="101235555", secteur_activite="SA25^1.2.250.1.71.4.2.4",
        lps_id="drimbox", lps_name="drimbox", lps_version="0.1.0", lps_homologation="DRIMBOX-TEST",
    )  # fmt: skip
    fields.update(overrides)
    roles = (Code("10", vihf.PROFESSION_SCHEME, "Medecin"),
             Code("SM44", vihf.SPECIALTY_SCHEME, "Radiodiagnostic"))  # fmt: skip
    return vihf.VihfIdentity(roles=roles, **fields)


@pytest.fixture(scope="module")
def creds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_test_credentials(tmp_path_factory.mktemp("vihf"), "Centre de radiologie Ambroise")


@pytest.fixture(scope="module")
def signer(creds: tuple[Path, Path]) -> vihf.VihfSigner:
    return vihf.VihfSigner.from_files(*creds)


def verify(data: bytes | etree._Element, cert: Path) -> etree._Element:
    config = SignatureConfiguration(
        signature_methods=frozenset({SignatureMethod.RSA_SHA256}),  # nothing weaker is accepted
    )
    result = XMLVerifier().verify(data, x509_cert=cert.read_text(), expect_config=config)
    assert isinstance(result, VerifyResult) and result.signed_xml is not None
    signed: etree._Element = result.signed_xml
    return signed


def attributes(assertion: etree._Element) -> dict[str, list[etree._Element]]:
    found = assertion.iterfind(f"{SAML}AttributeStatement/{SAML}Attribute")
    return {a.get("Name", ""): list(a) for a in found}


def test_signed_assertion_verifies_against_the_certificate(signer: vihf.VihfSigner, creds: tuple[Path, Path]) -> None:
    assertion = signer.issue(identity(), PATIENT)
    signed = verify(etree.tostring(assertion), creds[1])
    assert signed.findtext(f"{SAML}Subject/{SAML}NameID") == "801234560801"
    sig = assertion.find(f"{DS}Signature")
    assert sig is not None
    assert sig.find(f"{DS}SignedInfo/{DS}CanonicalizationMethod").get("Algorithm") == vihf.EXC_C14N  # type: ignore[union-attr]
    ref = sig.find(f"{DS}SignedInfo/{DS}Reference")
    assert ref is not None and ref.get("URI") == "#" + assertion.get("ID", "")
    assert sig.findtext(f"{DS}KeyInfo/{DS}X509Data/{DS}X509Certificate")


@pytest.mark.parametrize(
    "tamper",
    [
        lambda a: a.find(f"{SAML}Subject/{SAML}NameID").__setattr__("text", "899999999999"),
        lambda a: attributes(a)["urn:oasis:names:tc:xacml:2.0:resource:resource-id"][0].__setattr__(
            "text", "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH"),
        lambda a: attributes(a)["Authentification_Mode"][0].__setattr__("text", "INDIRECTE_RENFORCEE"),
        lambda a: a.set("IssueInstant", "2030-01-01T00:00:00.000Z"),
    ],
    ids=["NameID", "resource-id", "mode", "IssueInstant"],
)  # fmt: skip
def test_tampering_breaks_the_signature(signer: vihf.VihfSigner, creds: tuple[Path, Path], tamper: object) -> None:
    assertion = signer.issue(identity(), PATIENT)
    tamper(assertion)  # type: ignore[operator]
    with pytest.raises(InvalidSignature):
        verify(etree.tostring(assertion), creds[1])


def test_another_certificate_does_not_verify(signer: vihf.VihfSigner, tmp_path: Path) -> None:
    _, other_cert = generate_test_credentials(tmp_path, "someone else")
    with pytest.raises(InvalidSignature):
        verify(etree.tostring(signer.issue(identity(), PATIENT)), other_cert)


def test_signature_survives_the_trip_inside_a_soap_envelope(signer: vihf.VihfSigner, creds: tuple[Path, Path]) -> None:
    req = soap.build_request(
        ns.ACTION_ITI18,
        "http://127.0.0.1:8090/dmp/registry",
        query.find_documents_query(PATIENT),
        security=signer.issue(identity(), PATIENT),
    )
    msg = soap.parse_message("application/soap+xml", req.envelope)
    assert msg.header is not None
    found = msg.header.find(f"{{{ns.WSSE}}}Security/{SAML}Assertion")
    assert found is not None
    verify(found, creds[1])


def test_assertion_content(signer: vihf.VihfSigner) -> None:
    a = signer.issue(identity(authentication_mode="INDIRECTE_RENFORCEE"), PATIENT)
    assert [etree.QName(c).localname for c in a] == [
        "Issuer", "Signature", "Subject", "AuthnStatement", "AttributeStatement"]  # fmt: skip
    assert a.get("Version") == "2.0" and a.get("ID", "").startswith("_")  # an NCName, unlike a bare UUID
    assert a.get("IssueInstant", "").endswith("Z")
    issuer = a.find(f"{SAML}Issuer")
    assert issuer is not None
    assert issuer.text == signer.issuer == "CN=Centre de radiologie Ambroise,O=drimbox test,C=FR"
    assert issuer.get("Format") == vihf.X509_SUBJECT_FORMAT
    assert a.findtext(f".//{SAML}AuthnContextClassRef") == vihf.AUTHN_TLS_CLIENT
    attrs = attributes(a)
    texts = {name: [v.text for v in values] for name, values in attrs.items()}
    assert texts["VIHF_Version"] == ["3.0"] and texts["Identifiant_Structure"] == ["101235555"]
    assert texts["Secteur_Activite"] == ["SA25^1.2.250.1.71.4.2.4"] and texts["Ressource_URN"] == ["urn:dmp"]
    assert texts["Authentification_Mode"] == ["INDIRECTE_RENFORCEE"]
    assert texts["urn:oasis:names:tc:xacml:2.0:resource:resource-id"] == [PATIENT]
    assert texts["urn:oasis:names:tc:xspa:1.0:subject:subject-id"] == ["Jean BIDEAULT"]
    assert [texts[k] for k in ("LPS_ID", "LPS_Nom", "LPS_Version", "LPS_ID_HOMOLOGATION_DMP")] == [
        ["drimbox"], ["drimbox"], ["0.1.0"], ["DRIMBOX-TEST"]]  # fmt: skip
    roles = [v.find(f"{HL7}Role") for v in attrs["urn:oasis:names:tc:xacml:2.0:subject:role"]]
    assert [(r.get("code"), r.get("codeSystem"), r.get(f"{{{ns.XSI}}}type")) for r in roles] == [  # type: ignore[union-attr]
        ("10", "1.2.250.1.71.1.2.7", "CE"), ("SM44", "1.2.250.1.71.4.2.5", "CE")]  # fmt: skip
    purpose = attrs["urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"][0].find(f"{HL7}PurposeOfUse")
    assert purpose is not None and (purpose.get("code"), purpose.get("codeSystem")) == (
        "normal", "1.2.250.1.213.1.1.4.248")  # fmt: skip


def test_no_patient_no_resource_id_and_optional_conditions(signer: vihf.VihfSigner) -> None:
    a = signer.issue(identity(), None, validity=timedelta(minutes=5))
    assert "urn:oasis:names:tc:xacml:2.0:resource:resource-id" not in attributes(a)
    cond = a.find(f"{SAML}Conditions")
    assert cond is not None and cond.get("NotBefore", "") < cond.get("NotOnOrAfter", "")


def test_unknown_authentication_mode_is_refused(signer: vihf.VihfSigner) -> None:
    with pytest.raises(vihf.VihfError, match="Authentification_Mode"):
        signer.issue(identity(authentication_mode="CPS"), PATIENT)


def test_test_credentials_are_reused_and_private(tmp_path: Path) -> None:
    key, cert = generate_test_credentials(tmp_path / "creds", "Box A")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    first = key.read_bytes(), cert.read_bytes()
    assert generate_test_credentials(tmp_path / "creds", "Box A") == (key, cert)
    assert (key.read_bytes(), cert.read_bytes()) == first
    other_key, _ = generate_test_credentials(tmp_path / "creds", "Box B")
    assert other_key != key
    cert.write_bytes(b"truncated")  # a broken pair is replaced, not trusted
    generate_test_credentials(tmp_path / "creds", "Box A")
    vihf.VihfSigner.from_files(key, cert)


def test_key_and_certificate_must_match(tmp_path: Path) -> None:
    key_a, _ = generate_test_credentials(tmp_path, "A")
    _, cert_b = generate_test_credentials(tmp_path, "B")
    with pytest.raises(vihf.VihfError, match="does not match"):
        vihf.VihfSigner.from_files(key_a, cert_b)
    with pytest.raises(vihf.VihfError, match="cannot read"):
        vihf.VihfSigner(b"not a key", cert_b.read_bytes())


def test_concurrent_generation_yields_one_matching_pair(tmp_path: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        pairs = list(pool.map(lambda _: generate_test_credentials(tmp_path, "shared"), range(4)))
    assert len(set(pairs)) == 1
    vihf.VihfSigner.from_files(*pairs[0])
