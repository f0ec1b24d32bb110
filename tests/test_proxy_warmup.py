"""A Proxy box, a real Orthanc behind it: what opening a report link asks of the PACS before the viewer does.

Counted at the PACS's side of the box (its C-FIND counter): the instance list of the series the viewer opens first
is asked when the link opens, once, and the viewer's own request for it (every page, asked one after the other or
side by side) asks nothing more. The other series are not asked ahead; a study the box holds is not asked at all.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import pytest

from drimbox.source.viewer_warmup import VIEWER_INSTANCE_FIELDS
from tests.support.drim_flow import DOCTOR, publish_exam

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]
STUDY = "1.2.250.1.213.4.5.2.1.103"
JSON = {"Accept": "application/dicom+json"}
PAGE = 2


def c_finds(box: Any) -> float:
    with urllib.request.urlopen(box.operator_request("/metrics"), timeout=30) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.split()[-1]) for line in lines
               if line.startswith("drimbox_dimse_calls_total{") and 'operation="C-FIND"' in line)  # fmt: skip


def settled(box: Any) -> float:
    """The C-FIND count once it has stopped moving (what the link started has ended)."""
    last, since = c_finds(box), time.monotonic()
    while time.monotonic() - since < 1.0:
        time.sleep(0.1)
        now = c_finds(box)
        if now != last:
            last, since = now, time.monotonic()
    return last


async def open_link(http: aiohttp.ClientSession, base: str) -> None:
    link = f"/IHEInvokeImageDisplay?{urlencode({'requestType': 'STUDY', 'studyUID': STUDY})}"
    # The link asks for a login first; the simulator's PSC logs the doctor in from the hint, without a page.
    resp = await http.get(f"{base}/auth/login?{urlencode({'next': link, 'login_hint': DOCTOR})}")
    assert urlsplit(str(resp.url)).path == "/viewer/", resp.url


async def instances(http: aiohttp.ClientSession, base: str, series: str, offset: int = 0) -> list[str]:
    url = f"{base}/dicom-web/studies/{STUDY}/series/{series}/instances?includefield={VIEWER_INSTANCE_FIELDS}"
    async with http.get(f"{url}&offset={offset}&limit={PAGE}", headers=JSON) as resp:
        if resp.status == 204:  # past the last
            return []
        assert resp.status == 200, await resp.text()
        return [item["00080018"]["Value"][0] for item in json.loads(await resp.read())]


def test_a_report_link_asks_for_the_first_series_instance_list_before_the_viewer(
    orthanc: Any, source_box: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    # One HTTP process: the answers are kept in the process that asked for them.
    box = source_box(orthanc, http={"workers": 1},
                     auth={"protect_dicomweb": True, "authorize_params": ["sim_auto=1"]})  # fmt: skip
    publish_exam(orthanc, box, tmp_path, instances=10)

    async def scenario() -> None:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            before = await asyncio.to_thread(settled, box)
            await open_link(http, box.url)
            opened = await asyncio.to_thread(settled, box)
            assert opened - before == 2, "a series C-FIND to find the first series, then its instances"
            listed = await http.get(f"{box.url}/dicom-web/studies/{STUDY}/series", headers=JSON)
            series = sorted(await listed.json(), key=lambda s: s["00200011"]["Value"][0])
            assert len(series) == 2
            first, second = (s["0020000E"]["Value"][0] for s in series)
            asked = await asyncio.to_thread(settled, box)  # a C-FIND is counted when it ends, maybe after its answer
            counts = [s["00201209"]["Value"][0] for s in series]
            assert min(counts) > 2 * PAGE  # three pages at least
            # Its pages, asked side by side as the viewer does when the series list gave the count: no C-FIND.
            offsets = range(0, counts[0] + PAGE, PAGE)
            pages = await asyncio.gather(*(instances(http, box.url, first, offset) for offset in offsets))
            assert await asyncio.to_thread(settled, box) == asked
            every = [uid for page in pages for uid in page]
            assert len(every) == len(set(every)) == counts[0]
            # The other series was not asked ahead: its list is one C-FIND now, its pages side by side no more.
            offsets = range(0, counts[1] + PAGE, PAGE)
            pages = await asyncio.gather(*(instances(http, box.url, second, offset) for offset in offsets))
            assert await asyncio.to_thread(settled, box) == asked + 1
            every = [uid for page in pages for uid in page]
            assert len(every) == len(set(every)) == counts[1]
            # Once the box holds the study (retrieved whole), opening the link asks the PACS for nothing.
            async with http.get(f"{box.url}/dicom-web/studies/{STUDY}",
                                headers={"Accept": 'multipart/related; type="application/dicom"'}) as whole:  # fmt: skip
                assert whole.status == 200 and len(await whole.read()) > 10_000
            held = {"Cache-Control": "only-if-cached", **JSON}
            deadline = time.monotonic() + 30
            while (await http.get(f"{box.url}/dicom-web/studies/{STUDY}/metadata", headers=held)).status == 504:
                assert time.monotonic() < deadline, "the study never got into the cache"
                await asyncio.sleep(0.1)
            before = await asyncio.to_thread(settled, box)
            await open_link(http, box.url)
            assert await asyncio.to_thread(settled, box) == before

    asyncio.run(scenario())
