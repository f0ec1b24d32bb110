"""The list in a real consumer box: its thumbnail comes from the source on demand; ticked exams import, reconciled."""

from __future__ import annotations

import asyncio
import html
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.hl7.mllp import send_message
from tests.support.consumer import LAUNCH_FORM
from tests.test_consumer_box import consumer_box, local_pacs  # noqa: F401 (fixtures)
from tests.test_source_e2e import load_exam

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]


def _hidden(page: str, name: str) -> str:
    found = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)"', page)
    assert found, name
    return html.unescape(found[1])


async def test_thumbnail_then_ticked_import_lands_under_the_local_patient(
    orthanc: Any,
    source_box: Any,
    sim: Any,
    consumer_box: Any,  # noqa: F811 (the fixture imported above)
    local_pacs: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=4)
    source = source_box(orthanc)
    ack = await send_message("127.0.0.1", source.mllp_port, build_oru(build_cda(ANS_EXAMS["C"]), control_id="CL-1"))
    assert b"|AA|" in ack
    pub = source.wait_state("ACN103", ("published", "failed", "rejected"))
    assert pub["state"] == "published"
    base = consumer_box.health_url.rsplit("/", 1)[0]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        launch = await http.post(f"{base}/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        next_path = parse_qs(urlsplit(launch.headers["Location"]).query)["next"][0]
        listed = await http.get(f"{base}/auth/login?{urlencode({'next': next_path, 'login_hint': '801234567897'})}")
        page = await listed.text()
        assert listed.status == 200 and "Examens d&#x27;imagerie" in page, page[:500]

        # The thumbnail: the consumer's own DICOMweb, which fetches the exam from its source on demand.
        src = re.search(r'<img src="([^"]+)"', page)
        assert src
        thumb = await http.get(base + html.unescape(src[1]))
        assert thumb.status == 200 and thumb.content_type.startswith("image/") and len(await thumb.read()) > 100

        # Tick it and press the one button: a status page follows, reloading itself until the import ends.
        form = {"csrf_token": _hidden(page, "csrf_token"), "launch": _hidden(page, "launch"),
                "back": _hidden(page, "back"), "kos": pub["kos_uid"]}  # fmt: skip
        started = await http.post(f"{base}/conso/imports", data=form, headers={"Origin": base}, allow_redirects=False)
        assert started.status == 303, await started.text()
        status_url = started.headers["Location"]
        assert status_url.startswith("/conso/imports?job=")
        for _ in range(300):
            status = await http.get(base + status_url)
            body = await status.text()
            if 'data-state="done"' in body or 'data-state="failed"' in body:
                break
            assert status.headers.get("Refresh") == "2" and 'http-equiv="refresh"' in body
            await asyncio.sleep(0.1)
        assert 'data-state="done"' in body and "terminé" in body and "4 image(s) envoyée(s)" in body, body
        assert "Refresh" not in status.headers and "Retour à la liste des examens" in body
    # Reconciled: under the launch's local identifier, not the source's.
    found = await asyncio.to_thread(local_pacs.rest, "POST", "/tools/find",
                                    {"Level": "Study", "Query": {"PatientID": LAUNCH_FORM["PatientID"]}})  # fmt: skip
    assert len(found) == 1 and len(local_pacs.instances()) == 4
