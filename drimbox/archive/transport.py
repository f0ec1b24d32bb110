"""A receive path for the archive SCP without pynetdicom's per-loop sleeps and 4 KiB reads (TCP_NODELAY too).

pynetdicom 3.0 polls: its upper-layer (DUL) thread sleeps 1 ms whenever a loop finds nothing, and the
association thread sleeps 1 ms before every look at the DIMSE queue, so each C-STORE round trip pays
a few milliseconds of sleeping. Here both threads block on the thing they wait for instead:
- the DUL thread waits in select() on the socket *and* a wake-up socket that is written whenever the
  association queues a PDU to send (so a C-STORE response leaves at once);
- the association thread waits on the DIMSE message queue itself.
Sockets are read straight into a buffer of the PDU's size rather than 4 KiB at a time.
The classes below only override methods; they depend on pynetdicom 3.0's internals (named below) and
`ArchiveScp(fast_transport=False)` falls back to pynetdicom's own loop.
"""

from __future__ import annotations

import queue
import select
import socket
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler

# Importing drimbox.dimse.network also stops pynetdicom from logging C-FIND identifiers (patient identity).
from drimbox.dimse.network import set_nodelay

# How long a blocked thread waits before re-checking time-outs, release and abort (seconds).
_DUL_WAIT = 0.05
_REACTOR_WAIT = 0.005


class _WakingQueue(queue.Queue[Any]):
    """The DUL's to_provider_queue: every put also wakes the DUL thread out of select()."""

    def __init__(self, wake: socket.socket) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        try:
            self._wake.send(b"\0")
        except OSError:
            # Buffer full (a wake-up is already pending) or closed (the association is over).
            pass


class _FastSocket(AssociationSocket):
    """AssociationSocket whose `ready` blocks until data or a wake-up, and whose `recv` reads in one buffer."""

    _wake_r: socket.socket
    _wake_w: socket.socket

    @property
    def ready(self) -> bool:
        sock = self.socket
        if sock is None or self._is_connected is False:
            return False
        try:
            readable, _, _ = select.select([sock, self._wake_r], [], [], _DUL_WAIT)
        except (OSError, ValueError):
            # Evt17: transport connection closed (as pynetdicom's own `ready` does).
            self.event_queue.put("Evt17")
            return False
        if self._wake_r in readable:
            try:
                self._wake_r.recv(4096)
            except OSError:
                pass
        return sock in readable

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if count == 0:
                # Connection closed: return what arrived; the DUL sees a short PDU (Evt17).
                view.release()
                del buffer[received:]
                return buffer
            received += count
        view.release()
        return buffer

    def close(self) -> None:
        super().close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()


class _FastAssociation(Association):
    """Association whose reactor blocks on the DIMSE queue instead of sleeping 1 ms per loop.

    Same steps as pynetdicom 3.0's Association._run_reactor: serve a message, then check release,
    abort, the DUL thread and the network idle time-out.
    """

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            # Handlers that use the send_* methods pause the reactor through this checkpoint.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = cast("tuple[int, Any]", self.dimse.msg_queue.get(timeout=_REACTOR_WAIT))
            except queue.Empty:
                msg = None
            # pynetdicom queues (None, None) to wake its waiters on an abort.
            if msg is not None:
                self._serve_request(msg, context_id)
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires, as in pynetdicom
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                self.abort()
                self.kill()
                return


class FastRequestHandler(RequestHandler):
    """pynetdicom's request handler, with the accepted association switched to the blocking receive path."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # Nothing runs yet (the threads start after this returns): swapping classes and queues is safe.
        assoc.__class__ = _FastAssociation
        sock = assoc.dul.socket
        assert sock is not None
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        sock.__class__ = _FastSocket
        fast = cast(_FastSocket, sock)
        fast._wake_r, fast._wake_w = wake_r, wake_w
        assoc.dul.to_provider_queue = _WakingQueue(wake_w)
        # The DUL loop now blocks in `ready`; its own sleep between loops would only add latency.
        assoc.dul._run_loop_delay = 0
        if sock.socket is not None:
            set_nodelay(sock.socket)
        return assoc


def tune_association(assoc: Association) -> None:
    """TCP_NODELAY on the accepted socket: small PDUs (C-STORE responses) must not wait for delayed ACKs."""
    sock = assoc.dul.socket
    if sock is not None and sock.socket is not None:
        set_nodelay(sock.socket)
