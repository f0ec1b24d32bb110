"""Streaming multipart/related responses (RFC 2387) over aiohttp: one part at a time, bounded memory."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterable, Mapping

from aiohttp import web

log = logging.getLogger(__name__)


class ClientGone(ConnectionError):
    """The client closed the connection: stop producing (the caller closes the backend iterator)."""


class MultipartStream:
    """One multipart/related response written part by part as the parts become available.

    A fresh random boundary per response (a fixed one can collide with data and lets one response's parts
    be confused with another's). Backpressure: aiohttp's write awaits the transport's drain once more than
    64 KiB are buffered, so a slow client slows the producer instead of filling memory.
    """

    def __init__(
        self,
        request: web.Request,
        part_type: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        type_params: Mapping[str, str] | None = None,
    ) -> None:
        self.request = request
        self.boundary = secrets.token_hex(16)
        params = "".join(f"; {k}={v}" for k, v in (type_params or {}).items())
        self.content_type = f'multipart/related; type="{part_type}"{params}; boundary={self.boundary}'
        self.response = web.StreamResponse(status=status, headers=headers)
        self.response.headers["Content-Type"] = self.content_type
        self.parts = 0
        self.bytes_sent = 0
        self._closed = False

    @property
    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def open(self) -> None:
        """Send the status line and headers: from here on the status cannot change."""
        await self.response.prepare(self.request)

    async def _write(self, data: bytes) -> None:
        if self.client_gone:
            raise ClientGone("client closed the connection")
        try:
            await self.response.write(data)
        except ConnectionError as exc:
            raise ClientGone(str(exc)) from exc
        self.bytes_sent += len(data)

    async def write_part(
        self,
        content_type: str,
        body: bytes | AsyncIterable[bytes],
        *,
        size: int | None = None,
        location: str | None = None,
    ) -> None:
        """One part: its headers (Content-Type, Content-Length when known, Content-Location), then its bytes."""
        if isinstance(body, bytes):
            size = len(body)
        lines = [f"--{self.boundary}", f"Content-Type: {content_type}"]
        if size is not None:
            lines.append(f"Content-Length: {size}")
        if location is not None:
            lines.append(f"Content-Location: {location}")
        head = ("\r\n" if self.parts else "") + "\r\n".join(lines) + "\r\n\r\n"
        await self._write(head.encode("ascii"))
        if isinstance(body, bytes):
            await self._write(body)
        else:
            written = 0
            try:
                async for chunk in body:
                    await self._write(chunk)
                    written += len(chunk)
            finally:
                # An interrupted part must release its source now (an open file, a DIMSE fragment queue).
                close = getattr(body, "aclose", None)
                if close is not None:
                    await close()
            if size is not None and written != size:
                # The announced Content-Length is now wrong: the part is corrupt, so the response must fail.
                raise ValueError(f"part announced {size} bytes but {written} were produced")
        self.parts += 1

    async def close(self) -> None:
        """The closing delimiter: tells the client the response is complete."""
        if self._closed:
            return
        self._closed = True
        tail = "\r\n" if self.parts else ""
        await self._write(f"{tail}--{self.boundary}--\r\n".encode("ascii"))
        try:
            await self.response.write_eof()
        except ConnectionError as exc:
            raise ClientGone(str(exc)) from exc

    def abort(self) -> None:
        """End the response without its closing delimiter, so the client sees it as broken, not complete.

        Once the status line is sent, closing the connection mid-body is the only failure signal every HTTP
        client notices (HTTP/1.1 chunked: no last chunk). A consumer box must never cache a partial study as
        if it were whole.
        """
        self._closed = True
        transport = self.request.transport
        if transport is not None and not transport.is_closing():
            transport.close()  # buffered bytes are still flushed first; then the client sees the cut
