"""The report beside the images: each KOS's CDA report found in the DMP (ITI-18), fetched (ITI-43) and shown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from drimbox.audit.events import SUCCESS, client_address
from drimbox.audit.request import audit_request, outcome_for
from drimbox.consumer import fields, situation
from drimbox.consumer.access import AccessIntent
from drimbox.consumer.auth import ProfessionalLike
from drimbox.consumer.catalog import ExamCatalog, ExamNotFound
from drimbox.consumer.exams import Exam
from drimbox.consumer.lookup import DmpRefused, LookupFailed, PatientRef, _guard
from drimbox.hl7.cda import CdaError
from drimbox.hl7.cda_body import ReportBody, read_body
from drimbox.i18n import Messages
from drimbox.viewer import report_page
from drimbox.xds.query import DocumentEntryInfo
from drimbox.xds.report_entry import REPORT_TYPE_CODE, is_report

log = logging.getLogger(__name__)


class ReportUnreadable(LookupFailed):
    status = 502


@dataclass(frozen=True)
class FoundReport:
    """One report of an exam: its DMP entry and, once fetched, what it says."""

    entry: DocumentEntryInfo
    body: ReportBody | None = None

    @property
    def title(self) -> str:
        return self.entry.title or REPORT_TYPE_CODE.display

    @property
    def date(self) -> str:
        """YYYY-MM-DD of the exam it reports (serviceStartTime), else of the document."""
        value = self.entry.service_start or self.entry.creation_time or ""
        return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) >= 8 and value[:8].isdigit() else ""


def report_url(kos_uid: str) -> str:
    return f"/conso/exams/{quote(kos_uid)}/report"


def report_json(kos_uid: str, report: FoundReport | None) -> dict[str, str | None] | None:
    """The `report` field of the JSON API: where the report page is, its title and date; None without one."""
    if report is None:
        return None
    return {"url": report_url(kos_uid), "title": report.title, "date": report.date or None}


def match(exam: Exam, reports: list[DocumentEntryInfo]) -> DocumentEntryInfo | None:
    """The newest report that names the exam's study (or, without a study in common, its accession number)."""

    def newest(found: list[DocumentEntryInfo]) -> DocumentEntryInfo | None:
        return max(found, key=lambda e: (e.creation_time or "", e.unique_id)) if found else None

    by_study = [r for r in reports if exam.study_uid and exam.study_uid in r.study_uids]
    if by_study:
        return newest(by_study)
    return newest([r for r in reports if exam.accession and exam.accession in {a.value for a in r.accession_numbers}])


async def patient_reports(
    catalog: ExamCatalog, pro: ProfessionalLike, patient: PatientRef, intent: AccessIntent, kos: str | None = None
) -> list[DocumentEntryInfo]:
    """ITI-18: the patient's approved imaging reports, under the same access rules as the exams."""
    async with catalog.rules.consultation(pro, patient, intent, what="reports", kos=kos) as identity:
        entries = await _guard(catalog.client.find_documents(patient.cx, type_codes=[REPORT_TYPE_CODE],
                                                             identity=identity))  # fmt: skip
    return [e for e in entries if is_report(e)]


async def reports_for(
    catalog: ExamCatalog, pro: ProfessionalLike, patient: PatientRef, exams: list[Exam], intent: AccessIntent
) -> dict[str, dict[str, str | None] | None]:
    """kos_uid → `report` field for a list; a failed lookup leaves every report out rather than the list."""
    if not exams:  # nothing to attach a report to: no DMP query
        return {}
    try:
        reports = await patient_reports(catalog, pro, patient, intent)
    except LookupFailed as exc:
        log.warning("reports of %s not looked up: %s", patient.masked, type(exc).__name__)
        reports = []
    return {x.kos_uid: report_json(x.kos_uid, _found(match(x, reports))) for x in exams}


async def report_of_exam(
    catalog: ExamCatalog, pro: ProfessionalLike, exam: Exam, intent: AccessIntent
) -> dict[str, str | None] | None:
    """The `report` field of one exam already checked by catalog.exam."""
    patient = await _patient(catalog, exam.kos_uid)
    return (await reports_for(catalog, pro, patient, [exam], intent))[exam.kos_uid]


def _found(entry: DocumentEntryInfo | None) -> FoundReport | None:
    return FoundReport(entry) if entry is not None else None


async def exam_report(
    catalog: ExamCatalog, pro: ProfessionalLike, kos_uid: str, intent: AccessIntent
) -> tuple[Exam, FoundReport | None]:
    """The exam (its access checked as for viewing it) and its report, fetched and read; None when none is published."""
    exam = await catalog.exam(pro, kos_uid, intent)
    patient = await _patient(catalog, kos_uid)
    entry = match(exam, await patient_reports(catalog, pro, patient, intent, kos_uid))
    if entry is None:
        return exam, None
    if not entry.repository_unique_id:
        raise DmpRefused("the DMP entry of the report names no repositoryUniqueId")
    async with catalog.rules.consultation(pro, patient, intent, what="report", kos=kos_uid) as identity:
        cda = await _guard(catalog.client.retrieve_document(
            entry.repository_unique_id, entry.unique_id, patient_id=patient.cx,
            home_community_id=entry.home_community_id, identity=identity))  # fmt: skip
    try:
        body = await asyncio.to_thread(read_body, cda)
    except CdaError as exc:
        raise ReportUnreadable(f"the report cannot be read: {exc}") from None
    return exam, FoundReport(entry, body)


async def _patient(catalog: ExamCatalog, kos_uid: str) -> PatientRef:
    key = await catalog.store.manifest_patient(kos_uid)
    if key is None:  # catalog.exam has just found it: only a concurrent purge gets here
        raise ExamNotFound("this box has not listed this manifest")
    ins, _, oid = key.partition("|")
    return PatientRef(ins, oid)


# ------------------------------------------------------------------------------------------------ HTTP


def _refused(m: Messages, exc: LookupFailed) -> web.Response:
    key = {403: "report.error.refused", 404: "report.error.not_found"}.get(exc.status, "report.error.failed")
    return report_page.message_page(m, "report.error.title", key, exc.status)


async def _handler_start(request: web.Request) -> tuple[ExamCatalog, ProfessionalLike, str] | web.Response:
    from drimbox.consumer.routes import CONSUMER  # the routes module wires this one: imported when serving

    ctx = request.app[CONSUMER]
    pro = await ctx.auth.current_professional(request)
    if pro is None:
        raise web.HTTPSeeOther(ctx.auth.login_url(request.path_qs), headers={"Cache-Control": "no-store"})
    choice = await situation.choice_needed(request, ctx.auth, request.path_qs)
    if choice is not None:
        raise web.HTTPSeeOther(choice, headers={"Cache-Control": "no-store"})
    try:
        kos_uid = fields.uid(request.match_info["kos_uid"])
    except fields.FieldProblem:
        return report_page.message_page(Messages.of(request), "report.error.title", "report.error.invalid", 400)
    return ctx.catalog, pro, kos_uid


async def _report_or_refusal(
    request: web.Request, catalog: ExamCatalog, pro: ProfessionalLike, kos_uid: str
) -> tuple[Exam, FoundReport | None] | web.Response:
    patient = ((await catalog.store.manifest_patient(kos_uid)) or "").partition("|")[0] or None
    try:
        exam, report = await exam_report(catalog, pro, kos_uid, AccessIntent(source=client_address(request)))
    except LookupFailed as exc:
        await audit_request(request, "consumer.report", outcome_for(exc.status), professional=pro.id,
                            patient=patient, kos=kos_uid, status=exc.status, reason=type(exc).__name__)  # fmt: skip
        return _refused(Messages.of(request), exc)
    await audit_request(request, "consumer.report", SUCCESS, professional=pro.id, patient=patient, kos=kos_uid,
                        study=exam.study_uid, report=report.entry.unique_id if report else None)  # fmt: skip
    return exam, report


async def _exam_and_report(request: web.Request) -> tuple[Exam, FoundReport | None] | web.Response:
    """What both report routes start with: the login, the exam's access checks, the report; else the refusal."""
    start = await _handler_start(request)
    if isinstance(start, web.Response):
        return start
    return await _report_or_refusal(request, *start)


async def get_report_page(request: web.Request) -> web.Response:
    """GET /conso/exams/{kos_uid}/report: the report of the exam, in a page with the non-diagnostic notice."""
    found = await _exam_and_report(request)
    if isinstance(found, web.Response):
        return found
    (exam, report), m = found, Messages.of(request)
    about = m("report.page.exam", description=exam.description or "—", date=m.date(exam.date) if exam.date else "—")
    if report is None:
        return report_page.report_page(m, about=about, body=None)
    return report_page.report_page(m, about=about, body=report.body, title=report.title, date=report.date,
                                   pdf_url=f"{report_url(exam.kos_uid)}.pdf")  # fmt: skip


async def get_report_pdf(request: web.Request) -> web.Response:
    """GET /conso/exams/{kos_uid}/report.pdf: the PDF of the report's nonXMLBody, inline, sandboxed by its CSP."""
    found = await _exam_and_report(request)
    if isinstance(found, web.Response):
        return found
    _, report = found
    return report_page.pdf_response(Messages.of(request), report.body if report else None)


def report_routes() -> list[web.RouteDef]:
    return [
        web.get("/conso/exams/{kos_uid}/report", get_report_page),
        web.get("/conso/exams/{kos_uid}/report.pdf", get_report_pdf),
    ]
