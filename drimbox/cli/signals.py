"""Signals on the event loop: SIGTERM/SIGINT (drain and stop), SIGHUP (reload certificates and the whitelist)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


async def until_signalled() -> None:
    """Return once SIGTERM or SIGINT arrives (the handlers stay installed until then)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def reload_on_sighup(reload: Callable[[], Awaitable[object]]) -> Callable[[], None]:
    """Run `reload()` on each SIGHUP (certificates, whitelist), one at a time; returns what removes the handler.

    Per process: with several HTTP workers the parent forwards SIGHUP, and each reloads its own contexts.
    """
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[object]] = set()

    async def _once() -> object:
        return await reload()

    def on_signal() -> None:
        if running:  # a reload in progress already reads the files anew
            return
        task = loop.create_task(_once(), name="sighup-reload")
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, on_signal)

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove
