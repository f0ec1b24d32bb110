"""The patient's routes under /patient/: login, the exam page (viewer), report, download and DICOMweb, each
checked by PatientAccess and recorded in the audit trail with the patient (their INS) as the actor."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from drimbox.audit.events import PATIENT_ACTOR, REFUSED, SUCCESS
from drimbox.audit.request import RecentAccesses, audit_request
from drimbox.auth.routes import AuthGate
from drimbox.config import Settings
from drimbox.dicomweb.backend import DicomwebBackend
from drimbox.dicomweb.routes import dicomweb_routes
from drimbox.dicomweb.scope import ScopedBackend, serving
from drimbox.dimse.uid import is_lenient_uid
from drimbox.hl7.cda import CdaError
from drimbox.hl7.cda_body import read_body
from drimbox.i18n import Messages
from drimbox.patient import pages
from drimbox.patient.access import OpenExam, PatientAccess, PatientRefused
from drimbox.patient.download import ExportError, exam_package
from drimbox.patient.identity import PatientIdentity
from drimbox.patient.login import PatientLogin
from drimbox.patient.viewer_page import exam_page
from drimbox.source.outbox import Outbox
from drimbox.source.wiring import DMP
from drimbox.viewer import report_page

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DICOMWEB_BASE = "/patient/dicom-web"
# The reasons a refusal page words (patient.refused.<reason>); any other is "other".
_REASONS = frozenset({"not_published", "withdrawn", "kos_unreadable", "withheld", "invisible_patient",
                      "dmp_unreachable", "invalid_study"})  # fmt: skip


def _shown(reason: str) -> str:
    """The reason a page gives: another patient's exam reads as one not published (its existence is not told)."""
    if reason == "not_yours":
        return "not_published"
    return reason if reason in _REASONS else "other"


def setup(app: web.Application, settings: Settings, gate: AuthGate, outbox: Outbox, backend: DicomwebBackend) -> None:
    """Add /patient/… to a source box's app (when [patient] enabled)."""
    login = PatientLogin(settings, gate)
    routes = PatientRoutes(settings, login, outbox, ScopedBackend(backend))
    app.add_routes(login.routes() + routes.routes())

    async def _close(_: web.Application) -> None:
        await login.close()

    app.on_cleanup.append(_close)


class PatientRoutes:
    def __init__(self, settings: Settings, login: PatientLogin, outbox: Outbox, backend: DicomwebBackend) -> None:
        self.settings, self.login, self.outbox, self.backend = settings, login, outbox, backend
        self._access: PatientAccess | None = None
        self._recent = RecentAccesses()

    def routes(self) -> list[web.RouteDef]:
        dicomweb = dicomweb_routes(self.backend, base=DICOMWEB_BASE, public_url=self.settings.box.public_url,
                                   compress=self.settings.http.compress_on_the_fly)  # fmt: skip
        return [
            web.get("/patient", self.home),
            web.get("/patient/", self.home),
            web.get("/patient/exams/{study}", self.exam),
            web.get("/patient/exams/{study}/report", self.report),
            web.get("/patient/exams/{study}/report/pdf", self.report_pdf),
            web.get("/patient/exams/{study}/download", self.download),
            *[r if r.method == "OPTIONS" else web.RouteDef(r.method, r.path, self._guard(r.handler), r.kwargs)
              for r in dicomweb],
        ]  # fmt: skip

    def access(self, request: web.Request) -> PatientAccess:
        # The DMP gateway opens with the app (source wiring's cleanup context): looked up at the first request.
        if self._access is None:
            self._access = PatientAccess(self.settings, self.outbox, request.app.get(DMP))
        return self._access

    # --- pages ------------------------------------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        m = Messages.of(request)
        current = await self.login.current(request)
        if current is None:
            link = f'<p><a class="button primary" id="login" href="/patient/login">{pages.e(m("patient.login_button"))}</a></p>'
            return pages.message(m, 200, "patient.home_title", "patient.home_anonymous", extra=link)
        who = m.person(current[1].family, current[1].given)
        logout = f'<p><a class="button" href="/patient/logout">{pages.e(m("patient.logout_button"))}</a></p>'
        return pages.message(m, 200, "patient.home_title", "patient.home", extra=logout, name=who)

    async def exam(self, request: web.Request) -> web.StreamResponse:
        found = await self._open(request, "patient.exam", fresh=True)
        if isinstance(found, web.StreamResponse):
            return found
        patient, exam = found
        m = Messages.of(request)
        r = exam.message.report if exam.message is not None else None
        return exam_page(m, request, patient, exam, description=(r.procedure_display if r else "") or "",
                         has_report=exam.message is not None, base=DICOMWEB_BASE)  # fmt: skip

    async def report(self, request: web.Request) -> web.StreamResponse:
        found = await self._open(request, "patient.report")
        if isinstance(found, web.StreamResponse):
            return found
        m, (_, exam) = Messages.of(request), found
        study = exam.scope.study
        if exam.message is None:
            return report_page.report_page(m, about="", body=None)
        r = exam.message.report
        day = (r.service_start or "")[:8]
        about = m("report.page.exam", description=r.procedure_display or "—", date=m.date(day) if day else "—")
        try:
            body = read_body(exam.message.cda)
        except CdaError:
            return report_page.message_page(m, "report.error.title", "report.error.failed", 502)
        return report_page.report_page(m, about=about, body=body, title=r.title or "", date=day,
                                       pdf_url=f"/patient/exams/{study}/report/pdf")  # fmt: skip

    async def report_pdf(self, request: web.Request) -> web.StreamResponse:
        found = await self._open(request, "patient.report")
        if isinstance(found, web.StreamResponse):
            return found
        exam = found[1]
        try:
            body = read_body(exam.message.cda) if exam.message is not None else None
        except CdaError:
            body = None
        return report_page.pdf_response(Messages.of(request), body)

    async def download(self, request: web.Request) -> web.StreamResponse:
        found = await self._open(request, "patient.download")
        if isinstance(found, web.StreamResponse):
            return found
        exam = found[1]
        m = Messages.of(request)
        try:
            data = await exam_package(self.settings, self.outbox, self.backend, exam)
        except ExportError as exc:
            log.warning("patient download failed: %s", exc)
            return pages.message(m, 500, "patient.refused_title", "patient.download_failed")
        name = f"examen-{exam.study_date or 'imagerie'}.zip"
        return web.Response(body=data, content_type="application/zip",
                            headers={**pages.HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})  # fmt: skip

    # --- the checks ---------------------------------------------------------------------------------------

    async def _open(
        self, request: web.Request, action: str, *, fresh: bool = False
    ) -> tuple[PatientIdentity, OpenExam] | web.StreamResponse:
        """The patient and their exam, or the page that says why not (audited either way)."""
        m = Messages.of(request)
        current = await self.login.current(request)
        if current is None:
            raise self.login.login_redirect(request)
        session, patient = current
        study = request.match_info["study"]
        if not is_lenient_uid(study):
            return pages.message(m, 400, "patient.refused_title", "patient.refused.invalid_study")
        try:
            exam = await self.access(request).open(session, patient, study, fresh=fresh)
        except PatientRefused as refused:
            await self._audit(request, action, REFUSED, patient, study, refused.kos, reason=refused.reason)
            return pages.message(
                m, refused.status, "patient.refused_title", f"patient.refused.{_shown(refused.reason)}"
            )
        await self._audit(request, action, SUCCESS, patient, study, exam.kos_uid)
        return patient, exam

    def _guard(self, handler: Handler) -> Handler:
        """A DICOMweb route for the patient's own viewer: their session, one study they may open, cut to its KOS."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            m = Messages.of(request)
            current = await self.login.current(request)
            if current is None:
                return web.json_response({"error": m("patient.json_login"), "reason": "not_logged_in"}, status=401)
            session, patient = current
            study = request.match_info.get("study")
            if study is None:
                return web.json_response({"error": m("patient.refused.other"), "reason": "search_not_allowed"},
                                         status=403)  # fmt: skip
            try:
                exam = await self.access(request).open(session, patient, study)
            except PatientRefused as refused:
                await self._audit(request, "patient.dicomweb", REFUSED, patient, study, refused.kos,
                                  reason=refused.reason, path=request.path)  # fmt: skip
                reason = _shown(refused.reason)
                return web.json_response({"error": m(f"patient.refused.{reason}"), "reason": reason},
                                         status=refused.status)  # fmt: skip
            if self._recent.first((patient.ins, exam.kos_uid, request.match_info.get("series"))):
                await self._audit(request, "patient.dicomweb", SUCCESS, patient, study, exam.kos_uid,
                                  path=request.path)  # fmt: skip
            with serving(exam.scope):
                return await handler(request)

        return guarded

    async def _audit(self, request: web.Request, action: str, outcome: str, patient: PatientIdentity, study: str,
                     kos: str | None, **detail: str) -> None:  # fmt: skip
        # The patient is both who acts (their INS, detail actor=patient) and whose data it is.
        name = f"{patient.family}^{patient.given}" if patient.family or patient.given else None
        await audit_request(request, action, outcome, professional=patient.ins, patient=patient.ins,
                            patient_name=name, study=study, kos=kos, actor=PATIENT_ACTOR, **detail)  # fmt: skip
