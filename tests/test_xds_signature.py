"""The submission-set signature: its XAdES/DSG shape, its verification, and its DocumentEntry in the ITI-41."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from drimbox.state.credentials import generate_test_credentials
from drimbox.xds import metadata as m
from drimbox.xds import namespaces as ns
from drimbox.xds import query as q
from drimbox.xds import schema
from drimbox.xds.signature import (
    MANIFEST_ID,
    XADES_NS,
    SignatureError,
    SignedDocument,
    sign_submission,
    verify_submission,
)
from drimbox.xds.vihf import VihfSigner
from tests.test_xds_metadata import KOS, make_entry, make_submission

DS = f"{{{ns.DSIG}}}"
SS_UID = "1.2.250.1.999.1.1.4.77"
KOS_UID = "1.2.250.1.999.1.1.2.103.1"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> VihfSigner:
    return VihfSigner.from_files(*generate_test_credentials(tmp_path_factory.mktemp("sig"), "sig test"))


def signed(signer: VihfSigner, docs: dict[str, bytes] | None = None, ss_uid: str = SS_UID) -> bytes:
    docs = {KOS_UID: KOS} if docs is None else docs
    return sign_submission(signer.key, signer.certificate, "sig-1", ss_uid,
                           [SignedDocument(u, d) for u, d in docs.items()])  # fmt: skip


def test_signature_has_the_dsg_shape(signer: VihfSigner) -> None:
    root = etree.fromstring(signed(signer))
    assert root.tag == DS + "Signature" and root.get("Id") == "sig-1"
    refs = {r.get("URI"): r.get("Type") for r in root.iterfind(f"{DS}SignedInfo/{DS}Reference")}
    assert refs == {f"#{MANIFEST_ID}": "http://www.w3.org/2000/09/xmldsig#Manifest",
                    "#S0-SignedProperties": "http://uri.etsi.org/01903#SignedProperties"}  # fmt: skip
    manifest = {r.get("URI"): r.findtext(f"{DS}DigestValue") for r in root.iterfind(f".//{DS}Manifest/{DS}Reference")}
    assert manifest[f"urn:oid:{KOS_UID}"] == base64.b64encode(hashlib.sha256(KOS).digest()).decode()
    assert f"urn:oid:{SS_UID}" in manifest
    x = f"{{{XADES_NS}}}"
    props = root.find(f".//{x}SignedProperties")
    assert props is not None and props.get("Id") == "S0-SignedProperties"
    assert props.findtext(f".//{x}CommitmentTypeId/{x}Identifier") == "urn:oid:1.2.840.10065.1.12.1.14"
    assert props.findtext(f".//{x}IssuerSerial/{DS}X509SerialNumber") == str(signer.certificate.serial_number)


def test_signature_verifies_against_the_documents(signer: VihfSigner) -> None:
    verified = verify_submission(signed(signer), SS_UID, {KOS_UID: KOS})
    assert verified.certificate == signer.certificate and set(verified.digests) == {KOS_UID}


@pytest.mark.parametrize(
    ("ss_uid", "docs", "message"),
    [
        (SS_UID, {KOS_UID: KOS + b"x"}, "does not match the document submitted"),
        ("1.2.3", {KOS_UID: KOS}, "does not name this submission set"),
        (SS_UID, {KOS_UID: KOS, "1.2.9": b"other"}, "does not cover document 1.2.9"),
        (SS_UID, {}, "names documents that are not in the submission"),
    ],
    ids=["other bytes", "other submission", "uncovered document", "extra reference"],
)
def test_signature_that_does_not_fit_is_refused(
    signer: VihfSigner, ss_uid: str, docs: dict[str, bytes], message: str
) -> None:
    with pytest.raises(SignatureError, match=message):
        verify_submission(signed(signer), ss_uid, docs)


def test_altered_signature_is_refused(signer: VihfSigner, tmp_path: Path) -> None:
    root = etree.fromstring(signed(signer))
    ref = root.find(f".//{DS}Manifest/{DS}Reference")
    assert ref is not None
    ref.set("URI", "urn:oid:1.2.250.1.999.666")
    with pytest.raises(SignatureError, match="does not verify"):
        verify_submission(etree.tostring(root), SS_UID, {"1.2.250.1.999.666": KOS})
    # Signed by another key with this certificate in KeyInfo: the signature value does not match.
    other = VihfSigner.from_files(*generate_test_credentials(tmp_path, "someone else"))
    forged = etree.fromstring(
        sign_submission(other.key, other.certificate, "s", SS_UID, [SignedDocument(KOS_UID, KOS)])
    )
    cert = forged.find(f".//{DS}X509Certificate")
    assert cert is not None
    cert.text = base64.b64encode(signer.certificate.public_bytes(Encoding.DER)).decode()
    with pytest.raises(SignatureError):
        verify_submission(etree.tostring(forged), SS_UID, {KOS_UID: KOS})


def test_expired_signing_certificate_is_refused(signer: VihfSigner) -> None:
    later = datetime.now(UTC) + timedelta(days=365 * 20)
    with pytest.raises(SignatureError, match="not valid at this time"):
        verify_submission(signed(signer), SS_UID, {KOS_UID: KOS}, now=later)


def test_not_a_signature_is_refused() -> None:
    for data, message in ((b"<x/>", "not a ds:Signature"), (b"<x", "not well-formed")):
        with pytest.raises(SignatureError, match=message):
            verify_submission(data, SS_UID, {KOS_UID: KOS})


def test_iti41_carries_the_signature_entry_as_the_ans_sample(signer: VihfSigner) -> None:
    entry, ss = make_entry(), make_submission()
    xml = signed(signer, {entry.unique_id: KOS}, ss.unique_id)
    sig = m.SubmissionSignature("1.2.250.1.999.1.1.5.1", xml)
    payload, attachments = m.build_provide_and_register(entry, ss, KOS, signature=sig)
    schema.validate(payload)  # the ebRS/XDS-b schemas accept the request as built
    R = f"{{{ns.RIM}}}"
    eos = {eo.get("id"): eo for eo in payload.iterfind(f".//{R}ExtrinsicObject")}
    info = q.parse_document_entry(eos[sig.entry_uuid])
    assert (info.mime_type, info.language, info.unique_id) == ("text/xml", "art", sig.unique_id)
    assert (info.class_code, info.type_code, info.format_code) == (
        m.SIGNATURE_CLASS_CODE, m.SIGNATURE_TYPE_CODE, m.SIGNATURE_FORMAT_CODE)  # fmt: skip
    assert [c.code for c in info.event_codes] == ["1.2.840.10065.1.12.1.14"]
    assert info.hash == hashlib.sha1(xml).hexdigest() and info.size == len(xml)
    assert info.patient_id == entry.patient_id and info.reference_ids == entry.reference_ids
    assocs = {(a.get("associationType"), a.get("sourceObject"), a.get("targetObject"))
              for a in payload.iterfind(f".//{R}Association")}  # fmt: skip
    assert (m.ASSOC_SIGNS, sig.entry_uuid, ss.entry_uuid) in assocs
    assert (ns.ASSOC_HAS_MEMBER, ss.entry_uuid, sig.entry_uuid) in assocs
    docs = {d.get("id"): d for d in payload.iterfind(f"{{{ns.XDSB}}}Document")}
    assert set(docs) == {entry.entry_uuid, sig.entry_uuid}
    assert [(a.content_type, a.data) for a in attachments] == [("application/dicom", KOS), ("text/xml", xml)]
