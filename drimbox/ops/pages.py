"""The operator page's routes: GET /operator, and its forms (login, logout, retry, empty the cache, reload)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from aiohttp import web

from drimbox import metrics
from drimbox.audit.events import SUCCESS
from drimbox.audit.request import audit_request
from drimbox.auth.operator import OPERATOR
from drimbox.auth.routes import AuthGate
from drimbox.auth.whitelist import WHITELISTS
from drimbox.config import Settings
from drimbox.i18n import Messages
from drimbox.ops import Reloaded, render
from drimbox.ops.accesses import recent_accesses
from drimbox.ops.certs import expiries
from drimbox.ops.health import check_peers
from drimbox.ops.login import OperatorLogin
from drimbox.source.wiring import CACHE, OUTBOX, WORKER

log = logging.getLogger(__name__)

PAGE_SIZE = 50
# The list's filters (?state=…) and the states each shows; "failed" takes in the rejected ones too.
FILTERS: dict[str, tuple[str, ...]] = {
    "all": (),
    "failed": ("failed", "rejected"),
    "waiting": ("waiting",),
    "retrying": ("retrying",),
    "published": ("published",),
}
# ?notice=… after a form: the i18n key's last part of the message shown on top of the page.
NOTICES = frozenset({"retried", "unknown", "not_retryable", "superseded", "emptied", "reloaded", "reload_failed",
                     "no_outbox", "no_cache", "nothing_reloaded"})  # fmt: skip
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Nothing but the page itself: no script, no frame, forms only to the box.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
}

Reload = Callable[[], Awaitable[list[Reloaded]]]


# What a reload names (?what=…): only these are echoed, so that a crafted link cannot put words on the page.
RELOADABLE = frozenset({"tls", "tls.cert", "tls.client_ca", "tls.ca", "tls.client_cert", "whitelist"})


def _reloaded_names(what: str) -> str:
    return ", ".join(w for w in (p.strip() for p in what.split(",")[:10]) if w in RELOADABLE)


async def _local_state(request: web.Request, data: render.Dashboard) -> None:
    """The publications (one page of the filter, and the waiting ones) and the cache's use, when the box has them."""
    if (outbox := request.app.get(OUTBOX)) is not None:
        data.counts = await outbox.counts()
        offset = (data.page - 1) * data.page_size
        data.publications, data.total = await outbox.page(FILTERS[data.state], data.page_size, offset)
        data.waiting, _ = await outbox.page(("waiting",), data.page_size, 0)
    if (cache := request.app.get(CACHE)) is not None:
        data.cache = await cache.usage()
        # Counted by this process since it started (each HTTP worker process has its own counters).
        hits = metrics.SHARED.get_sample_value("drimbox_cache_hits_total") or 0.0
        misses = metrics.SHARED.get_sample_value("drimbox_cache_misses_total") or 0.0
        data.hit_ratio = hits / (hits + misses) if hits + misses else None


def setup(app: web.Application, settings: Settings, gate: AuthGate, *, reload: Reload) -> None:
    """Add /operator and its forms to `app` (a box with any roles: the page shows what applies)."""
    login = OperatorLogin(gate)

    def page(request: web.Request, body: str, status: int = 200) -> web.Response:
        return web.Response(text=body, status=status, content_type="text/html", headers=HEADERS)

    def back(**query: str) -> web.Response:
        """303 to the page (Post/Redirect/Get), with what the form did in ?notice=…"""
        location = "/operator" + ("?" + urlencode(query) if query else "")
        return web.Response(status=303, headers={**HEADERS, "Location": location})

    async def operator_page(request: web.Request) -> web.Response:
        m = Messages.of(request)
        if not await login.is_operator(request):
            return page(request, render.login_page(m))
        state = request.query.get("state", "all")
        if state not in FILTERS:
            state = "all"
        try:
            number = max(1, min(int(request.query.get("page", "1")), 100_000))
        except ValueError:
            number = 1
        notice = request.query.get("notice", "")
        data = render.Dashboard(state=state, page=number, page_size=PAGE_SIZE,
                                notice=notice if notice in NOTICES else "",
                                detail=_reloaded_names(request.query.get("what", "")))  # fmt: skip
        whitelists = request.app.get(WHITELISTS, [])
        # Peers are asked while the local state is read: the page waits for the slowest, bounded by its time-out.
        peers = asyncio.create_task(check_peers(settings, whitelists))
        try:
            await _local_state(request, data)
            data.accesses = await recent_accesses(settings)
            chain = tuple(c for w in whitelists[:1] for c in w.chain)
            data.certificates = await asyncio.to_thread(expiries, settings, chain)
            data.peers = await peers
        finally:
            peers.cancel()  # when reading the local state failed: no check left running on its own
        return page(request, render.dashboard(m, request, data))

    async def form(request: web.Request) -> dict[str, str]:
        posted = await request.post()
        return {k: v for k, v in posted.items() if isinstance(v, str)}

    async def log_in(request: web.Request) -> web.StreamResponse:
        token = (await form(request)).get("token", "")
        response = back()
        refused = await login.log_in(request, token, response)
        if refused is None:
            return response
        status = 429 if refused == "too_many_failures" else 401
        return page(request, render.login_page(Messages.of(request), error=refused), status=status)

    async def log_out(request: web.Request) -> web.StreamResponse:
        response = back()
        await login.log_out(request, response)
        return response

    async def retry(request: web.Request) -> web.StreamResponse:
        if not await login.is_operator(request):  # no (or no longer a) session: the login form, refused
            return page(request, render.login_page(Messages.of(request), error="expired"), status=401)
        outbox = request.app.get(OUTBOX)
        if outbox is None:
            return back(notice="no_outbox")
        fields = await form(request)
        try:
            pub_id = int(fields.get("id", ""))
        except ValueError:
            return back(notice="unknown")
        job = await outbox.get(pub_id)
        refused = await outbox.retry(pub_id)
        if refused is not None:
            return back(notice=refused)
        assert job is not None
        await audit_request(request, "operator.retry", SUCCESS, professional=OPERATOR, study=job.study_uid,
                            publication=pub_id, accession=job.accession, previous_state=job.state)  # fmt: skip
        log.info("publication %d (%s) queued again by the operator", pub_id, job.state)
        if (worker := request.app.get(WORKER)) is not None:
            worker.wake()
        keep = {k: v for k, v in fields.items() if k in ("state", "page") and v}
        return back(notice="retried", **keep)

    async def empty_cache(request: web.Request) -> web.StreamResponse:
        if not await login.is_operator(request):  # no (or no longer a) session: the login form, refused
            return page(request, render.login_page(Messages.of(request), error="expired"), status=401)
        cache = request.app.get(CACHE)
        if cache is None:
            return back(notice="no_cache")
        await cache.clear()
        await audit_request(request, "operator.cache-clear", SUCCESS, professional=OPERATOR)
        return back(notice="emptied")

    async def reload_now(request: web.Request) -> web.StreamResponse:
        if not await login.is_operator(request):  # no (or no longer a) session: the login form, refused
            return page(request, render.login_page(Messages.of(request), error="expired"), status=401)
        done = await reload()
        failed = [r.what for r in done if r.error is not None]
        await audit_request(request, "operator.reload", SUCCESS, professional=OPERATOR,
                            reloaded=",".join(r.what for r in done), failed=",".join(failed) or None)  # fmt: skip
        if failed:
            return back(notice="reload_failed", what=", ".join(failed))
        if not done:
            return back(notice="nothing_reloaded")
        return back(notice="reloaded", what=", ".join(r.what for r in done))

    app.add_routes([
        web.get("/operator", operator_page),
        web.post("/operator/login", log_in),
        web.post("/operator/logout", log_out),
        web.post("/operator/retry", retry),
        web.post("/operator/cache/empty", empty_cache),
        web.post("/operator/reload", reload_now),
    ])  # fmt: skip
