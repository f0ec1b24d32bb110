"""HTTP face of the consumer: the contextual launch, the exam list page, and its JSON API."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol
from urllib.parse import urlencode

from aiohttp import web

from drimbox.audit.events import AUDIT, SUCCESS, MemoryAudit, client_address
from drimbox.audit.request import audit_request, outcome_for, patient_name
from drimbox.auth.csrf import hidden_field, logout_form
from drimbox.config import Settings
from drimbox.consumer import access_pages, fields, pages, reports, situation
from drimbox.consumer.access import AccessIntent, AccessRules, emergency_request
from drimbox.consumer.access_store import AccessStore
from drimbox.consumer.auth import ConsumerAuth, ProfessionalLike
from drimbox.consumer.catalog import ExamCatalog
from drimbox.consumer.importer import target_names
from drimbox.consumer.launch import Launch, parse_launch
from drimbox.consumer.lookup import (
    ExamFilters,
    LookupFailed,
    PatientRef,
)
from drimbox.consumer.store import ConsumerStore
from drimbox.consumer.xdm_import import XDM, XdmAwareCatalog, XdmContext, XdmImports, upload_form, xdm_routes
from drimbox.i18n import Messages
from drimbox.xds.client import DmpClient
from drimbox.xds.structure import structure_signer

log = logging.getLogger(__name__)
# Pages name a patient: never cached, never framed, never sent as a Referer elsewhere.
_PRIVATE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_HTML = {**_PRIVATE, "Content-Security-Policy": pages.CSP, "X-Frame-Options": "DENY"}


@dataclass
class ConsumerContext:
    """What the consumer's routes share; other consumer routes (import, DICOMweb) may use it too."""

    settings: Settings
    auth: ConsumerAuth
    store: ConsumerStore
    catalog: ExamCatalog


CONSUMER = web.AppKey("consumer", ConsumerContext)


class Prefetch(Protocol):
    """Fills the consumer's cache with exams in the background (consumer.images sets it when [consumer] prefetch)."""

    def __call__(self, professional_id: str, access_token: str, kos_uids: list[str]) -> None: ...


PREFETCH = web.AppKey("consumer_prefetch", Prefetch)


async def _prefetch(request: web.Request, ctx: ConsumerContext, pro: ProfessionalLike, kos_uids: list[str]) -> None:
    """Once a list is shown, its exams start coming from their sources, so View opens them from the cache."""
    prefetch = request.app.get(PREFETCH)
    if prefetch is None or not kos_uids:
        return
    token = await ctx.auth.access_token(request)
    if token:
        prefetch(pro.id, token, kos_uids)


@dataclass
class ListRequest:
    patient: PatientRef
    filters: ExamFilters
    launch: Launch | None
    base_query: dict[str, str]  # oid and launch: the unfiltered list of the same patient


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=_HTML)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=_PRIVATE)


def _see_other(location: str) -> NoReturn:
    raise web.HTTPSeeOther(location, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})


def _reason(exc: LookupFailed) -> tuple[str]:
    """(reason code,): the code for JSON and the audit trail; pages take their words from access_pages, in the
    request's language."""
    return (access_pages.reason(exc),)


def exams_url(launch: Launch, launch_id: str) -> str:
    query = {"oid": launch.ins_oid, "launch": launch_id, **launch.filters.to_query()}
    return f"/conso/patients/{launch.ins}/exams?{urlencode(query)}"


async def post_launch(request: web.Request) -> web.Response:
    """POST /conso/launch: check the form, keep it server-side, then the list (or login first)."""
    ctx = request.app[CONSUMER]
    form = await request.post()
    try:
        launch = parse_launch((k, v) for k, v in form.items() if isinstance(v, str))
    except fields.InvalidFields as exc:
        log.info("launch refused: %s", ", ".join(name for name, _ in exc.problems))
        return _html(pages.launch_errors(Messages.of(request), exc.problems), 400)
    launch_id = await ctx.store.save_launch(launch.to_json(), ctx.settings.consumer.launch_ttl)
    log.info("launch for %s stored", launch.patient.masked)
    if await ctx.auth.current_professional(request) is None:
        # After login the browser GETs the stored launch: nothing is posted twice.
        _see_other(ctx.auth.login_url(f"/conso/launches/{launch_id}"))
    await _go_to_list(request, ctx, launch, launch_id)


async def get_launch(request: web.Request) -> web.Response:
    """GET /conso/launches/{id}: where the login brings the professional back to."""
    ctx = request.app[CONSUMER]
    if await ctx.auth.current_professional(request) is None:
        _see_other(ctx.auth.login_url(request.path))
    launch_id = request.match_info["launch_id"]
    data = await ctx.store.launch(launch_id, ctx.settings.consumer.launch_ttl)
    if data is None:
        m = Messages.of(request)
        return _html(pages.error_page(m, m("consumer.launch.expired_title"), m("consumer.launch.expired")), 404)
    await _go_to_list(request, ctx, Launch.from_json(data), launch_id)


async def _go_to_list(request: web.Request, ctx: ConsumerContext, launch: Launch, launch_id: str) -> NoReturn:
    """The launch's Situation put in use (the software knows where the doctor works), then the list, or the
    choice of situation first when the professional has several and the launch named none of theirs."""
    theirs = await situation.apply_launch(request, ctx.auth, launch.situation)
    target = exams_url(launch, launch_id)
    _see_other(await situation.choice_needed(request, ctx.auth, target, unknown=not theirs) or target)


async def _list_request(request: web.Request, ctx: ConsumerContext) -> ListRequest:
    """Patient, filters and launch of an exam-list request; InvalidFields names what is wrong."""
    ins = request.match_info["ins"]
    problems: list[tuple[str, str]] = []
    problem = fields.ins_problem(ins)
    if problem:
        problems.append(("ins", problem))
    launch: Launch | None = None
    launch_id = request.query.get("launch", "")
    if launch_id:
        data = await ctx.store.launch(launch_id, ctx.settings.consumer.launch_ttl)
        # An expired launch (a page reloaded hours later) only loses the name and the consent it carried.
        launch = Launch.from_json(data) if data is not None else None
    oid = launch.ins_oid if launch else ctx.settings.consumer.ins_oid
    if request.query.get("oid"):
        try:
            oid = fields.ins_oid(request.query["oid"])
        except fields.FieldProblem as exc:
            problems.append(("oid", str(exc)))
    if launch is not None and (launch.ins, launch.ins_oid) != (ins, oid):
        problems.append(("launch", "is for another patient"))
    try:
        filters = ExamFilters.from_query(request.query)
    except fields.InvalidFields as exc:
        problems += exc.problems
        filters = ExamFilters()
    if problems:
        raise fields.InvalidFields(problems)
    base = {"oid": oid, **({"launch": launch_id} if launch else {})}
    return ListRequest(PatientRef(ins, oid), filters, launch, base)


async def _page_request(request: web.Request) -> tuple[ConsumerContext, ProfessionalLike, ListRequest] | web.Response:
    """What an HTML page about a patient's list starts with: the login (else to PSC), then the list's parameters
    (else a page naming the bad fields)."""
    ctx = request.app[CONSUMER]
    pro = await ctx.auth.current_professional(request)
    if pro is None:
        _see_other(ctx.auth.login_url(request.path_qs))
    choice = await situation.choice_needed(request, ctx.auth, request.path_qs)
    if choice is not None:
        _see_other(choice)
    try:
        return ctx, pro, await _list_request(request, ctx)
    except fields.InvalidFields as exc:
        return _html(pages.launch_errors(Messages.of(request), exc.problems), 400)


async def exams_page(request: web.Request) -> web.Response:
    """GET /conso/patients/{ins}/exams: the HTML list."""
    page = await _page_request(request)
    if isinstance(page, web.Response):
        return page
    ctx, pro, lr = page
    try:
        result = await ctx.catalog.list_exams(pro, lr.patient, lr.filters, _intent(request, lr))
    except LookupFailed as exc:
        await _audit_list(request, pro, lr, exc.status, _reason(exc)[0])
        return _html(_refusal_page(request, ctx, lr, exc), exc.status)
    await _audit_list(request, pro, lr, 200, None, len(result.exams))
    await _prefetch(request, ctx, pro, [exam.kos_uid for exam in result.exams])
    # Forms carry the session's CSRF token: the CSRF middleware lets only the box's own pages post.
    csrf = hidden_field(request)
    m = Messages.of(request)
    html = pages.exam_list(result, pro, lr.launch, lr.base_query, form_fields=csrf,
                           logout=logout_form(request) if csrf else "", xdm_form=upload_form(csrf, m),
                           situation_link=situation.change_url(ctx.auth, pro, request.path_qs),
                           m=m, targets=target_names(ctx.settings))  # fmt: skip
    emergency = await ctx.catalog.rules.emergency_in_force(pro, lr.patient)
    return _html(access_pages.with_emergency_banner(html, emergency, m) if emergency else html)


def _intent(request: web.Request, lr: ListRequest, purpose: str = "normal", reason: str = "") -> AccessIntent:
    launch_id = lr.base_query.get("launch", "")
    return AccessIntent(purpose=purpose, reason=reason, informed=lr.launch.informed if lr.launch else None,
                        launch_id=launch_id, source=client_address(request))  # fmt: skip


def _refusal_page(request: web.Request, ctx: ConsumerContext, lr: ListRequest, exc: LookupFailed) -> str:
    action = f"/conso/patients/{lr.patient.ins}/emergency?{urlencode({**lr.base_query, **lr.filters.to_query()})}"
    return access_pages.refusal_page(Messages.of(request), exc, enabled=ctx.settings.access.emergency, action=action,
                                     reason_min=ctx.settings.access.emergency_reason_min,
                                     form_fields=hidden_field(request))  # fmt: skip


async def emergency_page(request: web.Request) -> web.Response:
    """POST /conso/patients/{ins}/emergency: the refusal page's form asks for emergency access, with a reason."""
    page = await _page_request(request)
    if isinstance(page, web.Response):
        return page
    ctx, pro, lr = page
    form = await request.post()
    try:
        purpose, reason = emergency_request({k: v for k, v in form.items() if isinstance(v, str)}, ctx.settings)
    except fields.InvalidFields as exc:
        return _html(pages.launch_errors(Messages.of(request), exc.problems), 400)
    try:
        await ctx.catalog.list_exams(pro, lr.patient, lr.filters, _intent(request, lr, purpose, reason))
    except LookupFailed as exc:
        await _audit_list(request, pro, lr, exc.status, _reason(exc)[0])
        return _html(access_pages.failure_page(Messages.of(request), exc), exc.status)
    _see_other(f"/conso/patients/{lr.patient.ins}/exams?{urlencode({**lr.base_query, **lr.filters.to_query()})}")


async def _api_professional(request: web.Request, ctx: ConsumerContext) -> ProfessionalLike:
    pro = await ctx.auth.current_professional(request)
    if pro is None:
        body = {
            "error": Messages.of(request)("consumer.errors.not_logged_in"),
            "reason": "login_required",
            "login_url": ctx.auth.login_url(request.path_qs),
        }
        raise web.HTTPUnauthorized(text=json.dumps(body), content_type="application/json", headers=_PRIVATE)
    choice = await situation.choice_needed(request, ctx.auth, request.path_qs)
    if choice is not None:
        body = {
            "error": Messages.of(request)("consumer.errors.situation_required"),
            "reason": "situation_required",
            "situation_url": choice,
        }
        raise web.HTTPConflict(text=json.dumps(body), content_type="application/json", headers=_PRIVATE)
    return pro


def _failure(request: web.Request, exc: LookupFailed, settings: Settings | None = None) -> web.Response:
    extra = access_pages.refusal_json(exc, settings.access.emergency) if settings else {}
    error = access_pages.explanation(Messages.of(request), exc)
    # `detail`: the DMP's or the rule's own words (English), for whoever integrates or runs the box.
    return _json({"error": error, "reason": _reason(exc)[0], "detail": exc.message, **extra}, exc.status)


async def api_patient_exams(request: web.Request) -> web.Response:
    """GET /conso/api/patients/{ins}/exams: the list, what is new, and the query that made it."""
    ctx = request.app[CONSUMER]
    pro = await _api_professional(request, ctx)
    try:
        lr = await _list_request(request, ctx)
    except fields.InvalidFields as exc:
        return _json({"error": Messages.of(request)("consumer.errors.invalid_request"), "reason": "invalid_fields",
                      "fields": [{"field": n, "problem": p} for n, p in exc.problems]}, 400)  # fmt: skip
    intent = _intent(request, lr)
    if "purpose" in request.query or "reason" in request.query:
        try:
            intent = _intent(request, lr, *emergency_request(request.query, ctx.settings))
        except fields.InvalidFields as exc:
            return _json({"error": Messages.of(request)("consumer.errors.invalid_request"), "reason": "invalid_fields",
                          "fields": [{"field": n, "problem": p} for n, p in exc.problems]}, 400)  # fmt: skip
    try:
        result = await ctx.catalog.list_exams(pro, lr.patient, lr.filters, intent)
    except LookupFailed as exc:
        await _audit_list(request, pro, lr, exc.status, _reason(exc)[0])
        return _failure(request, exc, ctx.settings)
    await _audit_list(request, pro, lr, 200, None, len(result.exams))
    await _prefetch(request, ctx, pro, [exam.kos_uid for exam in result.exams])
    previous = result.previous_visit
    found = await reports.reports_for(ctx.catalog, pro, lr.patient, result.exams, intent)
    return _json({
        "patient": {"ins": result.patient.ins, "oid": result.patient.oid},
        "query": {**result.filters.to_json(), "oid": result.patient.oid},
        "exams": [{**x.to_json(), "report": found.get(x.kos_uid)} for x in result.exams],
        "new_count": result.new_count,
        "previous_visit": None if previous is None else _iso(previous),
        "access": access_pages.emergency_json(await ctx.catalog.rules.emergency_in_force(pro, lr.patient)),
    })  # fmt: skip


async def api_exam(request: web.Request) -> web.Response:
    """GET /conso/api/exams/{kos_uid}: one exam with its series (UIDs, counts, Retrieve URLs, instances)."""
    ctx = request.app[CONSUMER]
    pro = await _api_professional(request, ctx)
    try:
        kos_uid = fields.uid(request.match_info["kos_uid"])
    except fields.FieldProblem as exc:
        return _json({"error": Messages.of(request)("consumer.errors.invalid_kos"), "reason": "invalid_fields",
                      "fields": [{"field": "kosUid", "problem": str(exc)}]}, 400)  # fmt: skip
    patient = ((await ctx.store.manifest_patient(kos_uid)) or "").partition("|")[0] or None
    try:
        exam = await ctx.catalog.exam(pro, kos_uid, AccessIntent(source=client_address(request)))
    except LookupFailed as exc:
        await audit_request(request, "consumer.exam", outcome_for(exc.status), professional=pro.id, patient=patient,
                            kos=kos_uid, status=exc.status, reason=_reason(exc)[0])  # fmt: skip
        return _failure(request, exc, ctx.settings)
    await audit_request(request, "consumer.exam", SUCCESS, professional=pro.id, patient=patient, kos=kos_uid,
                        study=exam.study_uid)  # fmt: skip
    report = await reports.report_of_exam(ctx.catalog, pro, exam, AccessIntent(source=client_address(request)))
    return _json({**exam.to_json(with_series=True), "report": report})


async def series_page(request: web.Request) -> web.Response:
    """GET /conso/exams/{kos_uid}/series: the exam's series, each viewable and importable on its own."""
    ctx = request.app[CONSUMER]
    pro = await ctx.auth.current_professional(request)
    if pro is None:
        _see_other(ctx.auth.login_url(request.path_qs))
    m = Messages.of(request)
    try:
        kos_uid = fields.uid(request.match_info["kos_uid"])
    except fields.FieldProblem as exc:
        return _html(pages.launch_errors(m, [("kosUid", str(exc))]), 400)
    try:
        exam = await ctx.catalog.exam(pro, kos_uid, AccessIntent(source=client_address(request)))
    except LookupFailed as exc:
        return _html(access_pages.failure_page(m, exc), exc.status)
    await audit_request(request, "consumer.exam", SUCCESS, professional=pro.id, kos=kos_uid, study=exam.study_uid)
    launch_id = request.query.get("launch", "")
    back = request.query.get("back", "")
    back = back if back.startswith("/conso/patients/") and "//" not in back else ""
    return _html(pages.series_page(m, exam, form_fields=hidden_field(request), launch_id=launch_id, back=back,
                                   targets=target_names(ctx.settings)))  # fmt: skip


async def _audit_list(
    request: web.Request, pro: ProfessionalLike, lr: ListRequest, status: int, reason: str | None, count: int = 0
) -> None:
    """One audit record per exam-list request: who asked for which patient's list, and what came of it."""
    name = patient_name(lr.launch.family, lr.launch.given) if lr.launch else None
    await audit_request(
        request,
        "consumer.exams",
        outcome_for(status),
        professional=pro.id,
        patient=lr.patient.ins,
        patient_name=name,
        status=status,
        reason=reason,
        exams=count if status == 200 else None,
    )


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def consumer_routes() -> list[web.RouteDef]:
    """The routes; they find their state in app[CONSUMER] (setup_consumer puts it there)."""
    return [
        web.post("/conso/launch", post_launch),
        web.get("/conso/launches/{launch_id}", get_launch),
        web.get("/conso/patients/{ins}/exams", exams_page),
        web.post("/conso/patients/{ins}/emergency", emergency_page),
        web.get("/conso/api/patients/{ins}/exams", api_patient_exams),
        web.get("/conso/api/exams/{kos_uid}", api_exam),
        *reports.report_routes(),
        web.get("/conso/exams/{kos_uid}/series", series_page),
    ]


def setup_consumer(
    app: web.Application, settings: Settings, auth: ConsumerAuth, *, client: DmpClient | None = None
) -> None:
    """Add the consumer routes; its store (var_dir/consumer) and DMP client open and close with the app."""

    if AUDIT not in app:  # a consumer alone (tests): its access decisions are kept in memory
        app[AUDIT] = MemoryAudit()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        store = await ConsumerStore.open(settings.var_path / "consumer", settings.state.url)
        dmp = client
        if dmp is None:
            signer = await asyncio.to_thread(structure_signer, settings)  # may generate a test key pair
            dmp = DmpClient(settings.dmp.url, signer=signer, timeout=settings.dmp.timeout)
        rules = AccessRules(
            settings, await AccessStore.open(settings.var_path / "consumer", settings.state.url), app[AUDIT]
        )
        imports = await XdmImports.open(settings.var_path / "consumer", settings.state.url)
        catalog: ExamCatalog = XdmAwareCatalog(settings, store, dmp, rules, imports)
        app[CONSUMER] = ConsumerContext(settings, auth, store, catalog)
        app[XDM] = XdmContext(auth, store, imports)
        try:
            yield
        finally:
            await catalog.close()
            await imports.close()
            await store.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_routes(consumer_routes() + xdm_routes())
