"""A consumer box as a real process: the doctor's contextual launch, Pro Santé Connect login at the simulator, exam list."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.hl7.mllp import send_message
from tests.support.consumer import INS, LAUNCH_FORM
from tests.test_source_e2e import load_exam

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]


@pytest.fixture
def local_pacs(orthanc_factory: Any) -> Any:
    """Orthanc B: the consumer's own PACS, where exams are imported."""
    return orthanc_factory()


@pytest.fixture
def consumer_box(tmp_path: Path, sim: Any, local_pacs: Any) -> Any:
    port = free_port()
    cfg = write_config(
        tmp_path / "consumer.toml",
        {
            "box": {
                "roles": ["consumer"],
                "var_dir": str(tmp_path / "consumer-var"),
                "public_url": f"http://127.0.0.1:{port}",
            },
            "http": {"port": port},
            "dmp": {"url": f"{sim.url}/dmp"},
            "psc": {"issuer": f"{sim.url}/psc"},
            "whitelist": {
                "url": f"{sim.url}/whitelist",
                "certificate_url": f"{sim.url}/whitelist/certificate",
                "trust_on_first_use": True,
            },
            "auth": {"authorize_params": ["sim_auto=1"]},
            "consumer": {"local_pacs_ae_title": local_pacs.aet, "local_pacs_port": local_pacs.dicom_port},
        },
    )
    box = DrimboxProcess("serve", cfg, f"http://127.0.0.1:{port}/health", tmp_path / "consumer.log").start()
    yield box
    box.stop()


async def test_launch_login_and_exam_list_through_a_consumer_box(
    orthanc: Any, source_box: Any, sim: Any, consumer_box: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=4)
    source = source_box(orthanc)
    ack = await send_message("127.0.0.1", source.mllp_port, build_oru(build_cda(ANS_EXAMS["C"]), control_id="CB-1"))
    assert b"|AA|" in ack
    pub = source.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published"

    base = consumer_box.health_url.rsplit("/", 1)[0]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        resp = await http.post(f"{base}/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        assert resp.status == 303, await resp.text()
        login = urlsplit(resp.headers["Location"])
        assert login.path == "/auth/login"
        query = parse_qs(login.query)
        assert query["next"][0].startswith("/conso/launches/")
        # The simulator logs the general practitioner in without a page (sim_auto), then back to the launch.
        params = urlencode({"next": query["next"][0], "login_hint": "801234567897"})
        resp = await http.get(f"{base}/auth/login?{params}")
        assert resp.status == 200, await resp.text()
        assert urlsplit(str(resp.url)).path == f"/conso/patients/{INS}/exams"
        page = await resp.text()
        assert pub["kos_uid"] in page and "CT" in page
        me = await (await http.get(f"{base}/auth/me")).json()
        assert "MEDIONI" in str(me)
        exams = await (await http.get(f"{base}/conso/api/patients/{INS}/exams")).json()
        assert [e["kos_uid"] for e in exams["exams"]] == [pub["kos_uid"]]


async def test_view_and_import_an_exam_through_the_consumer_box_from_a_protected_source(
    orthanc: Any, source_box: Any, sim: Any, consumer_box: Any, local_pacs: Any, tmp_path: Path
) -> None:
    import asyncio
    import hashlib
    import time
    from email.parser import BytesParser

    import pydicom

    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=6)
    source = source_box(orthanc, auth={"protect_dicomweb": True})
    ack = await send_message("127.0.0.1", source.mllp_port, build_oru(build_cda(ANS_EXAMS["C"]), control_id="CB-2"))
    assert b"|AA|" in ack
    pub = source.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published"
    study = "1.2.250.1.213.4.5.2.1.103"

    base = consumer_box.health_url.rsplit("/", 1)[0]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        # Without a token the source refuses: the DRIM-M contract is enforced.
        direct = await http.get(f"{source.url}/dicom-web/studies/{study}")
        assert direct.status == 401
        started = time.perf_counter()
        launch = await http.post(f"{base}/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        next_path = parse_qs(urlsplit(launch.headers["Location"]).query)["next"][0]
        params = urlencode({"next": next_path, "login_hint": "801234567897"})
        assert (await http.get(f"{base}/auth/login?{params}")).status == 200
        detail = await http.get(f"{base}/conso/api/exams/{pub['kos_uid']}")
        assert detail.status == 200, await detail.text()
        resp = await http.get(
            f"{base}/conso/dicom-web/studies/{study}?kos={pub['kos_uid']}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert resp.status == 200, await resp.text()
        first = await resp.content.readany()
        first_byte_s = time.perf_counter() - started
        body = first + await resp.read()
        # The consumer's headline figure: launch POST → PSC login → exam list → first image byte at the consumer.
        print(f"\nlaunch POST to first instance byte: {first_byte_s * 1000:.0f} ms")
        message = BytesParser().parsebytes(f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n".encode() + body)
        got = {}
        for part in message.get_payload():
            ds = pydicom.dcmread(__import__("io").BytesIO(part.get_payload(decode=True)))  # type: ignore[union-attr]
            got[str(ds.SOPInstanceUID)] = hashlib.sha256(ds.PixelData).hexdigest()
    truth = {}
    for iid in orthanc.rest("GET", "/instances"):
        import urllib.request

        with urllib.request.urlopen(f"{orthanc.base_url}/instances/{iid}/file", timeout=30) as r:
            ds = pydicom.dcmread(__import__("io").BytesIO(r.read()))
        truth[str(ds.SOPInstanceUID)] = hashlib.sha256(ds.PixelData).hexdigest()
    assert got == truth

    # Import into Orthanc B, the consumer's PACS; a second import skips everything.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        launch = await http.post(f"{base}/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        next_path = parse_qs(urlsplit(launch.headers["Location"]).query)["next"][0]
        await http.get(f"{base}/auth/login?{urlencode({'next': next_path, 'login_hint': '801234567897'})}")
        for expected in ("stored", "skipped"):
            # Origin: what the browser sends from the list's Import button (another origin is refused: CSRF).
            started_job = await http.post(f"{base}/conso/api/exams/{pub['kos_uid']}/import", headers={"Origin": base})
            assert started_job.status == 202, await started_job.text()
            status_url = (await started_job.json())["status_url"]
            for _ in range(300):
                job = await (await http.get(f"{base}{status_url}")).json()
                if job["state"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.1)
            assert job["state"] == "done" and job[expected] == 6 and job["failed"] == 0, job
    assert sorted(local_pacs.instances()) == sorted(orthanc.instances())
