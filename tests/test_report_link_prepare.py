"""Opening a report link makes the source box read the KOS it names at once, before the viewer's first request.

A KOS of a 1300-slice CT takes 150-180 ms to parse; every first request of the viewer (the series list, the study
metadata) used to wait for it before the PACS was even asked. Seen from outside: once the link has answered, the
box no longer needs the stored KOS to serve that exam (here made unreadable right after the redirect).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.security._scope_support import DOCTOR, Published, login, published_source, report_link, status_json

pytestmark = [pytest.mark.sim, pytest.mark.box]


@pytest.fixture
async def exam(tmp_path: Path, sim: Any) -> Any:
    async with published_source(tmp_path, sim.url, "native") as published:
        yield published


def _unreadable(exam: Published) -> None:
    """The stored KOS file garbled: a read now fails (403 kos_unreadable)."""
    path = exam.box.box.settings.var_path / "kos" / f"{exam.kos_uid}.dcm"
    path.write_bytes(b"not a KOS")


async def test_the_kos_is_read_when_the_link_opens(exam: Published) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login(http, exam.box.url, DOCTOR)
        async with http.get(exam.box.url + report_link(exam.study), allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
        await asyncio.sleep(0.5)  # the redirect, the page and its scripts: far longer in a browser
        _unreadable(exam)
        status, body = await status_json(http, f"{exam.study_url}/series")
        assert status == 200, body
        assert {s["0020000E"]["Value"][0] for s in body} == set(exam.series)


async def test_without_a_link_the_kos_is_read_at_the_first_request(exam: Published) -> None:
    """The same box, the KOS made unreadable before any link: the check fails closed (what the test above relies on)."""
    _unreadable(exam)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        await login(http, exam.box.url, DOCTOR)
        async with http.get(exam.box.url + report_link(exam.study), allow_redirects=False) as resp:
            assert resp.status == 303
        status, body = await status_json(http, f"{exam.study_url}/series")
        assert status == 403 and body["reason"] == "kos_unreadable", body
