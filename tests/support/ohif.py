"""OHIF v3's prebuilt viewer for tests: download the npm tarball once (checked, cached by version) and serve it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

# A fixed version: the newest @ohif/app whose npm tarball ships the built app (package/dist/, ~50 MB).
OHIF_VERSION = "3.13.2"
REGISTRY = "https://registry.npmjs.org/@ohif/app"
# Pinned from `npm view @ohif/app@3.13.2 dist`: the registry's metadata must still say so, and the bytes match it.
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="


class OhifUnavailable(Exception):
    """No cached copy and no way to download one (no network): the test skips with this reason."""


def cache_root() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "drimbox"


def _integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _registry_dist(version: str) -> dict[str, str]:
    with urllib.request.urlopen(f"{REGISTRY}/{version}", timeout=30) as resp:
        dist: dict[str, str] = json.loads(resp.read())["dist"]
    return dist


def ohif_dist(version: str = OHIF_VERSION, integrity: str = OHIF_INTEGRITY, root: Path | None = None) -> Path:
    """The directory of OHIF's built app (index.html, app-config.js, bundles), downloaded on first use.

    The cache is keyed by version; a directory is complete only once renamed into place (after the tarball's
    sha512 matched both the pinned value and the registry's), so an interrupted download never counts.
    """
    target = (root or cache_root()) / f"ohif-{version}"
    dist = target / "dist"
    if (dist / "index.html").is_file():
        return dist
    try:
        meta = _registry_dist(version)
        if meta.get("integrity") != integrity:
            raise AssertionError(f"the registry's integrity for @ohif/app@{version} changed: {meta.get('integrity')}")
        with urllib.request.urlopen(meta["tarball"], timeout=120) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise OhifUnavailable(f"@ohif/app@{version} is not cached in {target} and cannot be downloaded: {exc}") from exc
    if _integrity_of(data) != integrity:
        raise AssertionError(f"the @ohif/app@{version} tarball does not match its integrity {integrity}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".ohif-{version}-", dir=target.parent))
    try:
        tgz = staging / "app.tgz"
        tgz.write_bytes(data)
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/dist/") and (m.isfile() or m.isdir())]
            tar.extractall(staging, members=members, filter="data")
        tgz.unlink()
        (staging / "package" / "dist").rename(staging / "dist")
        shutil.rmtree(staging / "package")
        (staging / "tarball-size").write_text(str(len(data)))
        try:
            staging.rename(target)
        except OSError:  # another run finished first: its copy is as good
            if not (dist / "index.html").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dist


def app_config(dicomweb: str, token: str | None = None) -> str:
    """OHIF's app-config.js with one DICOMweb data source: the box's /dicom-web.

    OHIF v3's DICOMweb data source takes its Authorization header from the userAuthenticationService only
    (`requestOptions.auth` is no longer read), so a bearer token is set there: window.config may be a function
    of the servicesManager, whose services are registered just after it returns.
    """
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "drimbox",
        "configuration": {
            "friendlyName": "drimbox",
            "name": "drimbox",
            "qidoRoot": dicomweb,
            "wadoRoot": dicomweb,
            "wadoUriRoot": dicomweb,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "defaultDataSourceName": "drimbox",
        "dataSources": [source],
    }
    if token is None:
        return f"window.config = {json.dumps(config, indent=2)};\n"
    return (
        f"const drimboxConfig = {json.dumps(config, indent=2)};\n"
        f"const drimboxToken = {json.dumps(token)};\n"
        "window.config = ({ servicesManager }) => {\n"
        "  const install = () => {\n"
        "    const auth = servicesManager.services.userAuthenticationService;\n"
        "    if (!auth) { setTimeout(install, 0); return; }\n"
        "    auth.setServiceImplementation({\n"
        "      getAuthorizationHeader: () => ({ Authorization: 'Bearer ' + drimboxToken }),\n"
        "    });\n"
        "  };\n"
        "  install();\n"
        "  return drimboxConfig;\n"
        "};\n"
    )


@contextmanager
def serve_ohif(dist: Path, config_js: str, port: int) -> Iterator[str]:
    """Serve OHIF on 127.0.0.1:port (its own app-config.js, any other unknown path → index.html); the URL."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/app-config.js":
            return web.Response(text=config_js, content_type="application/javascript")
        relative = request.path.lstrip("/")
        candidate = (dist / relative).resolve()
        if relative and candidate.is_file() and candidate.is_relative_to(dist.resolve()):
            return web.FileResponse(candidate)
        return web.FileResponse(dist / "index.html")  # the SPA's routes (/viewer, /) are the client's

    # Its own loop in its own thread: Playwright's sync API keeps an event loop running on the test's thread.
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(web.Application(), access_log=None)
    runner.app.router.add_get("/{tail:.*}", handle)
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        except BaseException as exc:
            failure.append(exc)
            return
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="ohif-static", daemon=True)
    thread.start()
    started.wait(timeout=10)
    if failure:
        raise failure[0]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
