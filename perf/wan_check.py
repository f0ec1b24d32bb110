"""The WAN emulator checked against its nominal figures: bulk throughput and small-exchange RTT, per profile.

    python -m perf.wan_check [--profiles hospital,office,mobile] [--mb 50] [--json FILE]

A small HTTP server on 127.0.0.1 serves n bytes (/bulk?n=) and a few bytes (/ping); curl, run inside the link's
namespace, fetches them through the link. Throughput = bytes ÷ (total − first byte), against the profile's rate; RTT
= a request/response on a kept-alive connection, against the profile's RTT; a new connection costs 2 RTT (handshake
then request), as on a real line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from perf.wan import PROFILES, Profile, WanLink

_BLOCK = b"\x5a" * (1024 * 1024)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        n = int(parse_qs(parts.query).get("n", ["4"])[0]) if parts.path == "/bulk" else 4
        # Headers and a small body in one write: two small writes would measure Nagle, not the link.
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n + _BLOCK[: min(n, 4)])
        left = n - min(n, 4)
        while left > 0:
            self.wfile.write(_BLOCK[: min(left, len(_BLOCK))])
            left -= len(_BLOCK)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def byte_server() -> Iterator[int]:
    """A server on 127.0.0.1 that sends n bytes on /bulk?n=, 4 on /ping; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _curl(link: WanLink, urls: list[str], timeout: float) -> list[dict[str, float]]:
    fmt = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}\\n"
    args = link.inside(["curl", "-s", "--max-time", str(timeout), "-w", fmt])
    for url in urls:
        args += ["-o", "/dev/null", url]
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 10, check=True).stdout
    runs = []
    for line in out.strip().splitlines():
        code, size, first, total = line.split()
        assert code == "200", line
        runs.append({"bytes": int(size), "ttfb_s": float(first), "total_s": float(total)})
    return runs


def measure_link(link: WanLink, port: int, mb: float, pings: int = 10) -> dict[str, Any]:
    """The link's own figures: throughput of one bulk GET and RTT of kept-alive small GETs, with the nominal ones."""
    p = link.profile
    base = f"http://{link.host_ip}:{link.port(port)}"
    n = int(mb * 1e6)
    bulk = _curl(link, [f"{base}/bulk?n={n}"], timeout=60 + 3 * n / p.bytes_per_s)[0]
    small = _curl(link, [f"{base}/ping"] * (pings + 1), timeout=60)
    rtts = [r["total_s"] for r in small[1:]]
    rate = bulk["bytes"] / (bulk["total_s"] - bulk["ttfb_s"])
    limit = p.limit_s(bulk["bytes"], 2)
    return {
        "profile": p.name,
        "nominal_mbit_s": p.mbit_s,
        "nominal_rtt_ms": p.rtt_ms,
        "bulk_mb": round(bulk["bytes"] / 1e6, 1),
        "mbit_s": round(rate * 8 / 1e6, 2),
        "rate_ratio": round(rate / p.bytes_per_s, 3),
        "bulk_total_s": round(bulk["total_s"], 3),
        "bulk_limit_s": round(limit, 3),
        "bulk_ratio_to_limit": round(bulk["total_s"] / limit, 3),
        "rtt_ms": round(statistics.median(rtts) * 1000, 1),
        "rtt_min_ms": round(min(rtts) * 1000, 1),
        "rtt_max_ms": round(max(rtts) * 1000, 1),
        "rtt_ratio": round(statistics.median(rtts) * 1000 / p.rtt_ms, 3),
        "new_connection_ms": round(small[0]["total_s"] * 1000, 1),
        "loss": "not emulated" if p.loss else "none",
    }


def check(profiles: list[Profile], mb: float) -> list[dict[str, Any]]:
    with byte_server() as port:
        results = []
        for profile in profiles:
            with WanLink(profile) as link:
                results.append(measure_link(link, port, mb))
        return results


def summary(rows: list[dict[str, Any]]) -> str:
    lines = ["profile   nominal           measured                          bulk vs limit   new connection"]
    for r in rows:
        lines.append(
            f"{r['profile']:<9} {r['nominal_mbit_s']:>5.0f} Mbit/s {r['nominal_rtt_ms']:>3.0f} ms  "
            f"{r['mbit_s']:>6.1f} Mbit/s ({r['rate_ratio']:.3f}×) RTT {r['rtt_ms']:>5.1f} ms ({r['rtt_ratio']:.3f}×)  "
            f"{r['bulk_total_s']:.2f}/{r['bulk_limit_s']:.2f} s = {r['bulk_ratio_to_limit']:.3f}×  "
            f"{r['new_connection_ms']:.0f} ms"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated (default: all)")
    parser.add_argument("--mb", type=float, default=50, help="bulk transfer size in MB (default 50)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    rows = check([PROFILES[name] for name in args.profiles.split(",")], args.mb)
    print(summary(rows))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
