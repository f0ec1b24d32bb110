"""Response bodies written straight to the response's socket: files zero-copy (sendfile), bytes without copies.

Why: through aiohttp's writer every byte of a file is read into a new Python buffer (a thread hop per chunk)
and copied again by `transport.write`; on the warm path (instances on disk, sent as stored) that is the whole
cost of a retrieve. Here `os.sendfile` hands the page cache to the socket and the loop thread only waits for
the socket to be writable: about a third of the server CPU a study, and more throughput (perf/README.md).

A client on this host is sent copies instead while few files are being sent at once (`same_host`, `_FileCopier`,
COPY_WHILE_AT_MOST): one thread reads the file into a reusable buffer, the loop writes it. sendfile leaves the
receiver to copy from page-cache memory that no CPU cache holds; a copy hands it data still in cache: faster for
one client on loopback, where sendfile's receiver cost swings with memory traffic. With many clients the CPU is
the limit and sendfile's total is a third lower. A client across a network card (DMA reads the page cache) gets
sendfile: the box's CPU is what is saved there.
Tried and not kept: two buffers, reading ahead while writing (slower, see _FileCopier); TCP_CORK around each
part's headers and file (no throughput change); a bigger SO_SNDBUF (the socket rarely fills). Figures for
each in perf/README.md.

Why not `loop.sendfile`: uvloop, the box's loop, does not implement it (aiohttp's FileResponse then falls back
to reading chunks). Why a chunked body and not one Content-Length for the whole response: that needs every
part's size before the first byte, i.e. the whole instance list, which the cold Proxy path only learns as the
PACS delivers; and a size from a stat before sending races with an archive replacing the file. Each file part
is one HTTP chunk whose size comes from fstat on the descriptor being sent: exact by construction. Chunking
costs the client nothing measurable (perf/README.md).

Safety rules this module follows:
- The socket belongs to the transport. A raw write happens only when the transport's own buffer is empty
  (so bytes never overtake what aiohttp queued) and only right after checking that the transport is not
  closing, with no await in between: once the transport closes its descriptor the number can be reused by
  another connection, and a late write there would send one patient's images into another response.
- Waiting for writability uses `loop.add_writer` on a duplicate of the descriptor (the loop refuses the
  transport's own), created and closed around each wait, so nothing outlives the wait.
- Backpressure is the socket's: at most one buffer (FILE_CHUNK) per response in user space, whatever the
  client's speed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import weakref
from collections.abc import Callable, Sequence

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from drimbox.dicomweb.backend import FILE_CHUNK, OpenFile

# A wait for writability also ends after this long, to look at the transport again: the duplicate descriptor
# keeps the socket open, so if the transport closed meanwhile (time-out, a lost connection noticed by the read
# side) the socket would report nothing and the wait would last as long as the client stays silent.
_WAIT_SLICE_S = 1.0

# A client on this host is sent copies only while this process sends at most this many files at once; beyond, the
# machine's CPU is the limit, and sendfile spends far less of it. 16 curl clients of a warm CT 300, 2 cores, workers 2
# (a machine loaded by other work, two runs each): the box's CPU fell from 0.71-0.78 to 0.26-0.27 ms a MB, the
# clients' rose from 0.30 to 0.40-0.44, the aggregate rose from 1255-1283 to 2214-2804 MB/s; one client is faster
# copied (1182-1216 MB/s against 876-881).
COPY_WHILE_AT_MOST = 2
# Files being sent now, per event loop (each loop counts its own: no lock, and test processes may run several).
_SENDING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[int]] = weakref.WeakKeyDictionary()


class SocketWriter:
    """Writes to one response's socket: files by sendfile, bytes by writev, never queued. Loop thread only."""

    def __init__(self, transport: asyncio.Transport, fd: int) -> None:
        self._transport = transport
        self._fd = fd
        self.loop = asyncio.get_running_loop()
        self.same_host = False  # the client runs on this machine: DirectBody copies files instead of sendfile

    @classmethod
    def of(cls, transport: asyncio.Transport | None) -> SocketWriter | None:
        """A writer for this transport, or None when its bytes cannot go to the socket directly (TLS, no socket).

        No isinstance check: uvloop's TCPTransport does not derive from asyncio.Transport.
        """
        if not hasattr(os, "sendfile") or transport is None or transport.is_closing():
            return None
        if transport.get_extra_info("sslcontext") is not None or transport.get_extra_info("ssl_object") is not None:
            return None  # TLS: the bytes must go through the transport's encryption
        sock = transport.get_extra_info("socket")
        if sock is None or sock.type != socket.SOCK_STREAM:
            return None
        writer = cls(transport, sock.fileno())
        writer.same_host = same_host(transport)
        return writer

    def _check(self) -> None:
        if self._transport.is_closing():
            raise ConnectionResetError("the client connection is closed")

    async def _writable(self) -> None:
        """Until the socket can take more bytes (or reports an error, which the next write raises)."""
        self._check()
        dup = os.dup(self._fd)
        try:
            ready = self.loop.create_future()
            self.loop.add_writer(dup, _set_done, ready)
            timer = self.loop.call_later(_WAIT_SLICE_S, _set_done, ready)
            try:
                await ready
            finally:
                timer.cancel()
                self.loop.remove_writer(dup)  # before closing: the poller must forget it first
        finally:
            os.close(dup)

    async def flushed(self) -> None:
        """Until the transport has sent everything it holds (the status line and headers, typically at once)."""
        while self._transport.get_write_buffer_size():
            await self._writable()
            await asyncio.sleep(0)  # let the transport write its buffer in the same wake-up

    async def write(self, buffers: Sequence[bytes | memoryview]) -> None:
        """All of `buffers`, in order, as one gathered write when the socket takes it (writev)."""
        views = [memoryview(b) for b in buffers if b]
        while views:
            self._check()
            try:
                sent = os.writev(self._fd, views)
            except BlockingIOError:
                await self._writable()
                continue
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if sent:
                views[0] = views[0][sent:]

    async def sendfile(self, fd: int, count: int) -> int:
        """`count` bytes of the open file `fd` from its start, page cache to socket; fewer only if the file ends."""
        offset = 0
        while offset < count:
            self._check()
            try:
                sent = os.sendfile(self._fd, fd, offset, count - offset)
            except BlockingIOError:
                await self._writable()
                continue
            if sent == 0:
                break  # the file is shorter than it was at open: the caller fails the response
            offset += sent
        return offset


class DirectBody:
    """The body of a prepared aiohttp response, written to its socket with the response's own framing.

    Chunked (HTTP/1.1 without Content-Length): every write is one chunk, and a file part is one chunk whose
    size is its part headers plus the size fstat gave when the file was opened. Otherwise (Content-Length,
    or HTTP/1.0 ending at close) the bytes go as they are. aiohttp still sends the headers and, on
    `write_eof`, the last chunk, so keep-alive and its bookkeeping are untouched.
    """

    def __init__(
        self, socket_writer: SocketWriter, *, chunked: bool, send_headers: Callable[[], None] | None = None
    ) -> None:
        self._socket = socket_writer
        self._chunked = chunked
        self._send_headers = send_headers  # the response's headers, still held by aiohttp until the first write
        # The CRLF closing the previous chunk, sent with the next write (one system call instead of two).
        self._pending = b""
        self._copy = _FileCopier() if socket_writer.same_host else None

    @classmethod
    async def after_headers(
        cls, request: web.BaseRequest, response: web.StreamResponse, writer: AbstractStreamWriter | None
    ) -> DirectBody | None:
        """Sends the prepared response's headers and takes over its body; None when it must stay with aiohttp."""
        if writer is None or response.compression:
            return None
        socket_writer = SocketWriter.of(request.transport)
        if socket_writer is None:
            return None
        # aiohttp ≥ 3.12 holds the headers back to send them with the first body write; older ones sent them in
        # prepare() and have no send_headers. Held here too, until the first bytes of the body are ready: sent
        # then, right before them with no wait in between, the body follows the headers at once (a client timing
        # the body from the first byte of the response, like the viewer's link meter, times the link, not the
        # box's gap).
        send_headers = getattr(writer, "send_headers", None)
        if send_headers is None:
            await socket_writer.flushed()
        chunked = response.headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
        return cls(socket_writer, chunked=chunked, send_headers=send_headers)

    async def _headers_first(self) -> None:
        """The held headers go to the transport, and the socket is ours once it has sent them (usually at once)."""
        if self._send_headers is not None:
            send, self._send_headers = self._send_headers, None
            send()
            await self._socket.flushed()

    def _chunk_head(self, size: int) -> bytes:
        head, self._pending = self._pending + f"{size:x}\r\n".encode("ascii"), b"\r\n"
        return head

    async def write(self, *data: bytes) -> None:
        size = sum(len(b) for b in data)
        if not size:
            return  # an empty chunk would end a chunked body
        await self._headers_first()
        await self._socket.write([self._chunk_head(size), *data] if self._chunked else data)

    async def write_file(self, head: bytes, body: OpenFile) -> None:
        """`head` then the whole file; ValueError when the file turns out shorter than at open (truncated)."""
        if not head and not body.size:
            return  # nothing to send (and an empty chunk would end a chunked body)
        await self._headers_first()
        await self._socket.write([self._chunk_head(len(head) + body.size), head] if self._chunked else [head])
        sending = _SENDING.setdefault(self._socket.loop, [0])
        sending[0] += 1
        try:
            if self._copy is None or sending[0] > COPY_WHILE_AT_MOST:
                sent = await self._socket.sendfile(body.fd, body.size)
            else:
                sent = await self._copy.send(self._socket, body)
        finally:
            sending[0] -= 1
        if sent != body.size:
            raise ValueError(f"the instance's file ended after {sent} of its {body.size} bytes")

    async def finish(self) -> None:
        """Before aiohttp's write_eof (which sends the last chunk): the previous chunk's CRLF."""
        pending, self._pending = self._pending, b""
        if pending:
            await self._socket.write([pending])


class _FileCopier:
    """Files sent by copying, for a client on this host: read in a thread into one reusable buffer, then written.

    Tried and not kept: two buffers, reading the next chunk (or the next file) while this one is written: slower,
    and more server CPU (the reading thread and the loop then compete for the cores with the client).
    """

    def __init__(self) -> None:
        self._buffer = memoryview(bytearray(FILE_CHUNK))

    async def _read(self, body: OpenFile, offset: int) -> int:
        view = self._buffer[: min(len(self._buffer), body.size - offset)]
        # The thread reads through its own descriptor, and the read is shielded from cancellation (the client
        # leaving): a read cancelled before it starts would leave the duplicate open; a read through the part's
        # own descriptor, started late, could find it closed and its number reused by another file.
        fd = os.dup(body.fd)

        def read() -> int:
            try:
                return os.preadv(fd, [view], offset)
            finally:
                os.close(fd)

        task = asyncio.ensure_future(asyncio.to_thread(read))
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def send(self, socket_writer: SocketWriter, body: OpenFile) -> int:
        """The file's bytes; fewer than its size only if it ended early."""
        sent = 0
        while sent < body.size:
            count = await self._read(body, sent)
            if not count:
                break
            await socket_writer.write([self._buffer[:count]])
            sent += count
        return sent


def same_host(transport: asyncio.BaseTransport) -> bool:
    """Whether the peer runs on this machine (loopback, a Unix socket, or our own address)."""
    peer = transport.get_extra_info("peername")
    if not isinstance(peer, tuple):
        return isinstance(peer, str | bytes)  # a Unix socket's peer name
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    own = transport.get_extra_info("sockname")
    return address.is_loopback or (isinstance(own, tuple) and own[0] == peer[0])


def _retrieve(task: asyncio.Future[int]) -> None:
    """A read whose response was abandoned (client gone) must not log 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
