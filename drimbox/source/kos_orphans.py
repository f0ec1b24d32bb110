"""At start, remove the KOS files no publication records: a kill between writing one and recording its UID."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from drimbox.dimse.uid import is_lenient_uid
from drimbox.source.outbox import Outbox

log = logging.getLogger(__name__)

# Older than this, a KOS file is no job's work in progress: a job records the UID right after writing the file
# (Publisher._kos), so only a crash in between leaves one behind; the margin covers a box started twice by mistake.
ORPHAN_AGE = 300.0


async def remove_orphan_kos(kos_dir: Path, outbox: Outbox, *, min_age: float = ORPHAN_AGE) -> list[str]:
    """Remove `<uid>.dcm` and `<uid>.tmp` files of `kos_dir` older than `min_age` seconds that no publication
    records; the names of the removed files. Anything else in the directory (not named by a UID) is left alone."""
    # Listed before the outbox is read: a file recorded meanwhile is then seen as recorded, never removed.
    old = await asyncio.to_thread(_old_kos_files, kos_dir, time.time() - min_age)
    if not old:
        return []
    recorded = await outbox.kos_uids()
    removed: list[str] = []
    for path in old:
        if path.suffix == ".dcm" and path.stem in recorded:
            continue
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("KOS clean-up: cannot remove %s: %s", path.name, exc.strerror)
            continue
        removed.append(path.name)
    if removed:
        # KOS UIDs and file names carry no patient identity.
        log.info("KOS clean-up: removed %d file(s) no publication records: %s", len(removed), ", ".join(removed))
    return removed


def _old_kos_files(kos_dir: Path, before: float) -> list[Path]:
    try:
        entries = list(os.scandir(kos_dir))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        path = Path(entry.path)
        if (
            path.suffix not in (".dcm", ".tmp")
            or not is_lenient_uid(path.stem)
            or not entry.is_file(follow_symlinks=False)
        ):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < before:
                found.append(path)
        except FileNotFoundError:
            continue
    return found
