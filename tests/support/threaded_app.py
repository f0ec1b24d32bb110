"""An aiohttp app served from its own event loop in a daemon thread, for tests that drive it synchronously (Chromium)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from aiohttp import web


@contextmanager
def app_in_thread(
    build: Callable[[], Awaitable[web.Application]], timeout: float = 30.0
) -> Iterator[tuple[str, asyncio.AbstractEventLoop]]:
    """(base URL on a free 127.0.0.1 port, the app's loop) while the block runs; `build()` runs on that loop."""
    loop = asyncio.new_event_loop()
    started: list[str] = []
    stop = asyncio.Event()
    ready = threading.Event()

    async def run() -> None:
        # As the box runs its app (drimbox/app.py): a handler is cancelled when its client goes away.
        runner = web.AppRunner(await build(), access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        started.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert ready.wait(timeout), "the test server did not start"
    try:
        yield started[0], loop
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
