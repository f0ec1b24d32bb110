"""A publication's KOS bytes: the local file under var_dir/kos, else the outbox's copy (another instance built it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drimbox.source.outbox import Outbox
from drimbox.state.durable import write_atomic


async def read_kos(kos_dir: Path, outbox: Outbox, kos_uid: str) -> bytes:
    """The KOS's bytes; OSError when neither this box's file nor the outbox has them.

    Instances sharing a PostgreSQL outbox each keep their own kos directory: the first read of a KOS another
    instance built writes it here, so later reads (access checks, revisions, exports) stay local.
    """
    path = kos_dir / f"{kos_uid}.dcm"
    try:
        return await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        data = await outbox.kos_bytes(kos_uid)
        if data is None:
            raise
    await asyncio.to_thread(_keep, path, data)
    return data


def _keep(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # `<uid>.tmp`: what a crash leaves behind, kos_orphans finds by that name and removes.
    write_atomic(path, data, tmp=path.with_suffix(".tmp"))
