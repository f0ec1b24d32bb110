"""WADO-RS responses: instances streamed part by part as the backend yields them, frames and bulk data parts."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydicom.uid import UID

from drimbox.dicomweb.backend import (
    DicomwebError,
    FileBody,
    IncompleteRetrieve,
    NotFound,
    OpenFile,
    StoredInstance,
    open_files,
)
from drimbox.dicomweb.multipart import Body, ClientGone, MultipartStream, release
from drimbox.dicomweb.negotiation import ANY_SYNTAX, DICOM, InstanceChoice, NotAcceptable, syntaxes_for
from drimbox.dicomweb.pixels import PixelParts
from drimbox.dicomweb.sendfile import DirectBody
from drimbox.dicomweb.transcode import TranscodeError, encoding_slot, is_compressed, transcode_part10

log = logging.getLogger(__name__)


async def aclose(iterator: AsyncIterator[Any]) -> None:
    """Close a backend iterator early, so it can cancel its work (C-CANCEL, files, associations)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


@dataclass(frozen=True, slots=True)
class InstancePart:
    """One instance ready to send: its part Content-Type, its bytes (streamed or converted), its size."""

    content_type: str
    body: Body
    size: int | None
    single_part: bool

    async def release(self) -> None:
        """For a part that will not be sent after all (MultipartStream.write_part releases those it sends)."""
        await release(self.body)


async def instance_part(
    instance: StoredInstance, choices: list[InstanceChoice], *, compress: bool | str = True
) -> InstancePart:
    """The instance in the client's best acceptable transfer syntax: as stored when that is acceptable
    (streamed, never decoded), else converted in a thread. NotAcceptable when nothing accepted works."""
    stored = instance.transfer_syntax_uid
    data: bytes | None = None
    errors: list[str] = []
    for choice in syntaxes_for(stored, choices, compress=compress):
        content_type = f"{DICOM}; transfer-syntax={choice.syntax}"
        if choice.syntax == stored:
            if data is not None:
                return InstancePart(content_type, data, len(data), choice.single_part)
            if isinstance(instance.body, FileBody):
                # Opened now (a missing file fails here, while the status can still say so), sent zero-copy.
                opened = await instance.body.open()
                return InstancePart(content_type, opened, opened.size, choice.single_part)
            body = await _primed(instance.body.chunks())
            return InstancePart(content_type, body, instance.body.size, choice.single_part)
        if data is None:
            data = await instance.body.read()
        try:
            if is_compressed(choice.syntax):
                async with encoding_slot():
                    converted = await asyncio.to_thread(transcode_part10, data, choice.syntax)
            else:
                converted = await asyncio.to_thread(transcode_part10, data, choice.syntax)
        except TranscodeError as exc:
            errors.append(str(exc))
            continue
        return InstancePart(content_type, converted, len(converted), choice.single_part)
    offered = ", ".join(c.syntax for c in choices)
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise NotAcceptable(f"an instance stored in {UID(stored).name} cannot be sent in any of: {offered}{detail}")


async def _primed(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The same chunks, the first one already read: a source that cannot be opened (file gone, PACS
    refusing) fails here, while the status can still say so, not after the part's headers are sent."""
    try:
        first = await anext(chunks, b"")
    except BaseException:
        await aclose(chunks)
        raise

    async def replay() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await aclose(chunks)

    return replay()


def _location(base: str, instance: StoredInstance) -> str:
    return f"{base}/studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_instance_uid}"


async def _single_instance(request: web.Request, part: InstancePart, headers: Mapping[str, str]) -> web.StreamResponse:
    """A bare `application/dicom` body, for clients that asked for one instance that way."""
    response = web.StreamResponse(headers=headers)
    response.headers["Content-Type"] = part.content_type
    if part.size is not None:
        response.content_length = part.size
    try:
        writer = await response.prepare(request)
        body = part.body
        if isinstance(body, bytes):
            await response.write(body)
        elif isinstance(body, OpenFile):
            direct = await DirectBody.after_headers(request, response, writer)
            if direct is not None:
                await direct.write_file(b"", body)
            else:
                offset = 0
                while chunk := await asyncio.to_thread(body.read_chunk, offset):
                    await response.write(chunk)
                    offset += len(chunk)
                if offset != body.size:  # truncated meanwhile: the client would wait for the missing bytes
                    raise ValueError(f"the instance's file ended after {offset} of its {body.size} bytes")
        else:
            async for chunk in body:
                await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        log.info("WADO-RS: client left during a single-instance response")
    except (DicomwebError, OSError, ValueError) as exc:
        log.warning("WADO-RS: instance failed mid-body (%s); closing the connection", exc)
        if request.transport is not None:
            request.transport.close()
    finally:
        await part.release()
    return response


# Instances pulled from the backend ahead of the one being sent; the files among them are opened (and their
# reading from disk started, see FileBody.open_now) together, one thread hop per batch instead of one per file.
# Measured against one hop per instance: no throughput change, warm or cold (perf/README.md). Kept because it
# takes 16 times fewer jobs from the default executor (6 threads here, shared with SQLite and DIMSE work)
# and lets a cold archive's next files load while the current ones are sent, so sendfile on the loop thread
# rarely waits for a disk. 16 open descriptors a response stay far below any limit, even with many clients.
READ_AHEAD = 16
_END = None


class _ReadAhead:
    """The backend's instances with their parts, read ahead: a task pulls instances into a bounded queue, and
    the files of those sent as stored are opened together (`open_files`), one thread hop per batch.

    Backend contract kept: an instance whose body is not a file (a stream of PACS fragments) is the last one
    pulled until the sender has asked for the one after it, i.e. has sent it (Queue.join). Errors of the
    backend come out in order, after the instances yielded before them.
    """

    def __init__(
        self, instances: AsyncIterator[StoredInstance], choices: list[InstanceChoice], *, compress: bool | str
    ) -> None:
        self._instances = instances
        self._choices = choices
        self._compress = compress
        self._queue: asyncio.Queue[StoredInstance | Exception | None] = asyncio.Queue(READ_AHEAD)
        # Each instance with its file opened (or the error opening it raised), None when not sent as stored.
        self._ready: deque[tuple[StoredInstance, OpenFile | DicomwebError | None]] = deque()
        self._end: Exception | None = None
        self._ended = False
        self._handed = False  # an instance was given to the sender and is not marked done in the queue
        self._task = asyncio.create_task(self._pull(), name="wado-read-ahead")

    async def _pull(self) -> None:
        try:
            async for instance in self._instances:
                await self._queue.put(instance)
                if not isinstance(instance.body, FileBody):
                    await self._queue.join()
        except Exception as exc:
            # Every backend error reaches the sender, in order, which maps it (cut, 404, 503) as before.
            await self._queue.put(exc)
            return
        await self._queue.put(_END)

    def _stored_file(self, instance: StoredInstance) -> FileBody | None:
        """The instance's file when the client's best choice is its stored syntax (the file is sent as it is)."""
        if not isinstance(instance.body, FileBody):
            return None
        best = next(syntaxes_for(instance.transfer_syntax_uid, self._choices, compress=self._compress), None)
        return instance.body if best is not None and best.syntax == instance.transfer_syntax_uid else None

    async def _fill(self) -> None:
        batch: list[StoredInstance] = []
        item = await self._queue.get()
        while True:
            if item is None or isinstance(item, Exception):
                self._queue.task_done()
                self._ended, self._end = True, item
                break
            batch.append(item)
            if len(batch) >= READ_AHEAD or self._queue.empty():
                break
            item = self._queue.get_nowait()
        files = [(n, body) for n, i in enumerate(batch) if (body := self._stored_file(i)) is not None]
        opened: dict[int, OpenFile | DicomwebError] = {}
        if files:
            results = await open_files([body for _, body in files])
            opened = {n: result for (n, _), result in zip(files, results, strict=True)}
        self._ready.extend((i, opened.get(n)) for n, i in enumerate(batch))

    async def next(self) -> tuple[StoredInstance, InstancePart] | None:
        """The next instance and its part; None at the end; the backend's error when it ended with one.

        Asking for the next one means the previous one is sent: a streamed body may be released by the backend.
        """
        if self._handed:
            self._handed = False
            self._queue.task_done()
        if not self._ready and not self._ended:
            await self._fill()
        if not self._ready:
            if self._end is not None:
                raise self._end
            return None
        instance, opened = self._ready.popleft()
        self._handed = True
        if isinstance(opened, DicomwebError):
            raise opened
        if opened is None:
            return instance, await instance_part(instance, self._choices, compress=self._compress)
        syntax = instance.transfer_syntax_uid
        best = next(syntaxes_for(syntax, self._choices, compress=self._compress))
        return instance, InstancePart(f"{DICOM}; transfer-syntax={syntax}", opened, opened.size, best.single_part)

    async def aclose(self) -> None:
        """Stop pulling, close the files opened for nothing, and close the backend iterator (C-CANCEL)."""
        self._task.cancel()
        try:
            await asyncio.wait([self._task])  # the pull's own cancellation is not ours to raise
        finally:
            for _, opened in self._ready:
                if isinstance(opened, OpenFile):
                    opened.close()
            self._ready.clear()
            # Cancelled inside the iterator, the pull has already closed it; a still-running generator cannot
            # be closed from here (only if we are cancelled meanwhile: the pull's cancellation closes it).
            if self._task.done():
                await aclose(self._instances)


async def stream_instances(
    request: web.Request,
    instances: AsyncIterator[StoredInstance],
    choices: list[InstanceChoice],
    *,
    base: str,
    headers: Mapping[str, str],
    compress: bool | str = True,
) -> web.StreamResponse:
    """Send every instance the backend yields, each as one part as soon as it is ready.

    Status: the response is committed (200) once the first instance is ready. Before that, backend errors
    become 404 / 503 / 406 with a JSON body (raised to the caller). After that the status line is gone; an
    instance that fails or cannot be negotiated, a backend error, or `IncompleteRetrieve` end the response
    without its closing delimiter (MultipartStream.abort): the client sees a broken response rather than a
    complete-looking partial study. 206 is therefore never sent here: a streaming gateway learns that a
    sub-operation failed only after it has sent the status line (see the /metadata route, which buffers).
    The backend iterator is always closed, also when the client leaves, so the backend can cancel.
    """
    parts = _ReadAhead(instances, choices, compress=compress)
    try:
        got = await parts.next()
        if got is None:
            raise NotFound("nothing to retrieve here")
        first, part = got
        if part.single_part:
            return await _single_instance(request, part, headers)
        syntaxes = {c.syntax for c in choices}
        fixed = syntaxes.pop() if len(syntaxes) == 1 else ANY_SYNTAX
        type_params = {"transfer-syntax": fixed} if fixed != ANY_SYNTAX else None
        stream = MultipartStream(request, DICOM, headers=headers, type_params=type_params)
        try:
            await stream.open()
        except ClientGone:
            await part.release()
            return stream.response
        except BaseException:
            await part.release()
            raise
        failed = 0
        try:
            await stream.write_part(part.content_type, part.body, size=part.size, location=_location(base, first))
            while True:
                try:
                    got = await parts.next()
                except NotAcceptable as exc:
                    failed += 1
                    log.warning("WADO-RS: instance skipped: %s", exc)
                    continue
                if got is None:
                    break
                instance, part = got
                await stream.write_part(
                    part.content_type, part.body, size=part.size, location=_location(base, instance)
                )
        except ClientGone:
            log.info("WADO-RS: client left after %d instance(s); retrieval stopped", stream.parts)
            return stream.response
        except IncompleteRetrieve as exc:
            failed += exc.failed
        except (DicomwebError, OSError, ValueError) as exc:
            log.warning("WADO-RS: retrieval failed after %d instance(s): %s; response cut", stream.parts, exc)
            stream.abort()
            return stream.response
        if failed:
            log.warning("WADO-RS: %d instance(s) could not be sent after %d; response cut", failed, stream.parts)
            stream.abort()
            return stream.response
        try:
            await stream.close()
        except ClientGone:
            pass
        return stream.response
    finally:
        await parts.aclose()


async def send_pixel_parts(
    request: web.Request, result: PixelParts, *, headers: Mapping[str, str]
) -> web.StreamResponse:
    """Frames or bulk data (already in memory, one instance's worth): one body, or one part each."""
    choice = result.choice
    content_type = f"{choice.media_type}; transfer-syntax={choice.syntax}"
    if choice.single_part and len(result.parts) == 1:
        response = web.Response(body=result.parts[0], headers=headers)
        response.headers["Content-Type"] = content_type
        return response
    stream = MultipartStream(request, choice.media_type, headers=headers)
    await stream.open()
    try:
        for data in result.parts:
            await stream.write_part(content_type, data)
        await stream.close()
    except ClientGone:
        log.info("WADO-RS: client left during a frames response")
    return stream.response
