"""The stores on both backends, as instances sharing them see it: sessions and logins, consumer state, the audit
chain, and `drimbox migrate` (an empty PostgreSQL, a SQLite file of the previous release)."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from drimbox.audit.events import SUCCESS, AuditEvent
from drimbox.audit.trail import GENESIS, AuditTrail, read_records, verify
from drimbox.auth.oidc import TokenSet
from drimbox.auth.professional import Professional
from drimbox.auth.session import PendingLogin, SessionStore
from drimbox.consumer.access_store import AccessStore
from drimbox.consumer.store import ConsumerStore
from drimbox.demo.samples.processes import write_config
from drimbox.source.outbox import SCHEMA as OUTBOX_SCHEMA
from drimbox.source.outbox import Outbox


def drimbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drimbox.cli", *args], capture_output=True, text=True, timeout=60)


async def test_a_login_started_on_one_instance_completes_on_another(tmp_path: Path, state_url: str) -> None:
    a = SessionStore(tmp_path / "a" / "auth.sqlite", ttl=3600, idle=600, url=state_url)
    # Two instances share one database; on SQLite that is one file (two processes of one host).
    b = SessionStore(tmp_path / ("b" if state_url else "a") / "auth.sqlite", ttl=3600, idle=600, url=state_url)
    try:
        await a.save_pending(PendingLogin("state-1", "nonce", "verifier", "/viewer", time.time()))
        await a.save_pending(PendingLogin("state-1", "nonce-2", "verifier-2", "/viewer", time.time()))  # replaced
        pending = await b.pop_pending("state-1")
        assert pending is not None and (pending.nonce, pending.code_verifier) == ("nonce-2", "verifier-2")
        assert await a.pop_pending("state-1") is None  # good for one callback only
        session_id = await b.create(Professional(id="810000000001", profession="10"), TokenSet(access_token="t"))
        session = await a.get(session_id)
        assert session is not None and session.professional.id == "810000000001"
        await a.grant(session.id_hash, "1.2.3", "9.9.1")
        await b.grant(session.id_hash, "1.2.3", "9.9.2")  # the same study again: one grant, updated
        assert await b.granted(session.id_hash, "1.2.3") and not await b.granted(session.id_hash, "1.2.4")
        assert await b.delete(session_id) is not None
        assert await a.get(session_id) is None
    finally:
        a.close()
        b.close()


async def test_consumer_state_upserts_on_both_backends(tmp_path: Path, state_url: str) -> None:
    store = await ConsumerStore.open(tmp_path, state_url)
    access = await AccessStore.open(tmp_path, state_url)
    try:
        launch = await store.save_launch({"ins": "x"}, ttl=60)
        assert await store.launch(launch, ttl=60) == {"ins": "x"}
        await store.save_manifest("1.2.9", "INS|OID", b"\x00KOS")
        await store.save_manifest("1.2.9", "INS|OID", b"other")  # a KOS never changes: the first stays
        assert await store.manifest("1.2.9") == ("INS|OID", b"\x00KOS")
        first = await store.record_visit("prof", "INS|OID", ["k1"], window=60, now=1000.0)
        again = await store.record_visit("prof", "INS|OID", ["k1", "k2"], window=60, now=1010.0)
        later = await store.record_visit("prof", "INS|OID", ["k1", "k2"], window=60, now=2000.0)
        assert (first.previous, first.new) == (None, frozenset({"k1"}))
        assert (again.previous, again.new) == (None, frozenset({"k1", "k2"}))
        assert (later.previous, later.new) == (1000.0, frozenset())
        assert await access.apply_launch("L1", "INS|OID", True, "prof") is False
        assert await access.apply_launch("L1", "INS|OID", False, "prof") is None  # applied once
        assert await access.apply_launch("L2", "INS|OID", False, "prof") is True
        assert not await access.opposed("INS|OID")
        await access.grant_emergency("prof", "INS|OID", "urgence vitale", ttl=60)
        await access.grant_emergency("prof", "INS|OID", "arrêt cardiaque", ttl=60)
        emergency = await access.emergency("prof", "INS|OID")
        assert emergency is not None and emergency.reason == "arrêt cardiaque"
    finally:
        await store.close()
        await access.close()


def _event(n: int) -> AuditEvent:
    return AuditEvent(action="dicomweb.retrieve", outcome=SUCCESS, professional="810000000001", study=f"1.2.{n}",
                      detail={"n": str(n)}, at=1_790_000_000.0 + n)  # fmt: skip


@pytest.mark.postgres
async def test_two_instances_writing_the_audit_trail_at_once_keep_one_chain(tmp_path: Path, postgres_url: str) -> None:
    a = AuditTrail(tmp_path / "a" / "audit.sqlite", url=postgres_url)
    b = AuditTrail(tmp_path / "b" / "audit.sqlite", url=postgres_url)
    try:
        await asyncio.gather(*(t.record(_event(n)) for n in range(60) for t in (a, b)))
    finally:
        a.close()
        b.close()
    records = list(read_records(tmp_path / "a" / "audit.sqlite", url=postgres_url))
    assert [r["seq"] for r in records] == list(range(1, 121))
    assert records[0]["prev"] == GENESIS and all(r["prev"] == p["hash"] for p, r in itertools.pairwise(records))
    assert verify(tmp_path / "nowhere.sqlite", url=postgres_url) == (120, None)
    # Append-only in the database too.
    with psycopg.connect(postgres_url, autocommit=True) as conn, pytest.raises(psycopg.errors.RaiseException):
        conn.execute("UPDATE audit.audit SET outcome = 'failure' WHERE seq = 4")
    # The command line reads the same chain from the configuration's [state] url.
    cfg = write_config(tmp_path / "box.toml", {"box": {"var_dir": str(tmp_path / "var")},
                                               "state": {"url": postgres_url}, "audit": {"checkpoint_every": 0}})  # fmt: skip
    out = drimbox("audit", "verify", "-c", str(cfg))
    assert out.returncode == 0 and "120 records" in out.stdout, out.stdout + out.stderr


@pytest.mark.postgres
def test_migrate_on_an_empty_postgresql_applies_every_step_once(tmp_path: Path, postgres_url: str) -> None:
    cfg = write_config(tmp_path / "box.toml", {"box": {"var_dir": str(tmp_path / "var"),
                                                       "roles": ["source", "consumer"]},
                                               "state": {"url": postgres_url}})  # fmt: skip
    first = drimbox("migrate", "-c", str(cfg))
    assert first.returncode == 0, first.stderr
    assert "outbox: applied 1, 2, 3 (version 3)" in first.stdout
    assert "auth: applied 1" in first.stdout and "imports: applied 1, 2" in first.stdout
    assert "audit: applied 1" in first.stdout
    second = drimbox("migrate", "-c", str(cfg))
    assert second.returncode == 0 and "applied" not in second.stdout.replace("state:", ""), second.stdout
    assert "outbox: up to date (version 3)" in second.stdout
    assert not (tmp_path / "var" / "drimbox.sqlite").exists()  # nothing went to SQLite
    with psycopg.connect(postgres_url) as conn:
        schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")}
    assert {"outbox", "auth", "consumer", "access", "xdm", "imports", "audit"} <= schemas


async def test_migrate_upgrades_a_sqlite_outbox_of_the_previous_release_in_place(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir()
    # The outbox as the previous release left it: its tables, no schema_migrations, a job under way.
    conn = sqlite3.connect(var / "drimbox.sqlite")
    conn.executescript(OUTBOX_SCHEMA)
    conn.execute("INSERT INTO publications (action, document_id, accession, study_uid, state, report, created_at,"
                 " updated_at, next_attempt_at, window_start) VALUES ('publish', 'D1', 'A1', '1.2.3', 'retrying',"
                 " '{}', 1, 1, 1, 1)")  # fmt: skip
    conn.commit()
    conn.close()
    cfg = write_config(tmp_path / "box.toml", {"box": {"var_dir": str(var)}})
    out = drimbox("migrate", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "outbox: applied 1, 2, 3 (version 3)" in out.stdout
    assert "up to date" in drimbox("migrate", "-c", str(cfg)).stdout
    outbox = Outbox(var / "drimbox.sqlite")
    try:
        job = await outbox.next_due(time.time())  # the old job, claimed through the new columns
        assert job is not None and (job.document_id, job.state) == ("D1", "retrying")
    finally:
        outbox.close()


async def test_an_audit_trail_of_the_previous_release_goes_on_in_place(tmp_path: Path) -> None:
    from drimbox.audit import store

    path = tmp_path / "audit.sqlite"
    # The trail as the previous release created it (same tables and triggers, no schema_migrations), one record.
    conn = sqlite3.connect(path)
    conn.executescript(";\n".join(store._SQLITE) + ";")
    conn.close()
    first = AuditTrail(path)
    await first.record(_event(1))
    first.close()
    again = AuditTrail(path)
    await again.record(_event(2))
    again.close()
    assert verify(path) == (2, None)
    versions = sqlite3.connect(path).execute("SELECT version FROM schema_migrations").fetchall()
    assert versions == [(1,)]
