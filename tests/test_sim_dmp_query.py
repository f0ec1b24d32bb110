"""ITI-18 stored queries and ITI-43 retrieval on the simulated DMP."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from lxml import etree

from drimbox.sim import DMP_REPOSITORY_UNIQUE_ID
from drimbox.xds import namespaces as ns
from tests.test_sim_dmp_support import (
    KOS_UID,
    NSMAP,
    OTHER_INS,
    OTHER_PATIENT,
    PATIENT,
    Sim,
    build_vihf,
    classification,
    entry,
    find1,
    load,
    running_sim,
    set_slot,
    submission,
    with_vihf,
)

MR_UID = "1.2.250.1.999.1.1.2.200.1"
OTHER_UID = "1.2.250.1.999.1.1.2.300.1"
MODALITY = "1.2.250.1.213.1.1.5.618"
FIND = ns.Q_FIND_DOCUMENTS
Q = f"{{{ns.QUERY}}}"
RIM = f"{{{ns.RIM}}}"


async def populate(sim: Sim) -> dict[str, str]:
    """Exam C (CT head, 2024), an MR (2023, masked to professionals, ACN200) and a KOS of another patient."""
    assert (await sim.submit(submission())).status_type == "Success"
    mr = submission(MR_UID)
    de = entry(mr.envelope)
    ct = classification(de, ns.DE_EVENT_CODE)
    ct.set("nodeRepresentation", "MR")
    for name, value in (("creationTime", "20230101101010"), ("serviceStartTime", "20221231"),
                        ("serviceStopTime", "20230101")):  # fmt: skip
        set_slot(de, name, value)
    set_slot(de, "urn:ihe:iti:xds:2013:referenceIdList",
             "ACN200^^^&1.2.250.1.925.994044785528.27&ISO^urn:ihe:iti:xds:2013:accession")  # fmt: skip
    masked = copy.deepcopy(classification(de, ns.DE_CONFIDENTIALITY_CODE))
    masked.set("id", "cla-masque")
    masked.set("nodeRepresentation", "MASQUE_PS")
    set_slot(masked, "codingScheme", ns.DMP_CONFIDENTIALITY_SCHEME)
    de.insert(de.index(classification(de, ns.DE_CONFIDENTIALITY_CODE)) + 1, masked)
    assert (await sim.submit(mr)).status_type == "Success"
    assert (await sim.submit(submission(OTHER_UID, patient=OTHER_PATIENT))).status_type == "Success"
    return {d["uniqueId"]: d["entryUUID"] for d in await sim.documents()}


def adhoc(
    params: dict[str, str | list[str]] | None = None, *, query_id: str = FIND, return_type: str = "LeafClass"
) -> etree._Element:
    """An AdhocQueryRequest; a list gives one rim:Value per item (AND groups for EventCodeList)."""
    root = etree.Element(f"{Q}AdhocQueryRequest", nsmap={"query": ns.QUERY, "rim": ns.RIM})
    etree.SubElement(root, f"{Q}ResponseOption", returnType=return_type, returnComposedObjects="true")
    query = etree.SubElement(root, f"{RIM}AdhocQuery", id=query_id)
    for name, value in (params or {}).items():
        values = value if isinstance(value, list) else [value]
        value_list = etree.SubElement(etree.SubElement(query, f"{RIM}Slot", name=f"${name}"), f"{RIM}ValueList")
        for v in values:
            etree.SubElement(value_list, f"{RIM}Value").text = v
    return root


def base(**params: str | list[str]) -> dict[str, str | list[str]]:
    """The patient's approved manifests: the format code leaves out each submission's signature entry."""
    return {
        "XDSDocumentEntryPatientId": f"'{PATIENT}'",
        "XDSDocumentEntryStatus": f"('{ns.STATUS_APPROVED}')",
        "XDSDocumentEntryFormatCode": f"('{ns.KOS_FORMAT_CODE[0]}^^{ns.KOS_FORMAT_CODE[1]}')",
        **params,
    }


def unique_ids(reply_payload: etree._Element) -> list[str]:
    result = []
    for eo in reply_payload.iterfind(".//rim:ExtrinsicObject", NSMAP):
        for ei in eo.iterfind("rim:ExternalIdentifier", NSMAP):
            if ei.get("identificationScheme") == ns.DE_UNIQUE_ID:
                result.append(ei.get("value", ""))
    return sorted(result)


async def test_find_documents_fixture_returns_the_patients_approved_manifests(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        uuids = await populate(sim)
        envelope = load("iti18-find-documents.xml")
        with_vihf(envelope, build_vihf(PATIENT))
        reply = await sim.post("/dmp/registry", envelope, as_mtom=False)
    assert reply.status == 200
    assert reply.action == ns.ACTION_ITI18_RESPONSE
    assert find1(reply.envelope, "soap:Header/wsa:RelatesTo").text == find1(envelope, ".//wsa:MessageID").text
    assert reply.status_type == "Success", reply.errors()
    assert unique_ids(reply.payload) == sorted([KOS_UID, MR_UID])
    eo = next(e for e in reply.payload.iterfind(".//rim:ExtrinsicObject", NSMAP) if e.get("id") == uuids[KOS_UID])
    assert eo.get("status") == ns.STATUS_APPROVED
    slots = {s.get("name"): s.findtext("rim:ValueList/rim:Value", "", NSMAP) for s in eo.iterfind("rim:Slot", NSMAP)}
    assert slots["repositoryUniqueId"] == DMP_REPOSITORY_UNIQUE_ID
    assert slots["creationTime"] == "20240506123005"
    # Everything the source sent comes back, with registry UUIDs in place of its symbolic ids.
    assert all(c.get("classifiedObject") == uuids[KOS_UID] for c in eo.iterfind("rim:Classification", NSMAP))
    assert all(c.get("id", "").startswith("urn:uuid:") for c in eo.iterfind("rim:Classification", NSMAP))


FILTERS: list[tuple[str, dict[str, str | list[str]], list[str]]] = [
    ("event code MR", {"XDSDocumentEntryEventCodeList": f"('MR^^{MODALITY}')"}, [MR_UID]),
    ("event codes OR", {"XDSDocumentEntryEventCodeList": f"('MR^^{MODALITY}','CT^^{MODALITY}')"}, [KOS_UID, MR_UID]),
    (
        "event codes AND (CT and head)",
        {"XDSDocumentEntryEventCodeList": [f"('CT^^{MODALITY}')", "('774007^^1.2.250.1.213.1.1.5.695')"]},
        [KOS_UID],
    ),
    (
        "event codes AND (CT and MR)",
        {"XDSDocumentEntryEventCodeList": [f"('CT^^{MODALITY}')", f"('MR^^{MODALITY}')"]},
        [],
    ),
    ("creation from", {"XDSDocumentEntryCreationTimeFrom": "20240101"}, [KOS_UID]),
    ("creation to", {"XDSDocumentEntryCreationTimeTo": "20240101"}, [MR_UID]),
    (
        "creation window quoted",
        {"XDSDocumentEntryCreationTimeFrom": "'20230101101010'", "XDSDocumentEntryCreationTimeTo": "'20230101101011'"},
        [MR_UID],
    ),
    ("service start from", {"XDSDocumentEntryServiceStartTimeFrom": "202405060915"}, [KOS_UID]),
    ("service start to", {"XDSDocumentEntryServiceStartTimeTo": "20240506091500"}, [MR_UID]),
    ("service stop to", {"XDSDocumentEntryServiceStopTimeTo": "2023"}, []),
    ("service stop from", {"XDSDocumentEntryServiceStopTimeFrom": "2023"}, [KOS_UID, MR_UID]),
    (
        "masked to professionals",
        {"XDSDocumentEntryConfidentialityCode": f"('MASQUE_PS^^{ns.DMP_CONFIDENTIALITY_SCHEME}')"},
        [MR_UID],
    ),
    ("class code", {"XDSDocumentEntryClassCode": "('31^^1.2.250.1.213.1.1.4.1')"}, [KOS_UID, MR_UID]),
    ("class code of another scheme", {"XDSDocumentEntryClassCode": "('31^^2.16.840.1.113883.6.1')"}, []),
    ("type code of the CDA report", {"XDSDocumentEntryTypeCode": "('18748-4^^2.16.840.1.113883.6.1')"}, []),
    (
        "format code",
        {"XDSDocumentEntryFormatCode": "('1.2.840.10008.5.1.4.1.1.88.59^^1.2.840.10008.2.6.1')"},
        [KOS_UID, MR_UID],
    ),
    (
        "practice setting",
        {"XDSDocumentEntryPracticeSettingCode": "('AMBULATOIRE^^1.2.250.1.213.1.1.4.9')"},
        [KOS_UID, MR_UID],
    ),
    ("author like", {"XDSDocumentEntryAuthorPerson": "('801234560801^BIDEAULT%')"}, [KOS_UID, MR_UID]),
    ("author nobody", {"XDSDocumentEntryAuthorPerson": "('%NOBODY%')"}, []),
    ("deprecated only", {"XDSDocumentEntryStatus": f"('{ns.STATUS_DEPRECATED}')"}, []),
]


@pytest.mark.parametrize(("params", "expected"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS])
async def test_find_documents_filters(tmp_path: Path, params: dict[str, str | list[str]], expected: list[str]) -> None:
    async with running_sim(tmp_path) as sim:
        await populate(sim)
        reply = await sim.query(adhoc(base(**params)))
    assert reply.status_type == "Success", reply.errors()
    assert unique_ids(reply.payload) == sorted(expected)


async def test_object_ref_and_other_stored_queries(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        uuids = await populate(sim)
        reply = await sim.query(adhoc(base(), return_type="ObjectRef"))
        refs = sorted(r.get("id", "") for r in reply.payload.iterfind(".//rim:ObjectRef", NSMAP))
        assert refs == sorted([uuids[KOS_UID], uuids[MR_UID]])
        assert reply.payload.find(".//rim:ExtrinsicObject", NSMAP) is None

        accession = "'ACN200^^^&1.2.250.1.925.994044785528.27&ISO^urn:ihe:iti:xds:2013:accession'"
        by_ref = base(XDSDocumentEntryReferenceIdList=f"({accession})")
        reply = await sim.query(adhoc(by_ref, query_id=ns.Q_FIND_DOCUMENTS_BY_REFERENCE_ID))
        assert unique_ids(reply.payload) == [MR_UID]
        study = "('1.2.250.1.213.4.5.2.1.103^^^^urn:ihe:iti:xds:2016:studyInstanceUID')"
        reply = await sim.query(
            adhoc(base(XDSDocumentEntryReferenceIdList=study), query_id=ns.Q_FIND_DOCUMENTS_BY_REFERENCE_ID)
        )
        assert unique_ids(reply.payload) == [KOS_UID]  # the MR's list was replaced by its accession alone

        reply = await sim.query(adhoc({"XDSDocumentEntryUniqueId": f"('{KOS_UID}')"}, query_id=ns.Q_GET_DOCUMENTS))
        assert unique_ids(reply.payload) == [KOS_UID]
        reply = await sim.query(
            adhoc({"XDSDocumentEntryEntryUUID": f"('{uuids[MR_UID]}')"}, query_id=ns.Q_GET_DOCUMENTS)
        )
        assert unique_ids(reply.payload) == [MR_UID]
        # Another patient's document is not disclosed under this patient's VIHF.
        reply = await sim.query(adhoc({"XDSDocumentEntryUniqueId": f"('{OTHER_UID}')"}, query_id=ns.Q_GET_DOCUMENTS))
        assert reply.status_type == "Success" and unique_ids(reply.payload) == []

        reply = await sim.query(adhoc({"uuid": f"('{uuids[KOS_UID]}')"}, query_id=ns.Q_GET_ASSOCIATIONS))
        [assoc] = reply.payload.iterfind(".//rim:Association", NSMAP)
        assert assoc.get("associationType") == ns.ASSOC_HAS_MEMBER
        assert assoc.get("targetObject") == uuids[KOS_UID]
        assert assoc.findtext("rim:Slot/rim:ValueList/rim:Value", "", NSMAP) == "Original"


QUERY_ERRORS: list[tuple[str, etree._Element, str, str]] = [
    (
        "missing patient",
        adhoc({"XDSDocumentEntryStatus": f"('{ns.STATUS_APPROVED}')"}),
        "XDSStoredQueryMissingParam",
        "$XDSDocumentEntryPatientId",
    ),
    (
        "missing status",
        adhoc({"XDSDocumentEntryPatientId": f"'{PATIENT}'"}),
        "XDSStoredQueryMissingParam",
        "$XDSDocumentEntryStatus",
    ),
    (
        "two patients",
        adhoc(base(XDSDocumentEntryPatientId=[f"'{PATIENT}'", f"'{OTHER_PATIENT}'"])),
        "XDSStoredQueryParamNumber",
        "$XDSDocumentEntryPatientId",
    ),
    (
        "unknown query",
        adhoc(base(), query_id="urn:uuid:00000000-1111-2222-3333-444444444444"),
        "XDSUnknownStoredQuery",
        "urn:uuid:00000000-1111-2222-3333-444444444444",
    ),
    (
        "unknown parameter",
        adhoc(base(XDSDocumentEntryColour="'blue'")),
        "XDSRegistryError",
        "$XDSDocumentEntryColour",
    ),
    (
        "code without scheme",
        adhoc(base(XDSDocumentEntryClassCode="('31')")),
        "XDSRegistryError",
        "code^^codingScheme",
    ),
    ("bad time", adhoc(base(XDSDocumentEntryCreationTimeFrom="2024-01-01")), "XDSRegistryError", "TimeFrom"),
    ("unquoted list", adhoc(base(XDSDocumentEntryClassCode="('31^^x' '10^^y')")), "XDSRegistryError", "comma"),
    (
        "reference id list missing",
        adhoc(base(), query_id=ns.Q_FIND_DOCUMENTS_BY_REFERENCE_ID),
        "XDSStoredQueryMissingParam",
        "$XDSDocumentEntryReferenceIdList",
    ),
    ("GetDocuments without ids", adhoc(query_id=ns.Q_GET_DOCUMENTS), "XDSStoredQueryMissingParam", "EntryUUID"),
    (
        "unknown patient",
        adhoc(base(XDSDocumentEntryPatientId="'180000000000001^^^&1.2.250.1.213.1.4.10&ISO^NH'")),
        "XDSUnknownPatientId",
        "180000000000001",
    ),
    ("returnType", adhoc(base(), return_type="LeafClassWithRepositoryItem"), "XDSRegistryError", "returnType"),
]


@pytest.mark.parametrize(
    ("request_", "code", "context"), [q[1:] for q in QUERY_ERRORS], ids=[q[0] for q in QUERY_ERRORS]
)
async def test_query_errors(tmp_path: Path, request_: etree._Element, code: str, context: str) -> None:
    async with running_sim(tmp_path) as sim:
        reply = await sim.query(copy.deepcopy(request_), patient="180000000000001^^^&1.2.250.1.213.1.4.10&ISO^NH"
                                if code == "XDSUnknownPatientId" else PATIENT)  # fmt: skip
    assert reply.status == 200
    assert reply.payload.tag == f"{Q}AdhocQueryResponse"
    assert reply.status_type == "Failure"
    [(got_code, got_context, _)] = reply.errors()
    assert got_code == code
    assert context in got_context


async def test_query_for_another_patient_than_the_vihf_is_refused(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        await populate(sim)
        reply = await sim.query(adhoc(base(XDSDocumentEntryPatientId=f"'{OTHER_PATIENT}'")), patient=PATIENT)
    assert reply.status == 400
    assert reply.fault is not None and reply.fault[1] == "FailedAuthentication"
    assert OTHER_INS not in reply.fault[2]


def retrieve_request(*pairs: tuple[str, str], patient: str = PATIENT) -> etree._Element:
    envelope = load("iti43-retrieve.xml")
    request = find1(envelope, ".//xdsb:RetrieveDocumentSetRequest")
    template = find1(request, "xdsb:DocumentRequest")
    request.remove(template)
    for repository, unique_id in pairs:
        item = copy.deepcopy(template)
        find1(item, "xdsb:RepositoryUniqueId").text = repository
        find1(item, "xdsb:DocumentUniqueId").text = unique_id
        request.append(item)
    return with_vihf(envelope, build_vihf(patient))


async def test_retrieve_fixture_returns_the_kos_as_an_xop_attachment(tmp_path: Path) -> None:
    sub = submission()
    async with running_sim(tmp_path) as sim:
        assert (await sim.submit(sub)).status_type == "Success"
        envelope = with_vihf(load("iti43-retrieve.xml"), build_vihf(PATIENT))
        reply = await sim.post("/dmp/repository", envelope, as_mtom=False)  # asked in plain SOAP
    assert reply.status == 200
    assert reply.content_type.startswith("multipart/related")  # answered in MTOM all the same
    assert reply.action == ns.ACTION_ITI43_RESPONSE
    assert reply.status_type == "Success", reply.errors()
    response = find1(reply.payload, "xdsb:DocumentResponse")
    assert find1(response, "xdsb:RepositoryUniqueId").text == DMP_REPOSITORY_UNIQUE_ID
    assert find1(response, "xdsb:DocumentUniqueId").text == KOS_UID
    assert find1(response, "xdsb:mimeType").text == "application/dicom"
    href = find1(response, "xdsb:Document/xop:Include").get("href", "")
    assert href.startswith("cid:")
    assert reply.attachments[href[4:]] == sub.document


async def test_retrieve_errors(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        await populate(sim)
        reply = await sim.post(
            "/dmp/repository", retrieve_request((DMP_REPOSITORY_UNIQUE_ID, "1.2.3.4")), as_mtom=False
        )
        assert reply.status_type == "Failure"
        assert reply.codes == ["XDSMissingDocument"]
        assert "1.2.3.4" in reply.errors()[0][1]
        reply = await sim.post("/dmp/repository", retrieve_request(("1.2.250.1.999.9", KOS_UID)), as_mtom=False)
        assert reply.codes == ["XDSUnknownRepositoryId"]
        # One found, one missing, one of another patient: partial success with the one document.
        reply = await sim.post("/dmp/repository", retrieve_request(
            (DMP_REPOSITORY_UNIQUE_ID, KOS_UID), (DMP_REPOSITORY_UNIQUE_ID, "1.2.3.4"),
            (DMP_REPOSITORY_UNIQUE_ID, OTHER_UID)), as_mtom=False)  # fmt: skip
        assert reply.status_type == "PartialSuccess"
        assert reply.codes == ["XDSMissingDocument", "XDSMissingDocument"]
        assert [e.text for e in reply.payload.iterfind(".//xdsb:DocumentUniqueId", NSMAP)] == [KOS_UID]
        assert len(reply.attachments) == 1
