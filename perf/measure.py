"""Timing primitives of the perf suite: HTTP fetches with curl, dcmtk getscu, concurrency, peak RSS."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The ANS consumer's Accept for a series (validator sample): several syntaxes with q-values.
ANS_ACCEPT = (
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80; q=0.9, '
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.91; q=0.8, '
    'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; q=0.5'
)
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Fetch:
    """One HTTP transfer as curl saw it."""

    status: int
    bytes: int
    ttfb_s: float
    total_s: float

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.total_s if self.total_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mb_per_s": round(self.mb_per_s, 1)}


def fetch(url: str, accept: str = AS_STORED, headers: dict[str, str] | None = None, timeout: float = 300) -> Fetch:
    """GET url with curl, body discarded: curl is faster than any Python client, so it never is the bottleneck."""
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl not found: apt-get install curl (make perf installs it)")
    args = [
        curl,
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        str(timeout),
        "-H",
        f"Accept: {accept}",
        "-w",
        "%{http_code} %{size_download} %{time_starttransfer} %{time_total}",
    ]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=timeout + 10, check=False)
    code, size, ttfb, total = out.stdout.split()
    return Fetch(status=int(code), bytes=int(size), ttfb_s=float(ttfb), total_s=float(total))


def best_of(n: int, fn: Callable[..., Fetch], *args: Any, **kwargs: Any) -> Fetch:
    """The fastest of n runs (the least disturbed by the rest of the machine)."""
    runs: list[Fetch] = [fn(*args, **kwargs) for _ in range(n)]
    return min(runs, key=lambda f: f.total_s)


@dataclass
class Concurrency:
    clients: int
    aggregate_mb_per_s: float
    p50_s: float
    p95_s: float
    statuses: list[int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def concurrent_fetch(
    url: str, clients: int, accept: str = AS_STORED, headers: dict[str, str] | None = None
) -> Concurrency:
    """`clients` simultaneous retrieves of the same URL: aggregate throughput and latency percentiles."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: fetch(url, accept, headers), range(clients)))
    wall = time.perf_counter() - start
    latencies = sorted(r.total_s for r in results)
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return Concurrency(
        clients=clients,
        aggregate_mb_per_s=round(sum(r.bytes for r in results) / 1e6 / wall, 1),
        p50_s=round(statistics.median(latencies), 3),
        p95_s=round(p95, 3),
        statuses=sorted({r.status for r in results}),
    )


def getscu(host: str, port: int, called_ae: str, study_uid: str, calling_ae: str = "GETSCU") -> Fetch:
    """dcmtk getscu of a whole study into a temporary directory (TCP_NODELAY=1): the DIMSE reference."""
    exe = shutil.which("getscu")
    if exe is None:
        raise RuntimeError("getscu not found: apt-get install dcmtk")
    with tempfile.TemporaryDirectory(prefix="perf-getscu-") as out:
        start = time.perf_counter()
        proc = subprocess.run(
            [
                exe,
                "-S",
                "-aet",
                calling_ae,
                "-aec",
                called_ae,
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={study_uid}",
                "-od",
                out,
                host,
                str(port),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TCP_NODELAY": "1"},
            timeout=600,
            check=False,
        )
        total = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(out).iterdir())
    return Fetch(status=0 if proc.returncode == 0 else proc.returncode, bytes=size, ttfb_s=0.0, total_s=total)


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a process: its peak resident set since it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
