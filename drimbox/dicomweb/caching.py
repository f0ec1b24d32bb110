"""HTTP caching of DICOMweb answers: validators, Cache-Control, Vary and the 304 answer (RFC 9110/9111)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from aiohttp import web

# Everything the box serves can be revoked (a publication withdrawn or replaced, a session ended): the browser
# keeps it (private: never a shared cache) but asks before reusing it. The 304 costs a round trip of ~300 bytes.
REVALIDATE = "private, no-cache"
# What a response depends on beyond its URL: its media type, its encoding, the KOS that scopes it.
VARY_PIXELS = "Accept"
VARY_METADATA = "Accept, Accept-Encoding, KOS-SOPInstanceUID"


def immutable_etag(request: web.Request, *, compress: bool | str) -> str:
    """A strong validator from the request alone: a DICOM instance never changes under its UID, so frames, bulk
    data, rendered images and thumbnails are a function of the URL, the Accept header and the box's compression
    setting; the 304 is then answered without reading the instance (on a Proxy box, without a C-GET)."""
    digest = hashlib.sha256()
    for part in (request.path, request.query_string, request.headers.get("Accept", ""), str(compress)):
        digest.update(part.encode("utf-8", "replace") + b"\0")
    return f'"i{digest.hexdigest()[:32]}"'


def content_etag(chunks: Iterable[bytes]) -> str:
    """A weak validator of a body that changes with what it is made of (metadata cut to the live KOS)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return f'W/"m{digest.hexdigest()[:32]}"'


def matches(request: web.Request, etag: str) -> bool:
    """Whether If-None-Match names `etag` (weak comparison, RFC 9110 §13.1.2)."""
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    wanted = _opaque(etag)
    return any(_opaque(tag) == wanted for tag in header.split(","))


def not_modified(etag: str, vary: str, headers: dict[str, str] | None = None) -> web.Response:
    """The 304: no body, the same validator and caching headers as the 200 it stands for."""
    return web.Response(status=304, headers={**(headers or {}), **cache_headers(etag, vary)})


def cache_headers(etag: str, vary: str) -> dict[str, str]:
    return {"ETag": etag, "Cache-Control": REVALIDATE, "Vary": vary}


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag
