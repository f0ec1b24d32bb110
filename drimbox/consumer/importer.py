"""Import of an exam into the local PACS (C-STORE or STOW-RS) as durable jobs, skipping what is already there."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydicom.dataset import Dataset
from pynetdicom.association import Association

from drimbox import tls
from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import audit_request
from drimbox.config import PacsSettings, Settings
from drimbox.consumer.auth import ConsumerAuth, ProfessionalLike
from drimbox.consumer.backend import ConsumerBackend, Grant
from drimbox.dicomweb.backend import DicomwebError
from drimbox.dimse.network import DimseFailure, DimseUnavailable, make_ae
from drimbox.dimse.qido_find import iter_find
from drimbox.dimse.uid import is_lenient_uid
from drimbox.state.db import Database
from drimbox.state.series_cache import CachedInstance

log = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS imports (
    id TEXT PRIMARY KEY,
    kos_uid TEXT NOT NULL,
    professional TEXT NOT NULL,
    state TEXT NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    stored INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    errors TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS imports_kos ON imports (kos_uid, professional);
"""
ACTIVE = ("queued", "running")
UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
# Stored syntaxes sent as they are (never transcoded): each gets its own context so the PACS may accept some.
COMPRESSED = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
              "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"]  # fmt: skip
MAX_ERRORS = 20


class _CStore:
    """One association to the local PACS for a job; every pynetdicom call runs on the job's own thread."""

    def __init__(self, pacs: PacsSettings, calling_ae: str, sop_classes: set[str]) -> None:
        self.pacs, self.calling_ae, self.sop_classes = pacs, calling_ae, sorted(sop_classes)
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="import-cstore")
        self.assoc: Association | None = None

    def _open(self) -> Association:
        ae = make_ae(self.calling_ae, self.pacs.timeout)  # NoDelayAE: TCP_NODELAY, or 11 MB/s on loopback
        for uid in self.sop_classes[: 128 // (1 + len(COMPRESSED))]:
            ae.add_requested_context(uid, UNCOMPRESSED)
            for syntax in COMPRESSED:
                ae.add_requested_context(uid, [syntax])
        assoc = ae.associate(self.pacs.host, self.pacs.port, ae_title=self.pacs.ae_title)
        if not assoc.is_established:
            raise DimseUnavailable(f"the local PACS {self.pacs.ae_title}@{self.pacs.host}:{self.pacs.port} refused "
                                   "or did not answer the association")  # fmt: skip
        return assoc

    def _send(self, path: Path) -> int:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self._open()
        # A path is sent as its stored bytes: no decoding, no transcoding.
        status = self.assoc.send_c_store(path)
        return int(getattr(status, "Status", 0xFFFF)) if status else 0xFFFF

    async def send(self, instance: CachedInstance) -> str | None:
        try:
            status = await asyncio.get_running_loop().run_in_executor(self.thread, self._send, instance.path)
        except ValueError as exc:  # no accepted context for this SOP class / syntax
            return str(exc)[:200]
        return None if status in (0x0000, 0xB000, 0xB006, 0xB007) else f"C-STORE status 0x{status:04X}"

    async def close(self) -> None:
        def release() -> None:
            if self.assoc is not None and self.assoc.is_established:
                self.assoc.release()

        await asyncio.get_running_loop().run_in_executor(self.thread, release)
        self.thread.shutdown(wait=False)


class _Stow:
    """STOW-RS, one instance per request (bounded memory; loopback PACS make the overhead small)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout), connector=tls.connector())

    async def send(self, instance: CachedInstance) -> str | None:
        data = await asyncio.to_thread(instance.path.read_bytes)
        with aiohttp.MultipartWriter("related", boundary=secrets.token_hex(16)) as mp:
            mp.append(data, {"Content-Type": "application/dicom"})
        mp.headers["Content-Type"] = f'multipart/related; type="application/dicom"; boundary={mp.boundary}'
        async with self.session.post(f"{self.url}/studies", data=mp, headers={"Accept": "application/dicom+json"}) as r:
            return None if r.status in (200, 202) else f"STOW-RS HTTP {r.status}"

    async def present(self, study_uid: str) -> set[str]:
        url = f"{self.url}/studies/{study_uid}/instances?includefield=00080018"
        async with self.session.get(url, headers={"Accept": "application/dicom+json"}) as r:
            if r.status == 204 or r.status == 404:
                return set()
            if r.status != 200:
                raise DimseUnavailable(f"QIDO-RS on the local PACS: HTTP {r.status}")
            items = await r.json(content_type=None)
        return {str(i.get("00080018", {}).get("Value", [""])[0]) for i in items if isinstance(i, dict)}

    async def close(self) -> None:
        await self.session.close()


class Importer:
    """Import jobs: start, run one at a time per exam, report; var_dir/consumer/imports.sqlite.

    An import reads the exam through the consumer backend (so it fills the cache, and a series already cached
    is not fetched again), asks the local PACS which instances it already holds (C-FIND at IMAGE level, or
    QIDO-RS for STOW-RS), and sends the others. Jobs live in SQLite: after a restart a job that was running is
    `interrupted` (the professional's token died with the process); POSTing the import again resumes it under
    the same id, and what already reached the PACS is skipped.
    """

    def __init__(self, settings: Settings, backend: ConsumerBackend, directory: Path) -> None:
        self.settings = settings
        self.backend = backend
        self.db = Database(directory / "imports.sqlite", SCHEMA)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        # A job that was running when the process stopped cannot go on without the professional's token.
        self.db.call(lambda c: c.execute(
            "UPDATE imports SET state = 'interrupted', updated = ? WHERE state IN ('queued', 'running')", (time.time(),)))  # fmt: skip
        c = settings.consumer
        self.pacs = PacsSettings(ae_title=c.local_pacs_ae_title, host=c.local_pacs_host, port=c.local_pacs_port,
                                 timeout=c.local_pacs_timeout)  # fmt: skip

    async def close(self) -> None:
        """Stop the running jobs (they become `interrupted`) and close the database; idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await asyncio.to_thread(self.db.close)

    async def start(self, grant: Grant) -> str:
        """The job importing this KOS for this professional: the active one, an interrupted one resumed, or new."""

        def pick(conn: sqlite3.Connection) -> tuple[str, bool]:
            row = conn.execute("SELECT id, state FROM imports WHERE kos_uid = ? AND professional = ? "
                               "ORDER BY created DESC LIMIT 1", (grant.kos_uid, grant.professional_id)).fetchone()  # fmt: skip
            now = time.time()
            if row is not None and row["state"] in ACTIVE:
                return row["id"], False
            if row is not None and row["state"] == "interrupted":
                conn.execute("UPDATE imports SET state = 'queued', stored = 0, skipped = 0, failed = 0, errors = '[]',"
                             " updated = ? WHERE id = ?", (now, row["id"]))  # fmt: skip
                return row["id"], True
            job_id = secrets.token_urlsafe(12)
            conn.execute("INSERT INTO imports (id, kos_uid, professional, state, created, updated) VALUES "
                         "(?, ?, ?, 'queued', ?, ?)", (job_id, grant.kos_uid, grant.professional_id, now, now))  # fmt: skip
            return job_id, True

        job_id, fresh = await self.db.acall(pick)
        if fresh or job_id not in self._tasks:
            task = asyncio.create_task(self._run(job_id, grant), name=f"import-{job_id}")
            self._tasks[job_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return job_id

    async def status(self, job_id: str) -> dict[str, Any] | None:
        row = await self.db.acall(lambda c: c.execute("SELECT * FROM imports WHERE id = ?", (job_id,)).fetchone())
        if row is None:
            return None
        return {"id": row["id"], "kos_uid": row["kos_uid"], "professional": row["professional"], "state": row["state"],
                "total": row["total"], "stored": row["stored"], "skipped": row["skipped"], "failed": row["failed"],
                "errors": json.loads(row["errors"]), "created": row["created"], "updated": row["updated"],
                "method": self.settings.consumer.local_pacs_method}  # fmt: skip

    async def _update(self, job_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        if "errors" in fields:
            fields["errors"] = json.dumps(fields["errors"][:MAX_ERRORS])
        names = ", ".join(f"{k} = ?" for k in fields)
        await self.db.acall(lambda c: c.execute(f"UPDATE imports SET {names} WHERE id = ?", (*fields.values(), job_id)))

    async def _present(self, study_uid: str, stow: _Stow | None) -> set[str]:
        """SOP Instance UIDs of the study the local PACS holds already."""
        if stow is not None:
            return await stow.present(study_uid)
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        return {str(ds.get("SOPInstanceUID", "")) async for ds in iter_find(self.pacs, self.settings.dicom.ae_title, query)}

    async def _run(self, job_id: str, grant: Grant) -> None:
        counts = {"stored": 0, "skipped": 0, "failed": 0}
        errors: list[str] = []
        sender: _CStore | _Stow | None = None
        try:
            kos = await self.backend.kos(grant.kos_uid)
            total = sum(len(s.instances) for s in kos.series)
            await self._update(job_id, state="running", total=total)
            stow = None
            if self.settings.consumer.local_pacs_method == "stow-rs":
                stow = _Stow(self.settings.consumer.local_pacs_stow_url, self.settings.consumer.local_pacs_timeout)
                sender = stow
            present = await self._present(kos.study_uid, stow)
            if sender is None:
                sender = _CStore(self.pacs, self.settings.dicom.ae_title,
                                 {i.sop_class_uid for s in kos.series for i in s.instances})  # fmt: skip
            last = time.monotonic()
            for series in kos.series:
                listed = {i.sop_instance_uid for i in series.instances}
                if listed <= present:
                    counts["skipped"] += len(listed)  # nothing to fetch from the source for this series
                    continue
                async for instance in self.backend.series_instances(grant, kos, series):
                    if instance.sop_instance_uid in present:
                        counts["skipped"] += 1
                    elif (problem := await sender.send(instance)) is None:
                        counts["stored"] += 1
                    else:
                        counts["failed"] += 1
                        errors.append(f"{instance.sop_instance_uid}: {problem}")
                    if time.monotonic() - last > 0.5:  # progress, without one write per instance
                        last = time.monotonic()
                        await self._update(job_id, **counts)
            await self._update(job_id, state="done", errors=errors, **counts)
            log.info("import %s done: %d stored, %d skipped, %d failed", job_id, counts["stored"], counts["skipped"],
                     counts["failed"])  # fmt: skip
        except asyncio.CancelledError:
            await asyncio.shield(self._update(job_id, state="interrupted", errors=errors, **counts))
            raise
        except (DicomwebError, DimseUnavailable, DimseFailure, aiohttp.ClientError, TimeoutError, OSError) as exc:
            errors.append(str(exc)[:300])
            await self._update(job_id, state="failed", errors=errors, **counts)
            log.info("import %s failed: %s", job_id, type(exc).__name__)
        except Exception as exc:  # source refusals (401/403), whitelist: the job says why
            errors.append(str(exc)[:300])
            await self._update(job_id, state="failed", errors=errors, **counts)
            log.info("import %s failed: %s", job_id, type(exc).__name__)
        finally:
            if sender is not None:
                await sender.close()


def import_routes(importer_of: Callable[[], Importer], auth: ConsumerAuth) -> list[web.RouteDef]:
    """POST /conso/api/exams/{kos_uid}/import → 202 + status URL; GET /conso/api/imports/{id} → progress.

    `importer_of` gives the Importer at request time (it is made when the app starts).
    """

    async def professional(request: web.Request) -> tuple[ProfessionalLike, str]:
        pro = await auth.current_professional(request)
        token = await auth.access_token(request) if pro is not None else None
        if pro is None or not token:
            body = {"error": "not logged in", "reason": "login_required", "login_url": auth.login_url(request.path_qs)}
            raise web.HTTPUnauthorized(text=json.dumps(body), content_type="application/json")
        return pro, token

    async def start(request: web.Request) -> web.Response:
        pro, token = await professional(request)
        kos_uid = request.match_info["kos_uid"]
        if not is_lenient_uid(kos_uid):  # lenient: the KOS UID comes from the DMP, written by another box
            return web.json_response({"error": "kosUid: a DICOM UID", "reason": "invalid_fields"}, status=400)
        importer = importer_of()
        try:
            kos = await importer.backend.open(pro, kos_uid)
        except Exception as exc:
            status = getattr(exc, "status", 404)
            status = status if isinstance(status, int) and status >= 400 else 404
            await audit_request(request, "consumer.import", REFUSED, professional=pro.id, kos=kos_uid, status=status)
            return web.json_response({"error": str(exc), "reason": "exam_refused"}, status=status)
        await audit_request(request, "consumer.import", SUCCESS, professional=pro.id, kos=kos_uid, study=kos.study_uid,
                            patient=kos.patient_id or None, patient_name=kos.patient_name or None,
                            destination=importer.settings.consumer.local_pacs_method)  # fmt: skip
        job_id = await importer.start(Grant(pro.id, kos_uid, token))
        url = f"/conso/api/imports/{job_id}"
        return web.json_response({"id": job_id, "status_url": url}, status=202, headers={"Location": url})

    async def status(request: web.Request) -> web.Response:
        pro, _ = await professional(request)
        found = await importer_of().status(request.match_info["job_id"])
        if found is None or found.pop("professional") != pro.id:
            return web.json_response({"error": "no such import", "reason": "not_found"}, status=404)
        return web.json_response(found, headers={"Cache-Control": "no-store"})

    return [web.post("/conso/api/exams/{kos_uid}/import", start), web.get("/conso/api/imports/{job_id}", status)]

