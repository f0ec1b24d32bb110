"""The report link's warm-up (a C-FIND started before the viewer asks) seen by an outsider: who can make the box ask
its PACS, and whether what was gathered ahead reaches anyone the KOS and the session's grant would not let see it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drimbox.source.viewer_warmup import VIEWER_INSTANCE_FIELDS
from tests.security._scope_support import (
    DOCTOR,
    OPERATOR,
    OTHER,
    SECRETARY,
    Published,
    login,
    published_source,
    report_link,
    status_json,
)

pytestmark = [pytest.mark.sim, pytest.mark.box, pytest.mark.orthanc, pytest.mark.dcmtk]


@pytest.fixture
async def exam(tmp_path: Path, sim: Any, orthanc: Any) -> Any:
    orthanc.clear()
    async with published_source(tmp_path, sim.url, "proxy", orthanc) as published:
        yield published


def _jar() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def c_finds(http: aiohttp.ClientSession, box_url: str) -> float:
    async with http.get(f"{box_url}/metrics", headers=OPERATOR) as resp:
        lines = (await resp.text()).splitlines()
    return sum(float(line.split()[-1]) for line in lines
               if line.startswith("drimbox_dimse_calls_total{") and 'operation="C-FIND"' in line)  # fmt: skip


async def settled(http: aiohttp.ClientSession, box_url: str) -> float:
    """The C-FIND count once it has stopped moving for a second (a C-FIND is counted when it ends)."""
    last, since = await c_finds(http, box_url), time.monotonic()
    while time.monotonic() - since < 1.0:
        await asyncio.sleep(0.1)
        now = await c_finds(http, box_url)
        if now != last:
            last, since = now, time.monotonic()
    return last


def instances_url(exam: Published, series: str) -> str:
    return f"{exam.study_url}/series/{series}/instances?includefield={VIEWER_INSTANCE_FIELDS}"


async def test_only_a_link_that_opens_makes_the_box_ask_its_pacs_ahead(exam: Published) -> None:
    base = exam.box.url
    async with aiohttp.ClientSession() as ops:
        before = await settled(ops, base)
        # No session: the link asks for a login, and nothing else.
        async with aiohttp.ClientSession() as anonymous:
            async with anonymous.get(base + report_link(exam.study), allow_redirects=False) as resp:
                assert resp.status == 303 and resp.headers["Location"].startswith("/auth/login")
        # A secretary (no imaging habilitation) is refused the link: no C-FIND on her behalf either.
        async with _jar() as secretary:
            await login(secretary, base, SECRETARY)
            async with secretary.get(base + report_link(exam.study), allow_redirects=False) as resp:
                assert resp.status == 403
        # A doctor's link to a study the PACS holds but this box never published: 404, nothing asked.
        async with _jar() as doctor:
            await login(doctor, base, DOCTOR)
            async with doctor.get(base + report_link(OTHER.study_uid, OTHER.accession), allow_redirects=False) as r:
                assert r.status == 404
        assert await settled(ops, base) == before


async def test_what_was_gathered_ahead_is_served_only_within_the_grant_and_the_kos(exam: Published) -> None:
    base = exam.box.url
    async with aiohttp.ClientSession() as ops, _jar() as doctor, _jar() as other_browser:
        await login(doctor, base, DOCTOR)
        await login(other_browser, base, DOCTOR)  # the same doctor, another session: no grant
        async with doctor.get(base + report_link(exam.study), allow_redirects=False) as resp:
            assert resp.status == 303
        await settled(ops, base)  # the link's C-FINDs have ended
        # The PACS's answers are kept, wider than the KOS (an instance it does not reference): a session without
        # the grant gets none of them, whatever series it names.
        for series in [*exam.series, exam.extra_series]:
            assert (await status_json(other_browser, instances_url(exam, series)))[0] == 403, series
        # The granted session: the KOS's instances only, the series it leaves out refused, and at least one list
        # served from what the link gathered (no C-FIND of its own).
        served_ahead = False
        for series, instances in exam.series.items():
            before = await settled(ops, base)
            status, rows = await status_json(doctor, instances_url(exam, series))
            assert status == 200
            assert {r["00080018"]["Value"][0] for r in rows} == instances  # never exam.hidden_instance
            served_ahead |= await settled(ops, base) == before
        assert served_ahead, "no series was answered from what the report link gathered"
        assert (await status_json(doctor, instances_url(exam, exam.extra_series)))[0] in (403, 404)
