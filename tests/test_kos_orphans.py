"""KOS files no publication records are removed at start, unless recent (a job may be writing them) or not KOS."""

from __future__ import annotations

import os
import time
from pathlib import Path

from drimbox.source.kos_orphans import remove_orphan_kos
from drimbox.source.outbox import Outbox


def aged(path: Path, content: bytes, seconds: float) -> Path:
    path.write_bytes(content)
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


async def test_only_old_unrecorded_kos_files_are_removed(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "drimbox.sqlite")
    try:
        accepted = await outbox.accept(
            sender="RIS",
            control_id="1",
            raw=b"MSH",
            action="publish",
            document_id="D1",
            accession="A1",
            study_uid="1.2.3",
            report={},
        )
        await outbox.update(accepted.publication_id, kos_uid="1.2.250.9.1", state="published")
        kos = tmp_path / "kos"
        kos.mkdir()
        recorded = aged(kos / "1.2.250.9.1.dcm", b"kos", 3600)
        orphan = aged(kos / "1.2.250.9.2.dcm", b"kos", 3600)
        half_written = aged(kos / "1.2.250.9.3.tmp", b"k", 3600)
        being_written = aged(kos / "1.2.250.9.4.tmp", b"k", 5)
        just_written = aged(kos / "1.2.250.9.5.dcm", b"kos", 5)
        not_a_kos = aged(kos / "notes.dcm", b"operator", 3600)
        removed = await remove_orphan_kos(kos, outbox, min_age=300)
        assert sorted(removed) == ["1.2.250.9.2.dcm", "1.2.250.9.3.tmp"]
        assert not orphan.exists() and not half_written.exists()
        assert all(p.exists() for p in (recorded, being_written, just_written, not_a_kos))
        # Once old enough, the unrecorded one written just now goes too; the recorded one never does.
        assert sorted(await remove_orphan_kos(kos, outbox, min_age=0)) == ["1.2.250.9.4.tmp", "1.2.250.9.5.dcm"]
        assert recorded.exists() and not just_written.exists() and not being_written.exists()
    finally:
        outbox.close()


async def test_a_missing_kos_directory_is_not_an_error(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "drimbox.sqlite")
    try:
        assert await remove_orphan_kos(tmp_path / "kos", outbox) == []
    finally:
        outbox.close()
