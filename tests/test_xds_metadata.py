"""ebRIM metadata of the KOS submission, ITI-57 status update and stored queries, checked against the XSDs."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest
from lxml import etree

from conformance.ans import ANS_DATA
from drimbox.xds import metadata as m
from drimbox.xds import namespaces as ns
from drimbox.xds import query as q
from drimbox.xds import schema
from drimbox.xds.metadata import Code, MetadataError, ReferenceId

R = f"{{{ns.RIM}}}"
INS = "279035121518989"
PATIENT = m.ins_cx(INS)
IPP = m.cx("IPP101", "1.2.250.1.213.4.5.2.4", "PI")
KOS = b"\x00" * 128 + b"DICM" + b"fake KOS bytes" * 50
ANS_SAMPLE = ANS_DATA / "validator-samples" / "xds-validator-XDS.xml"
needs_ans_samples = pytest.mark.skipif(not ANS_SAMPLE.exists(), reason=f"ANS samples not found at {ANS_DATA}")
CROSS_SAMPLE = ANS_SAMPLE.with_name("cross-validator-XDS.xml")


def make_author() -> m.Author:
    return m.Author(
        person=m.xcn("801234560801", "BIDEAULT", "Jean"),
        institutions=[m.xon("Centre de radiologie Ambroise", "101235555")],
        roles=["Radiologue"],
        specialties=["G15_10/SM44^Radiodiagnostic^1.2.250.1.213.1.1.4.5"],
    )


def make_entry(**overrides: Any) -> m.KosDocumentEntry:
    fields: dict[str, Any] = dict(
        unique_id="1.2.250.1.999.1.1.2.103.1",
        patient_id=PATIENT,
        source_patient_id=IPP,
        source_patient_info=m.patient_info_lines([IPP], "PAT-TROIS", "DOMINIQUE", "19790328", "F"),
        creation_time="20240105101500",
        service_start="20240105090000",
        service_stop="20240105093000",
        author=make_author(),
        legal_authenticator=m.xcn("801234560801", "BIDEAULT", "Jean"),
        healthcare_facility_type=Code("SA25", "1.2.250.1.71.4.2.4", "Cabinet de radiologie"),
        practice_setting=Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire"),
        modalities=["CT"],
        regions=[Code("774007", "1.2.250.1.213.1.1.5.695", "structure de la tête et/ou du cou")],
        reference_ids=[
            ReferenceId.accession("ACN103", "1.2.250.1.925.994044785528.27"),
            ReferenceId.study("1.2.250.1.213.4.5.2.1.103"),
            ReferenceId.order("OPN103", "1.2.250.1.213.4.5.2.6"),
        ],
    )
    fields.update(overrides)
    return m.KosDocumentEntry(**fields)


def make_submission(**overrides: Any) -> m.SubmissionSet:
    fields: dict[str, Any] = dict(
        unique_id="1.2.250.1.999.1.1.4.1", source_id="1.2.250.1.999.1.1.3",
        submission_time="20240105101501", author=make_author(), patient_id=PATIENT,
    )  # fmt: skip
    fields.update(overrides)
    return m.SubmissionSet(**fields)


def children_order_ok(obj: etree._Element) -> bool:
    """rim.xsd order: Slot*, Name?, Description?, Classification*, ExternalIdentifier*."""
    rank = {"Slot": 0, "Name": 1, "Description": 2, "Classification": 3, "ExternalIdentifier": 4}
    ranks = [rank.get(etree.QName(c).localname, 9) for c in obj]
    return ranks == sorted(ranks)


def extrinsic(payload: etree._Element) -> etree._Element:
    eo = payload.find(f".//{R}ExtrinsicObject")
    assert eo is not None
    return eo


def slot_values(el: etree._Element, name: str) -> list[str]:
    return [v.text or "" for v in el.iterfind(f"{R}Slot[@name='{name}']/{R}ValueList/{R}Value")]


# ------------------------------------------------------------------------------------ ITI-41


def test_submission_validates_and_keeps_rim_slot_order() -> None:
    payload, _ = m.build_provide_and_register(make_entry(), make_submission(), KOS, m.new_uuid())
    schema.validate(payload)
    objects = payload.findall(f".//{R}RegistryObjectList/*")
    kinds = {etree.QName(o).localname for o in objects}
    assert kinds == {"RegistryPackage", "ExtrinsicObject", "Association"}
    for obj in payload.iter(f"{R}ExtrinsicObject", f"{R}RegistryPackage", f"{R}Classification"):
        assert children_order_ok(obj), etree.QName(obj).localname


def test_built_entry_reads_back_identically() -> None:
    entry = make_entry(masque_ps=True, invisible_patient=True, comments="Scanner cérébral")
    payload, _ = m.build_provide_and_register(entry, make_submission(), KOS)
    info = q.parse_document_entry(extrinsic(payload))
    assert info.entry_uuid == entry.entry_uuid and info.unique_id == entry.unique_id
    assert info.patient_id == PATIENT and info.mime_type == "application/dicom"
    assert info.hash == hashlib.sha1(KOS).hexdigest() and info.size == len(KOS)
    assert (info.creation_time, info.service_start, info.service_stop) == (
        "20240105101500", "20240105090000", "20240105093000")  # fmt: skip
    assert info.source_patient_id == IPP and info.source_patient_info == entry.source_patient_info
    assert info.title == entry.title and info.comments == "Scanner cérébral" and info.language == "fr-FR"
    assert info.format_code == Code(*ns.KOS_FORMAT_CODE, m.KOS_FORMAT_DISPLAY) and info.is_kos
    assert info.class_code == Code(*ns.KOS_CLASS_CODE) and info.type_code == Code(*ns.KOS_TYPE_CODE)
    assert info.healthcare_facility_type == entry.healthcare_facility_type
    assert info.practice_setting == entry.practice_setting
    assert [c.code for c in info.confidentiality_codes] == ["N", "MASQUE_PS", "INVISIBLE_PATIENT"]
    assert info.event_codes == entry.event_codes
    assert info.reference_ids == entry.reference_ids
    assert info.study_uids == ["1.2.250.1.213.4.5.2.1.103"]
    assert info.authors == [entry.author] and info.legal_authenticator == entry.legal_authenticator


def test_submission_set_association_and_document_part() -> None:
    entry, ss = make_entry(), make_submission()
    payload, attachments = m.build_provide_and_register(entry, ss, KOS)
    rp = payload.find(f".//{R}RegistryPackage")
    assert rp is not None and rp.get("id") == ss.entry_uuid
    assert slot_values(rp, "submissionTime") == ["20240105101501"]
    ext = {e.get("identificationScheme"): e.get("value") for e in rp.iterfind(f"{R}ExternalIdentifier")}
    assert ext == {ns.SS_UNIQUE_ID: ss.unique_id, ns.SS_SOURCE_ID: ss.source_id, ns.SS_PATIENT_ID: PATIENT}
    assert rp.find(f"{R}Classification[@classificationNode='{ns.OBJ_SUBMISSION_SET}']") is not None
    content = rp.find(f"{R}Classification[@classificationScheme='{ns.SS_CONTENT_TYPE_CODE}']")
    assert content is not None and content.get("nodeRepresentation") == "04"
    (assoc,) = payload.iterfind(f".//{R}Association")
    assert (assoc.get("associationType"), assoc.get("sourceObject"), assoc.get("targetObject")) == (
        ns.ASSOC_HAS_MEMBER, ss.entry_uuid, entry.entry_uuid)  # fmt: skip
    assert slot_values(assoc, "SubmissionSetStatus") == ["Original"]
    (doc,) = payload.iterfind(f"{{{ns.XDSB}}}Document")
    include = doc.find(f"{{{ns.XOP}}}Include")
    assert doc.get("id") == entry.entry_uuid and include is not None
    assert [(f"cid:{a.content_id}", a.data, a.content_type) for a in attachments] == [
        (include.get("href"), KOS, "application/dicom")]  # fmt: skip


def test_replacement_adds_rplc_from_new_entry_to_old() -> None:
    entry, old = make_entry(), m.new_uuid()
    payload, _ = m.build_provide_and_register(entry, make_submission(), KOS, replaces_entry_uuid=old)
    schema.validate(payload)
    rplc = payload.findall(f".//{R}Association[@associationType='{ns.ASSOC_RPLC}']")
    assert [(a.get("sourceObject"), a.get("targetObject")) for a in rplc] == [(entry.entry_uuid, old)]
    with pytest.raises(MetadataError, match="entryUUID"):
        m.build_provide_and_register(entry, make_submission(), KOS, replaces_entry_uuid="1.2.3")


@needs_ans_samples
def test_codes_match_the_ans_sample_and_our_xml_is_valid_where_the_sample_is_not() -> None:
    sample = schema.parse_xml(ANS_SAMPLE.read_bytes())
    pnr = sample.find(f".//{{{ns.XDSB}}}ProvideAndRegisterDocumentSetRequest")
    assert pnr is not None
    with pytest.raises(schema.SchemaError, match="Slot"):  # the referenceIdList slot after Classification
        schema.validate(pnr)
    their_eo = pnr.find(f".//{R}ExtrinsicObject[@id='DocumentKOS']")
    assert their_eo is not None and not children_order_ok(their_eo)
    theirs = q.parse_document_entry(their_eo)
    ours_payload, _ = m.build_provide_and_register(make_entry(), make_submission(), KOS)
    ours = q.parse_document_entry(extrinsic(ours_payload))
    for name in ("format_code", "class_code", "type_code", "practice_setting"):
        assert getattr(ours, name)[:2] == getattr(theirs, name)[:2], name
    assert ours.mime_type == theirs.mime_type == "application/dicom"
    assert ours.confidentiality_codes[0][:2] == theirs.confidentiality_codes[0][:2]
    assert [r.kind for r in ours.reference_ids] == [r.kind for r in theirs.reference_ids]


def test_region_scheme_follows_the_cda_unless_forced() -> None:
    snomed = Code("774007", "2.16.840.1.113883.6.96", "tête et cou")
    entry = make_entry(modalities=["CT", "ct", "KO", "MR"], regions=[snomed, Code("63337009", "", "abdomen")])
    assert [(c.code, c.scheme) for c in entry.event_codes] == [
        ("CT", ns.MODALITY_SCHEME), ("MR", ns.MODALITY_SCHEME),
        ("774007", "2.16.840.1.113883.6.96"), ("63337009", ns.REGION_SCHEME)]  # fmt: skip
    forced = make_entry(regions=[snomed], region_scheme="1.2.250.1.213.2.5")
    assert forced.event_codes[-1] == Code("774007", "1.2.250.1.213.2.5", "tête et cou")


def test_confidentiality_flags() -> None:
    assert make_entry().confidentiality_codes == [Code("N", "2.16.840.1.113883.5.25", "Normal")]
    flagged = make_entry(masque_ps=True, invisible_patient=True, invisible_representants_legaux=True)
    assert [(c.code, c.scheme) for c in flagged.confidentiality_codes[1:]] == [
        ("MASQUE_PS", "1.2.250.1.213.1.1.4.13"), ("INVISIBLE_PATIENT", "1.2.250.1.213.1.1.4.13"),
        ("INVISIBLE_REPRESENTANTS_LEGAUX", "1.2.250.1.213.1.1.4.13")]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "submission", "message"),
    [
        ({"source_patient_id": "X" * 257}, {}, "sourcePatientId is 257 characters"),
        ({"source_patient_info": ["PID-5|" + "X" * 251]}, {}, "slot sourcePatientInfo is 257 characters"),
        ({"patient_id": m.ins_cx("1" * 15)}, {}, "differs from XDSSubmissionSet"),
        ({"creation_time": "2024-01-05"}, {}, "slot creationTime"),
        ({"service_start": "20240105090000+0100"}, {}, "slot serviceStartTime"),
        ({"unique_id": "KOS-1"}, {}, "XDSDocumentEntry.uniqueId"),
        ({"hash": "00" * 20}, {}, "hash does not match"),
        ({"size": 1}, {}, "size does not match"),
        ({"author": m.Author()}, {}, "authorPerson or authorInstitution"),
        ({"patient_id": INS}, {"patient_id": INS}, "patientId is not a CX"),
        ({"title": "x" * 1025}, {}, "Name of"),
        ({}, {"source_id": "drimbox"}, "sourceId"),
    ],
)
def test_bad_metadata_is_refused_naming_the_field(
    overrides: dict[str, Any], submission: dict[str, Any], message: str
) -> None:
    with pytest.raises(MetadataError, match=message) as info:
        m.build_provide_and_register(make_entry(**overrides), make_submission(**submission), KOS)
    assert INS not in str(info.value)  # errors end up in logs: no patient identity


def test_hl7_delimiters_in_names_are_escaped() -> None:
    assert m.xcn("1", "DUPONT^X", "A&B") == "1^DUPONT\\S\\X^A\\T\\B^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
    info = m.patient_info_lines([IPP], "O'BRIEN|X", "Ann", "", "")
    assert info == [f"PID-3|{IPP}", "PID-5|O'BRIEN\\F\\X^Ann^^^^^L"]


# ------------------------------------------------------------------------------------ ITI-57


@pytest.mark.parametrize("status", [ns.STATUS_DELETED, ns.STATUS_DEPRECATED])
def test_update_status(status: str) -> None:
    ss, target = make_submission(), m.new_uuid()
    payload = m.build_update_status(target, ss, new_status=status)
    schema.validate(payload)
    assert etree.QName(payload).text == f"{{{ns.LCM}}}SubmitObjectsRequest"
    (assoc,) = payload.iterfind(f".//{R}Association")
    assert assoc.get("associationType") == ns.ASSOC_UPDATE_AVAILABILITY_STATUS
    assert (assoc.get("sourceObject"), assoc.get("targetObject")) == (ss.entry_uuid, target)
    assert slot_values(assoc, "NewStatus") == [status]
    assert slot_values(assoc, "OriginalStatus") == [ns.STATUS_APPROVED]
    with pytest.raises(MetadataError, match="entryUUID"):
        m.build_update_status("1.2.250.1.999.1.1.2.103.1", ss)


# ------------------------------------------------------------------------------------ ITI-18


def query_slots(payload: etree._Element) -> dict[str, list[str]]:
    return {s.get("name", ""): slot_values(payload.find(f"{R}AdhocQuery"), s.get("name", ""))  # type: ignore[arg-type]
            for s in payload.iterfind(f"{R}AdhocQuery/{R}Slot")}  # fmt: skip


def test_find_documents_value_syntax() -> None:
    payload = q.find_documents_query(
        PATIENT, event_codes=[Code("MR", ns.MODALITY_SCHEME), Code("CT", ns.MODALITY_SCHEME)],
        extra={"$XDSDocumentEntryCreationTimeFrom": "20240101", "$XDSDocumentEntryAuthorPerson": ["D'AR%"]},
    )  # fmt: skip
    schema.validate(payload)
    option = payload.find(f"{{{ns.QUERY}}}ResponseOption")
    assert option is not None and option.get("returnType") == "LeafClass"
    assert payload.find(f"{R}AdhocQuery").get("id") == ns.Q_FIND_DOCUMENTS  # type: ignore[union-attr]
    assert query_slots(payload) == {
        "$XDSDocumentEntryPatientId": ["'279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH'"],
        "$XDSDocumentEntryStatus": ["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"],
        "$XDSDocumentEntryEventCodeList": ["('MR^^1.2.250.1.213.1.1.5.618','CT^^1.2.250.1.213.1.1.5.618')"],
        "$XDSDocumentEntryCreationTimeFrom": ["20240101"],
        "$XDSDocumentEntryAuthorPerson": ["('D''AR%')"],
    }


def test_long_lists_are_split_over_several_values() -> None:
    uids = [f"1.2.250.1.999.1.1.2.{i:06d}" for i in range(40)]
    payload = q.get_documents_query(unique_ids=uids, return_type="ObjectRef")
    schema.validate(payload)
    values = query_slots(payload)["$XDSDocumentEntryUniqueId"]
    assert len(values) > 1 and all(len(v) <= 256 for v in values)
    assert [u for v in values for u in v.strip("()").replace("'", "").split(",")] == uids


def test_query_parameter_errors() -> None:
    with pytest.raises(MetadataError, match="not both"):
        q.get_documents_query(entry_uuids=["urn:uuid:x"], unique_ids=["1.2"])
    with pytest.raises(MetadataError, match="returnType"):
        q.build_stored_query(ns.Q_FIND_DOCUMENTS, {}, "RegistryObject")
    with pytest.raises(MetadataError, match=r"\$XDSDocumentEntryCreationTimeTo"):
        q.build_stored_query(ns.Q_FIND_DOCUMENTS, {"$XDSDocumentEntryCreationTimeTo": "2024-01-01"})
    with pytest.raises(MetadataError, match="empty list"):
        q.build_stored_query(ns.Q_FIND_DOCUMENTS, {"$XDSDocumentEntryStatus": []})


def test_find_by_reference_id() -> None:
    payload = q.find_by_reference_id_query(PATIENT, [ReferenceId.accession("ACN103", "1.2.250.1.5")])
    schema.validate(payload)
    assert query_slots(payload)["$XDSDocumentEntryReferenceIdList"] == [
        "('ACN103^^^&1.2.250.1.5&ISO^urn:ihe:iti:xds:2013:accession')"]  # fmt: skip


def test_parse_query_response() -> None:
    eo = copy.deepcopy(extrinsic(m.build_provide_and_register(make_entry(), make_submission(), KOS)[0]))
    eo.set("status", ns.STATUS_APPROVED)
    repo = etree.Element(f"{R}Slot", name="repositoryUniqueId")
    etree.SubElement(etree.SubElement(repo, f"{R}ValueList"), f"{R}Value").text = "1.2.250.1.999.1.1.1"
    eo.insert(0, repo)
    resp = etree.Element(f"{{{ns.QUERY}}}AdhocQueryResponse", status=ns.STATUS_SUCCESS)
    rol = etree.SubElement(resp, f"{R}RegistryObjectList")
    rol.append(eo)
    etree.SubElement(rol, f"{R}ObjectRef", id="urn:uuid:00000000-0000-0000-0000-000000000001")
    schema.validate(resp)
    (info,) = q.parse_document_entries(resp)
    assert info.approved and info.repository_unique_id == "1.2.250.1.999.1.1.1"
    assert q.parse_object_refs(resp) == ["urn:uuid:00000000-0000-0000-0000-000000000001"]
    for ei in eo.iterfind(f"{R}ExternalIdentifier"):
        eo.remove(ei)
    with pytest.raises(MetadataError, match="uniqueId"):
        q.parse_document_entries(resp)


@needs_ans_samples
def test_cross_validator_sample_region_is_read() -> None:
    sample = schema.parse_xml(CROSS_SAMPLE.read_bytes())
    info = q.parse_document_entry(sample.find(f".//{R}ExtrinsicObject[@id='DocumentKOS']"))  # type: ignore[arg-type]
    assert Code("774007", "1.2.250.1.213.1.1.5.695", "structure de la tête et/ou du cou") in info.event_codes
    assert [r.kind for r in info.reference_ids] == [m.REF_ACCESSION, m.REF_STUDY_UID, m.REF_ORDER]
