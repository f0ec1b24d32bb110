"""Security finding 1: a login on the source box reads only the study of a report link it opened, as its live KOS says."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.security._scope_support import (
    DOCTOR,
    EXAM,
    OPERATOR,
    OTHER,
    SECRETARY,
    Published,
    login,
    published_source,
    report,
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


def refusals(exam: Published) -> list[tuple[str | None, str | None, Any]]:
    """(reason, patient, professional) of every refused DICOMweb request, as the audit trail recorded it."""
    return [(e.detail.get("reason"), e.patient, e.professional) for e in exam.box.audit.events
            if e.action.startswith("dicomweb.") and e.outcome == "refused"]  # fmt: skip


async def test_a_login_alone_opens_nothing(exam: Published) -> None:
    async with _jar() as http:
        await login(http, exam.box.url, DOCTOR)
        for url in (f"{exam.dicomweb}/studies", f"{exam.dicomweb}/series", f"{exam.dicomweb}/instances",
                    f"{exam.dicomweb}/studies?PatientID={EXAM.ins}", f"{exam.study_url}/series",
                    f"{exam.study_url}/metadata", f"{exam.dicomweb}/studies/{OTHER.study_uid}/series"):  # fmt: skip
            status, body = await status_json(http, url)
            assert status == 403 and {"error", "reason"} <= set(body), url
        # Nor the report the box received with the study (page and PDF).
        for url in (f"{exam.box.url}/reports/{exam.study}", f"{exam.box.url}/reports/{exam.study}/pdf"):
            async with http.get(url, allow_redirects=False) as resp:
                assert resp.status == 403, url
        # The operator API is the operator's: a professional's session lists no publication.
        status, body = await status_json(http, f"{exam.box.url}/api/publications?accession={EXAM.accession}")
        assert status in (401, 403) and body["reason"] == "operator_required"
    # Each refusal is in the audit trail, by whom, and with the patient where the study names one.
    recorded = refusals(exam)
    assert len(recorded) >= 7 and all(who == DOCTOR for _, _, who in recorded)
    assert ("not_granted", EXAM.ins, DOCTOR) in recorded
    assert any(e.action == "auth.operator" and e.outcome == "refused" and e.professional == DOCTOR
               for e in exam.box.audit.events)  # fmt: skip


async def test_a_report_link_grants_its_study_as_far_as_the_live_kos_goes(exam: Published) -> None:
    async with _jar() as http:
        await login(http, exam.box.url, DOCTOR)
        async with http.get(exam.box.url + report_link(exam.study), allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/viewer/?")
        status, rows = await status_json(http, f"{exam.study_url}/series")
        assert status == 200
        assert {r["0020000E"]["Value"][0] for r in rows} == set(exam.series)  # not the series the KOS leaves out
        status, _ = await status_json(http, f"{exam.study_url}/series/{exam.extra_series}/metadata")
        assert status in (403, 404)
        # The grant is this study's only: no search, no other study (in the PACS, never published).
        assert (await status_json(http, f"{exam.dicomweb}/studies"))[0] == 403
        assert (await status_json(http, f"{exam.dicomweb}/studies/{OTHER.study_uid}/series"))[0] == 403
        # The report the box holds for that study is this session's too.
        async with http.get(f"{exam.box.url}/reports/{exam.study}/pdf") as resp:
            assert resp.status == 200 and resp.content_type == "application/pdf"
        # Another browser (another session) of the same professional has no grant.
        async with _jar() as other:
            await login(other, exam.box.url, DOCTOR)
            assert (await status_json(other, f"{exam.study_url}/series"))[0] == 403
            async with other.get(f"{exam.box.url}/reports/{exam.study}/pdf", allow_redirects=False) as resp:
                assert resp.status == 403
        # Withdrawn: the grant no longer opens anything.
        await report(exam.box, action="withdraw", control="2")
        outbox = exam.box.box.outbox
        assert outbox is not None
        for _ in range(300):
            if (await outbox.current_published(exam.study)) is None:
                break
            await asyncio.sleep(0.1)
        status, body = await status_json(http, f"{exam.study_url}/series")
        assert status == 403 and body["reason"] in ("withdrawn", "not_published")


async def test_a_secretary_is_refused_at_the_link_and_at_dicomweb(exam: Published) -> None:
    async with _jar() as http:
        await login(http, exam.box.url, SECRETARY)
        async with http.get(exam.box.url + report_link(exam.study), allow_redirects=False) as resp:
            assert resp.status == 403 and "habilitation" in (await resp.text()).lower()
        status, body = await status_json(http, f"{exam.study_url}/series")
        assert status == 403 and body["reason"] == "not_habilitated"
        async with http.get(f"{exam.box.url}/reports/{exam.study}", allow_redirects=False) as resp:
            assert resp.status == 403
    assert any(e.action == "report-link.open" and e.outcome == "refused" and e.professional == SECRETARY
               for e in exam.box.audit.events)  # fmt: skip


async def test_the_operator_token_reads_everything(exam: Published) -> None:
    async with aiohttp.ClientSession() as http:
        status, rows = await status_json(http, f"{exam.study_url}/series", **OPERATOR)
        assert status == 200 and exam.extra_series in {r["0020000E"]["Value"][0] for r in rows}
        status, rows = await status_json(http, f"{exam.dicomweb}/studies", **OPERATOR)
        assert status == 200 and {EXAM.study_uid, OTHER.study_uid} <= {r["0020000D"]["Value"][0] for r in rows}
