"""Helpers of the fuzz suite: example budgets, a background event loop for servers, raw HTTP, memory bounds."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import tracemalloc
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from hypothesis import settings

T = TypeVar("T")
_DEFAULTS = {"ci": 100, "fuzz": 2000}


def examples(profile: str | None = None) -> int:
    """Cases per target: DRIMBOX_FUZZ_EXAMPLES, else the profile's default."""
    profile = profile or os.environ.get("DRIMBOX_FUZZ_PROFILE", "ci")
    raw = os.environ.get("DRIMBOX_FUZZ_EXAMPLES", "")
    return max(1, int(raw)) if raw.strip() else _DEFAULTS.get(profile, 100)


def budget(fraction: float = 1.0) -> settings:
    """Settings for a target that costs more per case (a socket round trip, an association): a share of the cases."""
    return settings(max_examples=max(3, int(examples() * fraction)))


class BackgroundLoop:
    """An event loop in a thread, so synchronous hypothesis tests can drive asyncio servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class LoopbackApp:
    """An aiohttp application on a loopback port, served from a background loop."""

    def __init__(self, app: web.Application) -> None:
        self.loop = BackgroundLoop()
        self.runner = web.AppRunner(app, access_log=None)

        async def start() -> int:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return int(self.runner.addresses[0][1])

        self.port = self.loop.run(start())

    def close(self) -> None:
        self.loop.run(self.runner.cleanup())
        self.loop.close()


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_http(port: int, method: str, target: bytes, headers: dict[str, str] | None = None, body: bytes = b"",
             timeout: float = 20.0) -> HttpAnswer:  # fmt: skip
    """One request with the target sent byte for byte (no client normalises `..` or percent-escapes away)."""
    head = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in (headers or {}).items():
        head.append(f"{name}: {value}".encode("latin-1"))
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}".encode())
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        chunks = []
        while data := sock.recv(1 << 16):
            chunks.append(data)
    raw = b"".join(chunks)
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    parsed = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding", "").lower() == "chunked":
        rest = _unchunk(rest)
    return HttpAnswer(status, parsed, rest)


def _unchunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(out)
        size = int(data[pos:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            return bytes(out)
        out += data[line_end + 2 : line_end + 2 + size]
        pos = line_end + 4 + size


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """Peak bytes allocated by Python code (every thread) while the block runs: `with peak_memory() as peak:`."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = [0]
    try:
        yield lambda: result[0]
    finally:
        result[0] = tracemalloc.get_traced_memory()[1] - base
        if not was_tracing:
            tracemalloc.stop()


@contextmanager
def peak_rss() -> Iterator[Callable[[], int]]:
    """Growth of the process's peak resident set while the block runs (C allocations too, e.g. libxml2)."""

    def hwm() -> int:
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    def rss() -> int:
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    # Writing 5 resets the high-water mark to the current RSS (Linux 4.0+), so VmHWM afterwards is this block's.
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    base = rss()
    result = [0]
    try:
        yield lambda: result[0]
    finally:
        result[0] = max(0, hwm() - base)
