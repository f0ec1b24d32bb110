"""ITI-41 on the simulated DMP: what it registers, and every rule it refuses with its IHE error code."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from drimbox.sim import DMP_REPOSITORY_UNIQUE_ID
from drimbox.xds import mtom, signature
from drimbox.xds import namespaces as ns
from tests.test_sim_dmp_support import (
    ANS_SAMPLES,
    INS,
    KOS_UID,
    NSMAP,
    OTHER_PATIENT,
    PATIENT,
    Submission,
    build_vihf,
    classification,
    default_credentials,
    entry,
    find1,
    make_kos,
    running_sim,
    set_ei,
    set_slot,
    slot,
    submission,
    with_vihf,
)

METADATA = "XDSRegistryMetadataError"


async def test_kos_submitted_with_mtom_is_registered_and_inspectable(tmp_path: Path) -> None:
    sub = submission()
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
        assert reply.status == 200
        assert reply.status_type == "Success", reply.errors()
        assert reply.action == ns.ACTION_ITI41_RESPONSE
        message_id = find1(sub.envelope, ".//wsa:MessageID").text
        assert find1(reply.envelope, "soap:Header/wsa:RelatesTo").text == message_id
        assert reply.content_type.startswith("multipart/related")  # answers MTOM to MTOM
        [doc] = await sim.documents()
        assert doc["uniqueId"] == KOS_UID
        assert doc["status"] == ns.STATUS_APPROVED
        assert doc["patientId"] == PATIENT
        assert doc["repositoryUniqueId"] == DMP_REPOSITORY_UNIQUE_ID
        assert doc["hash"] == hashlib.sha1(sub.document).hexdigest()
        assert doc["size"] == len(sub.document)
        assert str(doc["entryUUID"]).startswith("urn:uuid:")
        assert doc["typeCode"] == {"code": "IMG-KOS", "scheme": "1.2.250.1.213.1.1.4.12",
                                   "display": "Reference d'objets d'un examen d'imagerie"}  # fmt: skip
        assert [c["code"] for c in doc["eventCodes"]] == ["CT", "774007"]
        assert "1.2.250.1.213.4.5.2.1.103^^^^urn:ihe:iti:xds:2016:studyInstanceUID" in doc["referenceIds"]
        assert doc["creationTime"] == "20240506123005"
        assert doc["submissionTime"] == "20240506123005"
        assert doc["replaces"] is None and doc["replacedBy"] is None
        resp = await sim.client.get(f"/sim/dmp/documents/{KOS_UID}")
        assert resp.status == 200
        assert resp.content_type == "application/dicom"
        assert await resp.read() == sub.document
        # Also reachable by full CX, and nothing for the other patient.
        assert len(await sim.documents(PATIENT)) == 1
        assert await sim.documents(OTHER_PATIENT) == []


async def test_kos_submitted_inline_base64_without_mtom(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(submission(), as_mtom=False)
        assert reply.status_type == "Success", reply.errors()
        assert reply.content_type.startswith("application/soap+xml")
        resp = await sim.client.get(f"/sim/dmp/documents/{KOS_UID}")
        assert await resp.read() == make_kos()


def _remove_slot(name: str) -> Callable[[Submission], None]:
    def change(sub: Submission) -> None:
        de = entry(sub.envelope)
        de.remove(slot(de, name))

    return change


def _set_code(scheme: str, code: str, coding_scheme: str | None = None) -> Callable[[Submission], None]:
    def change(sub: Submission) -> None:
        c = classification(entry(sub.envelope), scheme)
        c.set("nodeRepresentation", code)
        if coding_scheme is not None:
            set_slot(c, "codingScheme", coding_scheme)

    return change


def _remove_classification(scheme: str) -> Callable[[Submission], None]:
    def change(sub: Submission) -> None:
        de = entry(sub.envelope)
        de.remove(classification(de, scheme))

    return change


def _set_mime(sub: Submission) -> None:
    entry(sub.envelope).set("mimeType", "text/xml")


def _remove_patient(sub: Submission) -> None:
    for ei in list(entry(sub.envelope).findall("rim:ExternalIdentifier", NSMAP)):
        if ei.get("identificationScheme") == ns.DE_PATIENT_ID:
            entry(sub.envelope).remove(ei)


def _bad_time(sub: Submission) -> None:
    set_slot(entry(sub.envelope), "creationTime", "2024-05-06T12:30:05")


def _no_membership(sub: Submission) -> None:
    assoc = find1(sub.envelope, ".//rim:Association")
    assoc.getparent().remove(assoc)  # type: ignore[union-attr]


def _same_unique_id_twice(sub: Submission) -> None:
    set_ei(sub.envelope, ns.SS_UNIQUE_ID, KOS_UID, "SubmissionSet01")


def _extra_confidentiality(sub: Submission) -> None:
    de = entry(sub.envelope)
    extra = etree.fromstring(etree.tostring(classification(de, ns.DE_CONFIDENTIALITY_CODE)))
    extra.set("id", "cla99")
    extra.set("nodeRepresentation", "R")
    de.insert(de.index(classification(de, ns.DE_CONFIDENTIALITY_CODE)), extra)


def _add_folder(sub: Submission) -> None:
    rol = find1(sub.envelope, ".//rim:RegistryObjectList")
    etree.SubElement(rol, f"{{{ns.RIM}}}RegistryPackage", id="Folder01")


def _on_demand(sub: Submission) -> None:
    entry(sub.envelope).set("objectType", "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248")


REFUSALS: list[tuple[str, Callable[[Submission], None], str, str]] = [
    (
        "wrong formatCode",
        _set_code(ns.DE_FORMAT_CODE, "urn:ihe:rad:TEXT", "1.3.6.1.4.1.19376.1.2.3"),
        METADATA,
        "formatCode urn:ihe:rad:TEXT^^1.3.6.1.4.1.19376.1.2.3 is not accepted",
    ),
    (
        "formatCode from another scheme",
        _set_code(ns.DE_FORMAT_CODE, "1.2.840.10008.5.1.4.1.1.88.59", "DCM"),
        METADATA,
        "formatCode 1.2.840.10008.5.1.4.1.1.88.59^^DCM",
    ),
    ("missing formatCode", _remove_classification(ns.DE_FORMAT_CODE), METADATA, "formatCode is required once"),
    ("wrong classCode", _set_code(ns.DE_CLASS_CODE, "11"), METADATA, "classCode 11^^1.2.250.1.213.1.1.4.1"),
    (
        "wrong typeCode",
        _set_code(ns.DE_TYPE_CODE, "11488-4", "2.16.840.1.113883.6.1"),
        METADATA,
        "typeCode 11488-4^^2.16.840.1.113883.6.1 is not accepted",
    ),
    (
        "a KOS typed as the CDA report",
        _set_code(ns.DE_TYPE_CODE, "18748-4", "2.16.840.1.113883.6.1"),
        METADATA,
        "classCode must be 10^^1.2.250.1.213.1.1.4.1 for typeCode 18748-4",
    ),
    ("missing typeCode", _remove_classification(ns.DE_TYPE_CODE), METADATA, "typeCode is required once"),
    ("KOS not application/dicom", _set_mime, METADATA, "mimeType 'text/xml' is not accepted"),
    ("missing creationTime", _remove_slot("creationTime"), METADATA, "slot creationTime is missing"),
    ("missing languageCode", _remove_slot("languageCode"), METADATA, "slot languageCode is missing"),
    ("missing sourcePatientId", _remove_slot("sourcePatientId"), METADATA, "slot sourcePatientId is missing"),
    ("missing serviceStartTime", _remove_slot("serviceStartTime"), METADATA, "slot serviceStartTime is missing"),
    ("creationTime not a DTM", _bad_time, METADATA, "slot creationTime value '2024-05-06T12:30:05'"),
    (
        "missing confidentialityCode",
        _remove_classification(ns.DE_CONFIDENTIALITY_CODE),
        METADATA,
        "confidentialityCode needs exactly one N, R or V",
    ),
    ("two confidentiality levels", _extra_confidentiality, METADATA, "confidentialityCode needs exactly one"),
    (
        "missing healthcareFacilityTypeCode",
        _remove_classification(ns.DE_HEALTHCARE_FACILITY_TYPE_CODE),
        METADATA,
        "healthcareFacilityTypeCode is required once",
    ),
    ("missing author", _remove_classification(ns.DE_AUTHOR), METADATA, "author"),
    (
        "missing DocumentEntry patientId",
        _remove_patient,
        "XDSUnknownPatientId",
        "XDSDocumentEntry.patientId is missing",
    ),
    ("not a member of the submission set", _no_membership, METADATA, "is not a member (HasMember)"),
    ("a folder", _add_folder, METADATA, "folders are not accepted"),
    ("on-demand entry", _on_demand, METADATA, "is not a stable DocumentEntry"),
    ("one uniqueId twice in the message", _same_unique_id_twice, "XDSRegistryDuplicateUniqueIdInMessage", KOS_UID),
]


@pytest.mark.parametrize(("change", "code", "context"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
async def test_metadata_rule_refusal(
    tmp_path: Path, change: Callable[[Submission], None], code: str, context: str
) -> None:
    sub = submission()
    change(sub)
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
        assert reply.status == 200
        assert reply.status_type == "Failure"
        matching = [e for e in reply.errors() if e[0] == code and context in e[1]]
        assert matching, reply.errors()
        assert all(
            e.get("severity") == ns.SEVERITY_ERROR for e in reply.envelope.iterfind(".//rs:RegistryError", NSMAP)
        )
        assert await sim.documents() == []  # a refused submission leaves nothing behind


async def test_refusal_location_names_object_and_slot(tmp_path: Path) -> None:
    sub = submission()
    _remove_slot("languageCode")(sub)
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
    assert (METADATA, "slot languageCode is missing",
            "ExtrinsicObject[@id='DocumentKOS']/Slot[@name='languageCode']") in reply.errors()  # fmt: skip


async def test_unknown_patient_is_refused(tmp_path: Path) -> None:
    stranger = "180000000000001^^^&1.2.250.1.213.1.4.10&ISO^NH"
    sub = submission(patient=stranger)
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
    assert reply.status_type == "Failure"
    assert {"XDSUnknownPatientId"} == set(reply.codes)
    assert any("XDSSubmissionSet.patientId" in e[1] for e in reply.errors())


async def test_entry_patient_differs_from_submission_set(tmp_path: Path) -> None:
    sub = submission()
    set_ei(sub.envelope, ns.DE_PATIENT_ID, OTHER_PATIENT)
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
    assert "XDSPatientIdDoesNotMatch" in reply.codes, reply.errors()


async def test_hash_and_size_must_match_the_attached_bytes(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        sub = submission()
        set_slot(entry(sub.envelope), "hash", "0" * 40)
        reply = await sim.submit(sub)
        assert reply.codes == ["XDSNonIdenticalHash"], reply.errors()
        assert "0000000000" in reply.errors()[0][1]
        sub = submission()
        set_slot(entry(sub.envelope), "size", "12")
        reply = await sim.submit(sub)
        assert reply.codes == ["XDSNonIdenticalSize"], reply.errors()


async def test_document_described_but_not_attached(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        sub = submission()
        reply = await sim.post("/dmp/repository", sub.envelope, [])  # MTOM without the attachment
        assert reply.codes == ["XDSMissingDocument"], reply.errors()
        doc = find1(sub.envelope, ".//xdsb:Document")
        doc.getparent().remove(doc)  # type: ignore[union-attr]
        reply = await sim.post("/dmp/repository", sub.envelope, sub.documents())
        assert reply.codes == ["XDSMissingDocument"], reply.errors()


async def test_document_without_metadata(tmp_path: Path) -> None:
    sub = submission()
    extra = etree.SubElement(find1(sub.envelope, ".//xdsb:ProvideAndRegisterDocumentSetRequest"),
                             f"{{{ns.XDSB}}}Document", id="Stray")  # fmt: skip
    extra.text = "AAAA"
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
    assert reply.codes == ["XDSMissingDocumentMetadata"], reply.errors()


async def test_kos_content_must_agree_with_metadata(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        # SOP Instance UID of the KOS ≠ XDS uniqueId
        reply = await sim.submit(submission(kos=make_kos("1.2.250.1.999.1.1.2.103.99")))
        assert reply.codes == ["InvalidDocumentContent"], reply.errors()
        assert "SOP Instance UID" in reply.errors()[0][1]
        # not DICOM at all
        reply = await sim.submit(submission(kos=b"%PDF-1.7 not a KOS"))
        assert reply.codes == ["InvalidDocumentContent"], reply.errors()
        # KOS of another patient than the DocumentEntry says
        reply = await sim.submit(submission(kos=make_kos(KOS_UID, patient_id="248039121518984")))
        assert reply.codes == ["InvalidDocumentContent"], reply.errors()


async def test_duplicate_unique_id(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        assert (await sim.submit(submission())).status_type == "Success"
        # The same document again (a retried publication): the uniqueId is taken.
        reply = await sim.submit(submission())
        assert reply.codes == ["XDSDuplicateUniqueIdInRegistry"], reply.errors()
        # Other content under the same uniqueId: IHE's non-identical hash.
        reply = await sim.submit(submission(kos=make_kos(KOS_UID, study_uid="1.2.250.1.213.4.5.2.1.104")))
        assert reply.codes == ["XDSNonIdenticalHash"], reply.errors()
        assert len(await sim.documents()) == 1


async def test_duplicate_submission_set_unique_id(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        first = submission()
        assert (await sim.submit(first)).status_type == "Success"
        second = submission("1.2.250.1.999.1.1.2.103.2")
        ss_uid = next(
            ei.get("value", "")
            for ei in first.envelope.iterfind(".//rim:ExternalIdentifier", NSMAP)
            if ei.get("identificationScheme") == ns.SS_UNIQUE_ID
        )
        set_ei(second.envelope, ns.SS_UNIQUE_ID, ss_uid, "SubmissionSet01")
        reply = await sim.submit(second)
        assert reply.codes == ["XDSDuplicateUniqueIdInRegistry"], reply.errors()
        assert "SubmissionSet" in reply.errors()[0][1]


async def test_ans_sample_is_refused_for_its_slot_order(tmp_path: Path) -> None:
    sample = ANS_SAMPLES / "xds-validator-XDS.xml"
    if not sample.exists():
        pytest.skip("ANS samples not available next to the repository")
    envelope = etree.fromstring(sample.read_bytes())
    # Its VIHF has a placeholder certificate; ours stands in so the request gets past security.
    with_vihf(envelope, build_vihf("162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH"))
    async with running_sim(tmp_path, patients=[INS, "162018885045327"]) as sim:
        reply = await sim.post("/dmp/repository", envelope, [
            mtom.Attachment("0.2", b"kos", "application/dicom"), mtom.Attachment("0.3", b"sig", "text/xml"),
        ])  # fmt: skip
    assert reply.status_type == "Failure"
    assert reply.codes == [METADATA]
    assert "Slot" in reply.errors()[0][1] and "not expected" in reply.errors()[0][1]


async def test_ans_sample_with_slot_order_fixed_is_accepted(tmp_path: Path) -> None:
    sample = ANS_SAMPLES / "xds-validator-XDS.xml"
    if not sample.exists():
        pytest.skip("ANS samples not available next to the repository")
    envelope = etree.fromstring(sample.read_bytes())
    ans_patient = "162018885045327"
    kos_uid = "1.3.2.751468943.3.1234.16461.231103161723.1.1.1"
    kos = make_kos(kos_uid, ans_patient)
    # The sample's signature document is not published: ours signs the sample's submission set and KOS.
    creds = default_credentials()
    sig = signature.sign_submission(creds.key, creds.cert, "Signature01", "1.2.250.1.999.1.1.8121.7.7153",
                                    [signature.SignedDocument(kos_uid, kos)])  # fmt: skip
    documents = {"DocumentKOS": kos, "Signature01": sig}
    for eo in envelope.iterfind(".//rim:ExtrinsicObject", NSMAP):
        misplaced = slot(eo, "urn:ihe:iti:xds:2013:referenceIdList")
        eo.remove(misplaced)
        eo.insert(eo.index(find1(eo, "rim:Name")), misplaced)
        data = documents[eo.get("id", "")]
        set_slot(eo, "hash", hashlib.sha1(data).hexdigest())
        set_slot(eo, "size", str(len(data)))
    with_vihf(envelope, build_vihf(f"{ans_patient}^^^&1.2.250.1.213.1.4.10&ISO^NH"))
    attachments = [
        mtom.Attachment("0.2", documents["DocumentKOS"], "application/dicom"),
        mtom.Attachment("0.3", documents["Signature01"], "text/xml"),
    ]
    async with running_sim(tmp_path, patients=[INS, ans_patient]) as sim:
        reply = await sim.post("/dmp/repository", envelope, attachments)
        assert reply.status_type == "Success", reply.errors()
        registered = {d["uniqueId"]: d for d in await sim.documents(ans_patient, signatures=True)}
        assert [d["uniqueId"] for d in await sim.documents(ans_patient)] == [kos_uid]
    assert set(registered) == {kos_uid, "1.2.250.1.999.1.1.8121.4.4944"}
    assert registered[kos_uid]["mimeType"] == "application/dicom"
    assert registered["1.2.250.1.999.1.1.8121.4.4944"]["typeCode"]["code"] == "E1762"


async def test_request_without_vihf_patient_match_is_refused(tmp_path: Path) -> None:
    sub = submission(vihf=False)
    with_vihf(sub.envelope, build_vihf(OTHER_PATIENT))
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(sub)
        assert reply.status == 400
        assert reply.fault is not None and reply.fault[1] == "FailedAuthentication"
        assert await sim.documents() == []
        assert INS not in reply.fault[2]  # the refusal does not echo the patient's identity
