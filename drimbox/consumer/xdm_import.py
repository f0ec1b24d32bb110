"""XDM import on the consumer: a professional brings an exam's IHE XDM package; it lists and opens like a DMP one."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from aiohttp import web

from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import audit_request
from drimbox.config import Settings
from drimbox.consumer import exams as ex
from drimbox.consumer import pages
from drimbox.consumer.access import AccessIntent, AccessRules
from drimbox.consumer.auth import ConsumerAuth, ProfessionalLike
from drimbox.consumer.catalog import ExamCatalog, ExamList
from drimbox.consumer.exams import Exam
from drimbox.consumer.lookup import ExamFilters, LookupFailed, PatientRef
from drimbox.consumer.store import ConsumerStore
from drimbox.i18n import DEFAULT, Messages
from drimbox.manifest import KosError, parse_kos
from drimbox.state.db import Database, transaction
from drimbox.state.migrations import Step
from drimbox.state.sql import Connection
from drimbox.xds import namespaces as ns
from drimbox.xds.client import DmpClient
from drimbox.xds.metadata import Author, Code, ReferenceId
from drimbox.xds.query import DocumentEntryInfo
from drimbox.xds.xdm import MAX_PACKAGE_BYTES, XdmError, XdmExam, read_package

log = logging.getLogger(__name__)
_PRIVATE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
SCHEMA = """
CREATE TABLE IF NOT EXISTS xdm_imports (
    professional TEXT NOT NULL,
    kos_uid TEXT NOT NULL,
    patient_key TEXT NOT NULL,
    entry TEXT NOT NULL,
    imported REAL NOT NULL,
    PRIMARY KEY (professional, kos_uid)
);
CREATE INDEX IF NOT EXISTS xdm_imports_patient ON xdm_imports (professional, patient_key);
"""
# Step n is MIGRATIONS[n - 1]; only ever append.
MIGRATIONS: list[Step] = [SCHEMA]


@dataclass(frozen=True)
class Imported:
    kos_uid: str
    patient_key: str
    entry: DocumentEntryInfo


def _entry_json(e: DocumentEntryInfo) -> str:
    return json.dumps(dataclasses.asdict(e))


def _entry_from_json(text: str) -> DocumentEntryInfo:
    data = json.loads(text)
    for name in ("format_code", "class_code", "type_code", "healthcare_facility_type", "practice_setting"):
        data[name] = Code(*data[name]) if data.get(name) else None
    data["confidentiality_codes"] = [Code(*c) for c in data.get("confidentiality_codes", [])]
    data["event_codes"] = [Code(*c) for c in data.get("event_codes", [])]
    data["reference_ids"] = [ReferenceId(**r) for r in data.get("reference_ids", [])]
    data["authors"] = [Author(**a) for a in data.get("authors", [])]
    return DocumentEntryInfo(**data)


class XdmImports:
    """The exams each professional imported from XDM packages (their KOS lives in the consumer's manifest cache)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def open(cls, directory: Path, url: str = "") -> XdmImports:
        directory.mkdir(parents=True, exist_ok=True)
        return cls(await asyncio.to_thread(Database, directory / "xdm.sqlite", MIGRATIONS, url=url, store="xdm"))

    async def close(self) -> None:
        await asyncio.to_thread(self._db.close)

    async def add(self, professional: str, patient_key: str, entry: DocumentEntryInfo) -> None:
        def write(conn: Connection) -> None:
            conn.execute("INSERT INTO xdm_imports VALUES (?, ?, ?, ?, ?) ON CONFLICT (professional, kos_uid) DO UPDATE"
                         " SET patient_key = excluded.patient_key, entry = excluded.entry, imported = excluded.imported",
                         (professional, entry.unique_id, patient_key, _entry_json(entry), time.time()))  # fmt: skip

        await self._db.acall(lambda c: transaction(c, write))

    async def for_patient(self, professional: str, patient_key: str) -> list[Imported]:
        rows = await self._db.acall(lambda c: c.execute(
            "SELECT kos_uid, patient_key, entry FROM xdm_imports WHERE professional = ? AND patient_key = ?"
            " ORDER BY imported", (professional, patient_key)).fetchall())  # fmt: skip
        return [Imported(r["kos_uid"], r["patient_key"], _entry_from_json(r["entry"])) for r in rows]

    async def get(self, professional: str, kos_uid: str) -> Imported | None:
        row = await self._db.acall(lambda c: c.execute(
            "SELECT kos_uid, patient_key, entry FROM xdm_imports WHERE professional = ? AND kos_uid = ?",
            (professional, kos_uid)).fetchone())  # fmt: skip
        return None if row is None else Imported(row["kos_uid"], row["patient_key"], _entry_from_json(row["entry"]))


class XdmAwareCatalog(ExamCatalog):
    """The DMP's exams, plus those this professional imported by XDM (which the DMP need not know)."""

    def __init__(self, settings: Settings, store: ConsumerStore, client: DmpClient, rules: AccessRules,
                 imports: XdmImports) -> None:  # fmt: skip
        super().__init__(settings, store, client, rules)
        self.imports = imports

    async def list_exams(
        self, pro: ProfessionalLike, patient: PatientRef, filters: ExamFilters, intent: AccessIntent | None = None
    ) -> ExamList:
        imported = await self.imports.for_patient(pro.id, patient.key)
        try:
            result = await super().list_exams(pro, patient, filters, intent)
        except LookupFailed:
            if not imported:
                raise
            # The package was brought by the professional: a DMP that cannot be read does not hide it.
            result = ExamList(patient, filters, [], None)
        known = {e.kos_uid for e in result.exams}
        extra = [await self._imported_exam(i) for i in imported if i.kos_uid not in known and filters.matches(i.entry)]
        result.exams = ex.newest_first(result.exams + extra)
        return result

    async def exam(self, pro: ProfessionalLike, kos_uid: str, intent: AccessIntent | None = None) -> Exam:
        imported = await self.imports.get(pro.id, kos_uid)
        if imported is None:
            return await super().exam(pro, kos_uid, intent)
        exam = await self._imported_exam(imported)
        if exam.status != ex.AVAILABLE:
            raise LookupFailed(f"the manifest cannot be read: {exam.problem}")
        return exam

    async def _imported_exam(self, imported: Imported) -> Exam:
        cached = await self.store.manifest(imported.kos_uid)
        if cached is None:
            return ex.unavailable(imported.entry, "the imported manifest is no longer on this box")
        try:
            kos = await asyncio.to_thread(parse_kos, cached[1])
        except KosError as exc:
            return ex.unavailable(imported.entry, f"the manifest is not a readable KOS: {exc}")
        return ex.from_kos(kos, imported.entry)


def _patient(entry: DocumentEntryInfo) -> PatientRef | None:
    """INS and authority of `INS^^^&OID&ISO^NH`."""
    parts = entry.patient_id.split("^")
    authority = parts[3].split("&") if len(parts) > 3 else []
    if not parts[0] or len(authority) < 2 or not authority[1]:
        return None
    return PatientRef(parts[0], authority[1])


@dataclass
class XdmContext:
    auth: ConsumerAuth
    store: ConsumerStore
    imports: XdmImports


XDM = web.AppKey("consumer_xdm", XdmContext)


async def import_package(ctx: XdmContext, pro: ProfessionalLike, data: bytes) -> tuple[XdmExam, PatientRef]:
    """Check the package and keep its exam for this professional; raises XdmError saying what is wrong."""
    exam = await asyncio.to_thread(read_package, data)
    patient = _patient(exam.entry)
    if patient is None:
        raise XdmError("XDSDocumentEntry.patientId is not an INS of the form INS^^^&OID&ISO^NH")
    try:
        kos = await asyncio.to_thread(parse_kos, exam.kos)
    except KosError as exc:
        raise XdmError(f"the KOS is not usable: {exc}") from None
    if kos.sop_instance_uid != exam.entry.unique_id:
        raise XdmError("the KOS's SOP Instance UID is not the entry's uniqueId")
    problem = ex.kos_patient_problem(kos, patient.ins, patient.oid)
    if problem:
        raise XdmError(problem)
    await ctx.store.save_manifest(exam.entry.unique_id, patient.key, exam.kos)
    # Listed like an approved DMP entry: the package is what its author signed, the filters apply the same way.
    await ctx.imports.add(pro.id, patient.key, dataclasses.replace(exam.entry, status=ns.STATUS_APPROVED))
    return exam, patient


async def _read_upload(request: web.Request) -> bytes:
    """The ZIP: the body itself (application/zip), or the `file` field of a multipart form."""
    if request.content_type == "multipart/form-data":
        form = await request.post()
        upload = form.get("file")
        if isinstance(upload, (bytes, bytearray)):
            return bytes(upload)
        if upload is None or isinstance(upload, str):
            raise XdmError("the form has no file field with the XDM package")
        data: bytes = upload.file.read(MAX_PACKAGE_BYTES + 1)
        return data
    return await request.content.read(MAX_PACKAGE_BYTES + 1)


def exams_url(patient: PatientRef) -> str:
    return f"/conso/patients/{patient.ins}/exams?{urlencode({'oid': patient.oid})}"


async def _run_import(request: web.Request) -> tuple[ProfessionalLike | None, XdmExam | None, PatientRef | None, str]:
    ctx = request.app[XDM]
    pro = await ctx.auth.current_professional(request)
    if pro is None:
        return None, None, None, "not logged in"
    try:
        exam, patient = await import_package(ctx, pro, await _read_upload(request))
    except XdmError as exc:
        log.info("XDM import refused: %s", exc)
        await audit_request(request, "consumer.xdm_import", REFUSED, professional=pro.id, reason=str(exc)[:200])
        return pro, None, None, str(exc)
    log.info("XDM import of %s by %s", patient.masked, pro.id)
    await audit_request(request, "consumer.xdm_import", SUCCESS, professional=pro.id, patient=patient.ins,
                        kos=exam.entry.unique_id, study=next(iter(exam.entry.study_uids), None))  # fmt: skip
    return pro, exam, patient, ""


async def api_import(request: web.Request) -> web.Response:
    """POST /conso/api/xdm: import an XDM package (application/zip body or multipart `file`)."""
    pro, exam, patient, problem = await _run_import(request)
    if pro is None:
        error = Messages.of(request)("consumer.errors.not_logged_in")
        return web.json_response({"error": error, "reason": "login_required"}, status=401, headers=_PRIVATE)
    if exam is None or patient is None:
        error = Messages.of(request)("consumer.xdm.refused", problem=problem)
        return web.json_response({"error": error, "reason": "invalid_xdm", "detail": problem}, status=422,
                                 headers=_PRIVATE)  # fmt: skip
    return web.json_response({"kos_uid": exam.entry.unique_id, "study_uid": next(iter(exam.entry.study_uids), None),
                              "patient": {"ins": patient.ins, "oid": patient.oid}, "exams_url": exams_url(patient)},
                             status=201, headers=_PRIVATE)  # fmt: skip


async def form_import(request: web.Request) -> web.Response:
    """POST /conso/xdm: the exam list's upload form; back to the patient's list, or a page saying what is wrong."""
    pro, exam, patient, problem = await _run_import(request)
    if pro is None:
        raise web.HTTPSeeOther(request.app[XDM].auth.login_url("/conso/xdm"), headers=_PRIVATE)
    if exam is None or patient is None:
        m = Messages.of(request)
        body = pages.error_page(m, m("consumer.xdm.refused_title"), m("consumer.xdm.refused", problem=problem))
        return web.Response(text=body, status=422, content_type="text/html", charset="utf-8", headers=_PRIVATE)
    raise web.HTTPSeeOther(exams_url(patient), headers=_PRIVATE)


def upload_form(form_fields: str, m: Messages | None = None) -> str:
    """The exam list's form to import an XDM package (form_fields: the session's CSRF token)."""
    m = m or Messages(DEFAULT)
    label, button = pages.e(m("consumer.xdm.upload_label")), pages.e(m("consumer.xdm.upload_button"))
    return ('<form method="post" action="/conso/xdm" enctype="multipart/form-data" class="xdm">'
            f'{form_fields}<label>{label} <input type="file" name="file" accept=".zip,'
            f'application/zip" required></label> <button type="submit">{button}</button></form>')  # fmt: skip


def xdm_routes() -> list[web.RouteDef]:
    return [web.post("/conso/api/xdm", api_import), web.post("/conso/xdm", form_import)]
