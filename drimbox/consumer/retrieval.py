"""Consumer side of DRIM-M: a series fetched from the source box named in a KOS, streamed part by part."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp.helpers import parse_mimetype

from drimbox import tls
from drimbox.consumer.identity import quick_identity
from drimbox.dicomweb.backend import NotFound, Unavailable

log = logging.getLogger(__name__)

# What the source stores first (`*`): no box decodes or transcodes on the way, the cache keeps the stored bitstream
# and the viewer negotiates with the consumer as with a source. Uncompressed ranked above `*` made a source holding
# JPEG 2000 or JPEG-LS decode for us, and the viewer behind got native frames (three times the bytes). Then the
# compressed lossless syntaxes and native, for a source that does not understand `*`.
ACCEPT = ", ".join(
    f'multipart/related; type="application/dicom"; transfer-syntax={syntax}; q={q}'
    for syntax, q in (
        ("*", "1.0"),
        ("1.2.840.10008.1.2.4.80", "0.9"),
        ("1.2.840.10008.1.2.4.90", "0.8"),
        ("1.2.840.10008.1.2.1", "0.5"),
    )
)
KOS_HEADER = "KOS-SOPInstanceUID"
# Also the response's read buffer: aiohttp stops reading the socket past twice this much held; its default (64 KiB)
# paused and resumed the source's connection several times an instance.
READ_SIZE = 1024 * 1024
SMALL_READ = 4096
MAX_HEADERS = 16 * 1024
MAX_PREAMBLE = 64 * 1024
# One instance is held in memory at a time; a larger part is refused rather than exhausting memory.
MAX_INSTANCE = 2 * 1024**3
# Parts at least this large (by their Content-Length) are handed on while they arrive (StreamedInstance) when the
# caller asks: a multi-frame instance of hundreds of MB reaches the viewer as it comes, not once whole. Smaller ones
# are whole before they go (a 512² CT slice is 0.5 MB): one piece is cheaper for the cache and its readers.
STREAM_FROM = 1024 * 1024
# Below STREAM_FROM, a part is streamed too when its rest would take longer than this to arrive at the rate the
# response has come so far (and always the first part, the viewer's first image): over a 100 Mbit/s link a 0.5 MB
# slice takes 42 ms, which the viewer's first byte waited for; on loopback (~300 MB/s) parts stay whole.
STREAM_AFTER = 0.010
# What a streamed part must show of itself before it goes on: its file meta and data set up to the pixels (the
# identity the KOS is checked against). A part whose header is longer is received whole, as a small one.
HEAD = 64 * 1024
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}


class NotWhitelisted(Exception):
    """The Retrieve URL is not an endpoint of the ANS whitelist (host, port, path): nothing was sent to it."""

    status = 502
    reason = "source_not_whitelisted"


class SourceRedirected(NotWhitelisted):
    """The source answered with a redirect: never followed, since the token would go where the list did not say."""

    reason = "source_redirected"


class SourceRefused(Exception):
    """The source box answered 401 or 403; `body` is its JSON reason (e.g. {"reason": "expired"})."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"the source box refused the retrieve: HTTP {status} {body.get('reason', '')}".rstrip())
        self.status = status
        self.body = body

    @property
    def reason(self) -> str:
        return str(self.body.get("reason") or self.body.get("error") or "refused")


class SourceUnavailable(Unavailable):
    """The source box cannot be reached, timed out, failed, or broke the response off (HTTP 503)."""


class BadResponse(SourceUnavailable):
    """The source box's answer is not a well-formed multipart/related of DICOM instances."""


@dataclass(frozen=True, slots=True)
class RetrievedInstance:
    """One instance as the source sent it: Part-10 bytes and the UIDs of its file meta (fits state.Received)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes


class StreamedInstance:
    """One instance whose head (file meta, data set up to the pixels) has arrived, the rest still on its way.

    Fits state.series_fill.Streamed. `rest` is read once, in order, before the next part of the response; whatever
    its reader leaves is skipped by the retrieval (a part refused by the KOS check, or sent twice).
    """

    __slots__ = ("_buffer", "_left", "head", "size", "sop_class_uid", "sop_instance_uid", "transfer_syntax_uid")

    def __init__(self, identity: RetrievedInstance, size: int, buffer: _Buffer) -> None:
        self.sop_class_uid = identity.sop_class_uid
        self.sop_instance_uid = identity.sop_instance_uid
        self.transfer_syntax_uid = identity.transfer_syntax_uid
        self.head = identity.data
        self.size = size
        self._buffer = buffer
        self._left = size - len(self.head)

    async def rest(self) -> AsyncIterator[bytes]:
        """The bytes after the head, in the pieces they arrive in."""
        while self._left > 0:
            try:
                chunk = await self._buffer.some(self._left)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Read by the cache's fill, outside stream_series: its errors are the same as there.
                raise SourceUnavailable(f"source box unreachable midway: {type(exc).__name__}") from None
            self._left -= len(chunk)
            yield chunk

    async def skip(self) -> None:
        async for _ in self.rest():
            pass


class HostPolicy(Protocol):
    """What retrieval asks of the whitelist (auth.AnsWhitelist fits)."""

    async def check(self, url: str, role: Any = "db") -> bool: ...


class SourceRetriever:
    """GETs Retrieve URLs of other boxes with the professional's token; one HTTP client for the process."""

    def __init__(self, whitelist: HostPolicy, *, connect_timeout: float = 10.0, read_timeout: float = 60.0) -> None:
        self.whitelist = whitelist
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No cookies between boxes; the token is the only credential sent.
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                connector=tls.connector(),
                read_bufsize=READ_SIZE,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def iter_series(self, url: str, *, access_token: str, kos_uid: str) -> AsyncIterator[RetrievedInstance]:
        """Every instance at `url` (a series Retrieve URL), each yielded as soon as its part is complete."""
        async for instance in self.stream_series(url, access_token=access_token, kos_uid=kos_uid):
            if isinstance(instance, RetrievedInstance):  # always, without stream_from
                yield instance

    async def stream_series(
        self, url: str, *, access_token: str, kos_uid: str, stream_from: int | None = None
    ) -> AsyncIterator[RetrievedInstance | StreamedInstance]:
        """As iter_series, but with `stream_from` a part at least that large is yielded as soon as its head has
        arrived (StreamedInstance), its pixels following as they come."""
        if not await self.whitelist.check(url, "db"):
            raise NotWhitelisted(f"the source host of {_origin(url)} is not in the ANS whitelist of DRIMboxes")
        headers = {"Authorization": f"Bearer {access_token}", KOS_HEADER: kos_uid, "Accept": ACCEPT}
        try:
            async with self._client().get(url, headers=headers, allow_redirects=False) as resp:
                if 300 <= resp.status < 400:
                    raise SourceRedirected(
                        f"the source box {_origin(url)} answered HTTP {resp.status} (a redirect): "
                        "not followed, the professional's token goes to listed endpoints only"
                    )
                if resp.status != 200:
                    raise await _status_error(resp, url)
                boundary = _boundary(resp.headers.get("Content-Type", ""))
                async for instance in _parts(_Buffer(resp.content), boundary, stream_from):
                    yield instance
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Refused, reset, timed out or cut short: the exam is unreachable now, not wrong.
            raise SourceUnavailable(f"source box {_origin(url)} unreachable: {type(exc).__name__}") from None


def _origin(url: str) -> str:
    return url.split("/", 3)[2] if url.count("/") >= 2 else url[:80]


async def _status_error(resp: aiohttp.ClientResponse, url: str) -> Exception:
    try:
        raw = await resp.content.read(MAX_HEADERS)
        body = json.loads(raw) if raw else {}
        if not isinstance(body, dict):
            body = {}
    except (ValueError, aiohttp.ClientError):
        body = {}
    if resp.status in (401, 403):
        return SourceRefused(resp.status, body)
    if resp.status == 404:
        return NotFound(f"the source box {_origin(url)} has no such series")
    return SourceUnavailable(f"source box {_origin(url)} answered HTTP {resp.status}")


def _boundary(content_type: str) -> bytes:
    mime = parse_mimetype(content_type)
    if (mime.type, mime.subtype) != ("multipart", "related") or not mime.parameters.get("boundary"):
        raise BadResponse(f"the source box sent {mime.type}/{mime.subtype}, not multipart/related")
    return mime.parameters["boundary"].encode("latin-1")


class _Buffer:
    """Large reads from the response, consumed from the front; never more than one part plus a read."""

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content
        self.data = bytearray()

    async def _more(self, at_most: int) -> None:
        # At most what is looked for: aiohttp hands over a part of its buffered chunk without copying the rest,
        # where taking all it holds (up to 2 MiB) copied the next instance's bytes in here, then out again.
        chunk = await self.content.read(at_most)
        if not chunk:
            raise BadResponse("the source box's response ended in the middle of a part")
        self.data += chunk

    async def until(self, separator: bytes, limit: int) -> bytes:
        """The bytes before `separator` (consumed with it)."""
        scanned = 0
        while (index := self.data.find(separator, scanned)) < 0:
            if len(self.data) > limit:
                raise BadResponse("a part of the source box's response is too large or has no delimiter")
            scanned = max(0, len(self.data) - len(separator) + 1)
            # Small first (a delimiter and a part's headers), then doubling (a part without Content-Length).
            await self._more(max(SMALL_READ, len(self.data)))
        out = bytes(self.data[:index])
        del self.data[: index + len(separator)]
        return out

    async def peek(self, size: int) -> bytes:
        """The next `size` bytes, left to be read."""
        while len(self.data) < size:
            await self._more(size - len(self.data))
        return bytes(self.data[:size])

    def drop(self, size: int) -> None:
        """Forget the next `size` bytes (already peeked at)."""
        del self.data[:size]

    async def exactly(self, size: int) -> bytes:
        if len(self.data) < size:
            # One call for the rest of the part: aiohttp joins its buffered chunks without a Python loop here.
            try:
                rest = await self.content.readexactly(size - len(self.data))
            except asyncio.IncompleteReadError:
                raise BadResponse("the source box's response ended in the middle of a part") from None
            if not self.data:
                return rest
            out = b"".join((self.data, rest))  # one copy, not two
            self.data.clear()
            return out
        out = bytes(self.data[:size])
        del self.data[:size]
        return out

    async def some(self, at_most: int) -> bytes:
        """What has arrived of the next `at_most` bytes (at least one byte)."""
        if self.data:
            out = bytes(self.data[:at_most])
            del self.data[:at_most]
            return out
        # aiohttp joins what it has buffered up to the limit: pieces grow with the link's speed, small on a slow one.
        chunk = await self.content.read(min(at_most, READ_SIZE))
        if not chunk:
            raise BadResponse("the source box's response ended in the middle of a part")
        return chunk

    async def at_end(self) -> bool:
        """After a delimiter: True for the close delimiter "--", else skip the line's transport padding."""
        while len(self.data) < 2:
            chunk = await self.content.read(SMALL_READ)
            if not chunk:
                return True  # the stream ended right after the last delimiter: nothing more to read
            self.data += chunk
        if self.data[:2] == b"--":
            return True
        await self.until(b"\r\n", MAX_HEADERS)
        return False


async def _parts(
    buffer: _Buffer, boundary: bytes, stream_from: int | None = None
) -> AsyncIterator[RetrievedInstance | StreamedInstance]:
    delimiter = b"--" + boundary
    await buffer.until(delimiter, MAX_PREAMBLE)
    pace = _Pace()
    while not await buffer.at_end():
        headers = _headers(await buffer.until(b"\r\n\r\n", MAX_HEADERS))
        kind = headers.get("content-type", "application/dicom").split(";", 1)[0].strip().lower()
        if kind != "application/dicom":
            raise BadResponse(f"the source box sent a {kind[:40]} part, not application/dicom")
        length = headers.get("content-length", "")
        if length.isascii() and length.isdigit():
            # The fast path (our source boxes send Content-Length): no delimiter search through the pixels.
            size = int(length)
            if size > MAX_INSTANCE:
                raise BadResponse("an instance larger than the consumer accepts")
            if stream_from is not None and size > HEAD:
                # Looked at, not taken: a part received whole is then read in one piece (one copy, not three).
                head = await buffer.peek(HEAD)
                streamed = _streamed(head, size, buffer) if size >= stream_from or pace.slow(size - HEAD) else None
                if streamed is not None:
                    buffer.drop(HEAD)
                    yield streamed
                    await streamed.skip()
                    pace.took(size - HEAD)
                    if await buffer.until(delimiter, MAX_HEADERS) != b"\r\n":
                        raise BadResponse("a part is longer than its Content-Length")
                    continue
                data = await buffer.exactly(size)
                pace.took(size - HEAD)
            else:
                data = await buffer.exactly(size)
                pace.took(size)
            if await buffer.until(delimiter, MAX_HEADERS) != b"\r\n":
                raise BadResponse("a part is longer than its Content-Length")
        else:
            data = await buffer.until(b"\r\n" + delimiter, MAX_INSTANCE)
        yield _instance(data)


class _Pace:
    """How fast a response's parts arrive: counted from the end of the first part's head (the source's own
    latency before it is not the link's rate). The first part has no pace yet: it counts as slow."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.bytes = 0

    def slow(self, rest: int) -> bool:
        if self.since is None:
            self.since = time.monotonic()
            return True
        elapsed = time.monotonic() - self.since
        return self.bytes <= 0 or rest * elapsed > STREAM_AFTER * self.bytes

    def took(self, n: int) -> None:
        if self.since is None:
            self.since = time.monotonic()
        else:
            self.bytes += n


def _streamed(head: bytes, size: int, buffer: _Buffer) -> StreamedInstance | None:
    """The part as a stream when its head holds its identity whole (up to the pixels), else None (received whole)."""
    try:
        identity = _instance(head)
    except BadResponse:
        return None  # file meta longer than the head: the whole part is judged as usual
    walked = quick_identity(head, identity.transfer_syntax_uid)
    if walked is None or not walked[1]:
        return None
    return StreamedInstance(identity, size, buffer)


def _headers(block: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def _instance(data: bytes) -> RetrievedInstance:
    """The UIDs of the part's file meta (group 0002, always Explicit VR Little Endian)."""
    if data[128:132] != b"DICM":
        raise BadResponse("a part is not a DICOM Part-10 file (no DICM prefix)")
    found: dict[int, str] = {}
    pos = 132
    try:
        while pos + 8 <= len(data):
            group, element = struct.unpack_from("<HH", data, pos)
            if group != 0x0002:
                break
            vr = bytes(data[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<I", data, pos + 8)
                start = pos + 12
            else:
                (length,) = struct.unpack_from("<H", data, pos + 6)
                start = pos + 8
            if element in (0x0002, 0x0003, 0x0010):
                found[element] = data[start : start + length].decode("ascii").rstrip("\x00 ")
            pos = start + length
    except (struct.error, UnicodeDecodeError):
        raise BadResponse("a part's file meta information cannot be read") from None
    sop_class, sop_instance, syntax = found.get(0x0002), found.get(0x0003), found.get(0x0010)
    if not (sop_class and sop_instance and syntax):
        raise BadResponse("a part's file meta lacks the SOP Class, SOP Instance or Transfer Syntax UID")
    return RetrievedInstance(sop_class, sop_instance, syntax, data)
