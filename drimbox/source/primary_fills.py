"""Proxy fills by C-MOVE with [http] workers: the PACS sends a C-MOVE's instances to the box's one DICOM listener,
which runs in the primary process; so another process asks the primary to fill the series (a Unix socket only the
box's processes reach, in the supervisor's private directory), waits, and serves the series from the shared cache once complete."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path

import aiohttp
from aiohttp import web

from drimbox.dimse.network import DimseUnavailable
from drimbox.dimse.uid import is_lenient_uid
from drimbox.source.proxy_backend import ProxyBackend

log = logging.getLogger(__name__)


async def serve(backend: ProxyBackend, path: Path) -> web.AppRunner:
    """The primary's side: POST /fill?study=&series= fills the series into the cache, 204 once it is complete."""

    async def fill(request: web.Request) -> web.Response:
        study, series = request.query.get("study", ""), request.query.get("series", "")
        if not (is_lenient_uid(study) and is_lenient_uid(series)):
            return web.json_response({"error": "study and series: DICOM UIDs"}, status=400)
        try:
            # keep: the series is filled to its end even if the asking process's client leaves.
            async with aclosing(backend._series_instances(study, series, keep=True)) as instances:
                async for _ in instances:
                    pass
        except Exception as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/fill", fill)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    path.unlink(missing_ok=True)  # a killed primary's socket file
    site = web.UnixSite(runner, str(path))
    await site.start()
    os.chmod(path, 0o600)  # the box's own processes (its user), nobody else
    return runner


def delegate(path: Path) -> Callable[[str, str, str], Awaitable[None]]:
    """Another process's side: SeriesCache.delegate, raising DimseUnavailable when the primary could not fill."""

    async def fill(origin: str, study_uid: str, series_uid: str) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)), timeout=timeout) as http,
                http.post("http://primary/fill", params={"study": study_uid, "series": series_uid}) as resp,
            ):
                if resp.status != 204:
                    detail = (await resp.json(content_type=None)).get("error", resp.status)
                    raise DimseUnavailable(f"the primary process's retrieve failed: {detail}")
        except (aiohttp.ClientError, OSError) as exc:
            raise DimseUnavailable(f"the primary process does not answer (restarting?): {exc}") from exc

    return fill
