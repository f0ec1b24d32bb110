"""The box's Prometheus instruments: a leaf module (it imports nothing of drimbox) the lower layers record into.

The instruments are module-level, registered once per process in SHARED (never prometheus_client's global
registry); each box app builds its own CollectorRegistry (drimbox.app) that exposes SHARED plus the gauges read at
scrape time from that app's components (outbox counts, cache size). Several boxes in one process (tests) therefore
share the counters: read them as deltas.

With [http] workers > 1 (drimbox.cli.workers), the supervisor sets PROMETHEUS_MULTIPROC_DIR before this module is
imported: each process's values then live in files there, and app_registry() exposes the sum over every process
(prometheus_client's multiprocess mode), so /metrics reports the whole box whichever process answers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

SHARED = CollectorRegistry(auto_describe=True)

# Seconds: from a few milliseconds (a DICOMweb metadata answer) to minutes (a publication waiting for its images).
_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SLOW = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

PUBLICATION_LATENCY = Histogram(
    "drimbox_publication_latency_seconds",
    "From the report received to the KOS registered in the DMP (state published).",
    buckets=_SLOW,
    registry=SHARED,
)
DMP_CALLS = Counter(
    "drimbox_dmp_calls", "DMP (XDS) calls by transaction and outcome (ok, rejected, transient).",
    ["transaction", "outcome"], registry=SHARED,
)  # fmt: skip
DMP_DURATION = Histogram(
    "drimbox_dmp_call_duration_seconds", "DMP (XDS) call durations by transaction.", ["transaction"],
    buckets=_FAST, registry=SHARED,
)  # fmt: skip
DIMSE_CALLS = Counter(
    "drimbox_dimse_calls", "PACS (DIMSE) operations by operation (C-FIND, C-GET, C-MOVE, C-ECHO) and outcome.",
    ["operation", "outcome"], registry=SHARED,
)  # fmt: skip
DIMSE_DURATION = Histogram(
    "drimbox_dimse_call_duration_seconds", "PACS (DIMSE) operation durations by operation.", ["operation"],
    buckets=_FAST, registry=SHARED,
)  # fmt: skip
DIMSE_POOL = Gauge(
    "drimbox_dimse_pool_associations", "PACS associations of the pool, by state (idle, in_use).", ["state"],
    registry=SHARED, multiprocess_mode="livesum",  # several processes: the sum over those alive
)  # fmt: skip
HTTP_REQUESTS = Counter(
    "drimbox_http_requests", "HTTP requests by route template (never a concrete URL), method and status.",
    ["route", "method", "status"], registry=SHARED,
)  # fmt: skip
HTTP_DURATION = Histogram(
    "drimbox_http_request_duration_seconds", "HTTP request durations (to the handler's answer) by route template.",
    ["route"], buckets=_FAST, registry=SHARED,
)  # fmt: skip
HTTP_RESPONSE_BYTES = Counter(
    "drimbox_http_response_bytes", "Bytes of HTTP answers (bodies, when known) by route template.", ["route"],
    registry=SHARED,
)  # fmt: skip
CACHE_HITS = Counter("drimbox_cache_hits", "Series served whole from the cache.", registry=SHARED)
CACHE_MISSES = Counter("drimbox_cache_misses", "Series not in the cache (a fill started or joined).", registry=SHARED)
CACHE_EVICTIONS = Counter("drimbox_cache_evictions", "Series evicted from the cache (LRU).", registry=SHARED)
AUDIT_WRITE = Histogram(
    "drimbox_audit_write_duration_seconds", "Time to append one record to the audit trail.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=SHARED,
)  # fmt: skip


def observe_dimse(operation: str, started: float, error: BaseException | None) -> None:
    """Record one DIMSE operation that began at `started` (time.perf_counter())."""
    DIMSE_DURATION.labels(operation).observe(time.perf_counter() - started)
    DIMSE_CALLS.labels(operation, "ok" if error is None else "error").inc()


class _Shared(Collector):
    """Exposes SHARED's metrics in an app's own registry."""

    def collect(self) -> Iterable[Metric]:
        return SHARED.collect()

    def describe(self) -> Iterable[Metric]:
        return []


def app_registry() -> CollectorRegistry:
    """A new registry for one box app: the instruments (of every process, with several); the app adds its own
    scrape-time gauges."""
    registry = CollectorRegistry(auto_describe=False)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Shared())
    return registry
