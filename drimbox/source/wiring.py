"""The source role in one call for app.py: its DICOMweb and publication routes now; with the app, its DICOM
listener, DMP gateway, publication pipeline and HL7 intake.

setup() adds the routes at once (the router is frozen before the app starts), bound to the stores they read: the
outbox and, by profile, the archive (Native) or the series cache (Proxy). What has a thread, a socket or a task is
created under the app's cleanup_ctx, found in the app's keys below, and closed in reverse order when the app
stops. start() opens the HL7 listener and the worker once the box's HTTP site is bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from ssl import SSLContext

from aiohttp import web

from drimbox.archive.archive import Archive
from drimbox.archive.scp import ArchiveScp
from drimbox.archive.scp import start as start_archive_scp
from drimbox.audit import AUDIT
from drimbox.audit.peers import ThreadAudit
from drimbox.auth import AuthGate
from drimbox.auth.links import ReportLinks
from drimbox.auth.operator import uploader_check
from drimbox.config import Settings
from drimbox.dicomweb.backend import DicomwebBackend
from drimbox.dicomweb.routes import dicomweb_routes
from drimbox.dicomweb.scope import ScopedBackend
from drimbox.dicomweb.stow import stow_routes
from drimbox.dimse.delivery import ReceivedInstance
from drimbox.dimse.message import REFUSED_OUT_OF_RESOURCES
from drimbox.dimse.peers import Caller, PeerList, iocm_senders, own_peer, store_peers
from drimbox.dimse.store_scp import StoreSCP, serve_shared, stop_shared
from drimbox.hl7.mllp import MllpServer
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
from drimbox.source.reports import SourceReports
from drimbox.source.worker import PublicationWorker
from drimbox.state.series_cache import SeriesCache
from drimbox.xds.habilitation import ImagingMatrix

log = logging.getLogger(__name__)

OUTBOX = web.AppKey("source_outbox", Outbox)
ARCHIVE = web.AppKey("source_archive", Archive)  # Native profile
CACHE = web.AppKey("source_cache", SeriesCache)  # Proxy profile
PROXY = web.AppKey("source_proxy", ProxyBackend)  # Proxy profile
DMP = web.AppKey("source_dmp", XdsDmpGateway)
ARCHIVE_SCP = web.AppKey("source_archive_scp", ArchiveScp)  # Native profile
PROXY_SCP = web.AppKey("source_proxy_scp", StoreSCP)  # Proxy profile
WORKER = web.AppKey("source_worker", PublicationWorker)
REJECTIONS = web.AppKey("source_rejections", RejectionIntake)
MLLP = web.AppKey("source_mllp", MllpServer)
ACCESS = web.AppKey("source_access", SourceAccess)  # when [auth] protect_dicomweb
# The DICOMweb backend the routes serve (unscoped): the patient routes (drimbox.patient) wrap it in their own scope.
BACKEND = web.AppKey("source_backend", DicomwebBackend)

Backend = ProxyBackend | NativeBackend


def setup(
    app: web.Application,
    settings: Settings,
    gate: AuthGate,
    *,
    matrix: ImagingMatrix,
    ssl: SSLContext | None,
    listeners: bool = True,
) -> Outbox:
    """Add the source role to `app` (app[AUDIT] set); returns the outbox (the viewer's report link reads it).

    `gate`: the box's login and bearer tokens; `matrix`: who may read imaging; `ssl`: the server context the
    MLLP listener uses when [mllp] tls. `listeners` False (the extra HTTP processes of [http] workers): the routes
    and their stores only, no DICOM listener, HL7 listener or worker (the primary process runs those, once).
    """
    s = settings
    outbox = app[OUTBOX] = Outbox(s.var_path / "drimbox.sqlite", url=s.state.url, lease=s.publish.lease_seconds)
    backend: Backend
    if s.box.profile == "native":
        archive = app[ARCHIVE] = Archive.open(s.shared_path)
        backend = NativeBackend(archive)
    else:
        cache = app[CACHE] = SeriesCache(s.shared_path / "cache", s.cache.max_bytes)
        backend = app[PROXY] = ProxyBackend(s, cache)
    app[BACKEND] = backend
    _add_routes(app, s, gate, matrix, outbox, backend)
    role = _Lifecycle(s, outbox, backend, ssl)
    # Unwound in reverse: the HL7 listener and the worker stop first, then the DICOM listener, the DMP
    # gateway, and last the stores the others write to.
    app.cleanup_ctx.extend([role.stores, role.dmp, role.dicom, role.pipeline] if listeners else [role.stores])
    return outbox


async def start(app: web.Application, settings: Settings) -> None:
    """Once the box's HTTP site is bound: the MLLP listener opens, then the worker starts (setup's listeners)."""
    if MLLP not in app:
        return
    await app[MLLP].start()
    # Before any job runs: a KOS file a kill left unrecorded is removed, never one a job is writing.
    await remove_orphan_kos(settings.var_path / "kos", app[OUTBOX])
    app[WORKER].start()


def _add_routes(
    app: web.Application, s: Settings, gate: AuthGate, matrix: ImagingMatrix, outbox: Outbox, backend: Backend
) -> None:
    """/dicom-web (STOW-RS too on a Native box), protected or audited, and /api/publications."""
    if isinstance(backend, NativeBackend):
        # Storing needs the operator token or the PSC bearer token of a professional the habilitation matrix
        # allows (open with protect_dicomweb=false).
        upload = uploader_check(gate.tokens, s.auth.operator_token, matrix) if s.auth.protect_dicomweb else None
        app.add_routes(stow_routes(backend.stow, base="/dicom-web", public_url=s.box.public_url, authorize=upload))
    # Protected, every answer is cut to the scope the access check leaves (the KOS's series and instances).
    served: DicomwebBackend = ScopedBackend(backend) if s.auth.protect_dicomweb else backend
    routes = dicomweb_routes(
        served,
        base="/dicom-web",
        cors_origins=s.http.cors_origins,
        public_url=s.box.public_url,
        compress=s.http.compress_on_the_fly,
    )
    if s.auth.protect_dicomweb:
        # A consumer box's request needs a PSC token and the KOS that entitles it (DRIM-M contract); the
        # box's own viewer, a session granted the study of the report link it opened; the operator, all.
        access = SourceAccess(
            outbox,
            s.var_path / "kos",
            gate.tokens,
            gate=gate,
            grants=gate.sessions,
            operator_token=s.auth.operator_token,
            matrix=matrix,
            cors_origins=s.http.cors_origins,
        )
        routes = access.protect(routes)
        app[ACCESS] = access
    else:
        routes = audit_open_access(routes)
    app.add_routes(routes)
    app.add_routes(publications_routes(outbox, ReportLinks(s.auth, s.box.public_url), s))
    # The report the box holds, to a session its report link opened (the same grant as the images).
    app.add_routes(SourceReports(gate, gate.sessions, outbox, matrix).routes())


class _Lifecycle:
    """The source's resources, each opened and closed by one cleanup context (in the order setup() lists them)."""

    def __init__(self, settings: Settings, outbox: Outbox, backend: Backend, server_ssl: SSLContext | None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.backend = backend
        self.server_ssl = server_ssl
        # Set by dicom(), used by pipeline(): who may send IOCM notes, the SCP threads' audit, the pipeline's PACS.
        self.senders = PeerList()
        self.thread_audit: ThreadAudit | None = None
        self.pipeline_settings = settings

    async def stores(self, app: web.Application) -> AsyncIterator[None]:
        """The stores setup() opened (the routes are bound to them), closed once nothing else runs."""
        try:
            yield
        finally:
            self.outbox.close()
            if CACHE in app:
                app[CACHE].close()
            if ARCHIVE in app:
                app[ARCHIVE].close()

    async def dmp(self, app: web.Application) -> AsyncIterator[None]:
        gateway = app[DMP] = XdsDmpGateway(self.settings)
        try:
            yield
        finally:
            await gateway.close()

    async def dicom(self, app: web.Application) -> AsyncIterator[None]:
        """The box's DICOM listener: the archive's SCP (Native) or the Proxy's SCP for C-MOVEs and IOCM notes."""
        s = self.settings
        # DICOM peers are recognised by AE title AND address; SCP threads audit through the loop, durably.
        self.thread_audit = ThreadAudit(app[AUDIT], asyncio.get_running_loop())
        scp_audit = ScpAudit(self.thread_audit, s.dicom.ae_title)
        senders = self.senders = await asyncio.to_thread(iocm_senders, s)
        if ARCHIVE in app:
            stores = await asyncio.to_thread(store_peers, s)
            # The box's own AE (its pipeline's C-FIND) is associated too, but may not store.
            scp = app[ARCHIVE_SCP] = start_archive_scp(
                s.dicom,
                app[ARCHIVE],
                on_kos=_native_kos(app),
                peers=stores | senders | own_peer(s.dicom),
                store_peers=stores,
                on_refused=scp_audit.refused,
                on_session=scp_audit.session,
            )
            log.info("archive C-STORE peers: %s; IOCM senders: %s", stores.describe(), senders.describe())
            # The box is the archive: the publication pipeline's C-FIND asks the box's own SCP.
            own = dataclasses.replace(s.pacs, ae_title=s.dicom.ae_title, host=s.dicom.host, port=scp.port)
            self.pipeline_settings = dataclasses.replace(s, pacs=own)
            try:
                yield
            finally:
                await asyncio.to_thread(scp.stop)
        else:
            # Listening from the start (not only once a C-MOVE needs it): the PACS pushes IOCM rejection notes.
            # Its only callers: the PACS (C-MOVE sub-operations) and the IOCM senders.
            pacs = await asyncio.to_thread(PeerList, [(s.pacs.ae_title, s.pacs.host)])
            proxy_scp = app[PROXY_SCP] = await asyncio.to_thread(
                serve_shared, s.dicom, _unsolicited_store(app), pacs | senders, scp_audit.refused
            )
            log.info("DICOM peers: PACS %s; IOCM senders: %s", pacs.describe(), senders.describe())
            try:
                yield
            finally:
                await asyncio.to_thread(stop_shared, proxy_scp)

    async def pipeline(self, app: web.Application) -> AsyncIterator[None]:
        """The publication worker, the IOCM rejections intake and the HL7 intake (start() opens them)."""
        s = self.settings
        invalidate = self.backend.invalidate_study
        publisher = Publisher(
            self.pipeline_settings, self.outbox, app[DMP], on_study_changed=invalidate, audit=app[AUDIT]
        )
        worker = app[WORKER] = PublicationWorker(s, self.outbox, publisher)
        app[REJECTIONS] = RejectionIntake(
            self.outbox,
            asyncio.get_running_loop(),
            worker.wake,
            invalidate,
            app.get(ARCHIVE),
            senders=self.senders,
            audit=self.thread_audit,
        )
        intake = ReportIntake(self.outbox, on_accepted=worker.wake)
        mllp = app[MLLP] = MllpServer(
            s.mllp.host,
            s.mllp.port,
            handler=intake,
            max_message_bytes=s.mllp.max_message_bytes,
            idle_timeout=s.mllp.idle_timeout,
            ssl=self.server_ssl if s.mllp.tls else None,
        )
        try:
            yield
        finally:
            await mllp.close()
            await worker.stop()


def _native_kos(app: web.Application) -> Callable[[bytes, Caller], int | None]:
    def hook(data: bytes, caller: Caller) -> int | None:
        """Archive SCP thread: a KOS arrived (the intake exists once the pipeline is set up; the SCP starts before)."""
        rejections = app.get(REJECTIONS)
        if rejections is None:
            return REFUSED_OUT_OF_RESOURCES  # starting: never archive a note unchecked, the sender retries
        return rejections.native_kos(data, caller)

    return hook


def _unsolicited_store(app: web.Application) -> Callable[[ReceivedInstance, Caller], int]:
    def hook(instance: ReceivedInstance, caller: Caller) -> int:
        rejections = app.get(REJECTIONS)
        if rejections is None:
            return REFUSED_OUT_OF_RESOURCES  # starting: the PACS retries
        return rejections.unsolicited(instance, caller)

    return hook
