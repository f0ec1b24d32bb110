"""A consumer box on the far side of a WAN link: source → link → consumer → viewer (curl), for the WAN suite.

The consumer (tests/support/drim_flow.running_consumer, as perf.consumer_retrieve runs it) lives in an asyncio loop
whose thread has joined the link's namespace, so every socket it opens is there: the source box and the simulator
(the whitelist, the PSC token) are across the link, the viewer (curl in the namespace) is beside it.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from perf.wan import WanLink

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000


class NetnsLoop:
    """An event loop in a thread of its own that lives in a network namespace (setns acts on the calling thread)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name=f"netns-{netns}", daemon=True)

    def _run(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{self.netns}") as there:
            if libc.setns(there.fileno(), _CLONE_NEWNET) != 0:
                self._error = OSError(ctypes.get_errno(), f"setns into {self.netns}")
        self._ready.set()
        if self._error is None:
            self.loop.run_forever()
        self.loop.close()

    def __enter__(self) -> NetnsLoop:
        self._thread.start()
        self._ready.wait(5)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 900) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class FarConsumer:
    """The consumer in the link's namespace, holding KOS manifests (kos_uid → bytes); `url`: its /conso/dicom-web."""

    def __init__(self, link: WanLink, work: Any, sim_url: str, manifests: dict[str, bytes]) -> None:
        self.link, self.work, self.sim_url, self.manifests = link, work, sim_url, manifests
        self.kos_of: dict[str, str] = {}  # study UID → its KOS's UID, filled by the caller
        self._loop = NetnsLoop(link.netns)
        self._cm: Any = None
        self.consumer: Any = None

    def __enter__(self) -> FarConsumer:
        from tests.support.drim_flow import consumer_settings, psc_token, running_consumer

        self._loop.__enter__()
        try:

            async def start() -> Any:
                token = (await asyncio.to_thread(psc_token, self.sim_url))["access_token"]
                self._cm = running_consumer(consumer_settings(self.work, self.sim_url), token, self.manifests)
                consumer = await self._cm.__aenter__()
                await consumer.whitelist.ensure_fresh()
                return consumer

            self.consumer = self._loop.run(start(), timeout=60)
        except BaseException:
            self._loop.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._cm is not None:
                self._loop.run(self._cm.__aexit__(None, None, None), timeout=30)
        finally:
            self._loop.__exit__()

    @property
    def url(self) -> str:
        return f"{self.consumer.url}/conso/dicom-web"

    def clear_cache(self) -> None:
        self._loop.run(self.consumer.backend.cache.clear())
