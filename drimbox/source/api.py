"""The source's operator API: publication states by accession number or Study Instance UID, report links for the RIS."""

from __future__ import annotations

import json

from aiohttp import web

from drimbox.auth.links import ReportLinks
from drimbox.auth.operator import require_operator
from drimbox.config import Settings
from drimbox.dimse.uid import is_lenient_uid
from drimbox.source.outbox import Outbox


def publications_routes(
    outbox: Outbox, links: ReportLinks | None = None, settings: Settings | None = None
) -> list[web.RouteDef]:
    """GET /api/publications, POST /api/report-links and (with `settings`) GET /api/xdm: the operator's only."""

    async def list_publications(request: web.Request) -> web.Response:
        # States name accession numbers and studies of every patient: a professional's session is not enough
        # (a session reads only what a report link granted it, see source/access.py).
        await require_operator(request)
        accession = request.query.get("accession")
        study = request.query.get("study")
        if accession is None and study is None:
            return web.json_response(
                {"error": "give ?accession=<accession number> or ?study=<Study Instance UID>"}, status=400
            )
        for name, value in (("accession", accession), ("study", study)):
            if value is not None and (not value or len(value) > 64):
                return web.json_response({"error": f"{name}: 1 to 64 characters"}, status=400)
        found = await outbox.search(accession=accession, study_uid=study)
        return web.json_response([p.to_json() for p in found])

    async def report_link(request: web.Request) -> web.Response:
        """POST {"study": UID, "accession": A, "cda": id} → {"url", "expires_at"}: the link the RIS writes."""
        await require_operator(request)
        if links is None:
            return web.json_response({"error": "this box issues no report links"}, status=404)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"error": "a JSON object is expected"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "a JSON object is expected"}, status=400)
        study, accession, cda = body.get("study"), body.get("accession", ""), body.get("cda", "")
        # lenient: the study is named as the PACS holds it, leading zeros included
        if not isinstance(study, str) or not is_lenient_uid(study):
            return web.json_response({"error": "study: a DICOM UID (digits and dots, at most 64)"}, status=400)
        if not isinstance(accession, str) or len(accession) > 64:
            return web.json_response({"error": "accession: at most 64 characters"}, status=400)
        if not isinstance(cda, str) or len(cda) > 256:
            return web.json_response({"error": "cda: at most 256 characters"}, status=400)
        link = links.issue(study, accession, cda)
        return web.json_response({"url": link.url, "expires_at": link.expires_at or None},
                                 dumps=lambda o: json.dumps(o, ensure_ascii=False))  # fmt: skip

    async def xdm_export(request: web.Request) -> web.Response:
        """GET /api/xdm?study=UID → the IHE XDM ZIP of the study's live KOS, its signature and metadata."""
        from drimbox.source.xdm_export import ExportError, export_study  # the source's only user of the XDM writer

        await require_operator(request)
        study = request.query.get("study", "")
        if not is_lenient_uid(study):
            return web.json_response({"error": "give ?study=<Study Instance UID> (digits and dots, at most 64)"},
                                     status=400)  # fmt: skip
        assert settings is not None
        try:
            package = await export_study(settings, outbox, study)
        except ExportError as exc:
            return web.json_response({"error": str(exc)}, status=404)
        name = f"XDM_{study}.zip"
        return web.Response(body=package, content_type="application/zip",
                            headers={"Content-Disposition": f'attachment; filename="{name}"',
                                     "Cache-Control": "no-store"})  # fmt: skip

    routes = [web.get("/api/publications", list_publications), web.post("/api/report-links", report_link)]
    if settings is not None:
        routes.append(web.get("/api/xdm", xdm_export))
    return routes
