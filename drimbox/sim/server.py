"""Runs the national-services simulator as its own process until SIGTERM or SIGINT."""

from __future__ import annotations

import logging

from aiohttp import web

from drimbox.config import Settings
from drimbox.signals import until_signalled
from drimbox.sim.app import build_sim_app

log = logging.getLogger(__name__)


async def run_sim(settings: Settings) -> None:
    app = build_sim_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.sim.host, settings.sim.port)
    await site.start()
    log.info("simulator listening on http://%s:%d (DMP /dmp, Pro Santé Connect /psc, whitelist /whitelist)", settings.sim.host, settings.sim.port)
    try:
        await until_signalled()
    finally:
        await runner.cleanup()
