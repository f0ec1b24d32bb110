"""Import of an exam into a local PACS (C-STORE or STOW-RS) as durable jobs, reconciled to the local patient."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from multidict import MultiDict
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.association import Association

from drimbox import tls
from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import audit_request
from drimbox.config import PacsSettings, Settings, parse_pacs
from drimbox.consumer import import_pages, reconcile
from drimbox.consumer.auth import ConsumerAuth, ProfessionalLike
from drimbox.consumer.backend import ConsumerBackend, Grant
from drimbox.consumer.pages import CSP, error_page
from drimbox.consumer.reconcile import LocalPatient
from drimbox.consumer.store import ConsumerStore
from drimbox.dicomweb.backend import DicomwebError
from drimbox.dimse.network import DimseFailure, DimseUnavailable, make_ae
from drimbox.dimse.qido_find import iter_find
from drimbox.dimse.uid import is_lenient_uid
from drimbox.i18n import Messages
from drimbox.state.db import Database
from drimbox.state.instance import dead_local, instance_id
from drimbox.state.locks import HeldLock, LockFiles
from drimbox.state.migrations import Step
from drimbox.state.series_cache import CachedInstance
from drimbox.state.sql import Connection

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
CREATE TABLE IF NOT EXISTS import_targets (
    id TEXT PRIMARY KEY,
    local_patient TEXT,
    series TEXT NOT NULL DEFAULT '[]',
    target INTEGER NOT NULL DEFAULT 0
);
"""
# Which process runs a job ("host/pid"): at start a box interrupts its dead predecessor's jobs, never those of a
# live process sharing the state (another worker process, another instance).
OWNER = "ALTER TABLE imports ADD COLUMN owner TEXT"
# Step n is MIGRATIONS[n - 1]; only ever append.
MIGRATIONS: list[Step] = [SCHEMA, OWNER]
ACTIVE = import_pages.ACTIVE
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

    def _send(self, what: Path | Dataset) -> int:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self._open()
        # A path is sent as its stored bytes: no decoding, no transcoding (a reconciled dataset keeps its syntax).
        status = self.assoc.send_c_store(what)
        return int(getattr(status, "Status", 0xFFFF)) if status else 0xFFFF

    async def send(self, instance: CachedInstance, dataset: Dataset | None = None) -> str | None:
        what: Path | Dataset = instance.path if dataset is None else dataset
        try:
            status = await asyncio.get_running_loop().run_in_executor(self.thread, self._send, what)
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

    async def send(self, instance: CachedInstance, dataset: Dataset | None = None) -> str | None:
        data = await asyncio.to_thread(instance.path.read_bytes if dataset is None else lambda: _part10(dataset))
        with aiohttp.MultipartWriter("related", boundary=secrets.token_hex(16)) as mp:
            mp.append(data, {"Content-Type": "application/dicom"})
        mp.headers["Content-Type"] = f'multipart/related; type="application/dicom"; boundary={mp.boundary}'
        async with self.session.post(f"{self.url}/studies", data=mp, headers={"Accept": "application/dicom+json"}) as r:
            return None if r.status in (200, 202) else f"STOW-RS HTTP {r.status}"

    async def present(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of this study the local PACS holds already."""
        return await self._first_values(f"{self.url}/studies/{study_uid}/instances?includefield=00080018", "00080018")

    async def study_patients(self, study_uid: str) -> set[str]:
        """Patient IDs under which the local PACS holds this Study Instance UID."""
        return await self._first_values(
            f"{self.url}/studies?StudyInstanceUID={study_uid}&includefield=00100020", "00100020"
        )

    async def _first_values(self, url: str, tag: str) -> set[str]:
        """The first value of `tag` in each row of a QIDO-RS answer; empty when the PACS holds nothing."""
        async with self.session.get(url, headers={"Accept": "application/dicom+json"}) as r:
            if r.status == 204 or r.status == 404:
                return set()
            if r.status != 200:
                raise DimseUnavailable(f"QIDO-RS on the local PACS: HTTP {r.status}")
            items = await r.json(content_type=None)
        return {str((i.get(tag, {}).get("Value") or [""])[0]) for i in items if isinstance(i, dict)}

    async def close(self) -> None:
        await self.session.close()


def _part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def target_names(settings: Settings) -> list[str]:
    """What the pages call each destination, by index: the local_pacs_* one, then local_pacs_others."""
    c = settings.consumer
    others = (p for p in (parse_pacs(x) for x in c.local_pacs_others) if p is not None)
    return [c.local_pacs_ae_title] + [f"{p.ae_title} ({p.host}:{p.port})" for p in others]


class Importer:
    """Import jobs: start, run one at a time per exam, report; var_dir/consumer/imports.sqlite.

    An import reads the exam through the consumer backend (so it fills the cache, and a series already cached
    is not fetched again), asks the local PACS which instances it already holds (C-FIND at IMAGE level, or
    QIDO-RS for STOW-RS), and sends the others. Jobs live in SQLite: after a restart a job that was running is
    `interrupted` (the professional's token died with the process); POSTing the import again resumes it under
    the same id, and what already reached the PACS is skipped.
    """

    def __init__(self, settings: Settings, backend: ConsumerBackend, directory: Path, url: str = "") -> None:
        self.settings = settings
        self.backend = backend
        self.db = Database(directory / "imports.sqlite", MIGRATIONS, url=url, store="imports")
        self.instance = instance_id()
        # A running job is renewed every third of this; past it, an instance on another host (one PostgreSQL) that
        # is asked for the exam again takes the job over: a dead host's import does not stay "running" for ever.
        self.lease = settings.publish.lease_seconds
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False
        # The process running a job holds its lock: one run per job across the box's processes ([http] workers).
        self._running = LockFiles(directory / "import-locks")
        self.db.call(self._interrupt_orphans)
        c = settings.consumer
        self.pacs = PacsSettings(ae_title=c.local_pacs_ae_title, host=c.local_pacs_host, port=c.local_pacs_port,
                                 timeout=c.local_pacs_timeout)  # fmt: skip
        # Destinations by index: 0 is the local_pacs_* one (C-STORE or STOW-RS), then local_pacs_others (C-STORE).
        self.others = [p for p in (parse_pacs(x, c.local_pacs_timeout) for x in c.local_pacs_others) if p is not None]

    def _interrupt_orphans(self, conn: Connection) -> None:
        """A job that was running when its process stopped cannot go on without the professional's token."""
        rows = conn.execute("SELECT id, owner FROM imports WHERE state IN ('queued', 'running')").fetchall()
        for row in rows:
            if row["owner"] is not None and not dead_local(str(row["owner"]), self.instance):
                continue  # its instance lives (another host, or another process of this one)
            if (orphan := self._running.try_acquire(str(row["id"]))) is None:
                continue  # another process of this box holds its lock: it is running there
            try:
                conn.execute(
                    "UPDATE imports SET state = 'interrupted', updated = ? WHERE id = ?", (time.time(), row["id"])
                )
            finally:
                orphan.release()

    @property
    def target_names(self) -> list[str]:
        return target_names(self.settings)

    async def close(self) -> None:
        """Stop the running jobs (they become `interrupted`) and close the database; idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.db.acall(lambda c: c.execute(
            "UPDATE imports SET state = 'interrupted', updated = ? WHERE owner = ? AND state IN ('queued', 'running')",
            (time.time(), self.instance)))  # fmt: skip
        await asyncio.to_thread(self.db.close)

    async def start(
        self, grant: Grant, local: LocalPatient | None = None, series: tuple[str, ...] = (), target: int = 0
    ) -> str:
        """The job importing this KOS for this professional: the active one, an interrupted one resumed, or new.

        With `local`, every instance is reconciled to that local patient (consumer/reconcile.py); with `series`,
        only those series are imported, and with `target` (an index of target_names) into another PACS: both are
        always a new job.
        """

        def pick(conn: Connection) -> tuple[str, bool, bool]:
            """(the job, whether it is new or resumed, whether it may run on this host)."""
            row = conn.execute("SELECT id, state, owner, updated FROM imports WHERE kos_uid = ? AND professional = ? "
                               "ORDER BY created DESC LIMIT 1", (grant.kos_uid, grant.professional_id)).fetchone()  # fmt: skip
            now = time.time()
            if series or target:
                row = None
            if row is not None and row["state"] in ACTIVE and self._stale(row, now):
                # Its instance stopped renewing it (another host that died): taken over, once (the stamp it had).
                taken = conn.execute("UPDATE imports SET state = 'interrupted', updated = ? WHERE id = ? AND updated = ?",
                                     (now, row["id"], row["updated"])).rowcount  # fmt: skip
                if taken:
                    log.info("import %s: its instance stopped renewing it, taken over", row["id"])
                    row = {"id": row["id"], "state": "interrupted"}
            if row is not None and row["state"] in ACTIVE:
                # Run here only if it is this host's: its lock then tells whether a process of it runs the job.
                # Another host's job runs there (renewed) until its lease runs out.
                owner = row["owner"]
                here = owner is None or str(owner).rpartition("/")[0] == self.instance.rpartition("/")[0]
                return row["id"], False, here
            if row is not None and row["state"] == "interrupted":
                conn.execute("UPDATE imports SET state = 'queued', stored = 0, skipped = 0, failed = 0, errors = '[]',"
                             " updated = ?, owner = ? WHERE id = ?", (now, self.instance, row["id"]))  # fmt: skip
                return row["id"], True, True
            job_id = secrets.token_urlsafe(12)
            conn.execute("INSERT INTO imports (id, kos_uid, professional, state, created, updated, owner) VALUES "
                         "(?, ?, ?, 'queued', ?, ?, ?)", (job_id, grant.kos_uid, grant.professional_id, now, now,
                                                          self.instance))  # fmt: skip
            return job_id, True, True

        def remember(conn: Connection, job_id: str) -> None:
            if local is not None or series or target:
                conn.execute("INSERT INTO import_targets (id, local_patient, series, target) VALUES (?, ?, ?, ?)"
                             " ON CONFLICT (id) DO UPDATE SET local_patient = excluded.local_patient,"
                             " series = excluded.series, target = excluded.target",
                             (job_id, json.dumps(local.to_json()) if local else None, json.dumps(list(series)),
                              target))  # fmt: skip

        job_id, fresh, here = await self.db.acall(pick)
        if fresh:
            await self.db.acall(lambda c: remember(c, job_id))
        if not fresh and not here:
            return job_id
        if job_id not in self._tasks and (lock := self._running.try_acquire(job_id)) is not None:
            # Not running here, nor in another process (its lock is free): this process runs it.
            task = asyncio.create_task(self._run(job_id, grant), name=f"import-{job_id}")
            self._tasks[job_id] = task

            def done(_: asyncio.Task[None], lock: HeldLock = lock) -> None:
                self._tasks.pop(job_id, None)
                lock.release()

            task.add_done_callback(done)
        return job_id

    async def status(self, job_id: str) -> dict[str, Any] | None:
        row = await self.db.acall(lambda c: c.execute("SELECT * FROM imports WHERE id = ?", (job_id,)).fetchone())
        if row is None:
            return None
        extra = await self.db.acall(
            lambda c: c.execute("SELECT target FROM import_targets WHERE id = ?", (job_id,)).fetchone()
        )
        index = int(extra["target"]) if extra is not None else 0
        names = self.target_names
        return {"target": names[index] if index < len(names) else None, "id": row["id"], "kos_uid": row["kos_uid"], "professional": row["professional"], "state": row["state"],
                "total": row["total"], "stored": row["stored"], "skipped": row["skipped"], "failed": row["failed"],
                "errors": json.loads(row["errors"]), "created": row["created"], "updated": row["updated"],
                "method": self.settings.consumer.local_pacs_method}  # fmt: skip

    def _stale(self, row: Any, now: float) -> bool:
        """A job another instance runs but has not renewed for a lease (it renews every third of one)."""
        owner = row["owner"]
        return owner is not None and owner != self.instance and float(row["updated"]) < now - self.lease

    async def _renew(self, job_id: str) -> None:
        """While the job runs: its stamp, so that instances on other hosts know it lives."""
        while True:
            await asyncio.sleep(self.lease / 3)
            await self.db.acall(lambda c: c.execute(
                "UPDATE imports SET updated = ? WHERE id = ? AND owner = ?", (time.time(), job_id, self.instance)))  # fmt: skip

    async def _update(self, job_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        if "errors" in fields:
            fields["errors"] = json.dumps(fields["errors"][:MAX_ERRORS])
        names = ", ".join(f"{k} = ?" for k in fields)
        await self.db.acall(lambda c: c.execute(f"UPDATE imports SET {names} WHERE id = ?", (*fields.values(), job_id)))

    async def _present(self, pacs: PacsSettings, study_uid: str, stow: _Stow | None) -> set[str]:
        """SOP Instance UIDs of the study the local PACS holds already."""
        if stow is not None:
            return await stow.present(study_uid)
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = ""
        query.SOPInstanceUID = ""
        return {str(ds.get("SOPInstanceUID", "")) async for ds in iter_find(pacs, self.settings.dicom.ae_title, query)}

    async def _target(self, job_id: str) -> tuple[LocalPatient | None, set[str], PacsSettings | None]:
        """The job's local patient (None: imported as it is), its series (empty: every series), and its other
        destination (None: the local_pacs_* one)."""
        row = await self.db.acall(lambda c: c.execute(
            "SELECT local_patient, series, target FROM import_targets WHERE id = ?", (job_id,)).fetchone())  # fmt: skip
        if row is None:
            return None, set(), None
        local = LocalPatient.from_json(json.loads(row["local_patient"])) if row["local_patient"] else None
        index = int(row["target"])
        other = self.others[index - 1] if 0 < index <= len(self.others) else None
        if index and other is None:
            raise DimseUnavailable("the import's destination PACS is no longer configured")
        return local, set(json.loads(row["series"])), other

    async def _study_patients(self, pacs: PacsSettings, study_uid: str, stow: _Stow | None) -> set[str]:
        """Patient IDs the local PACS files this study under (C-FIND STUDY level, or QIDO-RS)."""
        if stow is not None:
            return await stow.study_patients(study_uid)
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid
        query.PatientID = ""
        return {str(ds.get("PatientID", "")) async for ds in iter_find(pacs, self.settings.dicom.ae_title, query)}

    async def _run(self, job_id: str, grant: Grant) -> None:
        counts = {"stored": 0, "skipped": 0, "failed": 0}
        errors: list[str] = []
        sender: _CStore | _Stow | None = None
        renewing = asyncio.create_task(self._renew(job_id), name=f"import-lease-{job_id}")
        try:
            kos = await self.backend.kos(grant.kos_uid)
            local, grant_series, other = await self._target(job_id)
            pacs = other or self.pacs
            if local is not None and reconcile.ins_mismatch(kos, local):
                raise ValueError("the exam's INS is not the launch's: not imported under this patient")
            total = sum(len(s.instances) for s in kos.series if not grant_series or s.series_uid in grant_series)
            await self._update(job_id, state="running", total=total)
            stow = None
            if other is None and self.settings.consumer.local_pacs_method == "stow-rs":
                stow = _Stow(self.settings.consumer.local_pacs_stow_url, self.settings.consumer.local_pacs_timeout)
                sender = stow
            # Same UIDs unless the local PACS holds this study under another patient: then UIDs derived from the
            # originals and the local patient (stable, so a re-import still skips what it sent).
            new_uids = bool(local and (await self._study_patients(pacs, kos.study_uid, stow)) - {local.patient_id})
            uid = (lambda u: reconcile.new_uid(u, local)) if (local and new_uids) else (lambda u: u)
            if new_uids:
                log.info("import %s: the local PACS holds this study under another patient: new UIDs", job_id)
            present = await self._present(pacs, uid(kos.study_uid), stow)
            if sender is None:
                sender = _CStore(pacs, self.settings.dicom.ae_title,
                                 {i.sop_class_uid for s in kos.series for i in s.instances})  # fmt: skip
            last = time.monotonic()
            for series in kos.series:
                if grant_series and series.series_uid not in grant_series:
                    continue
                listed = {uid(i.sop_instance_uid) for i in series.instances}
                if listed <= present:
                    counts["skipped"] += len(listed)  # nothing to fetch from the source for this series
                    continue
                async for instance in self.backend.series_instances(grant, kos, series):
                    dataset = None
                    if local is not None:
                        dataset = await asyncio.to_thread(dcmread, instance.path)
                        reconcile.apply(dataset, local, new_uids=new_uids)
                    if uid(instance.sop_instance_uid) in present:
                        counts["skipped"] += 1
                    elif (problem := await sender.send(instance, dataset)) is None:
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
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
            if sender is not None:
                await sender.close()


def import_routes(
    importer_of: Callable[[], Importer],
    auth: ConsumerAuth,
    launches: Callable[[str], Awaitable[dict[str, Any] | None]] | None = None,
) -> list[web.RouteDef]:
    """POST /conso/api/exams/{kos_uid}/import → 202 + status URL; GET /conso/api/imports/{id} → progress; and the
    list's HTML forms: POST /conso/imports (ticked exams, or one exam's series) → 303 to GET /conso/imports?job=…

    `importer_of` gives the Importer at request time (it is made when the app starts); `launches` finds a stored
    launch by id (the consumer's store when not given and the backend's manifests are one).
    """

    async def professional(request: web.Request) -> tuple[ProfessionalLike, str]:
        pro = await auth.current_professional(request)
        token = await auth.access_token(request) if pro is not None else None
        if pro is None or not token:
            error = Messages.of(request)("consumer.errors.not_logged_in")
            body = {"error": error, "reason": "login_required", "login_url": auth.login_url(request.path_qs)}
            raise web.HTTPUnauthorized(text=json.dumps(body), content_type="application/json")
        return pro, token

    async def local_patient(importer: Importer, launch_id: str) -> LocalPatient | Literal[False] | None:
        """The launch's local patient; None without a launch; False for a launch this box no longer knows."""
        if not launch_id:
            return None
        store = importer.backend.manifests
        if launches is not None:
            data = await launches(launch_id)
        elif isinstance(store, ConsumerStore):
            data = await store.launch(launch_id, importer.settings.consumer.launch_ttl)
        else:
            return False
        return LocalPatient.from_launch(data) if data is not None else False

    async def page_professional(request: web.Request, back: str) -> tuple[ProfessionalLike, str]:
        """The professional of an HTML import page; else the login, coming back to `back` (a list) afterwards."""
        pro = await auth.current_professional(request)
        token = await auth.access_token(request) if pro is not None else None
        if pro is None or not token:
            raise web.HTTPSeeOther(auth.login_url(back or request.path_qs), headers={"Cache-Control": "no-store"})
        return pro, token

    async def begin(
        request: web.Request,
        pro: ProfessionalLike,
        token: str,
        kos_uid: str,
        launch_id: str,
        series: tuple[str, ...],
        target: int,
    ) -> str | tuple[int, str, str]:
        """A job id, or why not: (HTTP status, reason code, French/English message)."""
        m = Messages.of(request)
        if not is_lenient_uid(kos_uid):  # lenient: the KOS UID comes from the DMP, written by another box
            return 400, "invalid_fields", m("import.error.kos_uid")
        importer = importer_of()
        if not 0 <= target < len(importer.target_names):
            return 400, "invalid_fields", m("import.error.target")
        try:
            kos = await importer.backend.open(pro, kos_uid)
        except Exception as exc:
            status = getattr(exc, "status", 404)
            status = status if isinstance(status, int) and status >= 400 else 404
            await audit_request(request, "consumer.import", REFUSED, professional=pro.id, kos=kos_uid, status=status)
            return status, "exam_refused", str(exc)
        local = await local_patient(importer, launch_id)
        if local is False:  # never imported under the source's identifiers for want of the local ones
            return 410, "launch_expired", m("import.error.launch_expired")
        if isinstance(local, LocalPatient) and reconcile.ins_mismatch(kos, local):
            await audit_request(request, "consumer.import", REFUSED, professional=pro.id, kos=kos_uid, status=409,
                                reason="ins_mismatch")  # fmt: skip
            return 409, "ins_mismatch", m("import.error.ins_mismatch")
        await audit_request(request, "consumer.import", SUCCESS, professional=pro.id, kos=kos_uid, study=kos.study_uid,
                            patient=kos.patient_id or None, patient_name=kos.patient_name or None,
                            destination=importer.target_names[target] if target else
                            importer.settings.consumer.local_pacs_method)  # fmt: skip
        return await importer.start(Grant(pro.id, kos_uid, token), local or None, series, target)

    def _values(request: web.Request, form: Mapping[str, object]) -> list[tuple[str, str]]:
        return [*request.query.items(), *((k, v) for k, v in form.items() if isinstance(v, str))]

    def _target(values: list[tuple[str, str]]) -> int:
        raw = next((v for k, v in values if k == "target"), "0")
        return int(raw) if raw.isdigit() and len(raw) < 4 else -1

    async def start(request: web.Request) -> web.Response:
        """The launch (form or query `launch`) makes it a reconciled import; `series` (repeated) narrows it;
        `target` picks another local PACS."""
        pro, token = await professional(request)
        form = await request.post() if request.can_read_body else MultiDict[str]()
        values = _values(request, form)
        launch_id = next((v for k, v in values if k == "launch"), "")
        series = tuple(dict.fromkeys(v for k, v in values if k == "series" and is_lenient_uid(v)))
        job = await begin(request, pro, token, request.match_info["kos_uid"], launch_id, series, _target(values))
        if isinstance(job, tuple):
            return web.json_response({"error": job[2], "reason": job[1]}, status=job[0])
        url = f"/conso/api/imports/{job}"
        return web.json_response({"id": job, "status_url": url}, status=202, headers={"Location": url})

    async def start_page(request: web.Request) -> web.Response:
        """POST /conso/imports from the exam list: the ticked exams (or the row's own button, `one`), then the
        status page; a refusal is a page saying why."""
        m = Messages.of(request)
        values = _values(request, await request.post())
        pro, token = await page_professional(
            request, import_pages.safe_back(next((v for k, v in values if k == "back"), ""))
        )
        one = next((v for k, v in values if k == "one"), "")
        chosen = [one] if one else list(dict.fromkeys(v for k, v in values if k == "kos"))
        series = tuple(dict.fromkeys(v for k, v in values if k == "series" and is_lenient_uid(v))) if one else ()
        launch_id = next((v for k, v in values if k == "launch"), "")
        back = import_pages.safe_back(next((v for k, v in values if k == "back"), ""))
        link = (back, m("import.back")) if back else None
        if not chosen:
            return _page(error_page(m, m("import.refused_title"), m("import.error.none_selected"), link=link), 400)
        jobs: list[str] = []
        for kos_uid in chosen[:50]:
            job = await begin(request, pro, token, kos_uid, launch_id, series, _target(values))
            if isinstance(job, tuple):
                return _page(error_page(m, m("import.refused_title"), job[2], link=link), job[0])
            jobs.append(job)
        raise web.HTTPSeeOther(f"/conso/imports?{urlencode([('job', j) for j in jobs] + [('back', back)])}",
                               headers={"Cache-Control": "no-store"})  # fmt: skip

    async def status_page(request: web.Request) -> web.Response:
        """GET /conso/imports?job=…: the jobs' progress, reloading itself while one still runs (no script)."""
        pro, _ = await page_professional(request, request.path_qs)
        found = []
        for job_id in request.query.getall("job", [])[:50]:
            job = await importer_of().status(job_id)
            if job is not None and job.pop("professional") == pro.id:
                found.append(job)
        html = import_pages.status_page(
            Messages.of(request), found, import_pages.safe_back(request.query.get("back", ""))
        )
        running = any(j["state"] in ACTIVE for j in found)
        return _page(html, 200 if found else 404, refresh=running)

    async def status(request: web.Request) -> web.Response:
        pro, _ = await professional(request)
        found = await importer_of().status(request.match_info["job_id"])
        if found is None or found.pop("professional") != pro.id:
            error = Messages.of(request)("import.error.no_such_job")
            return web.json_response({"error": error, "reason": "not_found"}, status=404)
        return web.json_response(found, headers={"Cache-Control": "no-store"})

    return [
        web.post("/conso/api/exams/{kos_uid}/import", start),
        web.get("/conso/api/imports/{job_id}", status),
        web.post("/conso/imports", start_page),
        web.get("/conso/imports", status_page),
    ]


def _page(html: str, status: int, *, refresh: bool = False) -> web.Response:
    headers = {"Cache-Control": "no-store", "Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
               "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}  # fmt: skip
    if refresh:  # the header as well as the page's meta: either reloads it
        headers["Refresh"] = str(import_pages.REFRESH_SECONDS)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8", headers=headers)
