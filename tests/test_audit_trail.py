"""The audit trail as an operator sees it: durable hash chain, export, verify, tampering found, restarts."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from drimbox.audit.events import REFUSED, SUCCESS, AuditEvent
from drimbox.audit.trail import GENESIS, AuditTrail, record_hash, verify, verify_records
from drimbox.demo.samples.processes import write_config

INS = "279035121518989"


def drimbox(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drimbox.cli", *args], capture_output=True, text=True, timeout=60)


def event(n: int, at: float = 1_790_000_000.0) -> AuditEvent:
    return AuditEvent(
        action="dicomweb.retrieve", outcome=SUCCESS if n % 2 else REFUSED, professional="810000000001",
        patient=INS, patient_name="MUSTERMANN^Jeanne", study=f"1.2.3.{n}", kos=f"1.2.4.{n}", source="127.0.0.1",
        detail={"status": "200", "n": str(n)}, at=at + n,
    )  # fmt: skip


async def fill(path: Path, count: int, start: int = 0) -> None:
    trail = AuditTrail(path)
    try:
        # Concurrent callers: the writer groups them, the chain stays one line.
        await asyncio.gather(*(trail.record(event(start + i)) for i in range(count)))
    finally:
        trail.close()


def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "box.toml", {"box": {"var_dir": str(tmp_path / "var")}})


async def test_records_are_chained_and_the_chain_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    await fill(path, 20)
    trail = AuditTrail(path)
    assert trail.head[0] == 20  # the head is re-read on open
    await trail.record(event(99))
    trail.close()
    rows = sqlite3.connect(path).execute("SELECT seq, prev, hash FROM audit ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == list(range(1, 22))
    assert rows[0][1] == GENESIS
    assert all(rows[i][1] == rows[i - 1][2] for i in range(1, len(rows)))
    assert verify(path) == (21, None)


async def test_the_store_refuses_updates_and_deletes(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    await fill(path, 2)
    db = sqlite3.connect(path)
    for sql in ("UPDATE audit SET outcome = 'success'", "DELETE FROM audit WHERE seq = 2"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(sql)


async def test_verify_names_the_first_tampered_record(tmp_path: Path) -> None:
    await fill(tmp_path / "var" / "audit.sqlite", 10)
    cfg = config(tmp_path)
    ok = drimbox("audit", "verify", "-c", str(cfg))
    assert ok.returncode == 0 and "10 records" in ok.stdout, ok.stdout + ok.stderr
    db = sqlite3.connect(tmp_path / "var" / "audit.sqlite", isolation_level=None)
    # Whoever holds the file can drop the guard; the chain still tells.
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("UPDATE audit SET outcome = 'failure' WHERE seq = 4")
    db.close()
    bad = drimbox("audit", "verify", "-c", str(cfg))
    assert bad.returncode == 1
    assert "record 4" in bad.stdout and "changed" in bad.stdout, bad.stdout


async def test_a_removed_record_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    await fill(path, 5)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute("DELETE FROM audit WHERE seq = 3")
    db.close()
    count, broken = verify(path)
    assert count == 2 and broken is not None and broken.seq == 3 and "missing" in broken.reason


async def test_export_round_trips_and_filters_by_time(tmp_path: Path) -> None:
    await fill(tmp_path / "var" / "audit.sqlite", 6)
    cfg = config(tmp_path)
    out = drimbox("audit", "export", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(records) == 6
    # The export alone proves itself: each line's hash recomputes and links to the line before.
    assert verify_records(records) == (6, None)
    assert all(record_hash(r) == r["hash"] for r in records)
    first = records[0]
    assert (first["patient"], first["patient_name"], first["study"], first["detail"]) == (
        INS,
        "MUSTERMANN^Jeanne",
        "1.2.3.0",
        {"n": "0", "status": "200"},
    )
    # event(n) happens at 1_790_000_000 + n seconds (2026-09-21T14:13:20Z + n s); --until is exclusive.
    window = drimbox("audit", "export", "--since", "2026-09-21T14:13:22Z", "--until", "2026-09-21T16:13:24+02:00",
                     "-c", str(cfg))  # fmt: skip
    assert [json.loads(line)["seq"] for line in window.stdout.splitlines()] == [3, 4]
    bad = drimbox("audit", "export", "--since", "yesterday", "-c", str(cfg))
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


def test_verify_without_a_trail_says_where_it_looked(tmp_path: Path) -> None:
    out = drimbox("audit", "verify", "-c", str(config(tmp_path)))
    assert out.returncode == 2 and "audit.sqlite" in out.stderr


async def test_a_failed_write_fails_the_record_call(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    trail = AuditTrail(path)
    await trail.record(event(1))
    # Another writer holds the database: the insert cannot happen, and record() must say so (not pretend).
    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    trail._db.execute("PRAGMA busy_timeout=0")
    with pytest.raises(RuntimeError, match="could not be written"):
        await trail.record(event(2))
    blocker.execute("ROLLBACK")
    await trail.record(event(3))  # the writer survived and the chain continues from the last stored record
    trail.close()
    assert verify(path) == (2, None)


def test_audit_settings_are_checked_by_name(tmp_path: Path) -> None:
    from drimbox.config import ConfigError, load_settings

    assert load_settings(env={}).audit.enabled is True
    cfg = write_config(tmp_path / "bad.toml", {"audit": {"syslog": "syslog.example:514"}})
    with pytest.raises(ConfigError, match=r"audit\.syslog"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match=r"audit\.syslog_format"):
        load_settings(env={"DRIMBOX_AUDIT__SYSLOG_FORMAT": "cef"})
