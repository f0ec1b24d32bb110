"""WADO-RS responses: instances streamed part by part as the backend yields them, frames and bulk data parts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydicom.uid import UID

from drimbox.dicomweb.backend import DicomwebError, IncompleteRetrieve, NotFound, StoredInstance
from drimbox.dicomweb.multipart import ClientGone, MultipartStream
from drimbox.dicomweb.negotiation import ANY_SYNTAX, DICOM, InstanceChoice, NotAcceptable, syntaxes_for
from drimbox.dicomweb.pixels import PixelParts
from drimbox.dicomweb.transcode import TranscodeError, transcode_part10

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
    body: bytes | AsyncIterable[bytes]
    size: int | None
    single_part: bool


async def instance_part(
    instance: StoredInstance, choices: list[InstanceChoice], *, compress: bool = True
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
            body = await _primed(instance.body.chunks())
            return InstancePart(content_type, body, instance.body.size, choice.single_part)
        if data is None:
            data = await instance.body.read()
        try:
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


async def _single_instance(
    request: web.Request, part: InstancePart, headers: Mapping[str, str]
) -> web.StreamResponse:
    """A bare `application/dicom` body, for clients that asked for one instance that way."""
    response = web.StreamResponse(headers=headers)
    response.headers["Content-Type"] = part.content_type
    if part.size is not None:
        response.content_length = part.size
    await response.prepare(request)
    try:
        if isinstance(part.body, bytes):
            await response.write(part.body)
        else:
            async for chunk in part.body:
                await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        log.info("WADO-RS: client left during a single-instance response")
    except (DicomwebError, OSError) as exc:
        log.warning("WADO-RS: instance failed mid-body (%s); closing the connection", exc)
        if request.transport is not None:
            request.transport.close()
    return response


async def stream_instances(
    request: web.Request,
    instances: AsyncIterator[StoredInstance],
    choices: list[InstanceChoice],
    *,
    base: str,
    headers: Mapping[str, str],
    compress: bool = True,
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
    try:
        first = await anext(instances, None)
        if first is None:
            raise NotFound("nothing to retrieve here")
        part = await instance_part(first, choices, compress=compress)
        if part.single_part:
            return await _single_instance(request, part, headers)
        syntaxes = {c.syntax for c in choices}
        fixed = syntaxes.pop() if len(syntaxes) == 1 else ANY_SYNTAX
        type_params = {"transfer-syntax": fixed} if fixed != ANY_SYNTAX else None
        stream = MultipartStream(request, DICOM, headers=headers, type_params=type_params)
        await stream.open()
        failed = 0
        try:
            await stream.write_part(part.content_type, part.body, size=part.size, location=_location(base, first))
            async for instance in instances:
                try:
                    part = await instance_part(instance, choices, compress=compress)
                except NotAcceptable as exc:
                    failed += 1
                    log.warning("WADO-RS: instance skipped: %s", exc)
                    continue
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
        await aclose(instances)


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
