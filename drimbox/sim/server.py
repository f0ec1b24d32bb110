"""Runs the national-services simulator as its own process until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from drimbox.config import Settings
from drimbox.sim.app import build_sim_app

log = logging.getLogger(__name__)


async def run_sim(settings: Settings) -> None:
    app = build_sim_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.sim.host, settings.sim.port)
    await site.start()
    log.info("simulator listening on http://%s:%d (DMP /dmp, Pro Santé Connect /psc, whitelist /whitelist)", settings.sim.host, settings.sim.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
