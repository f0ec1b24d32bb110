"""The source's operator API: publication states by accession number or Study Instance UID."""

from __future__ import annotations

from aiohttp import web

from drimbox.state.outbox import Outbox


def publications_routes(outbox: Outbox) -> list[web.RouteDef]:
    async def list_publications(request: web.Request) -> web.Response:
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

    return [web.get("/api/publications", list_publications)]
