"""Ordinary logs carry no patient identity, at DEBUG, through a whole source and consumer flow; the audit trail does."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.demo.samples.reports import ANS_EXAMS
from tests.support.consumer import INS, LAUNCH_FORM
from tests.support.drim_flow import DOCTOR, publish_exam

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]
STUDY = "1.2.250.1.213.4.5.2.1.103"
# The ANS test patient as the report (CDA, PID-5), the PACS and the doctor's launch name them.
IDENTITY = (INS, ANS_EXAMS["C"].family, ANS_EXAMS["C"].given)


@pytest.fixture
def consumer(tmp_path: Path, sim: Any, orthanc: Any) -> Iterator[DrimboxProcess]:
    """A consumer box at DEBUG whose local PACS is the source's Orthanc: an import there stores nothing, quickly."""
    port = free_port()
    cfg = write_config(tmp_path / "consumer.toml", {
        "box": {"roles": ["consumer"], "var_dir": str(tmp_path / "consumer-var"), "public_url": f"http://127.0.0.1:{port}",
                "log_level": "DEBUG"},
        "http": {"port": port},
        "dmp": {"url": f"{sim.url}/dmp"},
        "psc": {"issuer": f"{sim.url}/psc"},
        "whitelist": {"url": f"{sim.url}/whitelist", "certificate_url": f"{sim.url}/whitelist/certificate",
                      "trust_on_first_use": True},
        "auth": {"authorize_params": ["sim_auto=1"]},
        "consumer": {"local_pacs_ae_title": orthanc.aet, "local_pacs_port": orthanc.dicom_port},
    })  # fmt: skip
    box = DrimboxProcess("serve", cfg, f"http://127.0.0.1:{port}/health", tmp_path / "consumer.log").start()
    yield box
    box.stop()


async def login(http: aiohttp.ClientSession, base: str, next_path: str) -> None:
    resp = await http.get(f"{base}/auth/login?{urlencode({'next': next_path, 'login_hint': DOCTOR})}")
    assert resp.status == 200, await resp.text()


async def consumer_flow(base: str, kos_uid: str) -> None:
    """Launch, PSC login, exam list (page and API), exam, images, import, logout: everything a doctor does."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        launch = await http.post(f"{base}/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        await login(http, base, parse_qs(urlsplit(launch.headers["Location"]).query)["next"][0])
        assert (await http.get(f"{base}/conso/api/patients/{INS}/exams")).status == 200
        assert (await http.get(f"{base}/conso/api/exams/{kos_uid}")).status == 200
        images = await http.get(
            f"{base}/conso/dicom-web/studies/{STUDY}?kos={kos_uid}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert images.status == 200 and len(await images.read()) > 10_000
        job = await http.post(f"{base}/conso/api/exams/{kos_uid}/import", headers={"Origin": base})
        assert job.status == 202, await job.text()
        status_url = (await job.json())["status_url"]
        for _ in range(300):
            state = await (await http.get(f"{base}{status_url}")).json()
            if state["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.1)
        assert state["state"] == "done", state
        # A refused access is traced too: an exam this doctor never listed.
        assert (await http.get(f"{base}/conso/api/exams/1.2.3.4")).status == 404
        assert (await http.post(f"{base}/auth/logout", headers={"Origin": base}, allow_redirects=False)).status == 303


async def report_link(base: str) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        link = f"/IHEInvokeImageDisplay?{urlencode({'requestType': 'STUDY', 'studyUID': STUDY})}"
        # The link asks for a login first; the simulator's PSC needs the hint to log the doctor in without a page.
        resp = await http.get(f"{base}/auth/login?{urlencode({'next': link, 'login_hint': DOCTOR})}")
        assert urlsplit(str(resp.url)).path == "/viewer/", resp.url
        # The viewer, on the box's own session, asks for the series.
        series = await http.get(
            f"{base}/dicom-web/studies/{STUDY}/series", headers={"Accept": "application/dicom+json"}
        )
        assert series.status == 200, await series.text()


def export(config: Path) -> list[dict[str, Any]]:
    for command in ("verify", "export"):
        out = subprocess.run([sys.executable, "-m", "drimbox.cli", "audit", command, "-c", str(config)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


async def test_no_patient_identity_in_debug_logs_but_all_of_it_in_the_audit(
    orthanc: Any, source_box: Any, sim: Any, consumer: DrimboxProcess, tmp_path: Path
) -> None:
    orthanc.clear()
    source = source_box(orthanc, box={"log_level": "DEBUG"},
                        auth={"protect_dicomweb": True, "authorize_params": ["sim_auto=1"]})  # fmt: skip
    pub = await asyncio.to_thread(publish_exam, orthanc, source, tmp_path)
    async with aiohttp.ClientSession() as http:  # no token: refused, and traced
        assert (await http.get(f"{source.url}/dicom-web/studies/{STUDY}")).status == 401
    await consumer_flow(consumer.health_url.rsplit("/", 1)[0], pub["kos_uid"])
    await report_link(source.url)
    source.stop()
    consumer.stop()

    for box in (source.process, consumer):
        log = box.log()
        assert " DEBUG " in log, "the box did not log at DEBUG: this test would prove nothing"
        for trait in IDENTITY:
            assert trait.lower() not in log.lower(), f"{trait!r} in {box.log_path.name}"

    source_trail = export(source.config)
    consumer_trail = export(tmp_path / "consumer.toml")
    for trail in (source_trail, consumer_trail):
        text = json.dumps(trail)
        assert all(trait in text for trait in IDENTITY), text[:2000]
    actions = {(r["action"], r["outcome"]) for r in source_trail}
    assert {("dmp.register", "success"), ("dicomweb.retrieve", "success"), ("report-link.open", "success"),
            ("auth.login", "success")} <= actions, actions  # fmt: skip
    refused = next(r for r in source_trail if r["action"] == "dicomweb.retrieve")
    assert (refused["outcome"], refused["professional"], refused["detail"]["reason"]) == (
        "refused",
        None,
        "token_missing",
    )
    retrieve = next(r for r in source_trail if r["action"] == "dicomweb.retrieve" and r["outcome"] == "success")
    assert (retrieve["professional"], retrieve["patient"], retrieve["kos"], retrieve["study"]) == (
        DOCTOR,
        INS,
        pub["kos_uid"],
        STUDY,
    )
    assert retrieve["detail"]["via"] == "token" and retrieve["source"] == "127.0.0.1"
    viewer = next(r for r in source_trail if r["detail"].get("via") == "session")
    assert (viewer["outcome"], viewer["professional"], viewer["patient"], viewer["study"]) == (
        "success",
        DOCTOR,
        INS,
        STUDY,
    )
    register = next(r for r in source_trail if r["action"] == "dmp.register")
    assert register["professional"] == ANS_EXAMS["C"].author_id and register["kos"] == pub["kos_uid"]
    actions = {(r["action"], r["outcome"]) for r in consumer_trail}
    assert {("auth.login", "success"), ("consumer.exams", "success"), ("consumer.exam", "success"),
            ("consumer.retrieve", "success"), ("consumer.import", "success"), ("consumer.exam", "refused"),
            ("auth.logout", "success")} <= actions, actions  # fmt: skip
    # One record per operation: the study retrieve is one record, not one per instance.
    assert sum(r["action"] == "consumer.retrieve" for r in consumer_trail) == 1
