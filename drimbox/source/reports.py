"""The report on the source box: the CDA the RIS sent with a study, shown to a session its report link opened."""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn, Protocol

from aiohttp import web

from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import audit_request
from drimbox.auth.session import Session
from drimbox.dimse.uid import is_lenient_uid
from drimbox.hl7.ack import HL7Error
from drimbox.hl7.cda import CdaError
from drimbox.hl7.cda_body import ReportBody, read_body
from drimbox.hl7.report import ReportMessage, parse_report_message
from drimbox.i18n import Messages
from drimbox.source.outbox import Outbox
from drimbox.viewer import report_page
from drimbox.xds.habilitation import ImagingMatrix

log = logging.getLogger(__name__)


class Gate(Protocol):
    """What the report asks of the box's login (auth.AuthGate fits)."""

    async def current_session(self, request: web.Request) -> Session | None: ...

    def require_login(self, request: web.Request, next: str | None = None) -> NoReturn: ...


class Grants(Protocol):
    """The studies each session opened a report link to (auth.session.SessionStore fits)."""

    async def granted(self, id_hash: str, study_uid: str) -> bool: ...


class SourceReports:
    """GET /reports/{study} and /reports/{study}/pdf: the same grant as the images, the same page as the consumer's."""

    def __init__(self, gate: Gate, grants: Grants, outbox: Outbox, matrix: ImagingMatrix | None = None) -> None:
        self.gate, self.grants, self.outbox = gate, grants, outbox
        self.matrix = matrix or ImagingMatrix()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/reports/{study}", self.page), web.get("/reports/{study}/pdf", self.pdf)]

    async def page(self, request: web.Request) -> web.Response:
        found = await self._report(request)
        if isinstance(found, web.Response):
            return found
        m = Messages.of(request)
        message, body = found
        r = message.report if message else None
        day = (r.service_start or "")[:8] if r else ""
        about = m("report.page.exam", description=(r.procedure_display if r else None) or "—",
                  date=m.date(day) if day else "—")  # fmt: skip
        if r is None or body is None:
            return report_page.report_page(m, about=about, body=None)
        return report_page.report_page(m, about=about, body=body, title=r.title or "", date=day,
                                       pdf_url=f"/reports/{r.study_uid}/pdf")  # fmt: skip

    async def pdf(self, request: web.Request) -> web.Response:
        found = await self._report(request)
        if isinstance(found, web.Response):
            return found
        return report_page.pdf_response(Messages.of(request), found[1])

    async def _report(self, request: web.Request) -> tuple[ReportMessage | None, ReportBody | None] | web.Response:
        """The live report of the study and its body, (None, None) when the box holds none, or a refusal page."""
        m = Messages.of(request)
        study = request.match_info["study"]
        if not is_lenient_uid(study):
            return report_page.message_page(m, "report.error.title", "report.error.invalid", 400)
        session = await self.gate.current_session(request)
        if session is None:
            self.gate.require_login(request)
        pro = session.professional
        reason = None
        if self.matrix.refusal(pro.profession, [pro.specialty]) is not None:
            reason = "not_habilitated"
        elif not await self.grants.granted(session.id_hash, study):
            reason = "not_granted"  # a login alone opens nothing: the report link of this study does
        if reason is not None:
            await audit_request(request, "source.report", REFUSED, professional=pro.id, study=study, reason=reason)
            return report_page.message_page(m, "report.error.title", "report.source.not_granted", 403)
        published = await self.outbox.current_published(study)
        raw = await self.outbox.raw_message(published.id) if published is not None else None
        if raw is None:
            await audit_request(request, "source.report", SUCCESS, professional=pro.id, study=study, report=None)
            return None, None
        try:
            message = (await asyncio.to_thread(parse_report_message, raw)).for_study(study)
            body = await asyncio.to_thread(read_body, message.cda)
        except (HL7Error, CdaError) as exc:
            log.warning("the stored report of a published study cannot be shown: %s", type(exc).__name__)
            return report_page.message_page(m, "report.error.title", "report.error.failed", 502)
        await audit_request(request, "source.report", SUCCESS, professional=pro.id, study=study,
                            patient=message.report.ins, report=message.report.document_id)  # fmt: skip
        return message, body
