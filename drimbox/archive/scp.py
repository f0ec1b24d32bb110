"""The box's C-STORE (and C-FIND, C-ECHO) SCP in Native profile: success is answered only once the instance is durable."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
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

LOG = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
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


# Sees every incoming Key Object Selection document first (Part-10 bytes, calling AE): returns the status to
# answer when it took the object (an IOCM rejection note), or None to store it like any other instance.
KosHook = Callable[[bytes, str], "int | None"]
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"


class ArchiveScp:
    """The SCP on `settings.host`:`settings.port` (port 0: the OS picks one, see `port`) feeding `archive`.

    pynetdicom runs it in its own threads (one per association): nothing here touches the event loop.
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
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.on_kos = on_kos
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
        """Accept storage on abstract syntaxes pynetdicom does not know (private and newer SOP classes)."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        if primitive is None:
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
        calling = event.assoc.requestor.ae_title
        # The encoded data set as received: never decoded, never re-encoded.
        dataset = cast(BytesIO, request.DataSet).getvalue()
        sop_class = str(request.AffectedSOPClassUID)
        try:
            if self.on_kos is not None and sop_class == KOS_SOP_CLASS:
                part10 = file_meta(sop_class, sop_uid, str(event.context.transfer_syntax), calling) + dataset
                handled = self.on_kos(part10, calling)
                if handled is not None:
                    return handled
            self.archive.store(
                dataset,
                str(event.context.transfer_syntax),
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_uid=sop_uid,
                source_ae=calling,
            )
        except ArchiveError as exc:
            LOG.warning("C-STORE %s from %s refused (0x%04X): %s", sop_uid, calling, exc.status, exc)
            return _status(exc.status, str(exc))
        except Exception as exc:
            # Unexpected: its message might quote data set values, so only its kind is logged.
            LOG.error("C-STORE %s from %s failed: %s", sop_uid, calling, type(exc).__name__)
            return _status(PROCESSING_FAILURE, "archive failure")
        return 0x0000

    def _on_find(self, event: Event) -> Any:
        return handle_find(event, self.archive.index)


def start(settings: DicomSettings, archive: Archive, **options: Any) -> ArchiveScp:
    """Start the archive SCP (see ArchiveScp for `options`); stop it with the returned object's stop()."""
    scp = ArchiveScp(settings, archive, **options)
    scp.start()
    return scp
