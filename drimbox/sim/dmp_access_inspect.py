"""Inspection of the simulated DMP's access state for tests and operators; the TD0.2/TD0.3 routes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from drimbox.sim.dmp_access import ACCESS_STATE, access_handler
from drimbox.sim.dmp_metadata import parse_cx
from drimbox.sim.dmp_rules import INS_TEST_OID
from drimbox.xds import access


def _patient_key(value: str) -> str | None:
    key = parse_cx(value) if "^" in value else (value, INS_TEST_OID) if value.isalnum() else None
    return None if key is None else "|".join(key)


def _cx(patient_key: str) -> str:
    ins, _, oid = patient_key.partition("|")
    return f"{ins}^^^&{oid}&ISO^NH"


def _row_json(row: dict[str, str]) -> dict[str, Any]:
    return {"patient": _cx(row["patient_key"]), "professional": row["professional"],
            "authorization": row["authorization"], "reason": row["reason"], "updated": row["updated"]}  # fmt: skip


async def inspect_access(http: web.Request) -> web.Response:
    """GET lists, PUT sets one authorisation, DELETE clears (all, or ?patient=)."""
    registry = http.app[ACCESS_STATE].registry
    patient = http.query.get("patient")
    key = _patient_key(patient) if patient is not None else None
    if patient is not None and key is None:
        return web.json_response({"error": "patient must be an INS or an HL7 CX id^^^&OID&ISO^NH"}, status=400)
    if http.method == "GET":
        return web.json_response([_row_json(r) for r in await registry.rows(key)])
    if http.method == "DELETE":
        await registry.remove(key)
        return web.json_response({"deleted": True})
    try:
        body = await http.json()
    except ValueError:
        return web.json_response({"error": "body must be JSON"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    key = _patient_key(str(body.get("patient", "")))
    professional, authorization = body.get("professional"), body.get("authorization")
    if (
        key is None
        or not isinstance(professional, str)
        or not professional
        or authorization not in access.AUTHORIZATIONS
    ):
        return web.json_response({"error": "expected {patient: INS or CX, professional: id, authorization: one of "
                                           f"{sorted(access.AUTHORIZATIONS)}, reason?: text}}"}, status=400)  # fmt: skip
    await registry.put(key, professional, authorization, str(body.get("reason", ""))[:512])
    rows = [_row_json(r) for r in await registry.rows(key) if r["professional"] == professional]
    return web.json_response(rows[0] if rows else {})


async def patient_choices(http: web.Request) -> web.Response:
    """GET/PUT /sim/dmp/patients/{ins}: the patient's opposition and whether they allow emergency access."""
    registry = http.app[ACCESS_STATE].registry
    key = _patient_key(http.match_info["ins"])
    if key is None:
        return web.json_response({"error": "patient must be an INS or an HL7 CX id^^^&OID&ISO^NH"}, status=400)
    opposition, emergency = await registry.choices(key)
    if http.method == "PUT":
        try:
            body = await http.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or any(not isinstance(body.get(k, False), bool)
                                             for k in ("opposition", "emergency_access")):  # fmt: skip
            return web.json_response({"error": "expected {opposition?: bool, emergency_access?: bool}"}, status=400)
        opposition = body.get("opposition", opposition)
        emergency = body.get("emergency_access", emergency)
        await registry.set_choices(key, opposition, emergency)
    return web.json_response({"patient": _cx(key), "opposition": opposition, "emergency_access": emergency})


async def list_consultations(http: web.Request) -> web.Response:
    """GET /sim/dmp/consultations[?patient=]: every consultation the DMP let through, oldest first."""
    registry = http.app[ACCESS_STATE].registry
    patient = http.query.get("patient")
    key = _patient_key(patient) if patient is not None else None
    if patient is not None and key is None:
        return web.json_response({"error": "patient must be an INS or an HL7 CX id^^^&OID&ISO^NH"}, status=400)
    rows = await registry.consultations(key)
    for row in rows:
        row["patient"] = _cx(row.pop("patient_key"))
    return web.json_response(rows)


def add_access_routes(app: web.Application) -> None:
    for service in (access.PATIENTS_SERVICE, access.HABILITATIONS_SERVICE):
        app.router.add_post(f"/dmp/{service}", access_handler(service))
    for method in ("GET", "PUT", "DELETE"):
        app.router.add_route(method, "/sim/dmp/access", inspect_access)
    for method in ("GET", "PUT"):
        app.router.add_route(method, "/sim/dmp/patients/{ins}", patient_choices)
    app.router.add_get("/sim/dmp/consultations", list_consultations)
