"""The box's C-STORE (and C-FIND, C-ECHO) SCP in Native profile: success is answered only once the instance is durable."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt, register_uid
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.transport import ThreadedAssociationServer

from drimbox.archive.archive import Archive
from drimbox.archive.attributes import TRANSFER_SYNTAXES
from drimbox.archive.errors import PROCESSING_FAILURE, ArchiveError
from drimbox.archive.find import STUDY_ROOT_FIND, handle_find
from drimbox.archive.store import file_meta
from drimbox.archive.transport import FastRequestHandler, tune_association
from drimbox.config import DicomSettings
from drimbox.dimse.peers import CALLING_AE_NOT_RECOGNIZED, Caller, PeerList, normal_address

LOG = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
# C-STORE status "Refused: Not Authorized" (PS3.7 C.4.2.1.4; PS3.4 GG.4.2): an associated peer that may not store.
REFUSED_NOT_AUTHORIZED = 0x0124
# Large PDUs: fewer PDUs (and fewer trips through pynetdicom's per-PDU machinery) per instance.
DEFAULT_MAX_PDU = 4 * 1024 * 1024
_QUERY_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")

_register_lock = threading.Lock()


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # Error Comment is LO: at most 64 characters.
    status.ErrorComment = comment[:64]
    return status


def supported_contexts() -> list[PresentationContext]:
    """Every storage SOP class pynetdicom knows, with the archive's transfer syntaxes; C-FIND; C-ECHO."""
    contexts = [
        build_context(cx.abstract_syntax, list(TRANSFER_SYNTAXES))
        for cx in AllStoragePresentationContexts
        if cx.abstract_syntax is not None
    ]
    contexts.append(build_context(STUDY_ROOT_FIND, list(_QUERY_SYNTAXES)))
    contexts.append(build_context(VERIFICATION, list(_QUERY_SYNTAXES)))
    return contexts


class _SharedContexts(list[PresentationContext]):
    """The server's supported contexts, shared by its associations instead of deep-copied for each.

    pynetdicom deep-copies ~170 contexts per association (about 15 ms here); negotiation only reads
    them, and _on_requested replaces the list rather than changing it.
    """

    def __deepcopy__(self, memo: dict[int, object]) -> list[PresentationContext]:
        return list(self)


def _register_storage(uid: str) -> None:
    """Make pynetdicom dispatch C-STORE requests on an unknown (private or newer) SOP class to the storage service."""
    with _register_lock:
        if uid_to_service_class(uid) is ServiceClass:
            register_uid(uid, "DrimboxStorage_" + uid.replace(".", "_"), StorageServiceClass)


# Sees every incoming Key Object Selection document first (Part-10 bytes, caller): returns the status to
# answer when it took the object (an IOCM rejection note), or None to store it like any other instance.
KosHook = Callable[[bytes, Caller], "int | None"]
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


@dataclass
class StudyTally:
    """What one association stored into one study."""

    stored: int = 0
    failed: int = 0
    refused: int = 0
    patient: str = ""
    last_status: int = 0


@dataclass
class StoreSession:
    """The C-STOREs of one association (rejection notes aside), told to `on_session` when it ends."""

    caller: Caller
    studies: dict[str, StudyTally] = field(default_factory=dict)

    def tally(self, study_uid: str) -> StudyTally:
        return self.studies.setdefault(study_uid, StudyTally())


# Told of each association refused because its caller is not a configured peer, with the reason.
RefusedHook = Callable[[Caller, str], None]
SessionHook = Callable[[StoreSession], None]


class ArchiveScp:
    """The SCP on `settings.host`:`settings.port` (port 0: the OS picks one, see `port`) feeding `archive`.

    pynetdicom runs it in its own threads (one per association): nothing here touches the event loop.
    A caller outside `peers` (AE title AND address) gets A-ASSOCIATE-RJ "calling AE title not recognized";
    one inside `peers` but not `store_peers` may query and echo, and its C-STOREs are refused (0x0124).
    """

    def __init__(
        self,
        settings: DicomSettings,
        archive: Archive,
        *,
        max_pdu: int = DEFAULT_MAX_PDU,
        network_timeout: float = 60.0,
        max_associations: int = 16,
        fast_transport: bool = True,
        on_kos: KosHook | None = None,
        peers: PeerList | None = None,
        store_peers: PeerList | None = None,
        on_refused: RefusedHook | None = None,
        on_session: SessionHook | None = None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.on_kos = on_kos
        # Who is associated at all (None: anyone), and who of them may store instances (None: all of them).
        self.peers = peers
        self.store_peers = store_peers
        self.on_refused = on_refused
        self.on_session = on_session
        self._sessions: dict[int, StoreSession] = {}
        self._sessions_lock = threading.Lock()
        self.max_pdu = max_pdu
        self.network_timeout = network_timeout
        self.max_associations = max_associations
        self.fast_transport = fast_transport
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the SCP listens on (the real one when settings.port was 0)."""
        if self._server is None:
            raise RuntimeError("the SCP is not started")
        return int(self._server.server_address[1])

    def start(self) -> int:
        """Listen and serve in background threads; return the port."""
        if self._server is not None:
            return self.port
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_pdu_size = self.max_pdu
        ae.network_timeout = self.network_timeout
        ae.acse_timeout = 30
        ae.dimse_timeout = 30
        ae.maximum_associations = self.max_associations
        # A store addressed to another AE title is a misrouted store: refuse the association.
        ae.require_called_aet = True
        ae.supported_contexts = supported_contexts()
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_end),
        ]
        extra: dict[str, Any] = {"request_handler": FastRequestHandler} if self.fast_transport else {}
        server = ae.make_server(
            (self.settings.host, self.settings.port),
            contexts=_SharedContexts(ae.supported_contexts),
            evt_handlers=handlers,
            server_class=ThreadedAssociationServer,
            **extra,
        )
        # AE.shutdown() and the server's own shutdown() expect it in the AE's list.
        ae._servers.append(server)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="archive-scp")
        thread.daemon = True
        thread.start()
        self._server, self._thread = server, thread
        LOG.info("archive SCP %s listening on %s:%d", self.settings.ae_title, self.settings.host, self.port)
        return self.port

    def stop(self) -> None:
        """Stop listening, abort the associations still open and wait for the server thread."""
        server, self._server = self._server, None
        if server is None:
            return
        for assoc in list(server.active_associations):
            assoc.abort()
        server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    # -- event handlers (pynetdicom threads) ------------------------------------------------------

    def _on_connection(self, event: Event) -> None:
        tune_association(event.assoc)

    def _on_requested(self, event: Event) -> None:
        """Refuse unknown callers; accept storage on abstract syntaxes pynetdicom does not know (private, newer)."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        if primitive is None:
            return
        caller = _caller(event)
        called = str(primitive.called_ae_title).strip()
        if self.peers is not None and called == self.settings.ae_title and not self.peers.allows(caller):
            LOG.warning("association from %s refused: not a configured DICOM peer", caller)
            if self.on_refused is not None:
                self.on_refused(caller, "calling AE title and address not a configured peer")
            # pynetdicom then skips its own negotiation (association.py: "User used EVT_REQUESTED to send ... RJ");
            # kill() waits until the DUL has sent the A-ASSOCIATE-RJ, as pynetdicom's own rejections do.
            assoc.acse.send_reject(*CALLING_AE_NOT_RECOGNIZED)
            assoc.kill()
            return
        proposed = primitive.presentation_context_definition_list
        supported = {cx.abstract_syntax for cx in assoc.acceptor.supported_contexts}
        extra: list[PresentationContext] = []
        for cx in proposed:
            uid = cx.abstract_syntax
            if uid is None or uid in supported or uid_to_service_class(uid) is not ServiceClass:
                continue
            _register_storage(uid)
            extra.append(build_context(uid, list(TRANSFER_SYNTAXES)))
            supported.add(uid)
        if extra:
            assoc.acceptor.supported_contexts = [*assoc.acceptor.supported_contexts, *extra]

    def _on_store(self, event: Event) -> int | Dataset:
        request = cast(C_STORE, event.request)
        sop_uid = str(request.AffectedSOPInstanceUID)
        caller = _caller(event)
        calling = caller.ae_title
        # The encoded data set as received: never decoded, never re-encoded.
        dataset = cast(BytesIO, request.DataSet).getvalue()
        sop_class = str(request.AffectedSOPClassUID)
        try:
            if self.on_kos is not None and sop_class == KOS_SOP_CLASS:
                part10 = file_meta(sop_class, sop_uid, str(event.context.transfer_syntax), calling) + dataset
                handled = self.on_kos(part10, caller)
                if handled is not None:
                    return handled
            if self.store_peers is not None and not self.store_peers.allows(caller):
                LOG.warning("C-STORE %s from %s refused: not a configured store peer", sop_uid, caller)
                self._count(event, caller, "", REFUSED_NOT_AUTHORIZED)
                return _status(REFUSED_NOT_AUTHORIZED, "not authorized to store here")
            stored = self.archive.store(
                dataset,
                str(event.context.transfer_syntax),
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_uid=sop_uid,
                source_ae=calling,
            )
        except ArchiveError as exc:
            LOG.warning("C-STORE %s from %s refused (0x%04X): %s", sop_uid, calling, exc.status, exc)
            self._count(event, caller, "", exc.status)
            return _status(exc.status, str(exc))
        except Exception as exc:
            # Unexpected: its message might quote data set values, so only its kind is logged.
            LOG.error("C-STORE %s from %s failed: %s", sop_uid, calling, type(exc).__name__)
            self._count(event, caller, "", PROCESSING_FAILURE)
            return _status(PROCESSING_FAILURE, "archive failure")
        self._count(event, caller, stored.study_uid, 0x0000, stored.patient_id)
        return 0x0000

    def _count(self, event: Event, caller: Caller, study_uid: str, status: int, patient: str = "") -> None:
        """Tally one C-STORE of this association (the audit trail gets one record per association and study)."""
        if self.on_session is None:
            return
        with self._sessions_lock:
            session = self._sessions.setdefault(id(event.assoc), StoreSession(caller))
            tally = session.tally(study_uid)
            if status == 0x0000:
                tally.stored += 1
                tally.patient = tally.patient or patient
            elif status == REFUSED_NOT_AUTHORIZED:
                tally.refused += 1
            else:
                tally.failed += 1
            if status:
                tally.last_status = status

    def _on_end(self, event: Event) -> None:
        """The association is over (released, aborted or its connection closed): report what it stored, once."""
        with self._sessions_lock:
            session = self._sessions.pop(id(event.assoc), None)
        if session is not None and self.on_session is not None:
            self.on_session(session)

    def _on_find(self, event: Event) -> Any:
        return handle_find(event, self.archive.index)


def _caller(event: Event) -> Caller:
    requestor = event.assoc.requestor
    # At EVT_REQUESTED pynetdicom has not yet copied the calling AE title out of the A-ASSOCIATE-RQ.
    primitive = requestor.primitive
    ae_title = primitive.calling_ae_title if primitive is not None else requestor.ae_title
    return Caller(str(ae_title).strip(), normal_address(str(requestor.address)))


def start(settings: DicomSettings, archive: Archive, **options: Any) -> ArchiveScp:
    """Start the archive SCP (see ArchiveScp for `options`); stop it with the returned object's stop()."""
    scp = ArchiveScp(settings, archive, **options)
    scp.start()
    return scp
