"""The publication worker: takes due jobs from the outbox and runs them, with back-off on transient errors."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from drimbox import metrics
from drimbox.audit.events import FAILURE, REFUSED, AuditEvent
from drimbox.config import Settings
from drimbox.hl7.ack import HL7Error
from drimbox.hl7.report import ReportMessage, parse_report_message
from drimbox.source.outbox import Outbox, Publication
from drimbox.source.publish import PermanentError, Publisher, TransientError, Waiting

log = logging.getLogger(__name__)


class PublicationWorker:
    """Runs jobs one study at a time, in arrival order; a crash mid-job simply replays it on restart."""

    def __init__(self, settings: Settings, outbox: Outbox, publisher: Publisher) -> None:
        self.settings = settings
        self.outbox = outbox
        self.publisher = publisher
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[str] = set()
        self._stopping = False
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        for i in range(self.settings.publish.workers):
            self._tasks.append(asyncio.create_task(self._run(), name=f"publication-worker-{i}"))

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                job = await self._claim()
                if job is None:
                    await self._sleep_until_due()
                    continue
                renewing = asyncio.create_task(self._keep_claim(job.id), name=f"lease-{job.id}")
                try:
                    await self.run_job(job)
                finally:
                    renewing.cancel()
                    self._busy.discard(job.study_uid)
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one bad job kill the worker
                log.exception("publication worker error")
                self.last_error = str(exc)
                await asyncio.sleep(1.0)

    async def _claim(self) -> Publication | None:
        # Two workers never run jobs of the same study at once (a replacement must follow its original).
        job = await self.outbox.next_due(time.time(), frozenset(self._busy))
        if job is None or job.study_uid in self._busy:
            return None
        self._busy.add(job.study_uid)
        return job

    async def _keep_claim(self, pub_id: int) -> None:
        """Renew the job's lease while it runs (a DMP call may outlast it): only a dead instance loses its jobs."""
        interval = self.settings.publish.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self.outbox.renew(pub_id):
                    log.warning("publication %d: its claim was taken over by another instance", pub_id)
                    return
            except Exception as exc:  # the database away a moment: the next renewal may succeed
                log.warning("publication %d: lease not renewed: %s", pub_id, exc)

    async def _sleep_until_due(self) -> None:
        self._wake.clear()
        due = await self.outbox.next_wakeup()
        # Poll at least every 2 s so that jobs re-queued by another process (`drimbox publish`) start.
        delay = 2.0 if due is None else min(2.0, max(0.05, due - time.time()))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=delay)
        except TimeoutError:
            pass

    async def run_job(self, job: Publication) -> None:
        attempts = job.attempts + 1
        try:
            outcome = await self.publisher.run(job)
        except Waiting as exc:
            window = self.settings.publish.waiting_window
            if time.time() - job.window_start >= window:
                reason = f"{exc}; gave up after the waiting window of {window:.0f} s"
                await self._audit_failure(job, "failed", reason)
                await self.outbox.update(job.id, state="failed", attempts=attempts, last_error=reason)
            else:
                await self.outbox.update(
                    job.id,
                    state="waiting",
                    attempts=attempts,
                    last_error=str(exc),
                    next_attempt_at=time.time() + self.settings.publish.waiting_interval,
                )
            return
        except TransientError as exc:
            delay = self._backoff(attempts)
            log.warning("publication %d: transient error, retry in %.1f s: %s", job.id, delay, exc)
            await self.outbox.update(
                job.id,
                state="retrying",
                attempts=attempts,
                last_error=str(exc),
                next_attempt_at=time.time() + delay,
            )
            return
        except PermanentError as exc:
            log.warning("publication %d: %s: %s", job.id, exc.state, exc)
            # Before the state: a crash between the two replays the job and records it again, never not at all.
            await self._audit_failure(job, exc.state, str(exc))
            await self.outbox.update(job.id, state=exc.state, attempts=attempts, last_error=str(exc))
            return
        except Exception as exc:
            # Not foreseen (a full disk, a bug): back off like a transient error and say why, rather than
            # leave the job silently due again at once.
            delay = self._backoff(attempts)
            log.exception("publication %d: unexpected error, retry in %.1f s", job.id, delay)
            await self.outbox.update(
                job.id,
                state="retrying",
                attempts=attempts,
                last_error=_unexpected(exc),
                next_attempt_at=time.time() + delay,
            )
            return
        now = time.time()
        await self.outbox.update(job.id, state=outcome.state, attempts=attempts, last_error=None, published_at=now)
        if outcome.state == "published":  # the report received (the job created) to the KOS registered
            metrics.PUBLICATION_LATENCY.observe(max(0.0, now - job.created_at))
        log.info("publication %d: %s", job.id, outcome.state)

    async def _audit_failure(self, job: Publication, state: str, reason: str) -> None:
        """The job ended without reaching the DMP (`failed`) or was refused (`rejected`): one record in the trail."""
        sink = self.publisher.audit
        if sink is None:
            return
        action = "dmp.withdraw" if job.action in ("withdraw", "cancel") else "dmp.register"
        message = await self._message(job)
        r = message.report if message is not None else None
        name = None
        if r is not None and (r.patient_family or r.patient_given):
            name = f"{r.patient_family or ''}^{r.patient_given or ''}"
        # A revision is caused by a DICOM peer's IOCM note, not by the report's author.
        author = r.author.id if r is not None and r.author and job.action != "revise" else None
        event = AuditEvent(
            action, REFUSED if state == "rejected" else FAILURE,
            professional=author,
            patient=(r.ins or r.ipp) if r is not None else None, patient_name=name, study=job.study_uid,
            kos=job.kos_uid, source=self.settings.dmp.url,
            detail={"accession": job.accession, "state": state, "attempts": str(job.attempts + 1),
                    "reason": _without_identity(reason, message)},
        )  # fmt: skip
        try:
            await sink.record(event)
        except Exception as exc:
            log.error("audit trail: %s; %s failure of publication %d not recorded", exc, action, job.id)

    async def _message(self, job: Publication) -> ReportMessage | None:
        """The job's report, for who and whose data the failure concerns; None when it is gone or unreadable."""
        raw = await self.outbox.raw_message(job.id)
        if raw is None:
            return None
        try:
            return await asyncio.get_running_loop().run_in_executor(None, parse_report_message, raw)
        except HL7Error:
            return None

    def _backoff(self, attempts: int) -> float:
        p = self.settings.publish
        base = min(p.backoff_max, p.backoff_initial * (2 ** min(attempts - 1, 30)))
        # Jitter spreads retries of many jobs after a DMP outage.
        return float(base * random.uniform(0.8, 1.2))


def _without_identity(reason: str, message: ReportMessage | None) -> str:
    """The reason as the DMP or a check worded it, less any identity trait it quotes (they have their own fields)."""
    if message is None:
        return reason
    r = message.report
    for trait in (r.ins, r.ipp, r.patient_family, r.patient_given, r.patient_birth_date):
        if trait and len(trait) >= 3:
            reason = reason.replace(trait, "***")
    return reason


def _unexpected(exc: Exception) -> str:
    """What the publication states show of an unforeseen error: its kind, not its text (which may quote data)."""
    reason = f": {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else ""
    return f"unexpected {type(exc).__name__}{reason}"
