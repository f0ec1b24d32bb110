"""MLLP (HL7 v2 minimal lower layer protocol) over asyncio: a bounded, per-connection server and a client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable

from drimbox.hl7.ack import HL7Error, build_ack, peek_header
from drimbox.state import faults

log = logging.getLogger(__name__)

START = b"\x0b"
END = b"\x1c\x0d"
_READ_CHUNK = 64 * 1024
# After a refused frame the rest of it is read and thrown away for this long before closing, so the
# NAK is not destroyed by the TCP reset that closing a socket with unread data would send.
_LINGER_SECONDS = 2.0
# Whitespace some senders put between frames; anything else outside a frame ends the connection.
_BETWEEN_FRAMES = b" \t\r\n"

Handler = Callable[[bytes], Awaitable[bytes]]


class _ProtocolViolation(Exception):
    """The peer broke MLLP framing: the connection is closed without an answer."""


class _FrameTooLarge(Exception):
    def __init__(self, head: bytes) -> None:
        super().__init__("frame too large")
        self.head = head


def frame(message: bytes) -> bytes:
    return START + message + END


class MllpServer:
    """Accepts MLLP connections; each frame goes to ``handler`` and its answer is sent back framed.

    Messages on one connection are handled one after the other. A peer that breaks the framing, goes
    quiet for ``idle_timeout`` seconds or sends a frame over ``max_message_bytes`` is disconnected
    (the last after an AR NAK); other connections are not affected.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2575,
        *,
        handler: Handler,
        max_message_bytes: int = 32 * 1024 * 1024,
        idle_timeout: float = 300.0,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self._ssl = ssl  # MLLP over TLS when set ([mllp] tls)
        self._host = host
        self._port = port
        self._handler = handler
        self._max = max_message_bytes
        self._idle = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=_READ_CHUNK, ssl=self._ssl)
        log.info("MLLP listening on %s:%d", self._host, self.port)

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("MllpServer is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> MllpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Nagle would hold the small ACK back for the sender's delayed ACK timer.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await self._conversation(reader, writer)
        except (TimeoutError, _ProtocolViolation, ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("MLLP connection from %s closed: %s", peer, type(exc).__name__)
        except asyncio.CancelledError:
            pass
        except Exception:  # one connection's failure must never reach the server or the others
            log.exception("MLLP connection from %s failed", peer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _conversation(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        while True:
            try:
                message = await self._next_frame(reader, buffer)
            except _FrameTooLarge as exc:
                error = HL7Error("AR", "207", f"message larger than {self._max} bytes is refused")
                await self._send(writer, build_ack(peek_header(exc.head), "AR", error))
                await self._discard_rest(reader, writer)
                return
            if message is None:
                return
            await self._send(writer, await self._answer(message))
            faults.checkpoint("mllp.ack_sent")

    async def _answer(self, message: bytes) -> bytes:
        try:
            return await self._handler(message)
        except Exception as exc:
            log.error("MLLP handler failed with %s", type(exc).__name__)
            error = HL7Error("AE", "207", "internal error while handling the message")
            return build_ack(peek_header(message), "AE", error)

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        return await asyncio.wait_for(reader.read(_READ_CHUNK), self._idle)

    async def _next_frame(self, reader: asyncio.StreamReader, buffer: bytearray) -> bytes | None:
        """The next complete message, or None on a clean end of stream between frames."""
        while True:
            stripped = buffer.lstrip(_BETWEEN_FRAMES)
            if stripped:
                if stripped[:1] != START:
                    raise _ProtocolViolation("data outside an MLLP frame")
                del buffer[: len(buffer) - len(stripped)]
                break
            buffer.clear()
            chunk = await self._read(reader)
            if not chunk:
                return None
            buffer += chunk
        scanned = 1
        while True:
            end = buffer.find(b"\x1c", scanned)
            if end >= 0 and end + 1 < len(buffer):
                if end - 1 > self._max:
                    raise _FrameTooLarge(bytes(buffer[: 64 * 1024]))
                if buffer[end + 1] != 0x0D:
                    raise _ProtocolViolation("0x1C not followed by 0x0D")
                message = bytes(buffer[1:end])
                del buffer[: end + 2]
                return message
            if len(buffer) - 1 > self._max:
                raise _FrameTooLarge(bytes(buffer[: 64 * 1024]))
            scanned = end if end >= 0 else len(buffer)
            chunk = await self._read(reader)
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(buffer), None)
            buffer += chunk

    async def _send(self, writer: asyncio.StreamWriter, message: bytes) -> None:
        writer.write(frame(message))
        # A peer that does not read its ACKs must not hold this task (and its memory) forever.
        await asyncio.wait_for(writer.drain(), self._idle)

    async def _discard_rest(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(_LINGER_SECONDS, self._idle)
        with contextlib.suppress(TimeoutError, ConnectionError):
            while (left := deadline - loop.time()) > 0:
                if not await asyncio.wait_for(reader.read(_READ_CHUNK), left):
                    break


async def send_message(
    host: str, port: int, message: bytes, timeout: float = 30, ssl: ssl_module.SSLContext | None = None
) -> bytes:
    """Send one framed message on a new connection and return the framed reply, unframed."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, limit=16 * 1024 * 1024, ssl=ssl)
        try:
            writer.write(frame(message))
            await writer.drain()
            reply = await reader.readuntil(END)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    start = reply.find(START)
    if start < 0:
        raise ConnectionError("MLLP reply is not framed (no 0x0B)")
    return reply[start + 1 : -len(END)]
