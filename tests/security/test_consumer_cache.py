"""Security finding 3: a forged KOS (same patient, another exam's UIDs, a rogue Retrieve URL) must not poison the
consumer's cache: neither the genuine exam's viewer nor its import may see the rogue's instances, and an exam whose
source is dead is not answered from another source's copy."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from drimbox.audit.events import REFUSED
from drimbox.demo.samples.processes import free_port
from tests.security._consumer_support import (
    POISON,
    DicomwebServer,
    poisoned,
    running_consumer,
    serving,
    stow_pacs,
    study_files,
)
from tests.support.consumer import consumer_settings, publish, study_spec

pytestmark = [pytest.mark.sim]


def _names(instances: Mapping[str, object]) -> set[str]:
    return {uid for uid, data in instances.items() if isinstance(data, bytes) and POISON.encode() in data}


async def test_a_forged_kos_never_poisons_the_genuine_exam_its_import_or_a_dead_sources_exam(
    sim: Any, tmp_path: Path
) -> None:
    spec = study_spec()  # exam C of the simulator's patient: two series of three instances
    files = study_files(spec)
    genuine = DicomwebServer(free_port(), series=files)
    # The rogue box (listed, as any DRIMbox of the mesh could be) serves, in each of the genuine series, an instance
    # the KOS never referenced, one referenced instance with other content, and one of another study altogether.
    rogue = DicomwebServer(free_port())
    for series_uid, instances in files.items():
        first_uid, first = next(iter(instances.items()))
        rogue.series[series_uid] = {
            f"{first_uid}.666": poisoned(first, f"{first_uid}.666"),
            first_uid: poisoned(first),
            f"{first_uid}.667": poisoned(first, f"{first_uid}.667", StudyInstanceUID="1.2.3.666"),
        }
    dmp = f"{sim.url}/dmp"
    signer = consumer_settings(tmp_path / "publisher", dmp)
    genuine_kos = await publish(dmp, signer, spec, public_url=genuine.url)
    forged_kos = await publish(dmp, signer, spec, public_url=rogue.url)
    dead_kos = await publish(dmp, signer, spec, public_url=f"http://127.0.0.1:{free_port()}")
    # Another box's KOS naming the genuine box's URLs: only that box may say whether it opens them.
    borrowed_kos = await publish(dmp, signer, spec, public_url=genuine.url)
    genuine.published = {genuine_kos}

    async with (serving(genuine), serving(rogue), stow_pacs(free_port()) as pacs,
                running_consumer(tmp_path, sim.url, "pro-token", local_pacs_method="stow-rs",
                                 local_pacs_stow_url=pacs.url) as conso):  # fmt: skip
        assert {genuine_kos, forged_kos, dead_kos, borrowed_kos} <= set(await conso.open_exam_list())

        # The forged exam is opened first: what the rogue sent outside its own KOS is dropped, and audited.
        status, forged_view = await conso.study(spec.study_uid, forged_kos)
        assert status == 200, forged_view
        assert not any(uid.endswith((".666", ".667")) for uid in forged_view)
        dropped = [e for e in conso.events("consumer.retrieve")
                   if e.outcome == REFUSED and e.detail.get("reason") == "instance_not_in_kos"]  # fmt: skip
        assert dropped and all(e.kos == forged_kos for e in dropped), conso.audit.events
        assert sum(int(e.detail["dropped"]) for e in dropped) == 2 * len(files)

        # Then the genuine exam: exactly the genuine source's instances, byte for byte.
        expected = {uid: data for instances in files.values() for uid, data in instances.items()}
        status, view = await conso.study(spec.study_uid, genuine_kos)
        assert status == 200, view
        assert not _names(view), "the rogue's instances reached the genuine exam's viewer"
        assert view == expected
        assert genuine.paths, "the genuine exam was answered from the rogue's copy"

        # Its import into the local PACS: the genuine instances only.
        started = await conso.client.post(f"/conso/api/exams/{genuine_kos}/import")
        assert started.status == 202, await started.text()
        status_url = (await started.json())["status_url"]
        for _ in range(200):
            job = await (await conso.client.get(status_url)).json()
            if job["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.05)
        assert job["state"] == "done", job
        assert sorted(pacs.stored) == sorted(expected.values())

        # The reverse: a KOS with the same UIDs whose source is dead is not served the genuine copy.
        status, refusal = await conso.study(spec.study_uid, dead_kos)
        assert status == 503, refusal
        assert "unreachable" in str(refusal["error"])
        # Nor is a KOS that borrows the genuine URLs: the genuine box is asked, and refuses a KOS it never published.
        status, refusal = await conso.study(spec.study_uid, borrowed_kos)
        assert (status, refusal["reason"]) == (403, "source_refused"), refusal


async def test_the_cache_keeps_one_copy_per_origin_and_forgets_an_index_without_origins(tmp_path: Path) -> None:
    """Two sources claiming the same study and series UIDs each have their own copy; the old (origin-less) index,
    whose series could have come from anyone, is dropped at start with its files."""
    import sqlite3
    from collections.abc import AsyncIterator

    from drimbox.consumer.retrieval import RetrievedInstance
    from drimbox.state.series_cache import SeriesCache

    def source(tag: bytes) -> Any:
        async def instances() -> AsyncIterator[RetrievedInstance]:
            yield RetrievedInstance("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1", "1.2.840.10008.1.2.1", tag * 10)

        return instances

    old = tmp_path / "old"
    (old / "1.2" / "1.3").mkdir(parents=True)
    (old / "1.2" / "1.3" / "1.2.3.1.dcm").write_bytes(POISON.encode())
    conn = sqlite3.connect(old / "index.sqlite")
    conn.executescript("CREATE TABLE series (study_uid TEXT, series_uid TEXT, bytes INTEGER, last_access REAL, "
                       "metadata BLOB, metadata_base TEXT, PRIMARY KEY (study_uid, series_uid));"
                       "INSERT INTO series VALUES ('1.2', '1.3', 14, 0, NULL, NULL);")  # fmt: skip
    conn.close()
    cache = SeriesCache(old, max_bytes=10**9)
    try:
        assert await cache.cached("1.2", "1.3") is None and not (old / "1.2" / "1.3").exists()
        genuine = [i.path.read_bytes() async for i in cache.series("1.2", "1.3", source(b"G"), origin="a1")]
        rogue = [i.path.read_bytes() async for i in cache.series("1.2", "1.3", source(b"R"), origin="b2")]
        again = [i.path.read_bytes() async for i in cache.series("1.2", "1.3", source(b"X"), origin="a1")]
        assert (genuine, rogue, again) == ([b"G" * 10], [b"R" * 10], [b"G" * 10])
        assert await cache.cached("1.2", "1.3") is None  # the source side's own key is a third one
    finally:
        cache.close()
    reopened = SeriesCache(old, max_bytes=10**9)  # complete series with an origin survive a restart
    try:
        hit = await reopened.cached("1.2", "1.3", origin="b2")
        assert hit is not None and [i.path.read_bytes() for i in hit] == [b"R" * 10]
    finally:
        reopened.close()
