"""Streaming multipart/related responses (RFC 2387) over aiohttp: one part at a time, bounded memory."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterable, Mapping
from typing import TypeAlias

from aiohttp import web

from drimbox.dicomweb.backend import OpenFile
from drimbox.dicomweb.sendfile import DirectBody

log = logging.getLogger(__name__)


class ClientGone(ConnectionError):
    """The client closed the connection: stop producing (the caller closes the backend iterator)."""


# What a part carries: bytes in memory, a stream (a PACS's fragments), or a file to send zero-copy.
Body: TypeAlias = bytes | AsyncIterable[bytes] | OpenFile


class MultipartStream:
    """One multipart/related response written part by part as the parts become available.

    A fresh random boundary per response (a fixed one can collide with data and lets one response's parts
    be confused with another's). Bodies go to the socket directly when they can (`sendfile.SocketWriter`:
    files zero-copy, bytes without aiohttp's copy), else through aiohttp (TLS, compression). Backpressure either
    way: the socket's buffer (or aiohttp's drain past 64 KiB) makes a slow client slow the producer.
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
        self._closed = False
        self._direct: DirectBody | None = None

    @property
    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def open(self) -> None:
        """Send the status line and headers: from here on the status cannot change."""
        writer = await self.response.prepare(self.request)
        try:
            self._direct = await DirectBody.after_headers(self.request, self.response, writer)
        except ConnectionError as exc:
            raise ClientGone(str(exc)) from exc

    async def _write(self, *data: bytes) -> None:
        if self.client_gone:
            raise ClientGone("client closed the connection")
        try:
            if self._direct is not None:
                await self._direct.write(*data)
            else:
                for buffer in data:
                    await self.response.write(buffer)
        except ConnectionError as exc:
            raise ClientGone(str(exc)) from exc

    async def write_part(
        self,
        content_type: str,
        body: Body,
        *,
        size: int | None = None,
        location: str | None = None,
    ) -> None:
        """One part: its headers (Content-Type, Content-Length when known, Content-Location), then its bytes.

        The body is released here whatever happens (an async iterator closed, an open file closed).
        """
        try:
            if isinstance(body, bytes):
                size = len(body)
            elif isinstance(body, OpenFile):
                size = body.size
            lines = [f"--{self.boundary}", f"Content-Type: {content_type}"]
            if size is not None:
                lines.append(f"Content-Length: {size}")
            if location is not None:
                lines.append(f"Content-Location: {location}")
            head = (("\r\n" if self.parts else "") + "\r\n".join(lines) + "\r\n\r\n").encode("ascii")
            if isinstance(body, bytes):
                await self._write(head, body)
            elif isinstance(body, OpenFile):
                await self._write_file(head, body)
            else:
                await self._write(head)
                written = 0
                async for chunk in body:
                    await self._write(chunk)
                    written += len(chunk)
                if size is not None and written != size:
                    # The announced Content-Length is now wrong: the part is corrupt, so the response must fail.
                    raise ValueError(f"part announced {size} bytes but {written} were produced")
        finally:
            await release(body)
        self.parts += 1

    async def _write_file(self, head: bytes, body: OpenFile) -> None:
        if self.client_gone:
            raise ClientGone("client closed the connection")
        if self._direct is not None:
            try:
                await self._direct.write_file(head, body)
            except ConnectionError as exc:
                raise ClientGone(str(exc)) from exc
            return
        await self._write(head)
        offset = 0
        while offset < body.size:
            chunk = await asyncio.to_thread(body.read_chunk, offset)
            if not chunk:
                raise ValueError(f"the instance's file ended after {offset} of its {body.size} bytes")
            await self._write(chunk)
            offset += len(chunk)

    async def close(self) -> None:
        """The closing delimiter: tells the client the response is complete."""
        if self._closed:
            return
        self._closed = True
        tail = "\r\n" if self.parts else ""
        await self._write(f"{tail}--{self.boundary}--\r\n".encode("ascii"))
        try:
            if self._direct is not None:
                await self._direct.finish()
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


async def release(body: Body) -> None:
    """Give back what a body holds: an open file, or a source that may be waiting on the PACS."""
    if isinstance(body, OpenFile):
        body.close()
    elif not isinstance(body, bytes):
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
