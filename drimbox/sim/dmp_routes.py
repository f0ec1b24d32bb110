"""HTTP face of the simulated DMP: SOAP at /dmp/{registry,repository,patients,habilitations}, inspection, faults."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from lxml import etree

from drimbox.config import ConfigError, Settings
from drimbox.sim import dmp_xml
from drimbox.sim.dmp_access import ACCESS_STATE, AccessRegistry, AccessState
from drimbox.sim.dmp_access_inspect import add_access_routes
from drimbox.sim.dmp_registration import patient_key
from drimbox.sim.dmp_rules import INS_TEST_OID, KnownPatients, XdsError
from drimbox.sim.dmp_service import Answer, DmpOptions, DmpService
from drimbox.sim.dmp_store import DmpStore, StoredEntry
from drimbox.sim.soap_server import SoapFault, SoapRequest, fault_response, parse_request, soap_response
from drimbox.sim.vihf_check import Vihf, VihfPolicy, VihfRefused, verify_vihf
from drimbox.xds import namespaces as ns
from drimbox.xds.metadata import SIGNATURE_TYPE_CODE
from drimbox.xds.schema import SchemaError, validate

log = logging.getLogger("drimbox.sim.dmp")

# Which action each endpoint serves, and the payload element it must carry.
REPOSITORY_ACTIONS = {
    ns.ACTION_ITI41: "ProvideAndRegisterDocumentSetRequest",
    ns.ACTION_ITI43: "RetrieveDocumentSetRequest",
}
REGISTRY_ACTIONS = {ns.ACTION_ITI18: "AdhocQueryRequest", ns.ACTION_ITI57: "SubmitObjectsRequest"}
RESPONSE_ACTIONS = {
    ns.ACTION_ITI41: ns.ACTION_ITI41_RESPONSE,
    ns.ACTION_ITI43: ns.ACTION_ITI43_RESPONSE,
    ns.ACTION_ITI18: ns.ACTION_ITI18_RESPONSE,
    ns.ACTION_ITI57: ns.ACTION_ITI57_RESPONSE,
}
REGISTRY_BUSY = "XDSRegistryBusy"
REPOSITORY_BUSY = "XDSRepositoryBusy"
FAULT_KINDS = ("busy", "unavailable", "fault", "delay")


@dataclass
class Faults:
    """Failures for the next DMP requests: busy → XDS*Busy, unavailable → HTTP 503, fault → SOAP fault,
    delay → the request is served, then its answer held back `delay_seconds`."""

    pending: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    delay_seconds: float = 0.0

    def take(self, kind: str) -> bool:
        if self.pending[kind] > 0:
            self.pending[kind] -= 1
            return True
        return False


@dataclass
class DmpState:
    service: DmpService
    store: DmpStore
    options: DmpOptions
    faults: Faults
    access: AccessRegistry


DMP_STATE = web.AppKey("dmp_state", DmpState)


def _busy_answer(action: str) -> Answer:
    if action == ns.ACTION_ITI43:
        error = XdsError(REPOSITORY_BUSY, "the repository is busy (injected fault), retry later")
        return Answer(dmp_xml.retrieve_response([error], [], ""))
    error = XdsError(REGISTRY_BUSY, "the registry is busy (injected fault), retry later")
    if action == ns.ACTION_ITI18:
        return Answer(dmp_xml.adhoc_response([error], []))
    return Answer(dmp_xml.registry_response([error]))


async def _dispatch(state: DmpState, request: SoapRequest, actions: dict[str, str]) -> Answer:
    expected = actions.get(request.action)
    if expected is None:
        raise SoapFault(
            f"action {request.action} is not served at this endpoint", subcode=(ns.WSA, "ActionNotSupported")
        )
    if etree.QName(request.payload).localname != expected:
        raise SoapFault(f"action {request.action} expects a {expected} in the Body")
    if state.faults.take("busy"):
        return _busy_answer(request.action)
    vihf: Vihf | None = None
    if state.options.require_vihf:
        vihf = await asyncio.to_thread(verify_vihf, request.header, state.options.vihf_policy)
    if request.action in (ns.ACTION_ITI18, ns.ACTION_ITI43):
        await state.access.require_consultation(vihf, request.action)  # TD0.3 must have granted access (see dmp_access)
    service = state.service
    if request.action == ns.ACTION_ITI41:
        return await service.provide_and_register(request.payload, request.attachments, vihf)
    if request.action == ns.ACTION_ITI43:
        return await service.retrieve(request.payload, vihf)
    if request.action == ns.ACTION_ITI18:
        return await service.stored_query(request.payload, vihf)
    return await service.update(request.payload, vihf)


def _soap_handler(actions: dict[str, str]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(http: web.Request) -> web.StreamResponse:
        state = http.app[DMP_STATE]
        delayed = state.faults.take("delay")
        response = await serve(http, state)
        if delayed:
            # Late, not lost: the work is done (a KOS may be registered) when a client's time-out fires.
            await asyncio.sleep(state.faults.delay_seconds)
        return response

    async def serve(http: web.Request, state: DmpState) -> web.StreamResponse:
        if state.faults.take("unavailable"):
            return web.Response(status=503, headers={"Retry-After": "1"}, text="DMP unavailable (injected fault)")
        body = await http.read()  # bounded by the application's client_max_size (413 beyond)
        relates_to: str | None = None
        try:
            request = await asyncio.to_thread(parse_request, http.headers.get("Content-Type", ""), body)
            relates_to = request.message_id
            if state.faults.take("fault"):
                raise SoapFault("the DMP failed (injected fault)", code="Receiver")
            answer = await _dispatch(state, request, actions)
            try:
                await asyncio.to_thread(validate, answer.payload)
            except SchemaError:
                # Not the schema message itself: it may quote values, and logs carry no patient data.
                log.error("the simulator built a %s that does not validate", etree.QName(answer.payload).localname)
                raise SoapFault("internal error: invalid response", code="Receiver") from None
        except VihfRefused as exc:
            log.info("VIHF refused: %s", exc.subcode)
            return fault_response(SoapFault(exc.reason, subcode=(ns.WSSE, exc.subcode)), relates_to)
        except SoapFault as fault:
            log.info("SOAP fault %s: %s", fault.code, fault.subcode[1] if fault.subcode else "-")
            return fault_response(fault, relates_to)
        except Exception as exc:
            # A bug or an I/O failure still answers in SOAP; only the type is logged (messages may quote data).
            log.error("DMP simulator internal error: %s", type(exc).__name__)
            return fault_response(SoapFault("internal error of the DMP simulator", code="Receiver"), relates_to)
        # ITI-43 always answers MTOM (the document travels as an XOP attachment); others mirror the request.
        # Built off the loop: serialising and packaging may copy a large document.
        return await asyncio.to_thread(
            partial(
                soap_response,
                RESPONSE_ACTIONS[request.action],
                relates_to,
                answer.payload,
                as_mtom=request.mtom or request.action == ns.ACTION_ITI43,
                attachments=answer.attachments,
            )
        )

    return handler


# -- inspection ---------------------------------------------------------------------------------


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def entry_json(entry: StoredEntry, replaces: str | None, replaced_by: str | None) -> dict[str, Any]:
    meta = entry.meta
    return {
        "uniqueId": entry.unique_id,
        "entryUUID": entry.entry_uuid,
        "status": entry.status,
        "patientId": entry.patient_id,
        "mimeType": entry.mime_type,
        "title": meta.get("title"),
        "classCode": meta.get("classCode"),
        "typeCode": meta.get("typeCode"),
        "formatCode": meta.get("formatCode"),
        "practiceSettingCode": meta.get("practiceSettingCode"),
        "healthcareFacilityTypeCode": meta.get("healthcareFacilityTypeCode"),
        "confidentiality": meta.get("confidentialityCodes", []),
        "eventCodes": meta.get("eventCodes", []),
        "referenceIds": meta.get("referenceIds", []),
        "author": meta.get("authors", []),
        "hash": entry.hash,
        "size": entry.size,
        "creationTime": meta.get("creationTime"),
        "serviceStartTime": meta.get("serviceStartTime"),
        "serviceStopTime": meta.get("serviceStopTime"),
        "repositoryUniqueId": entry.repository_unique_id,
        "submissionTime": entry.submission_time,
        "submissionSet": entry.submission_set,
        "replaces": replaces,
        "replacedBy": replaced_by,
    }


async def list_documents(http: web.Request) -> web.Response:
    store = http.app[DMP_STATE].store
    patient = http.query.get("patient")
    if patient is None:
        entries = await store.entries()
    else:
        key = patient_key(patient) if "^" in patient else f"{patient}|{INS_TEST_OID}"
        if not key or not patient.split("^")[0].isalnum():
            return _json_error(400, "patient must be an INS or an HL7 CX id^^^&OID&ISO^NH")
        entries = await store.entries(patient_key=key)
    if http.query.get("signatures") != "1":
        # Each ITI-41 also stores its signature; the inspection list shows the documents unless asked.
        entries = [e for e in entries if (e.meta.get("typeCode") or {}).get("code") != SIGNATURE_TYPE_CODE.code]
    uids = {e.entry_uuid: e.unique_id for e in await store.entries()}
    replaces: dict[str, str] = {}
    replaced_by: dict[str, str] = {}
    for a in await store.associations([e.entry_uuid for e in entries]):
        if a.type == ns.ASSOC_RPLC:
            replaces[a.source] = uids.get(a.target, a.target)
            replaced_by[a.target] = uids.get(a.source, a.source)
    return web.json_response(
        [entry_json(e, replaces.get(e.entry_uuid), replaced_by.get(e.entry_uuid)) for e in entries]
    )


async def get_document(http: web.Request) -> web.Response:
    store = http.app[DMP_STATE].store
    entries = await store.entries(unique_ids=[http.match_info["unique_id"]])
    if not entries:
        return _json_error(404, "no document with this uniqueId in the simulated DMP")
    return web.Response(body=await store.read_document(entries[0]), content_type=entries[0].mime_type)


async def faults(http: web.Request) -> web.Response:
    """GET shows, POST {"busy": n, "unavailable": n, "fault": n, "delay": n, "delay_seconds": s} adds,
    DELETE clears the pending faults."""
    state = http.app[DMP_STATE].faults
    pending = state.pending
    if http.method == "DELETE":
        pending.update(dict.fromkeys(FAULT_KINDS, 0))
        state.delay_seconds = 0.0
    elif http.method == "POST":
        try:
            body = await http.json()
        except ValueError:
            return _json_error(400, "body must be JSON")
        if not isinstance(body, dict) or not body:
            return _json_error(400, f"body must be an object with counts for {', '.join(FAULT_KINDS)}")
        seconds = body.pop("delay_seconds", None)
        if seconds is not None:
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 <= seconds <= 600:
                return _json_error(400, "'delay_seconds': expected a number of seconds between 0 and 600")
        for kind, count in body.items():
            if kind not in FAULT_KINDS or not isinstance(count, int) or isinstance(count, bool) or count < 0:
                return _json_error(400, f"{kind!r}: expected one of {', '.join(FAULT_KINDS)} with a count >= 0")
        if seconds is not None:
            state.delay_seconds = float(seconds)
        for kind, count in body.items():
            pending[kind] += count
    return web.json_response({**pending, "delay_seconds": state.delay_seconds})


def options_from_settings(settings: Settings) -> DmpOptions:
    """The DMP options that `[sim]` configures (trusted VIHF signers)."""
    trusted = []
    for path in settings.sim.trusted_certs:
        try:
            trusted.append(x509.load_pem_x509_certificate(Path(path).read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"sim.trusted_certs: cannot read a PEM certificate from {path}: {exc}") from None
    return DmpOptions(vihf_policy=VihfPolicy(trusted=tuple(trusted)))


def setup_dmp(app: web.Application, settings: Settings, options: DmpOptions | None = None) -> None:
    """Mount the DMP under /dmp (registry, repository, access) and its inspection under /sim/dmp."""
    options = options or options_from_settings(settings)
    patients = KnownPatients(settings.sim.patients)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = DmpStore(settings.sim_var_path / "dmp", options.repository_unique_id)
        await store.open()
        registry = await AccessRegistry.open(settings.sim_var_path / "dmp" / "access.sqlite")
        faults = Faults()
        app[DMP_STATE] = DmpState(DmpService(store, patients, options), store, options, faults, registry)
        app[ACCESS_STATE] = AccessState(registry, patients, options.vihf_policy, options.require_vihf, faults)
        yield
        await registry.close()
        await store.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/dmp/repository", _soap_handler(REPOSITORY_ACTIONS))
    app.router.add_post("/dmp/registry", _soap_handler(REGISTRY_ACTIONS))
    add_access_routes(app)  # TD0.2 at /dmp/patients, TD0.3 at /dmp/habilitations, inspection at /sim/dmp/access
    app.router.add_get("/sim/dmp/documents", list_documents)
    app.router.add_get("/sim/dmp/documents/{unique_id}", get_document)
    for method in ("GET", "POST", "DELETE"):
        app.router.add_route(method, "/sim/dmp/faults", faults)
