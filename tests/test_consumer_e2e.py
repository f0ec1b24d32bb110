"""Source box publishes ANS exam C into the simulated DMP (real processes); the consumer launches and lists it."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.hl7.mllp import send_message
from tests.support.consumer import INS, LAUNCH_FORM, FakeAuth, Pro, consumer_client, consumer_settings
from tests.test_source_e2e import load_exam

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]


@pytest.fixture(autouse=True)
def empty_pacs(orthanc: Any) -> None:
    orthanc.clear()


async def test_exam_c_from_the_source_box_is_found_through_the_dmp(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    load_exam(orthanc, tmp_path, "C", instances=6)
    box = source_box(orthanc)
    ack = await send_message("127.0.0.1", box.mllp_port, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-CONSO"),
                             timeout=30)  # fmt: skip
    assert b"|AA|" in ack
    pub = box.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published", pub
    source_host = box.url.removeprefix("http://")

    auth = FakeAuth(None)
    settings = consumer_settings(tmp_path, f"{sim.url}/dmp")
    async with consumer_client(settings, auth) as client:
        # Not logged in: the launch is kept and the browser sent to the login, coming back to a GET.
        resp = await client.post("/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        assert resp.status == 303
        next_path = parse_qs(urlsplit(resp.headers["Location"]).query)["next"][0]
        assert next_path.startswith("/conso/launches/")
        auth.pro = Pro()  # "login"
        resp = await client.get(next_path, allow_redirects=False)
        assert resp.status == 303 and urlsplit(resp.headers["Location"]).path == f"/conso/patients/{INS}/exams"
        resp = await client.get(resp.headers["Location"])
        assert resp.status == 200, await resp.text()
        page = await resp.text()
        for expected in ("08/01/2021", "CT", source_host, "Centre de radiologie Ambroise", "2 série(s), 6 image(s)",
                         f'href="/viewer/?kos={pub["kos_uid"]}"'):  # fmt: skip
            assert expected in page, expected

        # Logged in from the start: straight to the list; the JSON API agrees.
        resp = await client.post("/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith(f"/conso/patients/{INS}/exams?")
        body = await (await client.get(f"/conso/api/patients/{INS}/exams")).json()
        (exam,) = body["exams"]
        assert exam["kos_uid"] == pub["kos_uid"] and exam["study_uid"] == "1.2.250.1.213.4.5.2.1.103"
        assert (exam["date"], exam["modalities"], exam["sources"]) == ("2021-01-08", ["CT"], [source_host])
        assert (exam["series_count"], exam["instance_count"], exam["accession"]) == (2, 6, "ACN103")
        assert body["new_count"] == 1 and body["query"]["oid"] == "1.2.250.1.213.1.4.10"
        detail = await (await client.get(f"/conso/api/exams/{pub['kos_uid']}")).json()
        assert [s["count"] for s in detail["series"]] == [3, 3]
        assert all(s["retrieve_url"].startswith(f"{box.url}/dicom-web/studies/1.2.250.1.213.4.5.2.1.103/series/")
                   for s in detail["series"])  # fmt: skip
        assert sum(len(s["instance_uids"]) for s in detail["series"]) == 6


async def test_with_prefetch_a_listed_exam_is_fetched_before_it_is_opened(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    """[consumer] prefetch: showing the list starts the retrieval, so the exam opens even once its source is gone."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from drimbox.consumer.images import IMAGES
    from drimbox.consumer.retrieval import KOS_HEADER
    from tests.support.consumer import consumer_app_with_images
    from tests.support.drim_flow import read_multipart

    load_exam(orthanc, tmp_path, "C", instances=6)
    box = source_box(orthanc)
    ack = await send_message("127.0.0.1", box.mllp_port, build_oru(build_cda(ANS_EXAMS["C"]), control_id="C-PRE"),
                             timeout=30)  # fmt: skip
    assert b"|AA|" in ack
    pub = box.wait_state("ACN103", ("published",))
    app = consumer_app_with_images(
        consumer_settings(tmp_path, f"{sim.url}/dmp", prefetch=True), sim.url, FakeAuth(Pro())
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        # The launch (patient informed) declares the access; the list then shows, and starts the prefetch.
        launched = await client.post("/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        assert launched.status == 303
        resp = await client.get(launched.headers["Location"].replace("/conso/patients/", "/conso/api/patients/"))
        body = await resp.json()
        assert resp.status == 200, body
        assert [e["kos_uid"] for e in body["exams"]] == [pub["kos_uid"]]
        cache = app[IMAGES].cache
        for _ in range(200):
            if (await cache.usage())["series"] == 2:
                break
            await asyncio.sleep(0.05)
        assert (await cache.usage())["series"] == 2
        box.stop()  # the source is gone: the exam must come from the consumer's cache
        accept = {
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
            KOS_HEADER: pub["kos_uid"],
        }
        resp = await client.get("/conso/dicom-web/studies/1.2.250.1.213.4.5.2.1.103", headers=accept)
        assert resp.status == 200, await resp.text()
        assert len(await read_multipart(resp)) == 6
