"""C-STORE SCP on the box's DICOM port, the C-MOVE destination: a mediator routes each sub-operation to its C-MOVE."""

# A sub-operation belongs to the C-MOVE named by its Move Originator AE Title and Message ID (our Message
# IDs are unique across the process, see ul.next_message_id); for a PACS that does not send them, the SOP
# Instance UIDs the C-MOVE expects decide, else being the only C-MOVE in flight to that PACS. Anything else
# is refused: an instance never reaches a request that did not ask for it. Same upper layer as C-GET
# (ul.py): no reactor thread, data sets kept as received.

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from drimbox.config import DicomSettings
from drimbox.dimse.delivery import ReceivedInstance, Sink
from drimbox.dimse.message import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    MOVE_ORIGINATOR_AE,
    MOVE_ORIGINATOR_MESSAGE_ID,
    REFUSED_NOT_AUTHORIZED,
    REFUSED_OUT_OF_RESOURCES,
    SUCCESS,
    VERIFICATION,
    c_echo_rsp,
    c_store_rsp,
    part10_header,
)
from drimbox.dimse.network import DimseUnavailable
from drimbox.dimse.pdu import (
    ABSTRACT_SYNTAX_NOT_SUPPORTED,
    ACCEPTANCE,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    ContextResult,
    PduError,
)
from drimbox.dimse.peers import CALLING_AE_NOT_RECOGNIZED, Caller, PeerList, normal_address
from drimbox.dimse.ul import MAX_PDU_LENGTH, Association, Message, PeerReleased

LOG = logging.getLogger(__name__)

_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1."
_DICOM_ROOT = "1.2.840.10008."
_CANNOT_UNDERSTAND = 0xC000
_ids = itertools.count(1)


@dataclass(eq=False)
class PendingMove:
    """A C-MOVE in flight, as the SCP sees it: where its sub-operations go."""

    originator_ae: str
    message_id: int
    pacs_ae: str
    sink: Sink
    # SOP Instance UIDs the C-MOVE is known to cover (instance level, or from a prior C-FIND); None = unknown.
    expected: frozenset[str] | None = None
    delivering: int = 0
    last_activity: float = field(default_factory=time.monotonic)

    def busy(self) -> bool:
        """True while a sub-operation is being received or handed over: the PACS is not silent, we are slow."""
        return self.delivering > 0 or time.monotonic() - self.last_activity < 1.0


class MoveMediator:
    """The C-MOVEs in flight, and which of them an incoming C-STORE belongs to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, int], PendingMove] = {}

    def register(self, move: PendingMove) -> None:
        key = (move.originator_ae, move.message_id)
        with self._lock:
            if key in self._by_key:
                raise RuntimeError(f"C-MOVE message {move.message_id} of {move.originator_ae} is already in flight")
            self._by_key[key] = move

    def unregister(self, move: PendingMove) -> None:
        with self._lock:
            if self._by_key.get((move.originator_ae, move.message_id)) is move:
                del self._by_key[(move.originator_ae, move.message_id)]

    def route(self, originator_ae: str, message_id: int | None, sop_uid: str, calling_ae: str) -> PendingMove | None:
        """The C-MOVE this C-STORE belongs to, or None (refuse it)."""
        with self._lock:
            if originator_ae and message_id is not None:
                move = self._by_key.get((originator_ae, message_id))
                if move is not None and (move.expected is None or sop_uid in move.expected):
                    return move
                return None
            moves = list(self._by_key.values())
        by_uid = [m for m in moves if m.expected is not None and sop_uid in m.expected]
        if len(by_uid) == 1:
            return by_uid[0]
        from_peer = [m for m in moves if m.pacs_ae == calling_ae]
        if not by_uid and len(from_peer) == 1 and from_peer[0].expected is None:
            return from_peer[0]
        return None


def _negotiate(ae_title: str, rq: AssociateRQ) -> AssociateAC | AssociateRJ:
    if rq.called_ae != ae_title:
        # Permanent, service user, "called AE title not recognized": a misconfigured PACS sees why at once.
        return AssociateRJ(1, 1, 7)
    results = []
    for ctx in rq.contexts:
        abstract = ctx.abstract_syntax
        storage = abstract.startswith(_STORAGE_ROOT) or not abstract.startswith(_DICOM_ROOT)
        if (storage or abstract == VERIFICATION) and ctx.transfer_syntaxes:
            # The sender's first choice is what it stores: taking it means nothing gets transcoded.
            results.append(ContextResult(ctx.context_id, ACCEPTANCE, ctx.transfer_syntaxes[0]))
        else:
            results.append(ContextResult(ctx.context_id, ABSTRACT_SYNTAX_NOT_SUPPORTED))
    return AssociateAC(rq.called_ae, rq.calling_ae, results, max_length=MAX_PDU_LENGTH)


# A handler for C-STOREs no C-MOVE asked for (IOCM, pushes): given the instance and its caller, returns a status.
Unsolicited = Callable[[ReceivedInstance, Caller], int]
# Told of each association refused because its caller is not a known peer (the audit trail), with the reason.
Refused = Callable[[Caller, str], None]


class StoreSCP:
    """Listens on settings.host:settings.port as settings.ae_title; one thread per incoming association.

    With `peers`, only those callers (AE title and address) are associated; others get A-ASSOCIATE-RJ
    "calling AE title not recognized" (and `on_refused` hears of it). None: any caller (C-STOREs no C-MOVE
    asked for are still refused unless `unsolicited` takes them).
    """

    def __init__(
        self,
        settings: DicomSettings,
        mediator: MoveMediator | None = None,
        *,
        max_associations: int = 16,
        timeout: float = 60.0,
        unsolicited: Unsolicited | None = None,
        peers: PeerList | None = None,
        on_refused: Refused | None = None,
    ) -> None:
        self.settings = settings
        self.peers = peers
        self.on_refused = on_refused
        self.mediator = mediator or MoveMediator()
        self.max_associations = max_associations
        self.timeout = timeout
        self.unsolicited = unsolicited
        self.port = settings.port
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._active: set[Association] = set()
        self._workers: set[threading.Thread] = set()

    def start(self) -> StoreSCP:
        listener = socket.create_server((self.settings.host, self.settings.port), reuse_port=False, backlog=64)
        # A short accept time-out so stop() is noticed without closing the socket under a blocked accept().
        listener.settimeout(0.25)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name=f"drimbox-storescp-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, abort the associations in progress, wait for every thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            active, workers = list(self._active), list(self._workers)
        for assoc in active:
            # Closing the socket wakes the worker blocked in recv; it then ends on its own.
            assoc.close()
        for worker in workers:
            worker.join(5)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            worker = threading.Thread(
                target=self._serve, args=(conn,), name=f"drimbox-storescp-assoc-{next(_ids)}", daemon=True
            )
            with self._lock:
                self._workers.add(worker)
            worker.start()

    def _decide(self, rq: AssociateRQ, address: str) -> AssociateAC | AssociateRJ:
        caller = Caller(rq.calling_ae.strip(), address)
        if self.peers is not None and rq.called_ae == self.settings.ae_title and not self.peers.allows(caller):
            LOG.warning("association from %s refused: not a configured DICOM peer", caller)
            if self.on_refused is not None:
                self.on_refused(caller, "calling AE title and address not a configured peer")
            return AssociateRJ(*CALLING_AE_NOT_RECOGNIZED)
        with self._lock:
            if len(self._active) >= self.max_associations:
                # Transient, service provider (presentation), "local limit exceeded": the PACS may retry.
                return AssociateRJ(2, 3, 2)
        return _negotiate(self.settings.ae_title, rq)

    def _serve(self, conn: socket.socket) -> None:
        assoc = None
        try:
            try:
                address = normal_address(str(conn.getpeername()[0]))
            except OSError:
                address = ""  # gone already: accept() below sees it too
            assoc = Association.accept(conn, self.settings.ae_title, lambda rq: self._decide(rq, address), self.timeout)
            if assoc is None:
                return
            with self._lock:
                self._active.add(assoc)
            self._serve_messages(assoc, Caller(assoc.remote_ae.strip(), address))
        except PeerReleased:
            pass
        except (DimseUnavailable, PduError) as exc:  # PduError: the peer's malformed command set, not our fault
            LOG.info("C-STORE SCP: association ended: %s", exc)
        except Exception:
            LOG.exception("C-STORE SCP: unexpected error; association aborted")
        finally:
            if assoc is not None:
                assoc.abort()
                with self._lock:
                    self._active.discard(assoc)
            else:
                conn.close()
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _serve_messages(self, assoc: Association, caller: Caller) -> None:
        while not self._stopping.is_set():
            message = assoc.receive()
            command = message.command
            if command.field == C_STORE_RQ:
                assoc.send(message.context_id, c_store_rsp(command, self._store(assoc, message, caller)))
            elif command.field == C_ECHO_RQ:
                assoc.send(message.context_id, c_echo_rsp(command))
            elif command.field == C_CANCEL_RQ:
                continue
            else:
                raise DimseUnavailable(
                    f"{assoc.peer} sent command 0x{command.field:04X}, which a storage SCP does not serve"
                )

    def _store(self, assoc: Association, message: Message, caller: Caller) -> int:
        command = message.command
        context = assoc.contexts.get(message.context_id)
        if message.data is None or context is None:
            return _CANNOT_UNDERSTAND
        sop_uid = command.text(AFFECTED_SOP_INSTANCE_UID)
        move = self.mediator.route(
            command.text(MOVE_ORIGINATOR_AE), command.us(MOVE_ORIGINATOR_MESSAGE_ID), sop_uid, assoc.remote_ae
        )
        if move is None and self.unsolicited is None:
            LOG.warning("C-STORE from %s belongs to no C-MOVE in flight: refused", assoc.peer)
            return REFUSED_NOT_AUTHORIZED
        sop_class = command.text(AFFECTED_SOP_CLASS_UID) or context.abstract_syntax
        header = part10_header(sop_class, sop_uid, context.transfer_syntax, assoc.remote_ae)
        instance = ReceivedInstance(sop_class, sop_uid, context.transfer_syntax, b"".join([header, *message.data]))
        if move is None:
            assert self.unsolicited is not None
            return self.unsolicited(instance, caller)
        with _delivering(move):
            delivered = move.sink.deliver(instance)
        # Success once the instance is in its request's hands (the PACS keeps the original: in the Proxy
        # profile nothing acknowledged here can be lost). Answering only then also orders every instance of
        # a C-MOVE before its final response, which the PACS sends after our last answer.
        return SUCCESS if delivered else REFUSED_OUT_OF_RESOURCES


_delivering_lock = threading.Lock()


@contextmanager
def _delivering(move: PendingMove) -> Iterator[None]:
    """Mark `move` busy while a sub-operation is handed over (a PACS may send on several associations)."""
    with _delivering_lock:
        move.delivering += 1
        move.last_activity = time.monotonic()
    try:
        yield
    finally:
        with _delivering_lock:
            move.delivering -= 1
            move.last_activity = time.monotonic()


_shared: dict[tuple[str, int], StoreSCP] = {}
_shared_lock = threading.Lock()


def shared_scp(settings: DicomSettings) -> StoreSCP:
    """The process's C-STORE SCP on settings.host:settings.port, started on first use. Blocking (binds)."""
    key = (settings.host, settings.port)
    with _shared_lock:
        scp = _shared.get(key)
        if scp is None:
            try:
                scp = StoreSCP(settings).start()
            except OSError as exc:
                raise DimseUnavailable(
                    f"C-MOVE destination {settings.ae_title}: cannot listen on {settings.host}:{settings.port}: {exc}"
                ) from exc
            _shared[key] = scp
        elif scp.settings.ae_title != settings.ae_title:
            raise ValueError(
                f"[dicom] port {settings.port} already serves AE {scp.settings.ae_title}, not {settings.ae_title}"
            )
        return scp


def serve_shared(
    settings: DicomSettings, unsolicited: Unsolicited, peers: PeerList | None = None, on_refused: Refused | None = None
) -> StoreSCP:
    """Start the process's SCP now, with a handler for C-STOREs no C-MOVE asked for (the Proxy profile's IOCM
    rejection notes) and the peers it associates with; C-MOVEs then use this same listener. Blocking (binds);
    raises OSError if the port is taken."""
    key = (settings.host, settings.port)
    with _shared_lock:
        if key in _shared:
            raise RuntimeError(f"a C-STORE SCP already listens on {settings.host}:{settings.port}")
        scp = StoreSCP(settings, unsolicited=unsolicited, peers=peers, on_refused=on_refused).start()
        _shared[key] = scp
        return scp


def stop_shared(scp: StoreSCP) -> None:
    """Stop one SCP started by serve_shared or shared_scp (its box is stopping; other boxes' SCPs stay)."""
    with _shared_lock:
        for key, known in list(_shared.items()):
            if known is scp:
                del _shared[key]
    scp.stop()


def stop_shared_scps() -> None:
    """Stop every SCP started by shared_scp (shutdown, tests)."""
    with _shared_lock:
        scps = list(_shared.values())
        _shared.clear()
    for scp in scps:
        scp.stop()
