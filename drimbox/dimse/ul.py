"""PS3.8 upper layer for one association on a blocking socket, driven by the thread that owns it."""

# pynetdicom runs a reactor thread per association that polls the socket with select, sleeps 1 ms when a
# loop finds nothing, reads 4 KiB at a time, copies every PDU into a decoded object and hands it through
# two thread queues: on this 2-core machine that caps a C-GET from Orthanc at ≈ 280 MB/s even with the
# sleep removed. Here the owning thread reads the socket itself in large chunks, parses PDU and PDV headers
# in place and hands data-set fragments on as memoryviews of the received chunks, so a data set is copied
# once (kernel → chunk) plus once when the caller joins it into the instance's bytes.

from __future__ import annotations

import itertools
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from drimbox.dimse.message import Command, parse_command
from drimbox.dimse.network import DimseUnavailable, set_nodelay
from drimbox.dimse.pdu import (
    ABORT,
    ACCEPTANCE,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    P_DATA_TF,
    RELEASE_RP,
    RELEASE_RQ,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PduError,
    encode_abort,
    encode_ac,
    encode_release,
    encode_rj,
    encode_rq,
    parse_ac,
    parse_rj,
    parse_rq,
)

# Bytes asked of each recv. Measured on the 158 MB C-GET: 64 KiB → more syscalls; 256 KiB is where the
# gain flattens (the kernel rarely has more queued on loopback).
RECV_CHUNK = 256 * 1024
# Our advertised Maximum Length: a peer that honours it sends few, large PDUs (fewer headers to parse).
MAX_PDU_LENGTH = 1024 * 1024
# Fragment size we send when the peer sets no limit (0): large enough, small enough to interleave.
_UNLIMITED_FRAGMENT = 1024 * 1024
# An association PDU larger than this is hostile or broken (128 contexts of long UIDs fit in 40 KiB).
_MAX_ASSOCIATE_PDU = 1024 * 1024
# A command set is a few hundred bytes; one far larger is garbage, read no further.
_MAX_COMMAND = 64 * 1024

_HEADER = struct.Struct(">BBL")
_PDV = struct.Struct(">LBB")
_message_ids = itertools.count()


def next_message_id() -> int:
    """A Message ID unique among the operations this process has in flight (the C-MOVE mediator keys on it)."""
    return next(_message_ids) % 0xFFFF + 1


class DimseTimeout(DimseUnavailable):
    """Nothing arrived from the peer within the per-operation time-out."""


class PeerReleased(DimseUnavailable):
    """The peer released the association (we answered A-RELEASE-RP): the normal end for an acceptor, a lost
    association for a requestor in the middle of an operation."""


@dataclass(frozen=True)
class Context:
    """A negotiated presentation context."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass
class Message:
    """A DIMSE message: its command set and, when present, its data set as fragments (bytes-like, in order)."""

    context_id: int
    command: Command
    data: list[memoryview] | None


class Association:
    """An established association: send and receive DIMSE messages, release or abort. One thread at a time."""

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        contexts: dict[int, Context],
        peer_max_length: int,
        local_ae: str,
        remote_ae: str,
        timeout: float,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.contexts = contexts
        self.local_ae = local_ae
        self.remote_ae = remote_ae
        self.timeout = timeout
        self.closed = False
        # Messages received so far (a pooled association that fails before the first is simply replaced).
        self.received = 0
        self._fragment = peer_max_length - 6 if peer_max_length > 6 else _UNLIMITED_FRAGMENT
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._pdu_left = 0

    # --- opening -----------------------------------------------------------------------------------

    @classmethod
    def request(cls, host: str, port: int, rq: AssociateRQ, timeout: float) -> Association:
        """Connect and negotiate; raise DimseUnavailable when refused, rejected, aborted or timed out."""
        peer = f"{rq.called_ae}@{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise DimseUnavailable(f"cannot connect to {peer}: no connection ({exc})") from exc
        set_nodelay(sock)
        assoc = cls(sock, peer, {}, 0, rq.calling_ae, rq.called_ae, timeout)
        try:
            sock.sendall(encode_rq(rq))
            pdu_type, body = assoc._read_pdu()
            if pdu_type == ASSOCIATE_RJ:
                raise DimseUnavailable(f"association with {peer} as {rq.calling_ae} {parse_rj(body).describe()}")
            if pdu_type == ABORT:
                raise DimseUnavailable(f"{peer} aborted the association request (does it know {rq.calling_ae}?)")
            if pdu_type != ASSOCIATE_AC:
                raise DimseUnavailable(f"{peer} answered the association request with PDU type 0x{pdu_type:02X}")
            ac = parse_ac(body)
        except (DimseUnavailable, PduError, OSError) as exc:
            assoc.close()
            if isinstance(exc, DimseUnavailable):
                raise
            raise DimseUnavailable(f"association with {peer}: {exc}") from exc
        proposed = {c.context_id: c.abstract_syntax for c in rq.contexts}
        assoc.contexts = {
            c.context_id: Context(c.context_id, proposed[c.context_id], c.transfer_syntax)
            for c in ac.contexts
            if c.result == ACCEPTANCE and c.context_id in proposed
        }
        assoc._set_peer_max(ac.max_length)
        return assoc

    @classmethod
    def accept(
        cls,
        sock: socket.socket,
        local_ae: str,
        decide: Callable[[AssociateRQ], AssociateAC | AssociateRJ],
        timeout: float,
    ) -> Association | None:
        """Read the A-ASSOCIATE-RQ on an accepted socket and answer it; None (socket closed) when rejected."""
        try:
            host, port = sock.getpeername()[:2]
            sock.settimeout(timeout)
            set_nodelay(sock)
        except OSError:
            # Gone before we looked (a port scanner, a health check that only connects).
            sock.close()
            return None
        assoc = cls(sock, f"{host}:{port}", {}, 0, local_ae, "", timeout)
        try:
            pdu_type, body = assoc._read_pdu()
            if pdu_type != ASSOCIATE_RQ:
                raise PduError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}")
            rq = parse_rq(body)
            answer = decide(rq)
            if isinstance(answer, AssociateRJ):
                sock.sendall(encode_rj(answer))
                assoc.close()
                return None
            sock.sendall(encode_ac(answer))
        except (DimseUnavailable, PduError, OSError):
            assoc.abort()
            return None
        proposed = {c.context_id: c.abstract_syntax for c in rq.contexts}
        assoc.remote_ae = rq.calling_ae
        assoc.peer = f"{rq.calling_ae}@{host}:{port}"
        assoc.contexts = {
            c.context_id: Context(c.context_id, proposed[c.context_id], c.transfer_syntax)
            for c in answer.contexts
            if c.result == ACCEPTANCE
        }
        assoc._set_peer_max(rq.max_length)
        return assoc

    def _set_peer_max(self, max_length: int) -> None:
        self._fragment = max_length - 6 if max_length > 6 else _UNLIMITED_FRAGMENT

    # --- reading -----------------------------------------------------------------------------------

    def _recv(self) -> bytes:
        try:
            data = self.sock.recv(RECV_CHUNK)
        except TimeoutError as exc:
            raise DimseTimeout(f"no data from {self.peer} within {self.timeout:g} s") from exc
        except OSError as exc:
            raise DimseUnavailable(f"connection to {self.peer} lost: {exc}") from exc
        if not data:
            raise DimseUnavailable(f"{self.peer} closed the connection")
        return data

    def _read_small(self, n: int) -> bytes:
        """`n` bytes as a copy (headers, command sets); state is unchanged if the read fails."""
        while len(self._buf) - self._pos < n:
            more = self._recv()
            # `b"" + more` is `more` itself: no copy in the usual case of a chunk ending on a PDU boundary.
            self._buf = self._buf[self._pos :] + more
            self._view = memoryview(self._buf)
            self._pos = 0
        start = self._pos
        self._pos = start + n
        return self._buf[start : start + n]

    def _read_views(self, n: int, out: list[memoryview]) -> None:
        """Append views totalling `n` bytes to `out`, without copying."""
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                self._buf = self._recv()
                self._view = memoryview(self._buf)
                self._pos = 0
                continue
            take = avail if avail < n else n
            out.append(self._view[self._pos : self._pos + take])
            self._pos += take
            n -= take

    def _read_pdu(self) -> tuple[int, bytes]:
        """A whole non-P-DATA PDU (association negotiation and release)."""
        pdu_type, _, length = _HEADER.unpack(self._read_small(6))
        if length > _MAX_ASSOCIATE_PDU:
            raise PduError(f"PDU type 0x{pdu_type:02X} of {length} bytes")
        return pdu_type, self._read_small(length)

    def buffered(self) -> bool:
        return len(self._buf) > self._pos

    def wait_readable(self, timeout: float) -> bool:
        """True when a message has started to arrive (or the peer closed), False after `timeout` seconds."""
        if self.buffered():
            return True
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def _next_pdv(self, in_message: bool) -> tuple[int, int, int]:
        """(context ID, message control header, payload length) of the next PDV, across P-DATA PDUs."""
        while not self._pdu_left:
            pdu_type, _, length = _HEADER.unpack(self._read_small(6))
            if pdu_type == P_DATA_TF:
                self._pdu_left = length
                continue
            body = self._read_small(min(length, _MAX_ASSOCIATE_PDU))
            if pdu_type == RELEASE_RQ and not in_message:
                self._send_raw(encode_release(RELEASE_RP))
                self.close()
                raise PeerReleased(f"{self.peer} released the association")
            if pdu_type == ABORT:
                self.close()
                source = body[2] if len(body) >= 4 else 0
                raise DimseUnavailable(f"{self.peer} aborted the association (source {source})")
            self.abort()
            raise DimseUnavailable(f"{self.peer} sent PDU type 0x{pdu_type:02X} in the middle of an operation")
        item_length, context_id, control = _PDV.unpack(self._read_small(6))
        if item_length < 2 or item_length + 4 > self._pdu_left:
            self.abort()
            raise DimseUnavailable(f"{self.peer} sent a malformed P-DATA-TF PDU")
        self._pdu_left -= item_length + 4
        return context_id, control, item_length - 2

    def receive(self) -> Message:
        """The next DIMSE message. Raises DimseUnavailable (lost, aborted, timed out) or PeerReleased."""
        command_parts: list[bytes] = []
        while True:
            context_id, control, length = self._next_pdv(bool(command_parts))
            if not control & 1:
                self.abort()
                raise DimseUnavailable(f"{self.peer} sent a data set fragment before its command")
            if length + sum(map(len, command_parts)) > _MAX_COMMAND:
                self.abort()
                raise DimseUnavailable(f"{self.peer} sent a command set of more than {_MAX_COMMAND} bytes")
            command_parts.append(self._read_small(length))
            if control & 2:
                break
        try:
            command = parse_command(b"".join(command_parts))
            has_data = command.has_data_set
        except PduError as exc:
            self.abort()
            raise DimseUnavailable(f"{self.peer} sent an undecodable command set: {exc}") from exc
        self.received += 1
        if not has_data:
            return Message(context_id, command, None)
        data: list[memoryview] = []
        while True:
            data_context, control, length = self._next_pdv(True)
            if control & 1 or data_context != context_id:
                self.abort()
                raise DimseUnavailable(f"{self.peer} interleaved messages in one presentation context stream")
            self._read_views(length, data)
            if control & 2:
                return Message(context_id, command, data)

    # --- writing and closing -----------------------------------------------------------------------

    def _send_raw(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            raise DimseTimeout(f"{self.peer} accepted no data within {self.timeout:g} s") from exc
        except OSError as exc:
            raise DimseUnavailable(f"connection to {self.peer} lost: {exc}") from exc

    def send(self, context_id: int, command: bytes, data: bytes | None = None) -> None:
        """Send one DIMSE message, fragmented to the peer's Maximum Length."""
        parts: list[bytes] = []
        for payload, kind in ((command, 1), (data, 0)):
            if payload is None:
                continue
            step = self._fragment
            for start in range(0, max(len(payload), 1), step):
                fragment = payload[start : start + step]
                last = 2 if start + step >= len(payload) else 0
                parts.append(_HEADER.pack(P_DATA_TF, 0, len(fragment) + 6))
                parts.append(_PDV.pack(len(fragment) + 2, context_id, kind | last) + fragment)
        self._send_raw(b"".join(parts))

    def release(self) -> None:
        """A-RELEASE-RQ, wait for the A-RELEASE-RP (within the time-out), close; abort if the peer misbehaves."""
        if self.closed:
            return
        try:
            self._send_raw(encode_release(RELEASE_RQ))
            while True:
                pdu_type, _ = self._read_pdu()
                if pdu_type in (RELEASE_RP, ABORT):
                    break
                if pdu_type == RELEASE_RQ:
                    # Release collision (PS3.8 §7.2.2.4): the requestor answers too, then waits.
                    self._send_raw(encode_release(RELEASE_RP))
        except (DimseUnavailable, PduError):
            self.abort()
            return
        self.close()

    def abort(self) -> None:
        if self.closed:
            return
        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(encode_abort())
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
