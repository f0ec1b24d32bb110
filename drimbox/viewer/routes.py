"""The web viewer's routes: its static files at /viewer/, and the report link /IHEInvokeImageDisplay that opens it.

The viewer is static (HTML, CSS, JavaScript modules, no build step). Its files live in the repository's
top-level `viewer/` folder, which the package carries as `drimbox.viewer.static`: found through
`importlib.resources`, from a wheel as from an editable install. `DRIMBOX_VIEWER_DIR` points elsewhere (a
development copy).
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import re
from collections.abc import Callable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode

from aiohttp import web

from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import audit_request
from drimbox.auth import AuthGate
from drimbox.auth.links import LinkRefused, ReportLinks
from drimbox.dicomweb.caching import matches
from drimbox.dimse.uid import is_lenient_uid
from drimbox.i18n import LANGUAGES, Messages, catalogue
from drimbox.source.outbox import Outbox
from drimbox.viewer.versions import Versions
from drimbox.xds.habilitation import ImagingMatrix

log = logging.getLogger(__name__)


def _viewer_files() -> Traversable:
    """`DRIMBOX_VIEWER_DIR` when set (a development copy), else the files the package carries."""
    override = os.environ.get("DRIMBOX_VIEWER_DIR")
    return Path(override) if override else resources.files("drimbox.viewer.static")


VIEWER_DIR = _viewer_files()
_STATIC_NAME = re.compile(r"^[a-z0-9_-]+\.(html|css|js)$")
# The vendored npm codecs (viewer/vendor/<package>@<version>/, checked against vendor/lock.json): a versioned
# folder, then a file name; no other path below /viewer/ names a file.
_VENDOR_FOLDER = re.compile(r"^[a-z0-9-]+@[0-9]+\.[0-9]+\.[0-9]+$")
_VENDOR_NAME = re.compile(r"^[A-Za-z0-9_-]+\.(js|wasm)$")
_MEDIA_TYPES = {"html": "text/html", "css": "text/css", "js": "text/javascript", "wasm": "application/wasm"}
# Same-origin only: the viewer loads nothing from elsewhere, and decoded images come in as blobs. Framed by
# this box only: the comparison puts a second viewer beside the first in an <iframe>. 'wasm-unsafe-eval' lets the
# decoding workers compile the vendored WebAssembly codecs, and nothing else: no eval of JavaScript.
_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'{inline}; img-src 'self' blob: data:; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'self'")  # fmt: skip
_HEADERS = {
    "Content-Security-Policy": _CSP.format(inline=""),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page, and a file asked without its current version: revalidated each time (a validator makes it cheap).
    "Cache-Control": "no-cache",
}
# A file under its current version (?v=, viewer.versions) or a vendored one in its versioned folder never changes
# under that URL: a year in the browser's cache, never revalidated.
_VERSIONED_HEADERS = {**_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"}


class Grants(Protocol):
    """Where an opened report link is recorded for the session (auth.session.SessionStore fits)."""

    async def grant(self, id_hash: str, study_uid: str, kos_uid: str) -> None: ...


def viewer_routes(
    gate: AuthGate,
    outbox: Outbox | None,
    *,
    directory: Traversable = VIEWER_DIR,
    links: ReportLinks | None = None,
    grants: Grants | None = None,
    matrix: ImagingMatrix | None = None,
    opened: Callable[[str, str], None] | None = None,
) -> list[web.RouteDef]:
    """GET /viewer/ and its files; on a source box (`outbox` given) also the report link, checked by `links`.

    A report link that opens records a grant of its study for the session in `grants`: source.access lets a
    session read nothing else. A professional the imaging habilitation `matrix` does not allow is refused there.
    `opened` is told the study and KOS UIDs of each report link that opens (the source prepares what the viewer will
    ask).
    """
    viewer = _Viewer(gate, outbox, directory, links, grants, matrix or ImagingMatrix(), opened)
    return [
        web.get("/viewer", viewer.redirect_to_index),
        web.get("/viewer/", viewer.index),
        web.get("/viewer/messages/{lang}.json", viewer.messages),
        web.get("/viewer/{name}", viewer.static),
        web.get("/viewer/vendor/{folder}/{name}", viewer.vendored),
        web.get("/IHEInvokeImageDisplay", viewer.invoke_image_display),
    ]


class _Viewer:
    def __init__(
        self,
        gate: AuthGate,
        outbox: Outbox | None,
        directory: Traversable,
        links: ReportLinks | None,
        grants: Grants | None,
        matrix: ImagingMatrix,
        opened: Callable[[str, str], None] | None = None,
    ) -> None:
        self.opened = opened
        self.gate = gate
        self.outbox = outbox
        self.directory = directory
        self.links = links
        self.grants = grants
        self.matrix = matrix
        self.versions = Versions(directory)

    async def redirect_to_index(self, request: web.Request) -> web.StreamResponse:
        # Relative URLs in the page (viewer.css, main.js) need the trailing slash.
        location = "/viewer/" + (f"?{request.query_string}" if request.query_string else "")
        raise web.HTTPMovedPermanently(location)

    async def index(self, request: web.Request) -> web.StreamResponse:
        """The page, naming its scripts and style by their current versions (its inline import map allowed by hash)."""
        page = await asyncio.to_thread(self.versions.page, "index.html")
        headers = {**_HEADERS, "Content-Security-Policy": _CSP.format(inline=f" {page.script_hash}"), "ETag": page.etag}
        if matches(request, page.etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=page.body, content_type="text/html", charset="utf-8", headers=headers)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        # A fixed shape of names, no path separators: nothing outside the viewer's folder can be named.
        if not _STATIC_NAME.match(name):
            raise web.HTTPNotFound()
        current = await asyncio.to_thread(self.versions.is_current, name, request.query.get("v", ""))
        return self._file(name, _VERSIONED_HEADERS if current else _HEADERS)

    async def vendored(self, request: web.Request) -> web.StreamResponse:
        """A vendored codec's script or WebAssembly module (application/wasm: compiled while it streams in)."""
        folder, name = request.match_info["folder"], request.match_info["name"]
        if not (_VENDOR_FOLDER.match(folder) and _VENDOR_NAME.match(name)):
            raise web.HTTPNotFound()
        return self._file(f"vendor/{folder}/{name}", _VERSIONED_HEADERS)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """The viewer's words in one language: the [viewer] and [common] tables, keys without their table's name."""
        lang = request.match_info["lang"]
        if lang not in LANGUAGES:
            raise web.HTTPNotFound()
        words = {
            key.split(".", 1)[1]: message
            for key, message in catalogue(lang).items()
            if key.startswith(("viewer.", "common."))
        }
        return web.json_response(words, headers=_HEADERS)

    def _file(self, name: str, headers: dict[str, str] = _HEADERS) -> web.StreamResponse:
        path = self.directory.joinpath(*name.split("/"))
        if not path.is_file():
            raise web.HTTPNotFound()
        media_type = _MEDIA_TYPES[name.rsplit(".", 1)[1]]
        if not isinstance(path, Path):  # a package that is not a folder on disk (a zipped install): no file to send
            return web.Response(body=path.read_bytes(), content_type=media_type, headers=headers)
        response = web.FileResponse(path, headers=headers)
        response.content_type = media_type
        return response

    async def invoke_image_display(self, request: web.Request) -> web.StreamResponse:
        """The link written in the report (IHE Invoke Image Display, STUDY request): login, checks, the viewer."""
        # Parameter names are matched without case: reports in the field write "Accessionnumber", "accessionNumber"…
        query = {key.lower(): value for key, value in request.query.items()}
        request_type = query.get("requesttype", "")
        study = query.get("studyuid", "")
        accession = query.get("accessionnumber", "")
        if request_type.upper() != "STUDY":
            return error_page(request, 400, "source.link.invalid_title", "source.link.not_study")
        if not is_lenient_uid(study):  # lenient: the link names the study as the PACS holds it
            return error_page(request, 400, "source.link.invalid_title", "source.link.bad_study")
        if len(accession) > 64 or len(query.get("idcda", "")) > 256:
            return error_page(request, 400, "source.link.invalid_title", "source.link.too_long")
        if self.outbox is None:
            return error_page(request, 404, "source.link.no_images_title", "source.link.no_images")
        if self.links is not None:
            try:
                # Before the login: an altered or stale link is refused without a round trip to Pro Santé Connect.
                self.links.verify(query)
            except LinkRefused as exc:
                log.info("report link refused: %s", exc.reason)
                await audit_request(request, "report-link.refused", REFUSED, study=study, reason=exc.reason)
                kind = exc.reason if exc.reason in ("expired", "unsigned") else "altered"
                return error_page(request, 403, f"source.link.{kind}_title", f"source.link.{kind}")
        professional = await self.gate.current_professional(request)
        if professional is None:
            self.gate.require_login(request, next=request.path_qs)
        who = professional.id
        not_allowed = self.matrix.refusal(professional.profession, [professional.specialty])
        if not_allowed is not None:
            log.info("report link refused: the professional's profession may not read imaging")
            await audit_request(request, "report-link.open", REFUSED, professional=who, study=study,
                                accession=accession or None, status=403, reason="not_habilitated")  # fmt: skip
            return error_page(request, 403, "source.link.refused_title", "source.link.not_habilitated")
        published = await self.outbox.current_published(study)
        if published is not None and (not accession or accession == published.accession):
            if self.grants is not None and (session := await self.gate.current_session(request)) is not None:
                # What this session may now read at /dicom-web: this study, as far as its live KOS goes.
                await self.grants.grant(session.id_hash, study, published.kos_uid or "")
            if self.opened is not None:
                self.opened(study, published.kos_uid or "")
            await audit_request(
                request, "report-link.open", SUCCESS, professional=who, study=study, accession=accession or None
            )
            raise web.HTTPSeeOther("/viewer/?" + urlencode({"base": "/dicom-web", "study": study}))
        history = await self.outbox.search(study_uid=study)
        # Replaced publications are not "withdrawn": their replacement is published, or on its way (→ 404, try later).
        withdrawn = published is None and any(p.state == "withdrawn" for p in history)
        await audit_request(request, "report-link.open", REFUSED, professional=who, study=study,
                            accession=accession or None, status=410 if withdrawn else 404)  # fmt: skip
        if withdrawn:
            log.info("report link to a withdrawn study")
            return error_page(request, 410, "source.link.withdrawn_title", "source.link.withdrawn")
        log.info("report link to a study this box has not published")
        return error_page(request, 404, "source.link.not_found_title", "source.link.not_found")


def error_page(request: web.Request, status: int, title_key: str, message_key: str) -> web.Response:
    """A report link's error page, in the language the browser prefers (French by default)."""
    m = Messages.of(request)
    title, message = m(title_key), m(message_key)
    body = (
        f'<!doctype html><html lang="{m.lang}"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
        f'<body><h1>{html.escape(title)}</h1><p id="error">{html.escape(message)}</p></body></html>'
    )
    return web.Response(
        status=status, text=body, content_type="text/html", headers={"X-Content-Type-Options": "nosniff"}
    )
