"""Publish → XDM export on the source → import on a consumer → the exam's images come from the source."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from drimbox.cli import main as cli_main
from drimbox.consumer.retrieval import KOS_HEADER
from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.hl7.mllp import send_message
from drimbox.xds.xdm import read_package
from tests.support.consumer import INS, FakeAuth, Pro, consumer_app_with_images, consumer_settings
from tests.support.drim_flow import read_multipart
from tests.test_source_e2e import load_exam

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]
STUDY = "1.2.250.1.213.4.5.2.1.103"


@pytest.fixture(autouse=True)
def empty_pacs(orthanc: Any) -> None:
    orthanc.clear()


def _get(request: urllib.request.Request) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_published_exam_round_trips_through_xdm(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    load_exam(orthanc, tmp_path, "C", instances=6)
    box = source_box(orthanc)
    ack = await send_message("127.0.0.1", box.mllp_port, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-XDM"),
                             timeout=30)  # fmt: skip
    assert b"|AA|" in ack
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published", pub

    # The operator API: the operator's token only, a study that is published.
    anonymous = urllib.request.Request(f"{box.url}/api/xdm?study={STUDY}")
    assert (await asyncio.to_thread(_get, anonymous))[0] == 401
    status, body = await asyncio.to_thread(_get, box.operator_request("/api/xdm?study=1.2.3.4"))
    assert status == 404, body
    status, package = await asyncio.to_thread(_get, box.operator_request(f"/api/xdm?study={STUDY}"))
    assert status == 200, package
    exam = read_package(package)
    assert exam.entry.unique_id == pub["kos_uid"] and STUDY in exam.entry.study_uids

    # The command line writes the same exam (signed anew: a package is its own submission set).
    out = tmp_path / "exam-c.zip"
    code = await asyncio.to_thread(cli_main, ["xdm", "export", "--study", STUDY, "-c", str(box.config),
                                              "--out", str(out)])  # fmt: skip
    assert code == 0
    assert read_package(out.read_bytes()).kos == exam.kos

    # A consumer whose DMP cannot be reached: what it shows comes from the package alone.
    settings = consumer_settings(tmp_path, f"http://127.0.0.1:{free_port()}/dmp")
    app = consumer_app_with_images(settings, sim.url, FakeAuth(Pro()))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        refused = await client.post("/conso/api/xdm", data=package[:-40], headers={"Content-Type": "application/zip"})
        assert refused.status == 422, await refused.text()
        assert (await client.get(f"/conso/api/patients/{INS}/exams")).status == 503  # nothing to show yet

        resp = await client.post("/conso/api/xdm", data=package, headers={"Content-Type": "application/zip"})
        body = await resp.json()
        assert resp.status == 201, body
        assert (body["kos_uid"], body["study_uid"], body["patient"]["ins"]) == (pub["kos_uid"], STUDY, INS)

        listed = await (await client.get(f"/conso/api/patients/{INS}/exams")).json()
        (listed_exam,) = listed["exams"]
        assert (listed_exam["kos_uid"], listed_exam["instance_count"], listed_exam["sources"]) == (
            pub["kos_uid"], 6, [box.url.removeprefix("http://")])  # fmt: skip
        page = await (await client.get(f"/conso/patients/{INS}/exams")).text()
        assert f'href="/viewer/?kos={pub["kos_uid"]}"' in page and 'action="/conso/xdm"' in page

        accept = {
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
            KOS_HEADER: pub["kos_uid"],
        }
        resp = await client.get(f"/conso/dicom-web/studies/{STUDY}", headers=accept)
        assert resp.status == 200, await resp.text()
        assert len(await read_multipart(resp)) == 6  # from the source box, through the KOS's Retrieve URLs

        # The page's form posts the same package as a file and comes back to the patient's list.
        form = aiohttp.FormData()
        form.add_field("file", package, filename="exam.zip", content_type="application/zip")
        resp = await client.post("/conso/xdm", data=form, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith(f"/conso/patients/{INS}/exams?")

    # Another professional did not import it: the package is not theirs to see.
    other = consumer_app_with_images(settings, sim.url, FakeAuth(Pro(id="810100000002")))
    async with TestClient(TestServer(other, host="127.0.0.1")) as client:
        assert (await client.get(f"/conso/api/exams/{pub['kos_uid']}")).status != 200
