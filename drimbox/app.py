"""One box process: each role (drimbox.consumer.setup, drimbox.source.wiring.setup) wired onto one aiohttp app."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from drimbox import consumer
from drimbox.archive.archive import Archive
from drimbox.audit import AUDIT, AuditSink, MemoryAudit
from drimbox.audit.trail import AuditTrail, open_trail
from drimbox.auth import AuthGate
from drimbox.auth.links import ReportLinks
from drimbox.auth.operator import require_operator
from drimbox.auth.peer_whitelist import whitelist_peer_check
from drimbox.auth.whitelist import WHITELISTS, AnsWhitelist, WhitelistError
from drimbox.config import ConfigError, Settings
from drimbox.consumer.gate import GateAuth
from drimbox.dimse.pool import default_pool
from drimbox.dimse.uid import is_lenient_uid
from drimbox.hl7.mllp import MllpServer
from drimbox.metrics import http as metrics_http
from drimbox.ops import Reloaded
from drimbox.ops import pages as ops_pages
from drimbox.patient import setup as patient_setup
from drimbox.source import primary_fills
from drimbox.source import wiring as source
from drimbox.source.outbox import Outbox
from drimbox.source.viewer_warmup import ViewerWarmUp
from drimbox.source.wiring import ACCESS, ARCHIVE, BACKEND, CACHE, MLLP, OUTBOX, PROXY, WORKER
from drimbox.source.worker import PublicationWorker
from drimbox.state.series_cache import SeriesCache
from drimbox.tls import box_to_box, peer_middleware, prepare_reload, use
from drimbox.viewer.routes import viewer_routes
from drimbox.xds.habilitation import DEFAULT_IMAGING_PROFESSIONS, ImagingMatrix

log = logging.getLogger(__name__)


class Box:
    """A running box: start() wires each role onto one aiohttp app and binds its listeners; stop() closes them.

    Each role wires itself (drimbox.consumer.setup, drimbox.source.wiring.setup): its routes at once, its resources
    under the app's cleanup_ctx, so stopping the app closes them in the reverse of the order they opened.
    """

    def __init__(
        self, settings: Settings, *, index: int = 0, sock: socket.socket | None = None, runtime: Path | None = None
    ) -> None:
        self.settings = settings
        # Process `index` of [http] workers: the primary (0) also runs the source's DICOM and HL7 listeners and the
        # publication worker; the others serve HTTP only, on `sock` (bound once by the supervisor, cli/workers.py).
        self.index = index
        self.primary = index == 0
        self.sock = sock
        self.runtime = runtime  # the supervisor's private directory (the primary's fill socket)
        self.started_at = time.time()
        self.peer_whitelist: AnsWhitelist | None = None
        self.audit: AuditSink = MemoryAudit()
        self.app: web.Application | None = None
        self.server_ssl: ssl.SSLContext | None = None
        self._runner: web.AppRunner | None = None
        self._fills: web.AppRunner | None = None  # the primary's fill service (C-MOVE with [http] workers)

    @property
    def is_source(self) -> bool:
        return "source" in self.settings.box.roles

    @property
    def is_consumer(self) -> bool:
        return "consumer" in self.settings.box.roles

    # The source's components, found in the app's keys (None before start() or on a consumer-only box).
    @property
    def outbox(self) -> Outbox | None:
        return None if self.app is None else self.app.get(OUTBOX)

    @property
    def worker(self) -> PublicationWorker | None:
        return None if self.app is None else self.app.get(WORKER)

    @property
    def mllp(self) -> MllpServer | None:
        return None if self.app is None else self.app.get(MLLP)

    @property
    def cache(self) -> SeriesCache | None:
        return None if self.app is None else self.app.get(CACHE)

    @property
    def archive(self) -> Archive | None:
        return None if self.app is None else self.app.get(ARCHIVE)

    async def start(self) -> None:
        s = self.settings
        s.var_path.mkdir(parents=True, exist_ok=True)
        # [tls] first: a bad certificate stops the start before any listener is bound.
        server_ssl = self.server_ssl = use(s.tls)
        # With mutual TLS, a source takes box-to-box calls only from the whitelist's operators (their certificate DN).
        peer_check = None
        if self.is_source and s.tls.client_auth != "none" and s.whitelist.check_client_dn:
            self.peer_whitelist = AnsWhitelist(s.whitelist)
            peer_check = whitelist_peer_check(self.peer_whitelist)
        app = web.Application(
            client_max_size=64 * 1024 * 1024, middlewares=[peer_middleware(s.tls, box_to_box, peer_check)]
        )
        self.app = app
        # Every component records accesses to patient data through app[AUDIT]: the hash-chained trail on disk
        # when [audit] enabled, else (tests, throw-away boxes) memory. Opened first, closed last (stop()).
        if s.audit.enabled:
            self.audit = open_trail(s)
        app[AUDIT] = self.audit
        app[WHITELISTS] = []
        if self.peer_whitelist is not None:
            app[WHITELISTS].append(self.peer_whitelist)
            app.cleanup_ctx.append(_closing(self.peer_whitelist))
        app.router.add_get("/health", self._health)
        if self.sock is not None:
            app.on_response_prepare.append(self._tag_process)
        # GET /metrics (operator token or [metrics] networks) and the middleware counting requests by route.
        metrics_http.setup(app, s)
        app.router.add_delete("/api/cache", self._clear_cache)
        # Pro Santé Connect login (/auth/*): the consumer's pages and the viewer need it.
        self.auth = AuthGate(s)
        self.auth.setup(app)
        # Who may read imaging (the DMP's habilitation matrix): on a source box, for its sessions, tokens and uploads.
        matrix = ImagingMatrix.of(s.access.imaging_professions or DEFAULT_IMAGING_PROFESSIONS)
        # The roles: each adds its routes now and opens its resources when the app starts.
        if self.is_consumer:
            consumer.setup(app, s, GateAuth(self.auth))
        outbox = (
            source.setup(app, s, self.auth, matrix=matrix, ssl=server_ssl, listeners=self.primary)
            if self.is_source
            else None
        )
        # The web viewer (both roles) and, on a source (outbox), the report link that opens it.
        warmup = ViewerWarmUp(app.get(ACCESS), app.get(PROXY))
        app.add_routes(viewer_routes(self.auth, outbox, links=ReportLinks(s.auth, s.box.public_url),
                                     grants=self.auth.sessions, matrix=matrix, opened=warmup.opened))  # fmt: skip
        # Patients opening their own exams from Mon Espace Santé (/patient/…): a source's, when [patient] enabled.
        if outbox is not None and s.patient.enabled:
            patient_setup(app, s, self.auth, outbox, app[BACKEND])
        # The operator's page (/operator): its own login, the publications, the cache, peers and certificates.
        ops_pages.setup(app, s, self.auth, reload=self.reload)
        # handler_cancellation: a client that leaves while the PACS is slow is noticed at once (C-CANCEL).
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()  # the roles' resources open here (cleanup_ctx), before any HTTP request
        if self.sock is not None:
            # [http] workers: the port is bound already (the supervisor's socket). The listeners and the primary's
            # fill service open first, so a client that reaches this process's HTTP finds them up.
            if PROXY in app and s.pacs.retrieve == "c-move":
                # The PACS sends a C-MOVE's instances to the primary's DICOM listener: the primary fills for all.
                path = (self.runtime or s.var_path) / "primary-fills.sock"
                if self.primary:
                    self._fills = await primary_fills.serve(app[PROXY], path)
                else:
                    app[CACHE].delegate = primary_fills.delegate(path)
            if self.is_source:
                await source.start(app, s)  # MLLP and the worker (the primary's; no-op in the others)
            await web.SockSite(self._runner, self.sock, ssl_context=server_ssl).start()
        else:
            await web.TCPSite(self._runner, s.http.host, s.http.port, ssl_context=server_ssl).start()
            if self.is_source:
                await source.start(app, s)  # MLLP and the worker, once the HTTP site is bound
        mllp = self.mllp
        log.info(
            "drimbox started%s: roles %s, profile %s, HTTP%s %s:%d%s",
            "" if self.sock is None else f" (process {os.getpid()}{', primary' if self.primary else ''})",
            ",".join(s.box.roles),
            s.box.profile,
            "S" if server_ssl else "",
            s.http.host,
            s.http.port,
            f", MLLP {s.mllp.host}:{mllp.port}" if mllp else "",
        )

    async def stop(self) -> None:
        # The HTTP site closes, then each role's resources in reverse order (the app's cleanup_ctx).
        if self._fills is not None:
            await self._fills.cleanup()
        if self._runner is not None:
            await self._runner.cleanup()
        if isinstance(self.audit, AuditTrail):
            await asyncio.to_thread(self.audit.close)
        # Release the PACS associations kept warm for the next query or retrieve.
        await asyncio.to_thread(default_pool.close_idle)

    async def reload(self) -> list[Reloaded]:
        """SIGHUP and the operator page's button: [tls] files into the contexts the listeners and clients hold
        (new handshakes get the new certificate, open connections go on), the whitelist fetched and verified again.
        A bad file keeps what is in use and says why."""
        done: list[Reloaded] = []
        try:
            pending = await asyncio.to_thread(prepare_reload, self.settings.tls, self.server_ssl)
            done += [Reloaded(key, None) for key in pending.apply()]
        except ConfigError as exc:
            log.error("reload: %s; the certificates in use are kept", exc)
            done.append(Reloaded("tls", str(exc)))
        for whitelist in self.app.get(WHITELISTS, []) if self.app is not None else []:
            try:
                await whitelist.refresh()
                done.append(Reloaded("whitelist", None))
            except WhitelistError as exc:
                log.error("reload: whitelist: %s; the list in use is kept", exc)
                done.append(Reloaded("whitelist", str(exc)))
        log.info(
            "reload: %s", ", ".join(f"{r.what} {'ok' if r.error is None else 'FAILED'}" for r in done) or "nothing"
        )
        return done

    async def _tag_process(self, _: web.Request, response: web.StreamResponse) -> None:
        """With [http] workers: which process answered (its index, not its pid), for operators and tests."""
        response.headers["X-Drimbox-Process"] = str(self.index)

    async def _clear_cache(self, request: web.Request) -> web.Response:
        """Operator action: drop the Proxy cache, all of it or one study (?study=UID)."""
        await require_operator(request)
        cache = request.app.get(CACHE)
        if cache is None:
            return web.json_response({"error": "this box has no cache (Native profile or no source role)"}, status=404)
        study = request.query.get("study")
        if study is not None:
            if not is_lenient_uid(study):  # lenient: a PACS's study UID may carry leading zeros
                return web.json_response({"error": "study: a DICOM UID (digits and dots, at most 64)"}, status=400)
            await cache.invalidate_study(study)
        else:
            await cache.clear()
        return web.json_response(await cache.usage())

    async def _health(self, request: web.Request) -> web.Response:
        components: dict[str, Any] = {"http": {"status": "up"}}
        healthy = True
        app = request.app
        if (outbox := app.get(OUTBOX)) is not None:
            try:
                counts = await outbox.counts()
                components["outbox"] = {"status": "up", "publications": counts}
            except Exception as exc:
                healthy = False
                components["outbox"] = {"status": "down", "error": str(exc)}
        if (mllp := app.get(MLLP)) is not None:
            components["mllp"] = {"status": "up", "port": mllp.port}
        if (worker := app.get(WORKER)) is not None:
            components["worker"] = {"status": "up", "last_error": worker.last_error}
        if (cache := app.get(CACHE)) is not None:
            components["cache"] = await cache.health()  # "degraded" while its disk refuses files
        body = {
            "status": "up" if healthy else "down",
            "roles": self.settings.box.roles,
            "profile": self.settings.box.profile,
            "uptime_s": round(time.time() - self.started_at, 1),
            # Which of [http] workers' processes answered (each serves any request; the primary runs the listeners).
            "process": {"pid": os.getpid(), "index": self.index, "primary": self.primary},
            "components": components,
        }
        return web.json_response(body, status=200 if healthy else 503)


def _closing(whitelist: AnsWhitelist) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that closes `whitelist` (its HTTP client) when the app stops."""

    async def context(_: web.Application) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await whitelist.close()

    return context


ReloadHook = Callable[[Callable[[], Awaitable[object]]], Callable[[], None]]


async def serve(
    settings: Settings,
    until: Callable[[], Awaitable[None]],
    *,
    reload_on: ReloadHook | None = None,
    index: int = 0,
    sock: socket.socket | None = None,
    runtime: Path | None = None,
    started: Callable[[], None] | None = None,
) -> None:
    """Run a box until `until()` returns (the command line: SIGTERM or SIGINT), then stop it cleanly.

    `reload_on(box.reload)` installs what triggers a reload (the command line: SIGHUP) and returns its remover.
    With [http] workers, each process runs one (drimbox.cli.workers): `index` its number (0, the primary, also runs
    the listeners), `sock` its inherited HTTP socket, `started` tells the supervisor once it serves.
    """
    box = Box(settings, index=index, sock=sock, runtime=runtime)
    await box.start()
    remove = reload_on(box.reload) if reload_on is not None else None
    if started is not None:
        started()
    try:
        await until()
    finally:
        if remove is not None:
            remove()
        log.info("stopping")
        await box.stop()
