"""GET /metrics (Prometheus text format) and the middleware that counts every HTTP request by its route template."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from drimbox import metrics
from drimbox.auth.operator import require_operator
from drimbox.config import Settings
from drimbox.source.wiring import CACHE, OUTBOX


class _ScrapeGauges(Collector):
    """Gauges read from the shared stores at scrape time (whole-box values already): never a per-process file."""

    def __init__(self) -> None:
        self.publications: dict[str, int] = {}
        self.cache: dict[str, int] | None = None

    def collect(self) -> Iterable[Metric]:
        publications = GaugeMetricFamily("drimbox_publications", "Publications in the outbox, by state.",
                                         labels=["state"])  # fmt: skip
        for state, n in self.publications.items():
            publications.add_metric([state], n)
        yield publications
        if self.cache is not None:
            yield GaugeMetricFamily("drimbox_cache_bytes", "Bytes the series cache holds.", self.cache["bytes"])
            yield GaugeMetricFamily("drimbox_cache_series", "Series the cache holds.", self.cache["series"])
            yield GaugeMetricFamily("drimbox_cache_max_bytes", "The cache's bound.", self.cache["max_bytes"])

    def describe(self) -> Iterable[Metric]:
        return []


class AppMetrics:
    """One app's registry: the instruments (drimbox.metrics, every process's) and gauges read at scrape time."""

    def __init__(self, settings: Settings) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in settings.metrics.networks]
        self.registry: CollectorRegistry = metrics.app_registry()
        self.gauges = _ScrapeGauges()
        self.registry.register(self.gauges)

    def allowed_address(self, request: web.Request) -> bool:
        if not self.networks or not request.remote:
            return False
        try:
            address = ipaddress.ip_address(request.remote)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REGISTRY = web.AppKey("metrics", AppMetrics)


async def metrics_handler(request: web.Request) -> web.Response:
    """The operator token, or a client in [metrics] networks; else 401 (recorded in the audit trail)."""
    app_metrics = request.app[REGISTRY]
    if not app_metrics.allowed_address(request):
        await require_operator(request)
    if (outbox := request.app.get(OUTBOX)) is not None:
        app_metrics.gauges.publications = dict(await outbox.counts())
    if (cache := request.app.get(CACHE)) is not None:
        app_metrics.gauges.cache = await cache.usage()
    body = generate_latest(app_metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def route_of(request: web.Request) -> str:
    """The matched route's template ("/dicom-web/studies/{study}"), never the concrete path (UIDs)."""
    route = request.match_info.route
    resource = route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


_PREPARED = web.RequestKey[web.StreamResponse](
    "drimbox_metrics_response"
)  # the request's response once its headers went out (on_response_prepare)


async def _remember_response(request: web.Request, response: web.StreamResponse) -> None:
    request[_PREPARED] = response


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts and times each request by route template and status (499: the client left before any answer).

    A handler cancelled after its answer went out (the client closed the connection at the end of a streamed
    body: handler_cancellation) counts with the status it sent.
    """
    started = time.perf_counter()
    route = route_of(request)
    response: web.StreamResponse | None = None
    status = 500
    try:
        response = await handler(request)
        return response
    except web.HTTPException as exc:
        response = exc
        raise
    except asyncio.CancelledError:
        status = 499
        raise
    finally:
        response = response or request.get(_PREPARED)
        size = 0
        if response is not None:
            status = response.status
            size = response.body_length if response.prepared else (response.content_length or 0)
        metrics.HTTP_DURATION.labels(route).observe(time.perf_counter() - started)
        metrics.HTTP_REQUESTS.labels(route, request.method, str(status)).inc()
        if size:
            metrics.HTTP_RESPONSE_BYTES.labels(route).inc(size)


def setup(app: web.Application, settings: Settings) -> None:
    """GET /metrics on this app, and the counting middleware (outermost: it sees every middleware's answers)."""
    app[REGISTRY] = AppMetrics(settings)
    app.middlewares.insert(0, metrics_middleware)
    app.on_response_prepare.append(_remember_response)
    app.router.add_get("/metrics", metrics_handler)
