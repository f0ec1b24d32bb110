"""Import of exam C into the consumer's local PACS (Orthanc B), by C-STORE and by STOW-RS; re-import skips all."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drimbox.consumer.backend import Grant
from drimbox.consumer.importer import Importer
from drimbox.demo.samples.processes import free_port
from drimbox.manifest import parse_kos
from tests.support.drim_flow import (
    DOCTOR,
    consumer_settings,
    protected_front,
    psc_token,
    publish_exam,
    running_consumer,
)

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]


@pytest.fixture(autouse=True)
def empty_pacs(orthanc: Any) -> None:
    orthanc.clear()


@pytest.fixture(scope="module")
def orthanc_b(orthanc_factory: Any) -> Any:
    """The consumer's local PACS (it accepts C-STORE and C-FIND from any AE)."""
    return orthanc_factory(box_aet="DRIMCONSO", box_port=free_port())


async def _import(http: aiohttp.ClientSession, url: str, kos_uid: str) -> dict[str, Any]:
    async with http.post(f"{url}/conso/api/exams/{kos_uid}/import") as resp:
        assert resp.status == 202, await resp.text()
        started = await resp.json()
        assert resp.headers["Location"] == started["status_url"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with http.get(url + started["status_url"]) as resp:
            report: dict[str, Any] = await resp.json()
        if report["state"] not in ("queued", "running"):
            return report
        await asyncio.sleep(0.1)
    raise AssertionError(f"import never ended: {report}")


@pytest.mark.parametrize("method", ["c-store", "stow-rs"])
async def test_exam_c_is_imported_then_reimport_skips_everything(
    method: str, orthanc: Any, orthanc_b: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    orthanc_b.clear()
    port = free_port()
    box = source_box(orthanc, box={"public_url": f"http://127.0.0.1:{port}"})
    pub = await asyncio.to_thread(publish_exam, orthanc, box, tmp_path, instances=12)
    kos_bytes = await asyncio.to_thread(sim.document_bytes, pub["kos_uid"])
    expected = parse_kos(kos_bytes).instance_uids()
    token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
    settings = consumer_settings(tmp_path, sim.url, orthanc_b, method)
    async with (protected_front(box, sim.url, port),
                running_consumer(settings, token, {pub["kos_uid"]: kos_bytes}) as conso,
                aiohttp.ClientSession() as http):  # fmt: skip
        report = await _import(http, conso.url, pub["kos_uid"])
        assert report["state"] == "done", report["errors"]
        assert (report["total"], report["stored"], report["skipped"], report["failed"]) == (12, 12, 0, 0), report
        assert set(await asyncio.to_thread(orthanc_b.instances)) == expected
        again = await _import(http, conso.url, pub["kos_uid"])
        assert again["id"] != report["id"]
        assert (again["state"], again["stored"], again["skipped"], again["failed"]) == ("done", 0, 12, 0), again
        async with http.get(f"{conso.url}/conso/api/imports/nope") as resp:
            assert resp.status == 404


async def test_an_import_interrupted_by_a_restart_is_kept_and_resumed(tmp_path: Path, sim: Any) -> None:
    """No source needed: the job's state lives in SQLite; the stopped job is `interrupted`, then resumable."""
    settings = consumer_settings(tmp_path, sim.url)
    async with running_consumer(settings, "t", {}) as conso:
        job = await conso.importer.start(Grant(DOCTOR, "1.2.3", "t"))
        await conso.importer.close()  # the process stops while the job runs
        assert (await asyncio.to_thread(_status_after_restart, settings, conso, job))["state"] == "interrupted"
        conso.importer = Importer(settings, conso.backend, settings.var_path / "consumer")
        assert await conso.importer.start(Grant(DOCTOR, "1.2.3", "t")) == job  # the same job, resumed
        for _ in range(50):
            status = await conso.importer.status(job)
            if status and status["state"] == "failed":
                break
            await asyncio.sleep(0.05)
        assert status and status["state"] == "failed" and "manifest" in status["errors"][0]


def _status_after_restart(settings: Any, conso: Any, job: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        importer = Importer(settings, conso.backend, settings.var_path / "consumer")
        try:
            found = await importer.status(job)
            assert found is not None
            return found
        finally:
            await importer.close()

    return asyncio.run(read())
