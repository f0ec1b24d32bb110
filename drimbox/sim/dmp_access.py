"""The simulated DMP's access rights: TD0.2 (DMP exists? access authorised?) and TD0.3 (declare access)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from aiohttp import web
from lxml import etree

from drimbox.sim.dmp_rules import KnownPatients
from drimbox.sim.soap_server import SoapFault, fault_response, parse_request, soap_response
from drimbox.sim.vihf_check import (
    FAILED_AUTHENTICATION,
    INVALID_TOKEN,
    PURPOSE_OF_USE,
    SUBJECT_ROLE,
    Vihf,
    VihfPolicy,
    VihfRefused,
    verify_vihf,
)
from drimbox.state.db import Database
from drimbox.xds import access, td02, td03
from drimbox.xds import namespaces as ns
from drimbox.xds.access import ACCESS_NS, AccessStatus
from drimbox.xds.habilitation import ImagingMatrix
from drimbox.xds.schema import SchemaError, validate
from drimbox.xds.vihf import ACCESS_REASON, PURPOSE_EMERGENCY, PURPOSE_NORMAL

log = logging.getLogger("drimbox.sim.dmp")

# TD0.2 at POST /dmp/patients (HL7 v3 PRPA_IN201307UV02 -> PRPA_IN201308UV02, xds/td02.py) and TD0.3 at
# POST /dmp/habilitations (setAuthorization -> setAuthorizationResponse, xds/td03.py), SOAP 1.2 + VIHF, every
# payload validated against xsd/DMP/. The rules, strict like the DMP's:
# - a request that is not schema-valid, names another interaction, an INS root that is no INS authority or an
#   extension that is no INS, is refused with a SOAP Sender fault;
# - the VIHF is verified as for every DMP transaction; for TD0.2 its resource-id must name the queried INS;
#   TD0.3 names no patient in its body: the VIHF's resource-id is the patient (no VIHF, no TD0.3);
# - a patient outside `[sim] patients` has no DMP: TD0.2 answers AA with queryResponseCode NF, TD0.3 DMPNotFound;
# - otherwise TD0.2 answers OK with attentionLine AUTORISATION (VALIDE, EXPIREE, INTERDITE, NON_EXISTANTE) for
#   (patient, VIHF Subject/NameID) and STATUT_MT false; authorisations survive restarts (SQLite under the var);
# - TD0.3 AJOUT grants VALIDE (DMPOK), never over INTERDITE (DMPAccessDeniedByExcludedPs) and never for a
#   patient who opposes the consultation of their DMP (DMPAccessDeniedByPatientOpposition); SUPPRESSION removes
#   the authorisation (DMPOK), but never lifts an INTERDITE. That the patient was informed is the caller's
#   duty before AJOUT: the message carries no such field;
# - consultation (ITI-18, ITI-43) by a professional acting in person (Authentification_Mode DIRECTE or
#   INDIRECTE_RENFORCEE) is refused with a Sender fault, subcode acc:AccessDenied, when: the profession may
#   not read imaging (the habilitation matrix, drimbox/xds/habilitation.py); the patient opposes; the
#   professional is INTERDITE (emergency access included); or, in normal mode, there is no VALIDE
#   authorisation. Emergency access (purposeofuse `bris_de_glace`) needs no authorisation but a reason in
#   Mode_Acces_Raison, and is refused when the patient has blocked emergency access. The structure's own
#   automatic mode (INDIRECTE, the source's publication) is not concerned. Every allowed consultation is logged.
# Inspection for tests (dmp_access_inspect.py): GET /sim/dmp/access[?patient=INS], PUT /sim/dmp/access {"patient", "professional",
# "authorization", "reason"} (e.g. INTERDITE), DELETE /sim/dmp/access; the patient's own choices at
# GET/PUT /sim/dmp/patients/{ins} {"opposition": bool, "emergency_access": bool}; the consultations at
# GET /sim/dmp/consultations[?patient=INS] (who, mode, purpose of use, reason).

# Authentication modes in which a named professional consults: they need an access authorisation.
PERSONAL_MODES = frozenset({"DIRECTE", "INDIRECTE_RENFORCEE"})
_NO_DMP = "this patient has no DMP"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS authorizations (
    patient_key TEXT NOT NULL,
    professional TEXT NOT NULL,
    authorization TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    updated TEXT NOT NULL,
    PRIMARY KEY (patient_key, professional)
);
CREATE TABLE IF NOT EXISTS patient_choices (
    patient_key TEXT PRIMARY KEY,
    opposition INTEGER NOT NULL DEFAULT 0,
    emergency_access INTEGER NOT NULL DEFAULT 1,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS consultations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_key TEXT NOT NULL,
    professional TEXT NOT NULL,
    action TEXT NOT NULL,
    mode TEXT NOT NULL,
    purpose TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
"""
_IMAGING = ImagingMatrix()


class FaultQueue(Protocol):
    def take(self, kind: str) -> bool: ...


class AccessRegistry:
    """Access authorisations per (patient key `INS|OID`, professional id), durable."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> AccessRegistry:
        return cls(await asyncio.to_thread(Database, path, _SCHEMA))

    async def close(self) -> None:
        await asyncio.to_thread(self._db.close)

    async def get(self, patient_key: str, professional: str) -> tuple[str, str]:
        """(authorization, reason); NON_EXISTANTE when nothing was ever declared."""

        def read(conn: sqlite3.Connection) -> tuple[str, str]:
            row = conn.execute(
                "SELECT authorization, reason FROM authorizations WHERE patient_key = ? AND professional = ?",
                (patient_key, professional),
            ).fetchone()
            return (row[0], row[1]) if row else (access.NON_EXISTANTE, "")

        return await self._db.acall(read)

    async def put(self, patient_key: str, professional: str, authorization: str, reason: str = "") -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        await self._db.acall(lambda c: c.execute(
            "INSERT INTO authorizations VALUES (?, ?, ?, ?, ?) ON CONFLICT (patient_key, professional) DO UPDATE"
            " SET authorization = excluded.authorization, reason = excluded.reason, updated = excluded.updated",
            (patient_key, professional, authorization, reason, now),
        ))  # fmt: skip

    async def remove(self, patient_key: str | None = None, professional: str | None = None) -> None:
        if patient_key is None:
            await self._db.acall(lambda c: c.execute("DELETE FROM authorizations"))
        elif professional is None:
            await self._db.acall(
                lambda c: c.execute("DELETE FROM authorizations WHERE patient_key = ?", (patient_key,))
            )
        else:
            await self._db.acall(lambda c: c.execute(
                "DELETE FROM authorizations WHERE patient_key = ? AND professional = ?", (patient_key, professional)))  # fmt: skip

    async def rows(self, patient_key: str | None = None) -> list[dict[str, str]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, str]]:
            sql = "SELECT patient_key, professional, authorization, reason, updated FROM authorizations"
            args: tuple[str, ...] = ()
            if patient_key is not None:
                sql, args = sql + " WHERE patient_key = ?", (patient_key,)
            return [dict(r) for r in conn.execute(sql + " ORDER BY patient_key, professional", args)]

        return await self._db.acall(read)

    async def choices(self, patient_key: str) -> tuple[bool, bool]:
        """The patient's (opposition to consultation, emergency access allowed); (False, True) by default."""
        row = await self._db.acall(lambda c: c.execute(
            "SELECT opposition, emergency_access FROM patient_choices WHERE patient_key = ?", (patient_key,)).fetchone())  # fmt: skip
        return (bool(row[0]), bool(row[1])) if row else (False, True)

    async def set_choices(self, patient_key: str, opposition: bool, emergency_access: bool) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        await self._db.acall(lambda c: c.execute(
            "INSERT OR REPLACE INTO patient_choices VALUES (?, ?, ?, ?)",
            (patient_key, int(opposition), int(emergency_access), now)))  # fmt: skip

    async def log_consultation(self, patient_key: str, professional: str, action: str, mode: str, purpose: str,
                               reason: str) -> None:  # fmt: skip
        now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        await self._db.acall(lambda c: c.execute(
            "INSERT INTO consultations (patient_key, professional, action, mode, purpose, reason, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)", (patient_key, professional, action, mode, purpose, reason, now)))  # fmt: skip

    async def consultations(self, patient_key: str | None = None) -> list[dict[str, str]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, str]]:
            sql = "SELECT patient_key, professional, action, mode, purpose, reason, at FROM consultations"
            args: tuple[str, ...] = ()
            if patient_key is not None:
                sql, args = sql + " WHERE patient_key = ?", (patient_key,)
            return [dict(r) for r in conn.execute(sql + " ORDER BY id", args)]

        return await self._db.acall(read)

    async def require_consultation(self, vihf: Vihf | None, action: str = "") -> None:
        """Refuse ITI-18/ITI-43 to a professional acting in person unless the DMP's rules allow it (see top)."""
        if vihf is None or vihf.authentication_mode not in PERSONAL_MODES or vihf.patient is None:
            return
        roles = vihf.attributes.get(SUBJECT_ROLE, [])
        refusal = _IMAGING.refusal(roles[0] if roles else None, roles[1:])
        if refusal:
            raise _denied(refusal)
        patient_key = "|".join(vihf.patient)
        opposition, emergency_allowed = await self.choices(patient_key)
        if opposition:
            raise _denied("the patient opposes the consultation of their DMP")
        authorization, reason = await self.get(patient_key, vihf.subject)
        if authorization == access.INTERDITE:
            why = f" ({reason})" if reason else ""
            raise _denied(f"the patient has barred this professional from their DMP{why}, emergency access included")
        purpose = (vihf.attributes.get(PURPOSE_OF_USE) or [PURPOSE_NORMAL])[0]
        why_emergency = " ".join(vihf.attributes.get(ACCESS_REASON, [])).strip()
        if purpose == PURPOSE_EMERGENCY:
            if not why_emergency:
                raise VihfRefused(INVALID_TOKEN, f"an emergency access (bris_de_glace) needs {ACCESS_REASON}")
            if not emergency_allowed:
                raise _denied("the patient has refused emergency access (bris de glace) to their DMP")
        elif purpose != PURPOSE_NORMAL:
            raise _denied(f"purpose of use {purpose!r} is not open to this professional")
        elif authorization != access.VALIDE:
            why = f" ({reason})" if reason else ""
            raise _denied(
                f"access to this DMP is {authorization} for this professional{why}: declare it with TD0.3 first"
            )
        await self.log_consultation(patient_key, vihf.subject, action, vihf.authentication_mode, purpose,
                                    why_emergency[:512])  # fmt: skip


def _denied(message: str) -> SoapFault:
    return SoapFault(message, subcode=(ACCESS_NS, access.ACCESS_DENIED))


@dataclass
class AccessState:
    registry: AccessRegistry
    patients: KnownPatients
    vihf_policy: VihfPolicy
    require_vihf: bool
    faults: FaultQueue


ACCESS_STATE = web.AppKey("dmp_access_state", AccessState)


async def _td02(state: AccessState, payload: etree._Element, vihf: Vihf | None) -> etree._Element:
    request = td02.parse_request(payload)
    key = (request.ins, request.oid)
    if vihf is not None and vihf.patient != key:
        raise VihfRefused(FAILED_AUTHENTICATION, "the VIHF resource-id does not designate the patient of the request")
    if key not in state.patients:
        return td02.build_answer(request, AccessStatus(False, access.NON_EXISTANTE))
    # Without a VIHF (tests that switch it off) nobody is named: the answer is about an anonymous caller.
    authorization, _ = await state.registry.get("|".join(key), vihf.subject if vihf is not None else "")
    return td02.build_answer(request, AccessStatus(True, authorization))


async def _td03(state: AccessState, payload: etree._Element, vihf: Vihf | None) -> etree._Element:
    action, _role = td03.parse_request(payload)
    if vihf is None or vihf.patient is None:
        raise SoapFault("setAuthorization names its patient in the VIHF resource-id: a VIHF is required")
    if vihf.patient not in state.patients:
        return td03.build_answer(access.DMP_NOT_FOUND, _NO_DMP)
    patient_key = "|".join(vihf.patient)
    current, reason = await state.registry.get(patient_key, vihf.subject)
    if current == access.INTERDITE:
        return td03.build_answer(access.DMP_EXCLUDED_PS, reason or "the patient has barred this professional")
    if action == access.REMOVE:
        await state.registry.remove(patient_key, vihf.subject)
        return td03.build_answer(access.DMP_OK, "authorisation removed")
    opposition, _ = await state.registry.choices(patient_key)
    if opposition:
        return td03.build_answer(access.DMP_OPPOSITION, "the patient opposes the consultation of their DMP")
    await state.registry.put(patient_key, vihf.subject, access.VALIDE)
    return td03.build_answer(access.DMP_OK, "authorisation recorded")


_SERVICES = {
    access.PATIENTS_SERVICE: (access.ACTION_TD02, access.ACTION_TD02_RESPONSE, _td02),
    access.HABILITATIONS_SERVICE: (access.ACTION_TD03, access.ACTION_TD03_RESPONSE, _td03),
}


def access_handler(service: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """POST /dmp/patients (TD0.2) or /dmp/habilitations (TD0.3): SOAP 1.2, VIHF required."""
    action, response_action, answer = _SERVICES[service]

    async def handler(http: web.Request) -> web.StreamResponse:
        state = http.app[ACCESS_STATE]
        if state.faults.take("unavailable"):
            return web.Response(status=503, headers={"Retry-After": "1"}, text="DMP unavailable (injected fault)")
        body = await http.read()
        relates_to: str | None = None
        try:
            request = await asyncio.to_thread(parse_request, http.headers.get("Content-Type", ""), body)
            relates_to = request.message_id
            if request.action != action:
                raise SoapFault(f"action {request.action} is not served at this endpoint",
                                subcode=(ns.WSA, "ActionNotSupported"))  # fmt: skip
            if state.faults.take("fault"):
                raise SoapFault("the DMP failed (injected fault)", code="Receiver")
            try:
                await asyncio.to_thread(validate, request.payload)
            except SchemaError as exc:
                raise SoapFault(f"invalid {etree.QName(request.payload).localname}: {exc}") from None
            vihf = None
            if state.require_vihf:
                vihf = await asyncio.to_thread(verify_vihf, request.header, state.vihf_policy)
            payload = await answer(state, request.payload, vihf)
            await asyncio.to_thread(validate, payload)  # the simulator's own answer, checked like a peer's
        except access.AccessFormatError as exc:
            return fault_response(SoapFault(f"invalid request: {exc}"), relates_to)
        except VihfRefused as exc:
            log.info("VIHF refused: %s", exc.subcode)
            return fault_response(SoapFault(exc.reason, subcode=(ns.WSSE, exc.subcode)), relates_to)
        except SoapFault as fault:
            log.info("SOAP fault %s on /dmp/%s", fault.code, service)
            return fault_response(fault, relates_to)
        except Exception as exc:
            log.error("DMP simulator internal error on /dmp/%s: %s", service, type(exc).__name__)
            return fault_response(SoapFault("internal error of the DMP simulator", code="Receiver"), relates_to)
        return await asyncio.to_thread(partial(soap_response, response_action, relates_to, payload,
                                               as_mtom=request.mtom))  # fmt: skip

    return handler
