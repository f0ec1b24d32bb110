"""The national-services simulator as one aiohttp application: the DMP, Pro Santé Connect, the whitelist, and
Mon Espace Santé (patient login and portal)."""

from __future__ import annotations

from aiohttp import web

from drimbox.config import Settings
from drimbox.sim.dmp_routes import setup_dmp
from drimbox.sim.dmp_service import DmpOptions
from drimbox.sim.mes_idp import setup_mes
from drimbox.sim.mes_portal import setup_portal
from drimbox.sim.psc_routes import setup_psc
from drimbox.sim.whitelist import setup_whitelist

# ITI-41 carries whole documents inline or as attachments; anything larger is refused with 413.
MAX_REQUEST_BYTES = 64 * 1024 * 1024


def build_sim_app(
    settings: Settings, *, dmp_options: DmpOptions | None = None, max_request_bytes: int = MAX_REQUEST_BYTES
) -> web.Application:
    """DMP SOAP under /dmp (inspection, fault injection under /sim/dmp), OpenID provider under /psc, /whitelist."""
    app = web.Application(client_max_size=max_request_bytes)
    setup_dmp(app, settings, dmp_options)
    setup_psc(app, settings)
    setup_whitelist(app, settings)
    # Mon Espace Santé: the patients' OpenID provider (/mes) and their portal (/mes/portail).
    setup_mes(app, settings)
    setup_portal(app)
    return app
