"""Async DMP client: ITI-41/ITI-43 on the repository, ITI-18/ITI-57 on the registry (SOAP 1.2, MTOM, VIHF)."""

from __future__ import annotations

import logging
import re
import ssl
import time
import uuid
from collections.abc import Mapping, Sequence
from types import TracebackType

import aiohttp
from lxml import etree

from drimbox import metrics, tls
from drimbox.xds import access, metadata, mtom, query, schema, signature, soap, td02, td03
from drimbox.xds import namespaces as ns
from drimbox.xds.access import AccessStatus, DeclareResult
from drimbox.xds.metadata import Code, KosDocumentEntry, MetadataError, ReferenceId, SubmissionSet
from drimbox.xds.query import DocumentEntryInfo
from drimbox.xds.soap import RegistryError, RegistryResponse, SoapFault
from drimbox.xds.vihf import VihfIdentity, VihfSigner

log = logging.getLogger(__name__)

# Registry answers that say "not now" rather than "not this": the request may succeed if sent again later.
TRANSIENT_ERROR_CODES = frozenset({
    "XDSRegistryBusy", "XDSRepositoryBusy", "XDSRegistryNotAvailable", "XDSRepositoryNotAvailable",
    "XDSRegistryOutOfResources", "XDSRepositoryOutOfResources",
})  # fmt: skip
_LONG_DIGITS = re.compile(r"\d{13,}")  # INS / NIR-like numbers, kept out of messages that end up in logs
_QUERY_RESPONSE = f"{{{ns.QUERY}}}AdhocQueryResponse"
_REGISTRY_RESPONSE = f"{{{ns.RS}}}RegistryResponse"
_RETRIEVE_RESPONSE = f"{{{ns.XDSB}}}RetrieveDocumentSetResponse"


def _redact(text: str) -> str:
    return _LONG_DIGITS.sub("<redacted>", text)


class XdsError(Exception):
    """A DMP transaction that did not succeed; `errors` holds the registry's RegistryErrors, if any."""

    def __init__(
        self, transaction: str, message: str, errors: Sequence[RegistryError] = (), fault: SoapFault | None = None
    ) -> None:
        super().__init__(f"{transaction}: {_redact(message)}")
        self.transaction = transaction
        self.errors = list(errors)
        self.fault = fault  # the SOAP Fault the DMP answered with, when it did


class XdsTransientError(XdsError):
    """Try again later: network failure, time-out, overloaded or unavailable DMP."""


class XdsRejected(XdsError):
    """The DMP refused the request; sending it again unchanged will fail again."""

    @classmethod
    def from_errors(cls, transaction: str, response: RegistryResponse) -> XdsRejected:
        if not response.errors:
            return cls(transaction, f"status {response.status} without RegistryError")
        text = "; ".join(
            f"{e.code}: {e.context}" + (f" (at {e.location})" if e.location else "") for e in response.errors
        )
        return cls(transaction, f"rejected by the DMP: {text}", response.errors)


class DmpClient:
    """One DMP (base URL `{base}/registry`, `{base}/repository`), with the structure's VIHF signer."""

    def __init__(
        self,
        base_url: str,
        *,
        signer: VihfSigner | None = None,
        identity: VihfIdentity | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        session: aiohttp.ClientSession | None = None,
        max_response_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        base = base_url.rstrip("/")
        self.registry_url = f"{base}/registry"
        self.repository_url = f"{base}/repository"
        # TD0.2 and TD0.3 at the DMP's services as the ANS reference DRIMbox builds them (xds/access.py).
        self.patients_url = f"{base}/{access.PATIENTS_SERVICE}"
        self.habilitations_url = f"{base}/{access.HABILITATIONS_SERVICE}"
        self.signer = signer
        self.identity = identity  # default actor; a call may name another (a Pro Santé Connect user)
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self._ssl = ssl_context
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> DmpClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------------------ transactions

    async def provide_and_register(
        self,
        entry: KosDocumentEntry,
        submission: SubmissionSet,
        document: bytes,
        *,
        replaces_entry_uuid: str | None = None,
        identity: VihfIdentity | None = None,
    ) -> RegistryResponse:
        """ITI-41: publish (or, with `replaces_entry_uuid`, replace) one KOS, signed; Success or PartialSuccess."""
        payload, attachments = metadata.build_provide_and_register(
            entry, submission, document, replaces_entry_uuid, self.sign_submission(submission, entry, document)
        )
        msg = await self._call("ITI-41", self.repository_url, ns.ACTION_ITI41, payload, attachments,
                               patient_id=entry.patient_id, identity=identity)  # fmt: skip
        return self._registry_result("ITI-41", msg.payload, _REGISTRY_RESPONSE)

    def sign_submission(
        self, submission: SubmissionSet, entry: KosDocumentEntry, document: bytes
    ) -> metadata.SubmissionSignature:
        """The IHE DSG signature of this submission, with the structure's key (the DMP requires one)."""
        if self.signer is None:
            raise ValueError("ITI-41 must be signed: this DMP client has no structure key (signer)")
        sig_uid = metadata.oid_from_uuid()
        xml = signature.sign_submission(
            self.signer.key, self.signer.certificate, f"sig-{uuid.uuid4().hex}", submission.unique_id,
            [signature.SignedDocument(entry.unique_id, document)],
        )  # fmt: skip
        return metadata.SubmissionSignature(sig_uid, xml)

    async def update_status(
        self,
        entry_uuid: str,
        submission: SubmissionSet,
        *,
        new_status: str = ns.STATUS_DELETED,
        original_status: str = ns.STATUS_APPROVED,
        identity: VihfIdentity | None = None,
    ) -> RegistryResponse:
        """ITI-57: move a DocumentEntry to `new_status` (DMP deletion by default, or Deprecated)."""
        payload = metadata.build_update_status(entry_uuid, submission, new_status, original_status)
        msg = await self._call("ITI-57", self.registry_url, ns.ACTION_ITI57, payload, None,
                               patient_id=submission.patient_id, identity=identity)  # fmt: skip
        return self._registry_result("ITI-57", msg.payload, _REGISTRY_RESPONSE)

    async def find_documents(
        self,
        patient_id: str,
        *,
        statuses: Sequence[str] = (ns.STATUS_APPROVED,),
        type_codes: Sequence[Code] = (),
        class_codes: Sequence[Code] = (),
        format_codes: Sequence[Code] = (),
        event_codes: Sequence[Code] = (),
        extra: Mapping[str, str | Sequence[str]] | None = None,
        identity: VihfIdentity | None = None,
    ) -> list[DocumentEntryInfo]:
        """ITI-18 FindDocuments for one patient."""
        payload = query.find_documents_query(
            patient_id, statuses, type_codes=type_codes, class_codes=class_codes,
            format_codes=format_codes, event_codes=event_codes, extra=extra,
        )  # fmt: skip
        return await self._query(payload, patient_id, identity)

    async def find_by_reference_id(
        self,
        patient_id: str,
        reference_ids: Sequence[ReferenceId | str],
        *,
        statuses: Sequence[str] = (ns.STATUS_APPROVED,),
        identity: VihfIdentity | None = None,
    ) -> list[DocumentEntryInfo]:
        """ITI-18 FindDocumentsByReferenceId: the entries of an accession number, a study or an order."""
        payload = query.find_by_reference_id_query(patient_id, reference_ids, statuses)
        return await self._query(payload, patient_id, identity)

    async def get_documents(
        self,
        *,
        entry_uuids: Sequence[str] = (),
        unique_ids: Sequence[str] = (),
        patient_id: str | None = None,
        identity: VihfIdentity | None = None,
    ) -> list[DocumentEntryInfo]:
        """ITI-18 GetDocuments; `patient_id` feeds the VIHF resource-id (required when signing)."""
        payload = query.get_documents_query(entry_uuids=entry_uuids, unique_ids=unique_ids)
        return await self._query(payload, patient_id, identity)

    async def retrieve_document(
        self,
        repository_uid: str,
        unique_id: str,
        *,
        patient_id: str | None = None,
        home_community_id: str | None = None,
        identity: VihfIdentity | None = None,
    ) -> bytes:
        """ITI-43: the bytes of one document; `patient_id` is required when a VIHF is signed."""
        request = soap.DocumentRequest(repository_uid, unique_id, home_community_id)
        payload = soap.build_retrieve_request([request])
        msg = await self._call("ITI-43", self.repository_url, ns.ACTION_ITI43, payload, [],
                               patient_id=patient_id, identity=identity)  # fmt: skip
        if msg.payload.tag != _RETRIEVE_RESPONSE:
            raise XdsRejected("ITI-43", f"unexpected answer {etree.QName(msg.payload).localname}")
        try:
            result = soap.parse_retrieve_response(msg.payload, msg.attachments)
        except soap.SoapProtocolError as exc:
            raise XdsRejected("ITI-43", f"malformed RetrieveDocumentSetResponse: {exc}") from None
        for doc in result.documents:
            if doc.document_unique_id == unique_id:
                return doc.data
        self._raise_for_failure("ITI-43", result.response)
        if result.response.errors:
            raise XdsRejected.from_errors("ITI-43", result.response)
        raise XdsRejected("ITI-43", f"the repository returned no document {unique_id}")

    async def patient_access(self, patient_id: str, *, identity: VihfIdentity | None = None) -> AccessStatus:
        """TD0.2 (PRPA_IN201307UV02): does this patient's DMP exist, and may the VIHF's professional access it?"""
        ins, oid = td02.split_cx(patient_id)
        msg = await self._call("TD0.2", self.patients_url, access.ACTION_TD02, td02.build_request(ins, oid), None,
                               patient_id=patient_id, identity=identity)  # fmt: skip
        try:
            schema.validate(msg.payload)
            return td02.parse_answer(msg.payload, ins)
        except td02.Td02Refused as exc:
            raise XdsRejected("TD0.2", f"refused by the DMP: {exc}") from None
        except (access.AccessFormatError, schema.SchemaError) as exc:
            raise XdsRejected("TD0.2", f"malformed answer: {exc}") from None

    async def declare_access(
        self, patient_id: str, *, remove: bool = False, identity: VihfIdentity | None = None
    ) -> DeclareResult:
        """TD0.3 (setAuthorization AJOUT, or SUPPRESSION): the VIHF's professional's authorisation to the DMP of
        the VIHF's patient; only ask it once the patient was informed and did not object."""
        payload = td03.build_request(access.REMOVE if remove else access.ADD)
        msg = await self._call("TD0.3", self.habilitations_url, access.ACTION_TD03, payload, None,
                               patient_id=patient_id, identity=identity)  # fmt: skip
        try:
            schema.validate(msg.payload)
            return td03.parse_answer(msg.payload)
        except (access.AccessFormatError, schema.SchemaError) as exc:
            raise XdsRejected("TD0.3", f"malformed answer: {exc}") from None

    # ------------------------------------------------------------------------------ plumbing

    async def _query(
        self, payload: etree._Element, patient_id: str | None, identity: VihfIdentity | None
    ) -> list[DocumentEntryInfo]:
        msg = await self._call("ITI-18", self.registry_url, ns.ACTION_ITI18, payload, None,
                               patient_id=patient_id, identity=identity)  # fmt: skip
        self._registry_result("ITI-18", msg.payload, _QUERY_RESPONSE)
        try:
            return query.parse_document_entries(msg.payload)
        except MetadataError as exc:
            raise XdsRejected("ITI-18", f"malformed AdhocQueryResponse: {exc}") from None

    def _registry_result(self, transaction: str, payload: etree._Element, expected: str) -> RegistryResponse:
        try:
            response = soap.parse_registry_response(payload)
        except soap.SoapProtocolError as exc:
            raise XdsRejected(transaction, str(exc)) from None
        # Some registries answer a failed query with a bare rs:RegistryResponse: its errors come first.
        self._raise_for_failure(transaction, response)
        if payload.tag != expected:
            raise XdsRejected(transaction, f"unexpected answer {etree.QName(payload).localname}")
        return response

    @staticmethod
    def _raise_for_failure(transaction: str, response: RegistryResponse) -> None:
        if not response.failure:
            return
        errors = [e for e in response.errors if e.is_error]
        log.warning("%s failed: %s", transaction, ", ".join(e.code for e in errors) or response.status)
        if errors and all(e.code in TRANSIENT_ERROR_CODES for e in errors):
            raise XdsTransientError(transaction, "the DMP is busy or unavailable: "
                                    + ", ".join(e.code for e in errors), response.errors)  # fmt: skip
        raise XdsRejected.from_errors(transaction, response)

    def _vihf(self, patient_id: str | None, identity: VihfIdentity | None) -> etree._Element | None:
        if self.signer is None:
            return None
        who = identity or self.identity
        if who is None:
            raise ValueError("a VIHF signer is configured but no identity was given to act as")
        if not patient_id:  # the DMP refuses a VIHF without resource-id: fail here, not on the wire
            raise ValueError("the VIHF must name the patient: pass patient_id (INS CX) to this call")
        return self.signer.issue(who, patient_id)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else tls.client_ssl())
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def _call(
        self,
        transaction: str,
        url: str,
        action: str,
        payload: etree._Element,
        attachments: list[mtom.Attachment] | None,
        *,
        patient_id: str | None,
        identity: VihfIdentity | None,
    ) -> soap.SoapMessage:
        """Send one request (MTOM when `attachments` is a list, plain SOAP when None) and read the answer."""
        # build_request validates the payload against the XSDs: a SchemaError here never reaches the DMP.
        request = soap.build_request(action, url, payload, security=self._vihf(patient_id, identity))
        if attachments is not None:
            content_type, body = mtom.encode(request.envelope, attachments, action)
        else:
            content_type, body = f'application/soap+xml; charset=UTF-8; action="{action}"', request.envelope
        started = time.monotonic()
        outcome, data = "transient", None
        try:
            async with self._get_session().post(
                url, data=body, headers={"Content-Type": content_type},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:  # fmt: skip
                status, answer_type = resp.status, resp.headers.get("Content-Type", "")
                data = await self._read(resp, transaction)
        except XdsRejected:
            outcome = "rejected"
            raise
        except aiohttp.InvalidURL as exc:
            outcome = "rejected"
            raise XdsRejected(transaction, f"invalid DMP URL {exc}") from None
        except TimeoutError:
            raise XdsTransientError(transaction, f"no answer from {url} within {self.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            raise XdsTransientError(transaction, f"{url}: {type(exc).__name__}: {exc}") from None
        finally:
            metrics.DMP_DURATION.labels(transaction).observe(time.monotonic() - started)
            if data is None:  # else counted once the answer is read: an HTTP 200 may carry a failure, a 500 not
                metrics.DMP_CALLS.labels(transaction, outcome).inc()
        log.info("%s %s -> HTTP %d in %.0f ms", transaction, request.message_id, status,
                 (time.monotonic() - started) * 1000)  # fmt: skip
        outcome = "rejected"
        try:
            message = soap.parse_message(answer_type, data)
            outcome = _answer_outcome(message.payload)
            return message
        except soap.SoapFaultError as exc:
            fault = exc.fault
            # Receiver faults are the server's own trouble; Sender (and MustUnderstand...) mean our request.
            kind = XdsTransientError if fault.code == "Receiver" or status in (502, 503, 504) else XdsRejected
            outcome = "transient" if kind is XdsTransientError else "rejected"
            detail = f" ({fault.detail})" if fault.detail else ""
            raise kind(transaction, f"HTTP {status}, {exc}{detail}", fault=fault) from None
        except soap.SoapProtocolError as exc:
            kind = XdsTransientError if status >= 500 or status in (408, 429) else XdsRejected
            outcome = "transient" if kind is XdsTransientError else "rejected"
            raise kind(transaction, f"HTTP {status} from {url} without a SOAP answer ({exc})") from None
        finally:
            metrics.DMP_CALLS.labels(transaction, outcome).inc()

    async def _read(self, resp: aiohttp.ClientResponse, transaction: str) -> bytes:
        chunks, total = [], 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > self.max_response_bytes:
                raise XdsRejected(transaction, f"answer larger than {self.max_response_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _answer_outcome(payload: etree._Element) -> str:
    """The metrics' outcome of an answer the DMP sent with an HTTP success: a registry failure inside is not "ok"."""
    response = payload if payload.tag == _REGISTRY_RESPONSE else payload.find(_REGISTRY_RESPONSE)
    if response is None and not str(payload.get("status", "")).endswith(":Failure"):
        return "ok"
    try:
        parsed = soap.parse_registry_response(response if response is not None else payload)
    except soap.SoapProtocolError:
        return "rejected"
    if not parsed.failure:
        return "ok"
    errors = [e for e in parsed.errors if e.is_error]
    return "transient" if errors and all(e.code in TRANSIENT_ERROR_CODES for e in errors) else "rejected"
