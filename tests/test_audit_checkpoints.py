"""Signed checkpoints of the audit trail: a cut tail, a rewritten chain or a forged checkpoint is named by verify."""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from drimbox.audit.trail import AuditTrail, open_trail, record_hash
from drimbox.config import Settings, load_settings
from drimbox.demo.samples.processes import write_config
from tests.test_audit_trail import event

EVERY = 5


def box(tmp_path: Path, **audit: object) -> tuple[Path, Settings]:
    cfg = write_config(tmp_path / "box.toml", {"box": {"var_dir": str(tmp_path / "var")},
                                               "audit": {"checkpoint_every": EVERY, **audit}})  # fmt: skip
    return cfg, load_settings(cfg, env={})


async def fill(settings: Settings, count: int, start: int = 0) -> AuditTrail:
    """Record `count` events one by one (one commit each, so every multiple of EVERY is crossed) and close."""
    trail = open_trail(settings)
    for i in range(count):
        await trail.record(event(start + i))
    trail.close()
    return trail


def verify(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "drimbox.cli", "audit", "verify", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def checkpoints(settings: Settings) -> list[dict[str, object]]:
    lines = (settings.var_path / "audit-checkpoints.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def sql(settings: Settings, *statements: str) -> None:
    """What someone with the file can do: drop the append-only triggers and change the table."""
    db = sqlite3.connect(settings.var_path / "audit.sqlite", isolation_level=None)
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    for s in statements:
        db.execute(s)
    db.close()


async def test_checkpoints_every_n_records_and_at_shutdown_and_verify_sees_a_cut_tail(tmp_path: Path) -> None:
    cfg, settings = box(tmp_path)
    await fill(settings, 12)
    assert [(c["seq"], c["reason"]) for c in checkpoints(settings)] == [(5, "periodic"), (10, "periodic"),
                                                                        (12, "shutdown")]  # fmt: skip
    ok = verify(cfg)
    assert ok.returncode == 0 and "12 records" in ok.stdout and "3 signed checkpoints" in ok.stdout, ok.stdout
    # The last 4 records removed: the chain that is left holds on its own, the shutdown checkpoint does not.
    sql(settings, "DELETE FROM audit WHERE seq > 8")
    cut = verify(cfg)
    assert cut.returncode == 1
    assert "the trail ends at record 8 but record 12 was checkpointed" in cut.stdout, cut.stdout
    assert "records 9 to 12 at least were removed" in cut.stdout and cut.stdout.count("BROKEN") == 1


async def test_a_restart_after_a_crash_checkpoints_what_was_written_and_logs_a_cut_trail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, settings = box(tmp_path)
    trail = open_trail(settings)
    for i in range(3):
        await trail.record(event(i))
    trail.checkpoints = None  # stopped as by SIGKILL: no shutdown checkpoint
    trail.close()
    assert not (settings.var_path / "audit-checkpoints.jsonl").exists()
    await fill(settings, 0)  # the restart seals records 1..3
    assert [(c["seq"], c["reason"]) for c in checkpoints(settings)] == [(3, "open")]
    sql(settings, "DELETE FROM audit WHERE seq = 3")
    with caplog.at_level(logging.ERROR, logger="drimbox.audit.trail"):
        open_trail(settings).close()
    assert "ends at record 2, before its last checkpoint (record 3)" in caplog.text


async def test_a_rewritten_chain_and_forged_or_missing_checkpoints_are_named(tmp_path: Path) -> None:
    cfg, settings = box(tmp_path)
    await fill(settings, 10)
    # Record 3 changed and every hash after it recomputed: a consistent chain, but not the one checkpointed.
    db = sqlite3.connect(settings.var_path / "audit.sqlite")
    rows = [dict(zip([c[0] for c in db.execute("SELECT * FROM audit").description], r, strict=True))
            for r in db.execute("SELECT * FROM audit ORDER BY seq")]  # fmt: skip
    db.close()
    prev, updates = rows[1]["hash"], []
    for r in rows[2:]:
        r["detail"] = json.loads(r["detail"])
        if r["seq"] == 3:
            r["detail"]["status"] = "403"
        r["prev"] = prev
        r["hash"] = prev = record_hash(r)
        updates.append(f"UPDATE audit SET detail = '{json.dumps(r['detail'], sort_keys=True)}', prev = '{r['prev']}',"
                       f" hash = '{r['hash']}' WHERE seq = {r['seq']}")  # fmt: skip
    sql(settings, *updates)
    out = verify(cfg)
    assert out.returncode == 1 and "BROKEN at record" not in out.stdout  # the chain alone holds
    assert "record 5 is not the one checkpointed at line 1" in out.stdout, out.stdout
    assert "record 10 is not the one checkpointed at line 2" in out.stdout
    # A checkpoint moved back to hide a cut: its signature no longer holds.
    path = settings.var_path / "audit-checkpoints.jsonl"
    forged = checkpoints(settings)
    forged[-1]["seq"] = 3
    path.write_text("".join(json.dumps(c) + "\n" for c in forged))
    out = verify(cfg)
    assert "checkpoint line 2 (record 3): the signature does not hold" in out.stdout, out.stdout
    path.unlink()
    out = verify(cfg)
    assert out.returncode == 1 and "no checkpoint file" in out.stdout and "10 records" in out.stdout


def test_checkpoint_every_is_checked_by_name(tmp_path: Path) -> None:
    from drimbox.config import ConfigError

    with pytest.raises(ConfigError, match=r"audit\.checkpoint_every"):
        load_settings(env={"DRIMBOX_AUDIT__CHECKPOINT_EVERY": "-1"})


async def test_checkpoints_go_to_syslog_too(tmp_path: Path) -> None:
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(10)
    try:
        _, settings = box(tmp_path, syslog=f"udp://127.0.0.1:{collector.getsockname()[1]}", syslog_format="json")
        await fill(settings, EVERY)
        frames = [collector.recv(65536) for _ in range(EVERY + 1)]
    finally:
        collector.close()
    marked = [f for f in frames if b" DRIMBOX-CHECKPOINT " in f.split(b"\xef\xbb\xbf", 1)[0]]
    assert len(marked) == 1
    sent = json.loads(marked[0].split(b"\xef\xbb\xbf", 1)[1])
    assert sent == checkpoints(settings)[0] and sent["seq"] == EVERY and sent["signature"]


async def test_a_line_torn_by_a_power_cut_is_named_and_later_checkpoints_still_hold(tmp_path: Path) -> None:
    cfg, settings = box(tmp_path)
    await fill(settings, EVERY)
    with (settings.var_path / "audit-checkpoints.jsonl").open("a") as f:
        f.write('{"seq": 6, "hash": "ab')  # the end of a write that never reached the disk
    await fill(settings, EVERY, start=EVERY)
    assert [c["seq"] for c in checkpoints(settings)[-1:]] == [2 * EVERY]
    out = verify(cfg)
    assert out.returncode == 1 and out.stdout.count("BROKEN") == 1, out.stdout
    assert "checkpoint line 2 is not a checkpoint" in out.stdout
