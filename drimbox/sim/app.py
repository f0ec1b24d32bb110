"""The national-services simulator as one aiohttp application: the DMP now, PSC and the whitelist later."""

from __future__ import annotations

from aiohttp import web

from drimbox.config import Settings
from drimbox.sim.dmp_routes import setup_dmp
from drimbox.sim.dmp_service import DmpOptions

# ITI-41 carries whole documents inline or as attachments; anything larger is refused with 413.
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def build_sim_app(
    settings: Settings, *, dmp_options: DmpOptions | None = None, max_request_bytes: int = MAX_REQUEST_BYTES
) -> web.Application:
    """The simulator's routes: DMP SOAP under /dmp, DMP inspection and fault injection under /sim/dmp."""
    app = web.Application(client_max_size=max_request_bytes)
    setup_dmp(app, settings, dmp_options)
    return app
