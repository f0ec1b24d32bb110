"""Document lifecycle on the simulated DMP (RPLC, ITI-57), durability, inspection, faults and SOAP errors."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from lxml import etree

from drimbox.sim import DMP_REPOSITORY_UNIQUE_ID
from drimbox.xds import mtom
from drimbox.xds import namespaces as ns
from tests.test_sim_dmp_query import adhoc, base, retrieve_request, unique_ids
from tests.test_sim_dmp_support import (
    INS,
    KOS_UID,
    NSMAP,
    OTHER_PATIENT,
    PATIENT,
    PLACEHOLDER_UUID,
    Sim,
    Submission,
    build_vihf,
    find1,
    load,
    running_sim,
    set_ei,
    submission,
    with_vihf,
)

NEW_UID = "1.2.250.1.999.1.1.2.103.2"


def replacing(target: str, unique_id: str = NEW_UID, patient: str = PATIENT) -> Submission:
    sub = submission(unique_id, patient=patient)
    rol = find1(sub.envelope, ".//rim:RegistryObjectList")
    etree.SubElement(rol, f"{{{ns.RIM}}}Association", id="rplc1", associationType=ns.ASSOC_RPLC,
                     sourceObject="DocumentKOS", targetObject=target)  # fmt: skip
    return sub


def status_update(
    target: str, new: str = ns.STATUS_DELETED, original: str = ns.STATUS_APPROVED, patient: str = PATIENT
) -> etree._Element:
    envelope = load("iti57-delete.xml")
    assoc = find1(envelope, ".//rim:Association")
    assert assoc.get("targetObject") == PLACEHOLDER_UUID
    assoc.set("targetObject", target)
    for slot_el in assoc.iterfind("rim:Slot", NSMAP):
        value = find1(slot_el, "rim:ValueList/rim:Value")
        value.text = new if slot_el.get("name") == "NewStatus" else original
    find1(envelope, ".//wsa:MessageID").text = f"urn:uuid:{uuid.uuid4()}"
    set_ei(envelope, ns.SS_UNIQUE_ID, f"1.2.250.1.999.1.1.4.57.{uuid.uuid4().int % 10**9}", "SubmissionSet01")
    set_ei(envelope, ns.SS_PATIENT_ID, patient, "SubmissionSet01")
    return with_vihf(envelope, build_vihf(patient))


async def entry_uuid(sim: Sim, unique_id: str, patient: str = INS) -> str:
    return next(str(d["entryUUID"]) for d in await sim.documents(patient) if d["uniqueId"] == unique_id)


async def approved(sim: Sim) -> list[str]:
    reply = await sim.query(adhoc(base()))
    assert reply.status_type == "Success", reply.errors()
    return unique_ids(reply.payload)


async def test_rplc_deprecates_the_replaced_entry(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        assert (await sim.submit(submission())).status_type == "Success"
        old = await entry_uuid(sim, KOS_UID)
        reply = await sim.submit(replacing(old))
        assert reply.status_type == "Success", reply.errors()
        docs = {d["uniqueId"]: d for d in await sim.documents()}
        assert docs[KOS_UID]["status"] == ns.STATUS_DEPRECATED
        assert docs[NEW_UID]["status"] == ns.STATUS_APPROVED
        assert docs[NEW_UID]["replaces"] == KOS_UID
        assert docs[KOS_UID]["replacedBy"] == NEW_UID
        assert await approved(sim) == [NEW_UID]
        reply = await sim.query(adhoc({"uuid": f"('{old}')"}, query_id=ns.Q_GET_ASSOCIATIONS))
        kinds = {a.get("associationType") for a in reply.payload.iterfind(".//rim:Association", NSMAP)}
        assert kinds == {ns.ASSOC_HAS_MEMBER, ns.ASSOC_RPLC}
        # The deprecated one cannot be replaced again.
        reply = await sim.submit(replacing(old, "1.2.250.1.999.1.1.2.103.3"))
        assert reply.codes == ["XDSRegistryDeprecatedDocumentError"], reply.errors()


async def test_rplc_by_unique_id_reference(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        assert (await sim.submit(submission())).status_type == "Success"
        reply = await sim.submit(replacing(KOS_UID))
        assert reply.status_type == "Success", reply.errors()
        docs = {d["uniqueId"]: d for d in await sim.documents()}
        assert docs[KOS_UID]["status"] == ns.STATUS_DEPRECATED
        assert docs[NEW_UID]["replaces"] == KOS_UID


async def test_rplc_refusals(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        reply = await sim.submit(replacing(f"urn:uuid:{uuid.uuid4()}"))
        assert reply.codes == ["UnresolvedReferenceException"], reply.errors()
        assert (await sim.submit(submission("1.2.250.1.999.1.1.2.300.1", patient=OTHER_PATIENT))).codes == []
        other = await entry_uuid(sim, "1.2.250.1.999.1.1.2.300.1", OTHER_PATIENT)
        reply = await sim.submit(replacing(other))
        assert reply.codes == ["XDSPatientIdDoesNotMatch"], reply.errors()
        assert [d["uniqueId"] for d in await sim.documents()] == []


async def test_delete_through_iti57(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        assert (await sim.submit(submission())).status_type == "Success"
        target = await entry_uuid(sim, KOS_UID)
        reply = await sim.post("/dmp/registry", status_update(target), as_mtom=False)
        assert reply.action == ns.ACTION_ITI57_RESPONSE
        assert reply.status_type == "Success", reply.errors()
        [doc] = await sim.documents()
        assert doc["status"] == ns.STATUS_DELETED
        assert await approved(sim) == []
        reply = await sim.post("/dmp/repository", retrieve_request((DMP_REPOSITORY_UNIQUE_ID, KOS_UID)), as_mtom=False)
        assert reply.codes == ["XDSMissingDocument"] and "deleted" in reply.errors()[0][1]
        # Deleting again: the original status is no longer Approved, and Deleted is final.
        reply = await sim.post("/dmp/registry", status_update(target), as_mtom=False)
        assert reply.codes == ["XDSMetadataUpdateError"], reply.errors()
        reply = await sim.post("/dmp/registry", status_update(target, ns.STATUS_APPROVED, ns.STATUS_DELETED),
                               as_mtom=False)  # fmt: skip
        assert reply.codes == ["XDSMetadataUpdateOperationError"], reply.errors()


async def test_deprecate_through_iti57_and_query_by_status(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        assert (await sim.submit(submission())).status_type == "Success"
        target = await entry_uuid(sim, KOS_UID)
        reply = await sim.post("/dmp/registry", status_update(target, ns.STATUS_DEPRECATED), as_mtom=False)
        assert reply.status_type == "Success", reply.errors()
        assert await approved(sim) == []
        reply = await sim.query(adhoc(base(XDSDocumentEntryStatus=f"('{ns.STATUS_DEPRECATED}')")))
        assert unique_ids(reply.payload) == [KOS_UID]
        assert find1(reply.payload, ".//rim:ExtrinsicObject").get("status") == ns.STATUS_DEPRECATED


async def test_iti57_refusals(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        reply = await sim.post("/dmp/registry", status_update(f"urn:uuid:{uuid.uuid4()}"), as_mtom=False)
        assert reply.codes == ["UnresolvedReferenceException"], reply.errors()
        assert (await sim.submit(submission())).status_type == "Success"
        target = await entry_uuid(sim, KOS_UID)
        reply = await sim.post("/dmp/registry", status_update(target, patient=OTHER_PATIENT), as_mtom=False)
        assert reply.codes == ["XDSPatientIdDoesNotMatch"], reply.errors()
        reply = await sim.post("/dmp/registry", status_update(target, "urn:example:Gone"), as_mtom=False)
        assert reply.codes == ["XDSMetadataUpdateError"], reply.errors()
        [doc] = await sim.documents()
        assert doc["status"] == ns.STATUS_APPROVED


async def test_registry_survives_a_restart(tmp_path: Path) -> None:
    sub = submission()
    async with running_sim(tmp_path) as sim:
        assert (await sim.submit(sub)).status_type == "Success"
        target = await entry_uuid(sim, KOS_UID)
        second = submission(NEW_UID)
        assert (await sim.submit(second)).status_type == "Success"
        assert (await sim.post("/dmp/registry", status_update(target), as_mtom=False)).status_type == "Success"
        before = await sim.documents()
    async with running_sim(tmp_path) as sim:
        assert await sim.documents() == before
        assert await approved(sim) == [NEW_UID]
        reply = await sim.post("/dmp/repository", retrieve_request((DMP_REPOSITORY_UNIQUE_ID, NEW_UID)), as_mtom=False)
        assert reply.status_type == "Success"
        assert list(reply.attachments.values()) == [second.document]
        assert (await sim.submit(submission(NEW_UID))).codes == ["XDSDuplicateUniqueIdInRegistry"]


async def test_fault_injection(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        resp = await sim.client.post("/sim/dmp/faults", json={"busy": 1, "unavailable": 1, "fault": 1})
        assert resp.status == 200
        assert await resp.json() == {"busy": 1, "unavailable": 1, "fault": 1, "delay": 0, "delay_seconds": 0.0}
        # unavailable comes first (before the request is read), then the SOAP fault, then busy.
        first = await sim.client.post("/dmp/repository", data=b"<x/>", headers={"Content-Type": "application/soap+xml"})
        assert first.status == 503
        reply = await sim.submit(submission())
        assert reply.status == 500 and reply.fault is not None and reply.fault[0] == "Receiver"
        reply = await sim.submit(submission())
        assert reply.codes == ["XDSRegistryBusy"]
        pending = await (await sim.client.get("/sim/dmp/faults")).json()
        assert pending == {"busy": 0, "unavailable": 0, "fault": 0, "delay": 0, "delay_seconds": 0.0}
        assert (await sim.submit(submission())).status_type == "Success"
        await sim.client.post("/sim/dmp/faults", json={"busy": 3})
        reply = await sim.query(adhoc(base()))
        assert reply.payload.tag == f"{{{ns.QUERY}}}AdhocQueryResponse" and reply.codes == ["XDSRegistryBusy"]
        reply = await sim.post("/dmp/repository", retrieve_request((DMP_REPOSITORY_UNIQUE_ID, KOS_UID)), as_mtom=False)
        assert reply.codes == ["XDSRepositoryBusy"]
        assert (await sim.client.delete("/sim/dmp/faults")).status == 200
        assert (await (await sim.client.get("/sim/dmp/faults")).json())["busy"] == 0
        bad_bodies: list[object] = [{"busy": -1}, {"slow": 1}, {"busy": True}, [], {}, {"delay_seconds": -1}]
        for bad in bad_bodies:
            assert (await sim.client.post("/sim/dmp/faults", json=bad)).status == 400
        assert (
            await sim.client.post("/sim/dmp/faults", data=b"{", headers={"Content-Type": "application/json"})
        ).status == 400


async def test_delay_fault_serves_the_request_then_answers_late(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        resp = await sim.client.post("/sim/dmp/faults", json={"delay": 1, "delay_seconds": 0.5})
        assert (await resp.json())["delay_seconds"] == 0.5
        started = time.monotonic()
        assert (await sim.submit(submission())).status_type == "Success"
        assert time.monotonic() - started >= 0.5
        # Served once: the same KOS again is a duplicate, and answered at once.
        started = time.monotonic()
        assert (await sim.submit(submission())).codes == ["XDSDuplicateUniqueIdInRegistry"]
        assert time.monotonic() - started < 0.5


async def test_inspection_errors(tmp_path: Path) -> None:
    async with running_sim(tmp_path) as sim:
        resp = await sim.client.get("/sim/dmp/documents/1.2.3.4")
        assert resp.status == 404
        assert "error" in await resp.json()
        resp = await sim.client.get("/sim/dmp/documents", params={"patient": "^^^&x"})
        assert resp.status == 400
        resp = await sim.client.get("/sim/dmp/documents")
        assert resp.status == 200 and await resp.json() == []


def raw_envelope(action: str, body: str, header_extra: str = "", message_id: bool = True) -> bytes:
    mid = f"<wsa:MessageID>urn:uuid:{uuid.uuid4()}</wsa:MessageID>" if message_id else ""
    return (
        f'<soap:Envelope xmlns:soap="{ns.SOAP12}" xmlns:wsa="{ns.WSA}"><soap:Header>'
        f'<wsa:Action soap:mustUnderstand="true">{action}</wsa:Action>{mid}{header_extra}</soap:Header>'
        f"<soap:Body>{body}</soap:Body></soap:Envelope>"
    ).encode()


async def test_soap_level_faults(tmp_path: Path) -> None:
    query = '<query:AdhocQueryRequest xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"/>'
    async with running_sim(tmp_path) as sim:

        async def fault(path: str, body: bytes, content_type: str = "application/soap+xml") -> tuple[str, str, str]:
            reply = await sim.post(path, body, content_type=content_type)
            assert reply.status == 400
            assert reply.action == "http://www.w3.org/2005/08/addressing/soap/fault"
            assert reply.fault is not None
            return reply.fault

        assert (await fault("/dmp/repository", raw_envelope("urn:example:Nothing", "<x/>")))[1] == "ActionNotSupported"
        # ITI-18 belongs to the registry endpoint.
        assert (await fault("/dmp/repository", raw_envelope(ns.ACTION_ITI18, query)))[1] == "ActionNotSupported"
        assert "expects a ProvideAndRegisterDocumentSetRequest" in (
            await fault("/dmp/repository", raw_envelope(ns.ACTION_ITI41, query)))[2]  # fmt: skip
        assert (await fault("/dmp/registry", b"not xml at all"))[0] == "Sender"
        xxe = b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]><e>&x;</e>'
        assert "DOCTYPE" in (await fault("/dmp/registry", xxe))[2]
        soap11 = b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>'
        assert (await fault("/dmp/registry", soap11))[0] == "VersionMismatch"
        no_id = raw_envelope(ns.ACTION_ITI18, query, message_id=False)
        assert (await fault("/dmp/registry", no_id))[1] == "MessageAddressingHeaderRequired"
        strange = '<x:Billing xmlns:x="urn:example" soap:mustUnderstand="true"/>'
        assert (await fault("/dmp/registry", raw_envelope(ns.ACTION_ITI18, query, strange)))[0] == "MustUnderstand"
        assert (await fault("/dmp/registry", raw_envelope(ns.ACTION_ITI18, query), "text/plain"))[0] == "Sender"


async def test_schema_invalid_query_is_a_registry_failure(tmp_path: Path) -> None:
    bad = etree.fromstring(
        f'<query:AdhocQueryRequest xmlns:query="{ns.QUERY}" xmlns:rim="{ns.RIM}"><rim:Nonsense/></query:AdhocQueryRequest>'
    )
    async with running_sim(tmp_path) as sim:
        reply = await sim.query(bad)
    assert reply.status == 200
    assert reply.status_type == "Failure"
    assert reply.codes == ["XDSRegistryMetadataError"]


async def test_request_body_is_bounded(tmp_path: Path) -> None:
    sub = submission()
    big = mtom.Attachment("padding@test", b"\0" * 300_000)
    async with running_sim(tmp_path, max_request_bytes=200_000) as sim:
        content_type, body = mtom.encode(etree.tostring(sub.envelope), [*sub.documents(), big], ns.ACTION_ITI41)
        resp = await sim.client.post("/dmp/repository", data=body, headers={"Content-Type": content_type})
        assert resp.status == 413
        assert (await sim.submit(sub)).status_type == "Success"  # a normal request still fits
