"""Runs the national-services simulator as its own process until told to stop."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from drimbox.config import Settings
from drimbox.sim.app import build_sim_app
from drimbox.tls import peer_middleware, use

log = logging.getLogger(__name__)


async def run_sim(settings: Settings, until: Callable[[], Awaitable[None]]) -> None:
    """Serve the simulator until `until()` returns (the command line: SIGTERM or SIGINT)."""
    server_ssl = use(settings.tls)
    app = build_sim_app(settings)
    # As the real DMP: with mutual TLS on, /dmp needs the structure's authentication certificate (signed by the
    # CA); PSC and the whitelist stay open to browsers ("optional") unless client_auth is "required".
    app.middlewares.append(peer_middleware(settings.tls, lambda request: request.path.startswith("/dmp/")))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.sim.host, settings.sim.port, ssl_context=server_ssl)
    await site.start()
    log.info(
        "simulator listening on %s://%s:%d (DMP /dmp, Pro Santé Connect /psc, whitelist /whitelist)",
        "https" if server_ssl else "http",
        settings.sim.host,
        settings.sim.port,
    )
    try:
        await until()
    finally:
        await runner.cleanup()
