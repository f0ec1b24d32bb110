"""The consumer's images (drimbox.consumer.setup adds them): /conso/dicom-web, the import API, cache and jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from drimbox.audit.events import AUDIT
from drimbox.auth.whitelist import WHITELISTS, AnsWhitelist
from drimbox.config import Settings
from drimbox.consumer.auth import ConsumerAuth, ProfessionalLike
from drimbox.consumer.backend import KOS_PARAM, ConsumerBackend
from drimbox.consumer.importer import Importer, import_routes
from drimbox.consumer.retrieval import SourceRetriever
from drimbox.consumer.routes import CONSUMER, PREFETCH
from drimbox.dicomweb.routes import dicomweb_routes
from drimbox.state.series_cache import SeriesCache

IMAGES = web.AppKey("consumer_images", ConsumerBackend)
IMPORTER = web.AppKey("consumer_importer", Importer)


class _StoreOfApp:
    """The consumer store, found at request time (setup_consumer opens it when the app starts)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def manifest(self, kos_uid: str) -> tuple[str, bytes] | None:
        return await self.app[CONSUMER].store.manifest(kos_uid)


def setup_consumer_images(app: web.Application, settings: Settings, auth: ConsumerAuth) -> ConsumerBackend:
    """Add /conso/dicom-web/... and /conso/api/exams/{kosUid}/import, /conso/api/imports/{id}.

    Call after consumer.routes.setup_consumer, whose store and catalog these use (drimbox.consumer.setup does both).
    Opening an exam is checked with the DMP (ExamCatalog.exam: the DMP must still list the KOS for this professional)
    once per GRANT_TTL.
    """
    c = settings.consumer
    whitelist = AnsWhitelist(settings.whitelist)
    app.setdefault(WHITELISTS, []).append(whitelist)  # reloaded on SIGHUP, shown on the operator page
    retriever = SourceRetriever(
        whitelist, connect_timeout=c.retrieve_connect_timeout, read_timeout=c.retrieve_read_timeout
    )

    async def check_exam(pro: ProfessionalLike, kos_uid: str) -> None:
        await app[CONSUMER].catalog.exam(pro, kos_uid)

    cache = SeriesCache(settings.var_path / "consumer-cache", c.cache_max_bytes)
    # The epoch file: an opposition recorded in one process closes the exams opened in every process ([http] workers).
    backend = ConsumerBackend(_StoreOfApp(app), cache, retriever, check_exam=check_exam, audit=lambda: app.get(AUDIT),
                              epoch=settings.var_path / "consumer" / "grants.epoch")  # fmt: skip
    app[IMAGES] = backend
    if c.prefetch:
        app[PREFETCH] = backend.prefetch
    app.add_routes(backend.protect(dicomweb_routes(
        backend, base="/conso/dicom-web", cors_origins=settings.http.cors_origins,
        compress=settings.http.compress_on_the_fly, access_params=(KOS_PARAM,),
    ), auth))  # fmt: skip
    # The launch an import names makes it land under the launch's local patient (consumer/reconcile.py).
    app.add_routes(
        import_routes(lambda: app[IMPORTER], auth, lambda launch: app[CONSUMER].store.launch(launch, c.launch_ttl))
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        importer = Importer(settings, backend, settings.var_path / "consumer", settings.state.url)
        app[IMPORTER] = importer
        # An opposition recorded by the access rules closes the exams already opened, at once.
        app[CONSUMER].catalog.rules.on_opposition.append(backend.forget_grants)
        # Loaded now: the first exam a professional opens must not wait for the list and its signature check.
        await whitelist.ensure_fresh()
        try:
            yield
        finally:
            await importer.close()
            await backend.close()
            await whitelist.close()

    app.cleanup_ctx.append(lifecycle)
    return backend
