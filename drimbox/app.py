"""Assembles the services of one box process (HTTP, MLLP, publication worker) on one event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from aiohttp import web

from drimbox.archive.archive import Archive
from drimbox.archive.scp import ArchiveScp
from drimbox.archive.scp import start as start_archive_scp
from drimbox.audit import AUDIT, AuditSink, MemoryAudit
from drimbox.audit.peers import ThreadAudit
from drimbox.audit.trail import AuditTrail, open_trail
from drimbox.auth import AuthGate
from drimbox.auth.links import ReportLinks
from drimbox.auth.operator import require_operator, uploader_check
from drimbox.auth.peer_whitelist import whitelist_peer_check
from drimbox.auth.tokens import BearerTokenChecker
from drimbox.auth.whitelist import AnsWhitelist
from drimbox.config import Settings
from drimbox.consumer.gate import GateAuth
from drimbox.consumer.images import setup_consumer_images
from drimbox.consumer.routes import setup_consumer
from drimbox.dicomweb.backend import DicomwebBackend
from drimbox.dicomweb.routes import dicomweb_routes
from drimbox.dicomweb.scope import ScopedBackend
from drimbox.dicomweb.stow import stow_routes
from drimbox.dimse.delivery import ReceivedInstance
from drimbox.dimse.message import REFUSED_OUT_OF_RESOURCES
from drimbox.dimse.peers import Caller, PeerList, iocm_senders, own_peer, store_peers
from drimbox.dimse.pool import default_pool
from drimbox.dimse.store_scp import StoreSCP, serve_shared, stop_shared
from drimbox.hl7.mllp import MllpServer
from drimbox.signals import until_signalled
from drimbox.source.access import SourceAccess, audit_open_access
from drimbox.source.api import publications_routes
from drimbox.source.dicom_audit import ScpAudit
from drimbox.source.dmp_gateway import XdsDmpGateway
from drimbox.source.intake import ReportIntake
from drimbox.source.kos_orphans import remove_orphan_kos
from drimbox.source.native_backend import NativeBackend
from drimbox.source.outbox import Outbox
from drimbox.source.proxy_backend import ProxyBackend
from drimbox.source.publish import Publisher
from drimbox.source.rejections import RejectionIntake
from drimbox.source.worker import PublicationWorker
from drimbox.state.series_cache import SeriesCache
from drimbox.tls import box_to_box, peer_middleware, use
from drimbox.viewer_routes import viewer_routes
from drimbox.xds.habilitation import DEFAULT_IMAGING_PROFESSIONS, ImagingMatrix

log = logging.getLogger(__name__)


class Box:
    """A running box: start() binds every listener, stop() drains and closes them in reverse order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.time()
        self.outbox: Outbox | None = None
        self.worker: PublicationWorker | None = None
        self.mllp: MllpServer | None = None
        self.dmp: XdsDmpGateway | None = None
        self.cache: SeriesCache | None = None
        self.archive: Archive | None = None
        self.scp: ArchiveScp | None = None
        self.backend: DicomwebBackend | None = None
        self.tokens: BearerTokenChecker | None = None
        self.peer_whitelist: AnsWhitelist | None = None
        self.proxy_scp: StoreSCP | None = None
        self.rejections: RejectionIntake | None = None
        self.audit: AuditSink = MemoryAudit()
        self._runner: web.AppRunner | None = None

    @property
    def is_source(self) -> bool:
        return "source" in self.settings.box.roles

    @property
    def is_consumer(self) -> bool:
        return "consumer" in self.settings.box.roles

    async def start(self) -> None:
        s = self.settings
        s.var_path.mkdir(parents=True, exist_ok=True)
        # [tls] first: a bad certificate stops the start before any listener is bound.
        server_ssl = use(s.tls)
        # With mutual TLS, a source takes box-to-box calls only from the whitelist's operators (their certificate DN).
        peer_check = None
        if self.is_source and s.tls.client_auth != "none" and s.whitelist.check_client_dn:
            self.peer_whitelist = AnsWhitelist(s.whitelist)
            peer_check = whitelist_peer_check(self.peer_whitelist)
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[peer_middleware(s.tls, box_to_box, peer_check)])
        # Every component records accesses to patient data through app[AUDIT]: the hash-chained trail on disk
        # when [audit] enabled, else (tests, throw-away boxes) memory.
        if s.audit.enabled:
            self.audit = open_trail(s)
        app[AUDIT] = self.audit
        app.router.add_get("/health", self._health)
        app.router.add_delete("/api/cache", self._clear_cache)
        # Pro Santé Connect login (/auth/*): the consumer's pages and, later, the viewer need it.
        self.auth = AuthGate(s)
        self.auth.setup(app)
        if self.is_consumer:
            consumer_auth = GateAuth(self.auth)
            setup_consumer(app, s, consumer_auth)
            setup_consumer_images(app, s, consumer_auth)
        # Who may read imaging (the DMP's habilitation matrix): on a source box, for its sessions, tokens and uploads.
        matrix = ImagingMatrix.of(s.access.imaging_professions or DEFAULT_IMAGING_PROFESSIONS)
        if self.is_source:
            self.outbox = Outbox(s.var_path / "drimbox.sqlite")
            self.dmp = XdsDmpGateway(s)
            backend: ProxyBackend | NativeBackend
            pipeline_settings = s
            # DICOM peers are recognised by AE title AND address; SCP threads audit through the loop, durably.
            thread_audit = ThreadAudit(self.audit, asyncio.get_running_loop())
            scp_audit = ScpAudit(thread_audit, s.dicom.ae_title)
            senders = await asyncio.to_thread(iocm_senders, s)
            if s.box.profile == "native":
                self.archive = Archive.open(s.var_path)
                stores = await asyncio.to_thread(store_peers, s)
                # The box's own AE (its pipeline's C-FIND) is associated too, but may not store.
                self.scp = start_archive_scp(
                    s.dicom, self.archive, on_kos=self._rejection_hook, peers=stores | senders | own_peer(s.dicom),
                    store_peers=stores, on_refused=scp_audit.refused, on_session=scp_audit.session,
                )
                log.info("archive C-STORE peers: %s; IOCM senders: %s", stores.describe(), senders.describe())
                backend = NativeBackend(self.archive)
                # The box is the archive: the publication pipeline's C-FIND asks the box's own SCP.
                own = dataclasses.replace(s.pacs, ae_title=s.dicom.ae_title, host=s.dicom.host, port=self.scp.port)
                pipeline_settings = dataclasses.replace(s, pacs=own)
            else:
                self.cache = SeriesCache(s.var_path / "cache", s.cache.max_bytes)
                backend = ProxyBackend(s, self.cache)
                # Listening from the start (not only once a C-MOVE needs it): the PACS pushes IOCM rejection notes.
                # Its only callers: the PACS (C-MOVE sub-operations) and the IOCM senders.
                pacs = await asyncio.to_thread(PeerList, [(s.pacs.ae_title, s.pacs.host)])
                self.proxy_scp = await asyncio.to_thread(
                    serve_shared, s.dicom, self._unsolicited_store, pacs | senders, scp_audit.refused
                )
                log.info("DICOM peers: PACS %s; IOCM senders: %s", pacs.describe(), senders.describe())
            self.backend = backend
            if isinstance(backend, NativeBackend):
                # Storing needs the operator token or the PSC bearer token of a professional the habilitation matrix
                # allows (open with protect_dicomweb=false).
                upload = uploader_check(self.auth.tokens, s.auth.operator_token, matrix) if s.auth.protect_dicomweb else None
                app.add_routes(stow_routes(backend.stow, base="/dicom-web", public_url=s.box.public_url, authorize=upload))
            # Protected, every answer is cut to the scope the access check leaves (the KOS's series and instances).
            served: DicomwebBackend = ScopedBackend(backend) if s.auth.protect_dicomweb else backend
            routes = dicomweb_routes(
                served, base="/dicom-web", cors_origins=s.http.cors_origins, public_url=s.box.public_url,
                compress=s.http.compress_on_the_fly,
            )
            if s.auth.protect_dicomweb:
                # A consumer box's request needs a PSC token and the KOS that entitles it (DRIM-M contract); the
                # box's own viewer, a session granted the study of the report link it opened; the operator, all.
                self.tokens = self.auth.tokens
                access = SourceAccess(self.outbox, s.var_path / "kos", self.tokens, gate=self.auth,
                                      grants=self.auth.sessions, operator_token=s.auth.operator_token, matrix=matrix)
                routes = access.protect(routes)
            else:
                routes = audit_open_access(routes)
            app.add_routes(routes)
            publisher = Publisher(pipeline_settings, self.outbox, self.dmp, on_study_changed=backend.invalidate_study,
                                  audit=self.audit)  # fmt: skip
            self.worker = PublicationWorker(s, self.outbox, publisher)
            self.rejections = RejectionIntake(
                self.outbox, asyncio.get_running_loop(), self.worker.wake, backend.invalidate_study, self.archive,
                senders=senders, audit=thread_audit,
            )
            links = ReportLinks(s.auth, s.box.public_url)
            app.add_routes(publications_routes(self.outbox, links, s))
            intake = ReportIntake(self.outbox, on_accepted=self.worker.wake)
            self.mllp = MllpServer(
                s.mllp.host, s.mllp.port, handler=intake,
                max_message_bytes=s.mllp.max_message_bytes, idle_timeout=s.mllp.idle_timeout,
                ssl=server_ssl if s.mllp.tls else None,
            )
        # The web viewer (both roles) and, on a source (outbox), the report link that opens it.
        app.add_routes(viewer_routes(self.auth, self.outbox, links=ReportLinks(s.auth, s.box.public_url),
                                     grants=self.auth.sessions, matrix=matrix))  # fmt: skip
        # handler_cancellation: a client that leaves while the PACS is slow is noticed at once (C-CANCEL).
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.http.host, s.http.port, ssl_context=server_ssl)
        await site.start()
        if self.mllp is not None:
            await self.mllp.start()
        if self.worker is not None and self.outbox is not None:
            # Before any job runs: a KOS file a kill left unrecorded is removed, never one a job is writing.
            await remove_orphan_kos(s.var_path / "kos", self.outbox)
            self.worker.start()
        log.info(
            "drimbox started: roles %s, profile %s, HTTP%s %s:%d%s",
            ",".join(s.box.roles), s.box.profile, "S" if server_ssl else "", s.http.host, s.http.port,
            f", MLLP {s.mllp.host}:{self.mllp.port}" if self.mllp else "",
        )

    async def stop(self) -> None:
        if self.mllp is not None:
            await self.mllp.close()
        if self.worker is not None:
            await self.worker.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.dmp is not None:
            await self.dmp.close()
        if self.tokens is not None:
            await self.tokens.close()
        if self.peer_whitelist is not None:
            await self.peer_whitelist.close()
        if self.outbox is not None:
            self.outbox.close()
        if self.cache is not None:
            self.cache.close()
        if self.scp is not None:
            await asyncio.to_thread(self.scp.stop)
        if self.proxy_scp is not None:
            await asyncio.to_thread(stop_shared, self.proxy_scp)
        if self.archive is not None:
            self.archive.close()
        if isinstance(self.audit, AuditTrail):
            await asyncio.to_thread(self.audit.close)
        # Release the PACS associations kept warm for the next query or retrieve.
        await asyncio.to_thread(default_pool.close_idle)

    def _rejection_hook(self, data: bytes, caller: Caller) -> int | None:
        """Archive SCP thread: a KOS arrived (the intake exists once start() has run; the SCP starts before)."""
        if self.rejections is None:
            return REFUSED_OUT_OF_RESOURCES  # starting: never archive a note unchecked, the sender retries
        return self.rejections.native_kos(data, caller)

    def _unsolicited_store(self, instance: ReceivedInstance, caller: Caller) -> int:
        if self.rejections is None:
            return REFUSED_OUT_OF_RESOURCES  # starting: the PACS retries
        return self.rejections.unsolicited(instance, caller)

    async def _clear_cache(self, request: web.Request) -> web.Response:
        """Operator action: drop the Proxy cache, all of it or one study (?study=UID)."""
        await require_operator(request)
        if self.cache is None:
            return web.json_response({"error": "this box has no cache (Native profile or no source role)"}, status=404)
        study = request.query.get("study")
        if study is not None:
            if not study or len(study) > 64 or not all(c in "0123456789." for c in study):
                return web.json_response({"error": "study: a DICOM UID (digits and dots, at most 64)"}, status=400)
            await self.cache.invalidate_study(study)
        else:
            await self.cache.clear()
        return web.json_response(await self.cache.usage())

    async def _health(self, request: web.Request) -> web.Response:
        components: dict[str, Any] = {"http": {"status": "up"}}
        healthy = True
        if self.outbox is not None:
            try:
                counts = await self.outbox.counts()
                components["outbox"] = {"status": "up", "publications": counts}
            except Exception as exc:
                healthy = False
                components["outbox"] = {"status": "down", "error": str(exc)}
        if self.mllp is not None:
            components["mllp"] = {"status": "up", "port": self.mllp.port}
        if self.worker is not None:
            components["worker"] = {"status": "up", "last_error": self.worker.last_error}
        if self.cache is not None:
            components["cache"] = await self.cache.health()  # "degraded" while its disk refuses files
        body = {
            "status": "up" if healthy else "down",
            "roles": self.settings.box.roles,
            "profile": self.settings.box.profile,
            "uptime_s": round(time.time() - self.started_at, 1),
            "components": components,
        }
        return web.json_response(body, status=200 if healthy else 503)


async def serve(settings: Settings) -> None:
    """Run a box until SIGTERM or SIGINT, then stop it cleanly."""
    box = Box(settings)
    await box.start()
    try:
        await until_signalled()
    finally:
        log.info("stopping")
        await box.stop()
