"""The DICOMweb routes (WADO-RS, QIDO-RS) over one DicomwebBackend: checks, negotiation, status codes, CORS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web
from pydicom.dataset import Dataset

from drimbox.dicomweb.backend import (
    DicomwebBackend,
    DicomwebError,
    IncompleteRetrieve,
    NotFound,
    QueryLevel,
    StoredInstance,
    Unavailable,
)
from drimbox.dicomweb.caching import (
    VARY_METADATA,
    VARY_PIXELS,
    cache_headers,
    content_etag,
    immutable_etag,
    matches,
    not_modified,
)
from drimbox.dicomweb.json_model import ElementMemo, dataset_json, encode
from drimbox.dicomweb.metadata_trim import parse_includefield, trim
from drimbox.dicomweb.negotiation import (
    NotAcceptable,
    encode_policy,
    encodes_pixels,
    instance_choices,
    json_media_type,
    parse_accept,
    pixel_choices,
    rendered_media_type,
)
from drimbox.dicomweb.params import BadRequest, check_uid, parse_frame_list
from drimbox.dicomweb.pixels import PIXEL_DATA, bulk_of, read_instance, stored_frames
from drimbox.dicomweb.qido import parse_query
from drimbox.dicomweb.render import parse_options, render
from drimbox.dicomweb.transcode import encoding_slot
from drimbox.dicomweb.wado import aclose, send_pixel_parts, stream_instances

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")
_RETRIEVE_URL = 0x00081190
_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (BadRequest, 400),
    (NotFound, 404),
    (NotAcceptable, 406),
    (Unavailable, 503),
    (IncompleteRetrieve, 503),  # nothing could be delivered before the failure was known
)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


class _Routes:
    """The handlers, sharing one backend, base path and CORS policy."""

    def __init__(
        self,
        backend: DicomwebBackend,
        base: str,
        cors_origins: Sequence[str],
        max_results: int,
        public_url: str | None,
        compress: bool | str,
        access_params: frozenset[str] = frozenset(),
    ) -> None:
        self.backend = backend
        self.compress = encode_policy(compress)
        self.access_params = access_params
        self.public_url = public_url.rstrip("/") if public_url else None
        self.base = base
        self.cors_origins = tuple(cors_origins)
        self.max_results = max_results

    # --- plumbing ---------------------------------------------------------------------------------------

    def cors(self, request: web.Request) -> dict[str, str]:
        return cors_headers(self.cors_origins, request)

    def guard(self, handler: Handler) -> Handler:
        """Map the errors of a handler to JSON bodies with their status, and add CORS headers."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                response = await handler(request)
            except (DicomwebError, BadRequest, NotAcceptable) as exc:
                response = _error(_status_of(exc), str(exc))
            except ConnectionError as exc:
                # The client left (a closed tab, a slice scrolled past and aborted): nothing to answer, nobody to
                # tell. aiohttp finds the transport closed when it finishes this response and drops it quietly.
                log.debug("DICOMweb %s %s: client left (%s)", request.method, request.path, type(exc).__name__)
                response = web.Response(status=499)
                response.force_close()
                return response
            if response.status >= 400:
                log.info("DICOMweb %s %s → %d", request.method, request.path, response.status)
            if not response.prepared:
                response.headers.update(self.cors(request))
            return response

        return guarded

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return _error(404, "no DICOMweb resource at this path")

    async def preflight(self, request: web.Request) -> web.StreamResponse:
        headers = self.cors(request)
        if headers:
            headers["Access-Control-Allow-Methods"] = "GET, OPTIONS"
            headers["Access-Control-Allow-Headers"] = request.headers.get(
                "Access-Control-Request-Headers", "Accept, Authorization, KOS-SOPInstanceUID"
            )
            headers["Access-Control-Max-Age"] = "600"
        return web.Response(status=204, headers={"Allow": "GET, OPTIONS", **headers})

    @staticmethod
    def uids(request: web.Request) -> tuple[str, str | None, str | None]:
        """The path's UIDs, checked before any backend sees them."""
        info = request.match_info
        study = check_uid(info["study"], "StudyInstanceUID")
        series = check_uid(info["series"], "SeriesInstanceUID") if "series" in info else None
        sop = check_uid(info["instance"], "SOPInstanceUID") if "instance" in info else None
        return study, series, sop

    async def one_instance(self, study: str, series: str | None, sop: str | None) -> tuple[StoredInstance, bytes]:
        """The first instance the backend yields and its bytes (read before the iterator is closed)."""
        instances = self.backend.iter_instances(study, series, sop)
        try:
            instance = await anext(instances, None)
            if instance is None:
                raise NotFound("no such instance")
            return instance, await instance.body.read()
        finally:
            await aclose(instances)

    # --- WADO-RS ----------------------------------------------------------------------------------------

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        study, series, sop = self.uids(request)
        choices = instance_choices(parse_accept(request.headers.get("Accept")), single_part_allowed=sop is not None)
        instances = self.backend.iter_instances(study, series, sop)
        return await stream_instances(
            request, instances, choices, base=self.base, headers=self.cors(request), compress=self.compress
        )

    async def metadata(self, request: web.Request) -> web.StreamResponse:
        """Study / series / instance metadata, buffered: it is small, and so a partial answer can say 206."""
        study, series, sop = self.uids(request)
        media_type = json_media_type(parse_accept(request.headers.get("Accept")))
        fields = parse_includefield(request.query.getall("includefield", []))
        if "only-if-cached" in request.headers.get("Cache-Control", "").lower() and not await self.holds(study, series):
            # RFC 9111 §5.2.1.7: a client that wants only what a cache holds gets 504 rather than a retrieve. The
            # viewer asks so on a Proxy box: a cold series then costs it nothing, and it orders the stack by QIDO.
            return _error(504, "not in this box's cache")
        items: list[bytes] = []
        incomplete: IncompleteRetrieve | None = None
        source = self.backend.metadata(study, series, sop, base=self.base)
        try:
            async for item in source:
                items.append(item)
        except IncompleteRetrieve as exc:
            if not items:
                raise
            incomplete = exc
        finally:
            await aclose(source)
        if not items:
            raise NotFound("no such resource")
        if fields is not None:
            items = await asyncio.to_thread(trim, items, fields)
        headers = {"Content-Type": media_type}
        # A study's metadata is megabytes (3.8 MB for 1300 CT slices): hashed and joined off the loop.
        large = sum(len(item) for item in items) > _OFF_LOOP_BYTES
        if incomplete is not None:
            headers["Warning"] = f'299 drimbox: "{incomplete.failed} instance(s) could not be read"'
        else:
            # Revalidated at each use: the items are cut to the live KOS, so a replaced publication changes the
            # validator and a withdrawn one is refused before this point.
            chunks = [media_type.encode(), *items]
            etag = await asyncio.to_thread(content_etag, chunks) if large else content_etag(chunks)
            if matches(request, etag):
                return not_modified(etag, VARY_METADATA)
            headers.update(cache_headers(etag, VARY_METADATA))
        status = 206 if incomplete is not None else 200
        body = await asyncio.to_thread(_json_array, items) if large else _json_array(items)
        response = web.Response(body=body, status=status, headers=headers)
        response.enable_compression()  # gzip/deflate when accepted: DICOM JSON shrinks ~10x
        return response

    async def holds(self, study: str, series: str | None) -> bool:
        """Whether the backend can answer from what it holds, without a retrieve (a backend without one: always)."""
        holds = getattr(self.backend, "holds", None)
        return True if holds is None else bool(await holds(study, series))

    async def frames(self, request: web.Request) -> web.StreamResponse:
        study, series, sop = self.uids(request)
        numbers = parse_frame_list(request.match_info["frames"])
        ranges = parse_accept(request.headers.get("Accept"))
        etag = immutable_etag(request, compress=self.compress)
        if await self.unchanged(request, etag, study, series, sop):
            return not_modified(etag, VARY_PIXELS, self.cors(request))
        instance, data = await self.one_instance(study, series, sop)
        choices = pixel_choices(
            ranges, instance.transfer_syntax_uid, single_part_allowed=len(numbers) == 1, compress=self.compress
        )
        stored = instance.transfer_syntax_uid
        if encodes_pixels(stored, choices[0]):
            async with encoding_slot():
                result = await _decoding(lambda: stored_frames(data, stored, numbers, choices))
        else:
            result = await _decoding(lambda: stored_frames(data, stored, numbers, choices))
        headers = {**self.cors(request), **cache_headers(etag, VARY_PIXELS)}
        return await send_pixel_parts(request, result, headers=headers)

    async def unchanged(self, request: web.Request, etag: str, study: str, series: str | None, sop: str | None) -> bool:
        """Whether the client holds this immutable answer already and may still see it: a 304 without reading the
        instance when the backend can say cheaply what the request may see, else after reading it (its checks)."""
        if not matches(request, etag):
            return False
        admits = getattr(self.backend, "admits", None)
        if admits is not None:
            admits(study, series, sop)  # NotFound outside what this request may see
        else:
            await self.one_instance(study, series, sop)
        return True

    async def bulkdata(self, request: web.Request) -> web.StreamResponse:
        study, series, sop = self.uids(request)
        path = request.match_info["path"]
        if not all(c in "0123456789abcdefABCDEF/" for c in path):
            raise BadRequest(f"bulk data path {path[:80]!r}: tags of 8 hex digits and item numbers, '/'-separated")
        ranges = parse_accept(request.headers.get("Accept"))
        etag = immutable_etag(request, compress=self.compress)
        if await self.unchanged(request, etag, study, series, sop):
            return not_modified(etag, VARY_PIXELS, self.cors(request))
        instance, data = await self.one_instance(study, series, sop)
        is_pixels = path.strip("/").upper() == f"{PIXEL_DATA:08X}"
        stored = instance.transfer_syntax_uid if is_pixels else "1.2.840.10008.1.2.1"
        choices = pixel_choices(ranges, stored, single_part_allowed=True, compress=self.compress)
        result = await _decoding(lambda: bulk_of(read_instance(data), path, choices))
        headers = {**self.cors(request), **cache_headers(etag, VARY_PIXELS)}
        return await send_pixel_parts(request, result, headers=headers)

    async def rendered(self, request: web.Request) -> web.StreamResponse:
        return await self._render(request, thumbnail=False)

    async def thumbnail(self, request: web.Request) -> web.StreamResponse:
        return await self._render(request, thumbnail=True)

    async def _render(self, request: web.Request, *, thumbnail: bool) -> web.StreamResponse:
        study, series, sop = self.uids(request)
        media_type = rendered_media_type(parse_accept(request.headers.get("Accept")))
        options = parse_options(request.query, thumbnail=thumbnail)
        frame = 1
        if "frames" in request.match_info:
            numbers = parse_frame_list(request.match_info["frames"])
            if len(numbers) != 1:
                raise BadRequest("a rendered frame is asked one frame number at a time")
            frame = numbers[0]
        if sop is None:
            series, sop = await self._representative(study, series)
        # A study/series thumbnail's image is chosen among what the request may see: the URL alone does not name
        # it, so its validator also names the image chosen.
        etag = immutable_etag(request, compress=self.compress)
        if request.match_info.get("instance") is None:
            etag = f'"{etag.strip(chr(34))}-{sop}"'
        if await self.unchanged(request, etag, study, series, sop):
            return not_modified(etag, VARY_PIXELS)
        _, data = await self.one_instance(study, series, sop)
        image = await _decoding(lambda: render(read_instance(data), frame, media_type, options))
        return web.Response(body=image, headers={"Content-Type": media_type, **cache_headers(etag, VARY_PIXELS)})

    async def _representative(self, study: str, series: str | None) -> tuple[str, str]:
        """The image a study or series thumbnail shows: the middle image of the (first) series."""
        query = parse_query(QueryLevel.IMAGE, [], study_uid=study, series_uid=series, max_limit=self.max_results)
        found: list[Dataset] = []
        source = self.backend.search(query)
        try:
            async for ds in source:
                found.append(ds)
        finally:
            await aclose(source)
        images = [ds for ds in found if ds.get("Rows")] or found
        if not images:
            raise NotFound("no image to show here")

        def order(ds: Dataset) -> tuple[int, str, int]:
            return (int(ds.get("SeriesNumber") or 0), str(ds.SeriesInstanceUID), int(ds.get("InstanceNumber") or 0))

        images.sort(key=order)
        first_series = str(images[0].SeriesInstanceUID)
        in_series = [ds for ds in images if str(ds.SeriesInstanceUID) == first_series]
        chosen = in_series[len(in_series) // 2]
        return first_series, str(chosen.SOPInstanceUID)

    # --- QIDO-RS ----------------------------------------------------------------------------------------

    def search(self, level: QueryLevel) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            info = request.match_info
            study = check_uid(info["study"], "StudyInstanceUID") if "study" in info else None
            series = check_uid(info["series"], "SeriesInstanceUID") if "series" in info else None
            media_type = json_media_type(parse_accept(request.headers.get("Accept")))
            params = [(k, v) for k, v in request.query.items() if k not in self.access_params]
            query = parse_query(level, params, study_uid=study, series_uid=series, max_limit=self.max_results)
            origin = f"{self.public_url or request.url.origin()}{self.base}"
            tags = None if query.include_all else query.return_tags
            url_origin = origin if tags is None or _RETRIEVE_URL in tags else None
            memo: ElementMemo = {}

            def batch_json(batch: list[Dataset]) -> bytes:
                # Encoded with its batch, while the next answers arrive: encoding 1000 at the end took ~15 ms more
                # before the page could leave. One array a batch, its brackets cut: the page joins them.
                return encode([_qido_json(ds, level, tags, url_origin, memo) for ds in batch])[1:-1]

            batches, more = await _rows_while_found(self.backend.search(query), query.limit, batch_json)
            if not batches:
                return web.Response(status=204)
            body = b"[" + b",".join(batches) + b"]"
            headers = {"Content-Type": media_type}
            if more:
                headers["Warning"] = '299 drimbox: "There are additional results that can be requested"'
            return web.Response(body=body, headers=headers)

        return handler


async def _decoding(work: Callable[[], T]) -> T:
    """Run pixel work off the loop. A stored instance whose pixel attributes contradict its data (the archive keeps
    what it is sent, checking only the UIDs) makes pydicom, numpy or Pillow fail: that is a 406 (the representation
    cannot be produced), not a server error."""
    try:
        return await asyncio.to_thread(work)
    except (DicomwebError, BadRequest, NotAcceptable):
        raise
    except Exception as exc:
        log.warning("pixel data of a stored instance cannot be decoded: %s", type(exc).__name__)
        raise NotAcceptable(f"the stored pixel data cannot be decoded or rendered ({type(exc).__name__})") from None


def _status_of(exc: Exception) -> int:
    for kind, status in _ERRORS:
        if isinstance(exc, kind):
            return status
    return 500


# Answers converted to JSON in batches while the next ones arrive: a PACS sends a 1300-instance series' answers
# over a few hundred ms, and converting 1000 of them only after the last took 50-250 ms more before the page left.
_ROWS_BATCH = 100


async def _rows_while_found(
    source: AsyncIterator[Dataset], limit: int, convert: Callable[[list[Dataset]], T]
) -> tuple[list[T], bool]:
    """The first `limit` answers of `source` converted a batch at a time (in order, each in a thread): what each
    batch gave, and whether there were more answers."""
    converted: list[T] = []
    batch: list[Dataset] = []
    count = 0

    async def run(items: list[Dataset], before: asyncio.Task[None] | None) -> None:
        if before is not None:
            await before  # one batch at a time: the batches share the memo, and rows keep their order
        converted.append(await asyncio.to_thread(convert, items))

    tasks: list[asyncio.Task[None]] = []
    try:
        try:
            async for ds in source:
                count += 1
                if count > limit:
                    break  # one more than asked: enough to know more exist; the backend may cancel
                batch.append(ds)
                if len(batch) >= _ROWS_BATCH:
                    tasks.append(asyncio.create_task(run(batch, tasks[-1] if tasks else None)))
                    batch = []
        finally:
            await aclose(source)
        if batch:
            tasks.append(asyncio.create_task(run(batch, tasks[-1] if tasks else None)))
        if tasks:
            await tasks[-1]  # each batch waits for the one before: the last done, all are
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return converted, count > limit


# Past this many bytes of metadata, hashing and joining it go to a thread (~1 ms a MB on the loop otherwise).
_OFF_LOOP_BYTES = 256 * 1024


def _json_array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _qido_json(
    ds: Dataset, level: QueryLevel, tags: Any, origin: str | None, memo: ElementMemo | None = None
) -> dict[str, Any]:
    out = dataset_json(ds, None, tags=tags, memo=memo)
    if origin is None:
        return out
    url = f"{origin}/studies/{_uid(out, ds, 0x0020000D)}"
    if level is not QueryLevel.STUDY:
        url += f"/series/{_uid(out, ds, 0x0020000E)}"
    if level is QueryLevel.IMAGE:
        url += f"/instances/{_uid(out, ds, 0x00080018)}"
    out[f"{_RETRIEVE_URL:08X}"] = {"vr": "UR", "Value": [url]}
    return dict(sorted(out.items()))


def _uid(out: dict[str, Any], ds: Dataset, tag: int) -> str:
    """A UID of the answer: from its JSON when it went in (converted once there), else from the data set."""
    value = out.get(f"{tag:08X}", {}).get("Value")
    if value:
        return str(value[0])
    element = ds.get(tag)
    return "" if element is None or element.value is None else str(element.value)


def cors_headers(cors_origins: Sequence[str], request: web.Request) -> dict[str, str]:
    """CORS response headers for this request's Origin; none by default (same-origin only).

    An access layer in front of the routes adds them to its refusals too: a viewer on another origin must see the
    401/403 (log in, or not allowed), not a network error it cannot tell from a box that is down.
    """
    origin = request.headers.get("Origin")
    if not cors_origins or origin is None:
        return {}
    if "*" in cors_origins:
        allowed = "*"
    elif origin in cors_origins:
        allowed = origin
    else:
        return {}
    headers = {
        "Access-Control-Allow-Origin": allowed,
        "Access-Control-Expose-Headers": "Content-Type, Content-Length, Content-Location, Warning, WWW-Authenticate",
    }
    if allowed != "*":
        headers["Vary"] = "Origin"
    return headers


def dicomweb_routes(
    backend: DicomwebBackend,
    base: str = "/dicom-web",
    cors_origins: Sequence[str] = (),
    max_results: int = 1000,
    public_url: str | None = None,
    compress: bool | str = True,
    access_params: Sequence[str] = (),
) -> list[web.RouteDef]:
    """Every WADO-RS and QIDO-RS route under `base`, served by `backend`.

    `cors_origins`: origins allowed to call from a browser page elsewhere ("*" for any); empty = same-origin.
    `max_results`: the most QIDO answers per request (a larger `limit` is refused; Warning when truncated).
    `public_url`: scheme://host[:port] written in QIDO RetrieveURLs; default: from the request's Host header.
    `compress`: compress instances and frames on the fly (lossless only) when the client prefers a compressed
    syntax we can encode: "auto" when it weights it above what needs no encoding, True when it lists it first;
    False spends bandwidth instead of CPU (stored syntax or decompression only). See negotiation.encode_policy.
    `access_params`: query parameters that belong to an access layer in front (e.g. `kos`, the manifest that
    entitles the request), not to QIDO matching: QIDO ignores them instead of refusing them as unknown keys.
    """
    base = base.rstrip("/")
    r = _Routes(backend, base, cors_origins, max_results, public_url, compress, frozenset(access_params))

    def get(path: str, handler: Handler) -> web.RouteDef:
        # No implicit HEAD: it would run a whole retrieval (a C-GET of a study) to send no body.
        return web.get(path, r.guard(handler), allow_head=False)

    study = f"{base}/studies/{{study}}"
    series = f"{study}/series/{{series}}"
    instance = f"{series}/instances/{{instance}}"
    frames = f"{instance}/frames/{{frames}}"
    return [
        get(f"{base}/studies", r.search(QueryLevel.STUDY)),
        get(f"{base}/series", r.search(QueryLevel.SERIES)),
        get(f"{base}/instances", r.search(QueryLevel.IMAGE)),
        get(study, r.retrieve),
        get(f"{study}/metadata", r.metadata),
        get(f"{study}/thumbnail", r.thumbnail),
        get(f"{study}/series", r.search(QueryLevel.SERIES)),
        get(f"{study}/instances", r.search(QueryLevel.IMAGE)),
        get(series, r.retrieve),
        get(f"{series}/metadata", r.metadata),
        get(f"{series}/thumbnail", r.thumbnail),
        get(f"{series}/instances", r.search(QueryLevel.IMAGE)),
        get(instance, r.retrieve),
        get(f"{instance}/metadata", r.metadata),
        get(f"{instance}/rendered", r.rendered),
        get(f"{instance}/thumbnail", r.thumbnail),
        get(f"{instance}/bulkdata/{{path:.+}}", r.bulkdata),
        get(frames, r.frames),
        get(f"{frames}/rendered", r.rendered),
        get(f"{frames}/thumbnail", r.thumbnail),
        web.options(f"{base}/{{tail:.*}}", r.guard(r.preflight)),
        # Last: any other GET under the base is a JSON 404 like every other DICOMweb error, not aiohttp's plain
        # 405 (the OPTIONS route above matches every path).
        get(f"{base}/{{tail:[\\s\\S]*}}", r.not_found),  # [\s\S]: "." would miss a decoded "%0A"
    ]
