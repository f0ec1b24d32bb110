"""What one process of the box changes, another sees ([http] workers): opened exams voided by an opposition, and an
import job run by one process only. Two objects on one directory stand for two processes (flock locks conflict
between two open files of one process as between two processes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from drimbox.config import Settings
from drimbox.consumer.backend import ConsumerBackend, Grant
from drimbox.consumer.importer import Importer
from drimbox.state.locks import LockFiles
from tests.support.consumer import Pro


class _Kos:
    study_uid = "1.2.3"
    sop_instance_uid = "1.2.3.9"


PRO = Pro()


def _backend(tmp_path: Path, checks: list[str], name: str) -> ConsumerBackend:
    async def check_exam(pro: Any, kos_uid: str) -> None:
        checks.append(name)

    backend = ConsumerBackend(None, None, None, check_exam=check_exam, epoch=tmp_path / "grants.epoch")  # type: ignore[arg-type]

    async def kos(kos_uid: str) -> Any:
        return _Kos()

    backend.kos = kos  # type: ignore[method-assign]
    return backend


async def test_an_opposition_in_one_process_voids_the_exams_opened_in_another(tmp_path: Path) -> None:
    checks: list[str] = []
    a, b = _backend(tmp_path, checks, "a"), _backend(tmp_path, checks, "b")
    await a.open(PRO, "1.2.3.9")
    await b.open(PRO, "1.2.3.9")
    await b.open(PRO, "1.2.3.9")  # remembered: no second check within GRANT_TTL
    assert checks == ["a", "b"]
    a.forget_grants()  # the opposition, recorded by process a
    await b.open(PRO, "1.2.3.9")
    assert checks == ["a", "b", "b"]  # process b checked again at once
    a.forget_grants()
    await b.open(PRO, "1.2.3.9")
    assert checks == ["a", "b", "b", "b"]  # every opposition, not only the first


def _job(importer: Importer, job_id: str, kos_uid: str, state: str) -> None:
    importer.db.call(lambda c: c.execute(
        "INSERT INTO imports (id, kos_uid, professional, state, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, kos_uid, PRO.id, state, time.time(), time.time())))  # fmt: skip


def _state(importer: Importer, job_id: str) -> str:
    row = importer.db.call(lambda c: c.execute("SELECT state FROM imports WHERE id = ?", (job_id,)).fetchone())
    return str(row["state"])


async def test_an_import_runs_in_one_process_only(tmp_path: Path) -> None:
    settings = Settings()
    first = Importer(settings, None, tmp_path)  # type: ignore[arg-type]
    _job(first, "running-elsewhere", "1.2.3.9", "running")
    _job(first, "orphaned", "1.2.3.8", "running")
    elsewhere = LockFiles(tmp_path / "import-locks").try_acquire("running-elsewhere")  # the other process runs it
    assert elsewhere is not None
    second = Importer(settings, None, tmp_path)  # type: ignore[arg-type]  # a process (re)starting
    assert _state(second, "running-elsewhere") == "running"  # not marked interrupted under its runner's feet
    assert _state(second, "orphaned") == "interrupted"  # its process died: the professional may resume it
    # Asked again while the other process runs it: the same job, not a second run here.
    job = await second.start(Grant(PRO.id, "1.2.3.9", "token"))
    assert job == "running-elsewhere" and not second._tasks
    elsewhere.release()
    await first.close()
    await second.close()


def test_a_starting_process_leaves_the_files_other_processes_are_writing(tmp_path: Path) -> None:
    """The Native archive's .incoming: a (re)starting process removes a dead writer's temporary file, not a live one's."""
    import subprocess

    from drimbox.archive.archive import Archive

    root = tmp_path / "archive"
    (root / ".incoming").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    try:
        (root / ".incoming" / f"1.2.3.{dead.pid}.0.tmp").write_bytes(b"left by a killed process")
        (root / ".incoming" / f"1.2.4.{live.pid}.0.tmp").write_bytes(b"being written")
        Archive(root).close()
        assert [p.name for p in (root / ".incoming").iterdir()] == [f"1.2.4.{live.pid}.0.tmp"]
    finally:
        live.kill()
        live.wait()


async def test_an_exam_opened_in_one_process_is_found_by_study_in_another(tmp_path: Path) -> None:
    """A viewer that names the KOS once, then only the study: the other process finds the exam, checks it itself."""
    checks: list[str] = []
    a, b = _backend(tmp_path, checks, "a"), _backend(tmp_path, checks, "b")
    assert b.opened(PRO.id, "1.2.3") is None
    await a.open(PRO, "1.2.3.9")
    assert b.opened(PRO.id, "1.2.3") == "1.2.3.9"
    assert b.opened("another professional", "1.2.3") is None
    a.forget_grants()  # an opposition: named again before it opens anything
    assert b.opened(PRO.id, "1.2.3") is None and a.opened(PRO.id, "1.2.3") is None


async def test_an_import_left_running_by_a_dead_host_is_taken_over_once_its_lease_ran_out(tmp_path: Path) -> None:
    """On one PostgreSQL, instances on other hosts cannot see a dead process: a job they stopped renewing for a lease
    ([publish] lease_seconds) is resumed by the instance the professional asks; one still renewed is left alone."""
    importer = Importer(Settings(), None, tmp_path)  # type: ignore[arg-type]
    now = time.time()

    def insert(job_id: str, kos_uid: str, updated: float) -> None:
        importer.db.call(lambda c: c.execute(
            "INSERT INTO imports (id, kos_uid, professional, state, created, updated, owner) "
            "VALUES (?, ?, ?, 'running', ?, ?, 'another-host/4242')", (job_id, kos_uid, PRO.id, updated, updated)))  # fmt: skip

    insert("renewed", "1.2.3.9", now - 5)
    insert("abandoned", "1.2.3.8", now - 120)
    try:
        assert await importer.start(Grant(PRO.id, "1.2.3.9", "token")) == "renewed"
        assert _state(importer, "renewed") == "running" and "renewed" not in importer._tasks
        assert await importer.start(Grant(PRO.id, "1.2.3.8", "token")) == "abandoned"  # the same job, resumed
        owner = importer.db.call(lambda c: c.execute("SELECT owner FROM imports WHERE id = 'abandoned'").fetchone())
        assert owner["owner"] == importer.instance
    finally:
        await importer.close()
