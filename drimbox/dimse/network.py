"""Associations with a PACS: TCP_NODELAY sockets, per-operation time-outs, errors mapped to our two kinds."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from ssl import SSLContext
from typing import TYPE_CHECKING

from pynetdicom import AE, _config, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AddressInformation, AssociationSocket

from drimbox.config import PacsSettings

# pynetdicom formats every query and answer identifier for its debug log, even when nothing logs it:
# that was 60 % of a 300-instance C-FIND here (cProfile), and the identifiers carry patient identity,
# which our logs must never hold anyway.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

if TYPE_CHECKING:
    from pynetdicom.association import Association

LOG = logging.getLogger(__name__)


class DimseUnavailable(Exception):
    """The peer could not be reached or dropped us (refused, rejected, aborted, timed out): retry later."""


class DimseFailure(Exception):
    """The peer answered with a failure status: retrying the same request will most likely fail again."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(f"{message} (status 0x{status:04X})")
        self.status = status


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle on `sock`.

    Without it, small DIMSE PDUs (command sets, C-FIND answers, the tail of a data set) wait for the
    peer's delayed ACK: on loopback a C-GET drops from hundreds of MB/s to about 11 MB/s.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayAE(AE):
    """A pynetdicom AE whose outgoing association sockets have TCP_NODELAY set before connecting."""

    def _create_socket(
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: tuple[SSLContext, str] | None,
    ) -> AssociationSocket:
        # pynetdicom offers no socket-option hook; this is the one place a requestor socket is made.
        assoc_sock = super()._create_socket(assoc, address, tls_args)
        if assoc_sock.socket is not None:
            set_nodelay(assoc_sock.socket)
        return assoc_sock


def make_ae(calling_ae: str, timeout: float) -> NoDelayAE:
    """An SCU application entity with every time-out (connect, ACSE, DIMSE, idle network) set to `timeout`."""
    ae = NoDelayAE(ae_title=calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


def _refusal_reason(assoc: Association, connected: bool) -> str:
    if not connected:
        return "no connection (refused, unreachable or timed out)"
    primitive = getattr(assoc.acceptor, "primitive", None)
    if assoc.is_rejected and primitive is not None:
        try:
            return f"rejected ({primitive.result_str}, {primitive.source_str}: {primitive.reason_str})"
        except (AttributeError, KeyError, ValueError):
            return "rejected"
    if assoc.is_aborted:
        return "aborted by the peer"
    return "no answer to the association request"


@contextmanager
def associate(
    pacs: PacsSettings,
    calling_ae: str,
    contexts: Sequence[PresentationContext],
) -> Iterator[Association]:
    """Open an association to the PACS, yield it, and always release it (or abort it on error).

    Raises DimseUnavailable when the association cannot be established.
    """
    peer = f"{pacs.ae_title}@{pacs.host}:{pacs.port}"
    ae = make_ae(calling_ae, pacs.timeout)
    ae.requested_contexts = list(contexts)
    # pynetdicom reports a refused connection as an abort: watch for the connection itself.
    connected: list[bool] = []

    def on_open(event: Event) -> None:
        connected.append(True)

    try:
        assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])
    except (OSError, RuntimeError) as exc:
        raise DimseUnavailable(f"cannot associate with {peer}: {exc}") from exc
    if not assoc.is_established:
        raise DimseUnavailable(f"association with {peer} as {calling_ae}: {_refusal_reason(assoc, bool(connected))}")
    completed = False
    try:
        yield assoc
        completed = True
    finally:
        if assoc.is_established:
            if completed:
                assoc.release()
            else:
                assoc.abort()
