"""Waiting on the event loop for SIGTERM or SIGINT: how the long-running commands know to drain and stop."""

from __future__ import annotations

import asyncio
import signal


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
