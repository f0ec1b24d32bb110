"""The DMP transactions top-down: ITI-41 provide & register, ITI-43 retrieve, ITI-18 query, ITI-57 update."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field

from lxml import etree

from drimbox.sim import dmp_xml
from drimbox.sim.dmp_kinds import DEFAULT_KINDS, DocumentKind
from drimbox.sim.dmp_metadata import Submission, parse_cx, parse_submission
from drimbox.sim.dmp_query import run_stored_query
from drimbox.sim.dmp_registration import (
    Registration,
    StatusUpdate,
    build_association,
    build_registration,
    build_submission_set,
    id_map,
    is_uuid_urn,
)
from drimbox.sim.dmp_rules import (
    DMP_REPOSITORY_UNIQUE_ID,
    METADATA,
    MISSING_DOCUMENT,
    KnownPatients,
    XdsError,
    check_provide_and_register,
    check_submission_set,
)
from drimbox.sim.dmp_signature import check_signature
from drimbox.sim.dmp_store import UPDATE_ERROR, UPDATE_OPERATION_ERROR, DmpStore, StoredEntry
from drimbox.sim.vihf_check import FAILED_AUTHENTICATION, Vihf, VihfPolicy, VihfRefused
from drimbox.xds import mtom
from drimbox.xds import namespaces as ns
from drimbox.xds.schema import SchemaError, validate

log = logging.getLogger("drimbox.sim.dmp")
ASSOC_UPDATE_STATUS = ns.ASSOC_UPDATE_AVAILABILITY_STATUS
UNKNOWN_REPOSITORY = "XDSUnknownRepositoryId"
_STATUSES = frozenset({ns.STATUS_APPROVED, ns.STATUS_DEPRECATED, ns.STATUS_DELETED, ns.STATUS_ARCHIVED})


@dataclass(frozen=True)
class DmpOptions:
    """What the simulated DMP is configured with beyond Settings (tests and embedders may override)."""

    repository_unique_id: str = DMP_REPOSITORY_UNIQUE_ID
    document_kinds: tuple[DocumentKind, ...] = DEFAULT_KINDS
    vihf_policy: VihfPolicy = field(default_factory=VihfPolicy)
    # The real DMP refuses any request without a VIHF; switch off only to isolate other faults in tests.
    require_vihf: bool = True


@dataclass
class Answer:
    payload: etree._Element
    attachments: list[mtom.Attachment] = field(default_factory=list)


def _codes(errors: list[XdsError]) -> str:
    return ", ".join(f"{code}×{n}" for code, n in Counter(e.code for e in errors).items())


def _scope(vihf: Vihf | None) -> str | None:
    return None if vihf is None or vihf.patient is None else "|".join(vihf.patient)


def _check_patient(vihf: Vihf | None, patient: str | None) -> None:
    """The VIHF's resource-id must name the patient the request is about (when both are readable)."""
    if vihf is None or patient is None or parse_cx(patient) is None:
        return
    if parse_cx(patient) != vihf.patient:
        raise VihfRefused(FAILED_AUTHENTICATION, "the VIHF resource-id does not designate the patient of the request")


def _documents(
    payload: etree._Element, attachments: dict[str, bytes]
) -> tuple[dict[str, bytes | None], list[XdsError]]:
    """xdsb:Document id → bytes (None when its xop:Include names no attachment or its base64 is bad)."""
    documents: dict[str, bytes | None] = {}
    errors = []
    for doc in payload.findall(f"{{{ns.XDSB}}}Document"):
        doc_id = doc.get("id", "")
        if doc_id in documents:
            errors.append(XdsError(METADATA, f"xdsb:Document id={doc_id!r} appears more than once"))
        try:
            documents[doc_id] = mtom.resolve_include(doc, attachments)
        except mtom.MtomError:
            documents[doc_id] = None
    return documents, errors


class DmpService:
    def __init__(self, store: DmpStore, patients: KnownPatients, options: DmpOptions) -> None:
        self.store = store
        self.patients = patients
        self.options = options

    @staticmethod
    async def _schema_errors(payload: etree._Element) -> list[XdsError]:
        try:
            await asyncio.to_thread(validate, payload)
        except SchemaError as exc:
            return [XdsError(METADATA, str(exc)[:2000])]
        return []

    # -- ITI-41 -------------------------------------------------------------------------------------

    async def provide_and_register(
        self, payload: etree._Element, attachments: dict[str, bytes], vihf: Vihf | None
    ) -> Answer:
        errors = await self._schema_errors(payload)
        if errors:
            return Answer(dmp_xml.registry_response(errors))
        documents, errors = await asyncio.to_thread(_documents, payload, attachments)
        request = payload.find(f"{{{ns.LCM}}}SubmitObjectsRequest")
        assert request is not None  # the schema requires it
        sub = parse_submission(request)
        if sub.submission_set is not None:
            _check_patient(vihf, sub.submission_set.external_id(ns.SS_PATIENT_ID))
        kinds = self.options.document_kinds
        errors += await asyncio.to_thread(check_provide_and_register, sub, documents, self.patients, kinds)
        signer = vihf.issuer if vihf is not None else None
        errors += await asyncio.to_thread(check_signature, sub, documents, kinds, signer)
        if not errors:
            repository = self.options.repository_unique_id
            reg = await asyncio.to_thread(build_registration, sub, documents, repository)
            errors = await self.store.register(reg)
        if errors:
            log.info("ITI-41 refused: %s", _codes(errors))
        else:
            log.info("ITI-41 registered %d document(s)", len(sub.entries))
        return Answer(dmp_xml.registry_response(errors))

    # -- ITI-43 -------------------------------------------------------------------------------------

    async def retrieve(self, payload: etree._Element, vihf: Vihf | None) -> Answer:
        errors = await self._schema_errors(payload)
        if errors:
            return Answer(dmp_xml.retrieve_response(errors, [], self.options.repository_unique_id))
        found: list[tuple[StoredEntry, str]] = []
        attachments: list[mtom.Attachment] = []
        scope = _scope(vihf)
        for request in payload.findall(f"{{{ns.XDSB}}}DocumentRequest"):
            repository = (request.findtext(f"{{{ns.XDSB}}}RepositoryUniqueId") or "").strip()
            unique_id = (request.findtext(f"{{{ns.XDSB}}}DocumentUniqueId") or "").strip()
            if repository != self.options.repository_unique_id:
                errors.append(
                    XdsError(
                        UNKNOWN_REPOSITORY,
                        f"RepositoryUniqueId {repository} is not this repository ({self.options.repository_unique_id})",
                        unique_id,
                    )
                )
                continue
            entries = await self.store.entries(unique_ids=[unique_id])
            entry = entries[0] if entries else None
            if entry is None or entry.status == ns.STATUS_DELETED or (scope is not None and entry.patient_key != scope):
                why = (
                    "was deleted"
                    if entry is not None and entry.status == ns.STATUS_DELETED
                    else "is not in the DMP of the VIHF's patient"
                )
                errors.append(
                    XdsError(
                        MISSING_DOCUMENT,
                        f"document {unique_id} {why if entry else 'is not in this repository'}",
                        unique_id,
                    )
                )
                continue
            cid = f"doc{len(found)}.{uuid.uuid4().hex}@dmp.sim"
            attachments.append(mtom.Attachment(cid, await self.store.read_document(entry), entry.mime_type))
            found.append((entry, cid))
        log.info("ITI-43 returned %d document(s), %d error(s)", len(found), len(errors))
        return Answer(dmp_xml.retrieve_response(errors, found, self.options.repository_unique_id), attachments)

    # -- ITI-18 -------------------------------------------------------------------------------------

    async def stored_query(self, payload: etree._Element, vihf: Vihf | None) -> Answer:
        errors = await self._schema_errors(payload)
        if errors:
            return Answer(dmp_xml.adhoc_response(errors, []))
        response = await run_stored_query(payload, self.store, self.patients, _scope(vihf))
        log.info("ITI-18 answered %s", response.get("status", "").rsplit(":", 1)[-1])
        return Answer(response)

    # -- ITI-57 -------------------------------------------------------------------------------------

    async def update(self, payload: etree._Element, vihf: Vihf | None) -> Answer:
        errors = await self._schema_errors(payload)
        if errors:
            return Answer(dmp_xml.registry_response(errors))
        sub = parse_submission(payload)
        if sub.submission_set is not None:
            _check_patient(vihf, sub.submission_set.external_id(ns.SS_PATIENT_ID))
        errors, reg = self._update_registration(sub)
        if not errors and reg is not None:
            errors = await self.store.update_status(reg)
        if errors:
            log.info("ITI-57 refused: %s", _codes(errors))
        else:
            log.info("ITI-57 applied %d status change(s)", len(reg.updates) if reg else 0)
        return Answer(dmp_xml.registry_response(errors))

    def _update_registration(self, sub: Submission) -> tuple[list[XdsError], Registration | None]:
        """Request-only rules of a status update (ITI TF-2b 3.57.4.1.3.3.2) and the records it would write."""
        errors = [XdsError(METADATA, f"{what} is not accepted in an update") for what in sub.unexpected]
        errors += [XdsError(METADATA, f"{what} names no object of this submission") for what in sub.misplaced]
        ss = sub.submission_set
        if ss is None:
            return [
                *errors,
                XdsError(METADATA, f"exactly one SubmissionSet is required, found {len(sub.submission_sets)}"),
            ], None
        errors += check_submission_set(ss, self.patients)
        errors += [
            XdsError(
                UPDATE_OPERATION_ERROR,
                "only availability-status updates are supported; DocumentEntry metadata updates are not",
                f"ExtrinsicObject[@id='{e.id}']",
            )
            for e in sub.entries
        ]
        updates_ids = {a.id for a in sub.associations if a.type == ASSOC_UPDATE_STATUS}
        mapping = id_map(sub)
        updates = []
        for a in sub.associations:
            loc = f"Association[@id='{a.id}']"
            if a.type == ns.ASSOC_HAS_MEMBER and a.source == ss.id and a.target in updates_ids:
                continue
            if a.type != ASSOC_UPDATE_STATUS:
                errors.append(
                    XdsError(UPDATE_OPERATION_ERROR, f"associationType {a.type} is not supported in an update", loc)
                )
                continue
            original, new = a.slot("OriginalStatus"), a.slot("NewStatus")
            if a.source != ss.id or not is_uuid_urn(a.target):
                errors.append(
                    XdsError(
                        UPDATE_ERROR,
                        "UpdateAvailabilityStatus must go from the SubmissionSet to the entryUUID of a DocumentEntry",
                        loc,
                    )
                )
            elif original not in _STATUSES or new not in _STATUSES:
                errors.append(
                    XdsError(
                        UPDATE_ERROR,
                        f"slots OriginalStatus and NewStatus must each be one of {', '.join(sorted(_STATUSES))}",
                        loc,
                    )
                )
            else:
                assert original is not None and new is not None
                updates.append(StatusUpdate(mapping[a.id], a.target, original, new))
        if not updates and not errors:
            errors.append(XdsError(UPDATE_ERROR, "the update holds no UpdateAvailabilityStatus association"))
        if errors:
            return errors, None
        reg = Registration(
            submission_set=build_submission_set(ss, mapping),
            associations=[build_association(a, mapping) for a in sub.associations],
            updates=updates,
        )
        return [], reg
