"""The simulated DMP refuses an ITI-41 whose submission-set signature is missing, unlinked or does not match."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lxml import etree

from drimbox.xds import mtom, signature
from drimbox.xds import namespaces as ns
from tests.test_sim_dmp_support import (
    KOS_CID,
    KOS_UID,
    NSMAP,
    SIGNATURE_CID,
    add_signature,
    default_credentials,
    find1,
    make_credentials,
    make_kos,
    running_sim,
    submission,
)

SIGNATURE_ERROR = "XDSRepositoryMetadataError"


def _signature_errors(reply_errors: list[tuple[str, str, str]]) -> list[str]:
    return [context for code, context, _ in reply_errors if code == SIGNATURE_ERROR]


async def test_signed_submission_is_registered_with_its_signature(tmp_path: Path) -> None:
    sub = submission()
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
        assert reply.status_type == "Success", reply.errors()
        everything = await sim.documents(signatures=True)
        (sig,) = [d for d in everything if d["typeCode"]["code"] == "E1762"]
        assert (sig["mimeType"], sig["classCode"]["code"], sig["formatCode"]["code"]) == (
            "text/xml", "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "http://www.w3.org/2000/09/xmldsig#")  # fmt: skip
        assert [d["uniqueId"] for d in await sim.documents()] == [KOS_UID]
        stored = await (await sim.client.get(f"/sim/dmp/documents/{sig['uniqueId']}")).read()
    ss_uid = next(ei.get("value") for ei in sub.envelope.iterfind(".//rim:ExternalIdentifier", NSMAP)
                  if ei.get("identificationScheme") == ns.SS_UNIQUE_ID)  # fmt: skip
    verified = signature.verify_submission(stored, ss_uid or "", {KOS_UID: sub.document})
    assert verified.certificate == default_credentials().cert


async def test_unsigned_submission_is_refused(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(submission(), sign=False)
        assert reply.status_type == "Failure"
        (context,) = _signature_errors(reply.errors())
        assert "exactly one signature DocumentEntry" in context
        assert await sim.documents() == []


async def test_signature_over_other_bytes_is_refused(tmp_path: Path) -> None:
    sub = submission()
    other = make_kos(KOS_UID, study_uid="1.2.250.1.213.4.5.2.1.999")
    # Signed over another KOS with the same uniqueId, then sent with the real one: the manifest digest lies.
    envelope, attachments = add_signature(sub.envelope, [mtom.Attachment(KOS_CID, other, "application/dicom")])
    assert attachments is not None
    attachments = [mtom.Attachment(KOS_CID, sub.document, "application/dicom"), attachments[1]]
    async with running_sim(tmp_path) as sim:
        reply = await sim.post("/dmp/repository", envelope, attachments)
        assert reply.status_type == "Failure"
        (context,) = _signature_errors(reply.errors())
        assert f"digest of document {KOS_UID} does not match" in context
        assert await sim.documents() == []


async def test_signature_of_another_structure_is_refused(tmp_path: Path) -> None:
    sub = submission()
    envelope, attachments = add_signature(sub.envelope, sub.documents(), credentials=make_credentials("Other"))
    async with running_sim(tmp_path) as sim:
        reply = await sim.post("/dmp/repository", envelope, attachments)
        (context,) = _signature_errors(reply.errors())
        assert "not the one of the structure that issued the VIHF" in context


async def test_tampered_signature_is_refused(tmp_path: Path) -> None:
    sub = submission()
    envelope, attachments = add_signature(sub.envelope, sub.documents())
    assert attachments is not None
    sig = etree.fromstring(attachments[1].data)
    value = find1(sig, ".//ds:Manifest/ds:Reference/ds:DigestValue")
    value.text = "AAAA" + (value.text or "")[4:]  # the manifest is signed: any change breaks SignedInfo
    data = etree.tostring(sig)
    tampered = [attachments[0], mtom.Attachment(SIGNATURE_CID, data, "text/xml")]
    for eo in envelope.iterfind(".//rim:ExtrinsicObject", NSMAP):
        if eo.get("id") == "Signature01":
            for s in eo.iterfind("rim:Slot", NSMAP):
                if s.get("name") in ("hash", "size"):
                    v = find1(s, "rim:ValueList/rim:Value")
                    v.text = hashlib.sha1(data).hexdigest() if s.get("name") == "hash" else str(len(data))
    async with running_sim(tmp_path) as sim:
        reply = await sim.post("/dmp/repository", envelope, tampered)
        (context,) = _signature_errors(reply.errors())
        assert "does not verify" in context


async def test_signature_not_linked_by_signs_is_refused(tmp_path: Path) -> None:
    sub = submission()
    envelope, attachments = add_signature(sub.envelope, sub.documents())
    for assoc in envelope.iterfind(".//rim:Association", NSMAP):
        if assoc.get("associationType") == "urn:ihe:iti:2007:AssociationType:signs":
            assoc.getparent().remove(assoc)  # type: ignore[union-attr]
    async with running_sim(tmp_path) as sim:
        reply = await sim.post("/dmp/repository", envelope, attachments)
        (context,) = _signature_errors(reply.errors())
        assert "signs" in context
