"""The audit store: an append-only, hash-chained table (SQLite or PostgreSQL), each event durable before record() returns."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drimbox import metrics
from drimbox.audit.checkpoint import CheckpointWriter, check_on_open
from drimbox.audit.events import AuditEvent
from drimbox.audit.store import lock_chain, open_reader, open_writer
from drimbox.audit.syslog import SyslogSender
from drimbox.state.credentials import structure_credentials

if TYPE_CHECKING:
    from drimbox.config import Settings

log = logging.getLogger(__name__)
GENESIS = "0" * 64
# Fields of a stored record, in the order they are written; `hash` covers every other one.
FIELDS = ("seq", "at", "action", "outcome", "professional", "patient", "patient_name", "study", "kos", "source",
          "detail", "prev")  # fmt: skip
# Events waiting for the writer; beyond this, record() waits (backpressure) rather than grow memory.
_QUEUE_MAX = 1024
# One transaction (one fsync) takes at most this many waiting events: group commit under load.
_BATCH_MAX = 256


def iso(at: float) -> str:
    """UTC, microseconds, fixed width: sorts as text, so --since/--until compare strings."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers: every field but `hash`, keys sorted, no spaces, UTF-8."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def _row(event: AuditEvent, seq: int, prev: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "seq": seq, "at": iso(event.at), "action": event.action, "outcome": event.outcome,
        "professional": event.professional, "patient": event.patient, "patient_name": event.patient_name,
        "study": event.study, "kos": event.kos, "source": event.source,
        "detail": {str(k): str(v) for k, v in event.detail.items()}, "prev": prev,
    }  # fmt: skip
    record["hash"] = record_hash(record)
    return record


def _from_db(row: Any) -> dict[str, Any]:
    record = dict(zip((*FIELDS, "hash"), row, strict=True))
    record["detail"] = json.loads(record["detail"])
    return record


_SELECT = f"SELECT {', '.join(FIELDS)}, hash FROM audit"


@dataclass(frozen=True)
class Broken:
    """The first record where the chain does not hold, and why."""

    seq: int
    reason: str


class AuditTrail:
    """The AuditSink of a box: `record()` returns once the event is committed (fsynced) in the chain.

    One writer thread owns the inserts: it takes every waiting event at once and commits them in one transaction,
    so concurrent requests share an fsync. The optional syslog sender gets each stored record after the commit;
    its send() never blocks (the local chain is the record of truth, the syslog copy is best-effort).
    With `checkpoints`, the signed head goes to the checkpoint file every `checkpoint_every` records, at open when
    records were added since the last one (a crash), and at close.
    """

    def __init__(self, path: Path, syslog: SyslogSender | None = None, checkpoints: CheckpointWriter | None = None,
                 checkpoint_every: int = 0, *, url: str = "") -> None:  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = url
        self.syslog = syslog
        self.checkpoints = checkpoints
        self.checkpoint_every = checkpoint_every
        self._db = open_writer(path, url)
        # The head is re-read on open: the chain continues across restarts.
        head = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self._seq: int = head[0] if head else 0
        self._head: str = head[1] if head else GENESIS
        if checkpoints is not None:
            problem = check_on_open(self._seq, self._db, checkpoints.last)
            if problem is not None:
                # Not a reason to stop serving: the chain goes on, and `drimbox audit verify` names the damage.
                log.error("%s: run `drimbox audit verify`", problem)
            if self._seq > checkpoints.last_seq:
                self._checkpoint("open")  # seals what was written since the last checkpoint (a crash, an upgrade)
        self._queue: queue.Queue[tuple[AuditEvent, asyncio.AbstractEventLoop, asyncio.Future[None]] | None] = (
            queue.Queue()
        )
        self._slots = threading.BoundedSemaphore(_QUEUE_MAX)
        self._writer = threading.Thread(target=self._write_loop, name="audit-writer", daemon=True)
        self._writer.start()
        self._closed = False

    @property
    def head(self) -> tuple[int, str]:
        return self._seq, self._head

    async def record(self, event: AuditEvent) -> None:
        if self._closed:
            raise RuntimeError("the audit trail is closed")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if not self._slots.acquire(blocking=False):
            # Full: wait off the loop for a slot; the request that is being audited waits with it.
            waiting = asyncio.ensure_future(asyncio.to_thread(self._slots.acquire))
            try:
                await asyncio.shield(waiting)
            except asyncio.CancelledError:
                # The client left: the slot the thread will still get goes straight back.
                waiting.add_done_callback(lambda _: self._slots.release())
                raise
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((event, loop, done))
        await done
        metrics.AUDIT_WRITE.observe(time.perf_counter() - started)  # queued, written and committed

    def close(self) -> None:
        """Write what is queued, stop the writer, close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=30)
        if self.checkpoints is not None and self._seq != self.checkpoints.last_seq:
            self._checkpoint("shutdown")
        self._db.close()
        if self.syslog is not None:
            self.syslog.close()

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < _BATCH_MAX:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._write(batch)
            if stop:
                return

    def _write(self, batch: list[tuple[AuditEvent, asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
        records: list[dict[str, Any]] = []
        error: BaseException | None = None
        began = False
        try:
            self._db.execute("BEGIN IMMEDIATE")
            began = True
            # The head as the database has it, under the chain's lock: other processes or instances may have
            # appended since this one last wrote, and the chain stays one line (seq 1, 2, 3…, prev = the hash before).
            lock_chain(self._db)
            last = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, head = (int(last[0]), str(last[1])) if last else (0, GENESIS)
            for event, _, _ in batch:
                seq += 1
                record = _row(event, seq, head)
                head = record["hash"]
                records.append(record)
            self._db.executemany(
                f"INSERT INTO audit ({', '.join(FIELDS)}, hash) VALUES ({', '.join('?' * (len(FIELDS) + 1))})",
                [(*(json.dumps(r[f], sort_keys=True) if f == "detail" else r[f] for f in FIELDS), r["hash"])
                 for r in records],
            )  # fmt: skip
            self._db.execute("COMMIT")
            self._seq, self._head = seq, head
            # Actions and sequence numbers only: who and whose data stay in the trail.
            log.debug("audit: %s committed up to record %d", ", ".join(e.action for e, _, _ in batch), seq)
        except BaseException as exc:  # a full disk must fail the audited request, not kill the writer
            error = exc
            records = []
            if began:
                try:
                    self._db.execute("ROLLBACK")
                except Exception:  # the connection itself is gone: nothing is left to roll back
                    pass
            if self.url and self._db.broken:  # the server restarted: the next batch goes through a new connection
                try:
                    self._db = open_writer(self.path, self.url)
                except Exception as again:
                    log.error("audit trail: cannot reconnect to the database: %s", type(again).__name__)
        for _, loop, done in batch:
            self._slots.release()
            try:
                loop.call_soon_threadsafe(_settle, done, error)
            except RuntimeError:  # that loop is closed: nobody waits for this answer any more
                pass
        if error is None and self.syslog is not None:
            for record in records:
                self.syslog.send(record)
        every = self.checkpoint_every
        if error is None and records and every > 0 and self._seq // every > (self._seq - len(records)) // every:
            self._checkpoint("periodic")

    def _checkpoint(self, reason: str) -> None:
        """Sign and append the current head; a failure is logged (the next checkpoint will cover it)."""
        if self.checkpoints is None:
            return
        try:
            self.checkpoints.write(self._seq, self._head, iso(time.time()), reason)
        except Exception as exc:
            log.error("audit checkpoint at record %d not written: %s", self._seq, exc)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(RuntimeError(f"the audit trail could not be written: {error}"))


def read_records(
    path: Path, since: str | None = None, until: str | None = None, *, url: str = ""
) -> Iterator[dict[str, Any]]:
    """The stored records in chain order, optionally those with since <= at < until (ISO strings as `iso()`)."""
    db = open_reader(path, url)
    try:
        sql, args = _SELECT, []
        clauses = []
        if since is not None:
            clauses.append("at >= ?")
            args.append(since)
        if until is not None:
            clauses.append("at < ?")
            args.append(until)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        for row in db.execute(sql + " ORDER BY seq", args):
            yield _from_db(row)
    finally:
        db.close()


def recent_records(path: Path, prefixes: tuple[str, ...], limit: int, *, url: str = "") -> list[dict[str, Any]]:
    """The newest `limit` records whose action starts with one of `prefixes`, newest first (read-only)."""
    if not url and not path.exists():
        return []
    db = open_reader(path, url)
    try:
        where = " OR ".join("substr(action, 1, ?) = ?" for _ in prefixes) or "1 = 1"
        args = [v for p in prefixes for v in (len(p), p)]
        sql = f"{_SELECT} WHERE {where} ORDER BY seq DESC LIMIT ?"
        return [_from_db(row) for row in db.execute(sql, (*args, limit))]
    finally:
        db.close()


def verify_records(records: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> tuple[int, Broken | None]:
    """Walk the chain from the first record: (records checked, the first broken one or None)."""
    expected_prev, expected_seq, count = GENESIS, 1, 0
    for record in records:
        seq = record.get("seq")
        if seq != expected_seq:
            return count, Broken(expected_seq, f"record {expected_seq} is missing (found {seq})")
        if record.get("prev") != expected_prev:
            return count, Broken(seq, "its link to the previous record does not match (a record before was changed)")
        if record_hash(record) != record.get("hash"):
            return count, Broken(seq, "its content does not match its hash (it was changed)")
        expected_prev, expected_seq, count = record["hash"], seq + 1, count + 1
    return count, None


def verify(path: Path, *, url: str = "") -> tuple[int, Broken | None]:
    return verify_records(read_records(path, url=url))


def audit_path(settings: Settings) -> Path:
    """`[audit] path`, or var_dir/audit.sqlite when it is empty."""
    return Path(settings.audit.path) if settings.audit.path else settings.var_path / "audit.sqlite"


def checkpoints_path(settings: Settings) -> Path:
    """audit-checkpoints.jsonl beside the trail (var_dir by default)."""
    return audit_path(settings).with_name("audit-checkpoints.jsonl")


def open_trail(settings: Settings) -> AuditTrail:
    """The box's trail, with its syslog copy when `[audit] syslog` names a collector and its signed checkpoints
    when `[audit] checkpoint_every` > 0."""
    sender = None
    if settings.audit.syslog:
        sender = SyslogSender(
            settings.audit.syslog, source_id=settings.dicom.ae_title, fmt=settings.audit.syslog_format
        )
    writer = None
    if settings.audit.checkpoint_every > 0:
        key, cert = structure_credentials(settings)
        path = checkpoints_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = CheckpointWriter(path, key, cert, publish=sender.send_checkpoint if sender is not None else None)
    return AuditTrail(audit_path(settings), syslog=sender, checkpoints=writer,
                      checkpoint_every=settings.audit.checkpoint_every, url=settings.state.url)  # fmt: skip
