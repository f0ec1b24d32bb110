"""The source enforces the DRIM-M contract on /dicom-web: a PSC token and a live KOS naming the study (real processes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from drimbox.auth.oidc import TokenSet
from drimbox.auth.professional import Professional
from drimbox.auth.session import Session
from drimbox.demo.samples.processes import free_port, write_config
from drimbox.manifest import parse_kos
from tests.support.drim_flow import VIEWER_ORIGIN, Doctor, protected_front, psc_token, publish_exam, revoke
from tests.support.fixtures_mesh import Sim

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]
TOKEN_LIFETIME = 8  # seconds: long enough for the checks before it expires, short enough to wait for


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    """This module's simulator issues short-lived access tokens (overrides fixtures_mesh.sim here)."""
    s = Sim(tmp_path)
    write_config(s.work / "sim.toml", {"sim": {"port": s.port, "var_dir": str(tmp_path / "sim-var"),
                                               "psc_access_token_lifetime": TOKEN_LIFETIME}})  # fmt: skip
    s.start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def empty_pacs(orthanc: Any) -> None:
    orthanc.clear()


class CookieGate:
    """auth.AuthGate stand-in: a request with the cookie drimbox_session=ok is the box's own logged-in viewer."""

    async def current_session(self, request: web.Request) -> Session | None:
        if request.cookies.get("drimbox_session") != "ok":
            return None
        doctor = Professional(id=Doctor().id, profession="10")
        return Session("ok", doctor, TokenSet(access_token="-"), 0.0, 0.0, 0.0)


async def _get(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=headers) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        await resp.read()
        return resp.status, {}


async def test_token_and_kos_are_required_and_checked(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> None:
    port = free_port()
    box = source_box(orthanc, box={"public_url": f"http://127.0.0.1:{port}"})
    pub = await asyncio.to_thread(publish_exam, orthanc, box, tmp_path)
    kos = parse_kos(await asyncio.to_thread(sim.document_bytes, pub["kos_uid"]))
    base = f"http://127.0.0.1:{port}/dicom-web/studies/{kos.study_uid}"
    series = kos.series[0].retrieve_url
    async with protected_front(box, sim.url, port, gate=CookieGate()), aiohttp.ClientSession() as http:
        issued = time.time()
        token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
        bearer = f"Bearer {token}"
        kos_uid = pub["kos_uid"]
        status, body = await _get(http, series)
        assert (status, body["reason"]) == (401, "missing")
        # A viewer on an allowed origin sees the refusal itself (CORS on it), not a network error.
        async with http.get(series, headers={"Origin": VIEWER_ORIGIN}) as refused:
            assert refused.status == 401 and refused.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN
        async with http.get(series, headers={"Origin": "http://elsewhere.example"}) as refused:
            assert refused.status == 401 and "Access-Control-Allow-Origin" not in refused.headers
        status, body = await _get(http, series, Authorization="Bearer not-a-token")
        assert status == 401
        status, body = await _get(http, series, Authorization=bearer)
        assert (status, body["reason"]) == (403, "kos_missing")
        status, body = await _get(http, series, Authorization=bearer, **{"KOS-SOPInstanceUID": "1.2.3.4"})
        assert (status, body["reason"]) == (403, "kos_not_for_study")
        status, _ = await _get(http, series, Authorization=bearer, **{"KOS-SOPInstanceUID": kos_uid})
        assert status == 200
        status, body = await _get(http, f"{base}/series/1.2.3.999", Authorization=bearer,
                                  **{"KOS-SOPInstanceUID": kos_uid})  # fmt: skip
        assert (status, body["reason"]) == (403, "series_not_in_kos")
        status, _ = await _get(http, f"{base}/series", Authorization=bearer, **{"KOS-SOPInstanceUID": kos_uid})
        assert status == 200  # a study-scoped search, entitled by the KOS
        status, body = await _get(http, f"http://127.0.0.1:{port}/dicom-web/studies", Authorization=bearer,
                                  **{"KOS-SOPInstanceUID": kos_uid})  # fmt: skip
        assert (status, body["reason"]) == (403, "search_not_allowed")
        # The box's own viewer, logged in, but without a report link opened: nothing (tests/security covers the rest).
        async with aiohttp.ClientSession(cookies={"drimbox_session": "ok"}) as viewer:
            status, body = await _get(viewer, series)
            assert (status, body["reason"]) == (403, "not_granted")

        revoke_me = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
        await asyncio.to_thread(revoke, sim.url, revoke_me)
        status, body = await _get(http, series, Authorization=f"Bearer {revoke_me}", **{"KOS-SOPInstanceUID": kos_uid})
        assert (status, body["reason"]) == (401, "revoked")

        await asyncio.sleep(max(0.0, issued + TOKEN_LIFETIME + 1.5 - time.time()))  # past its exp (whole seconds)
        status, body = await _get(http, series, Authorization=bearer, **{"KOS-SOPInstanceUID": kos_uid})
        assert (status, body["reason"]) == (401, "expired")


async def test_a_withdrawn_kos_no_longer_opens_the_study(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    port = free_port()
    box = source_box(orthanc, box={"public_url": f"http://127.0.0.1:{port}"})
    pub = await asyncio.to_thread(publish_exam, orthanc, box, tmp_path)
    kos = parse_kos(await asyncio.to_thread(sim.document_bytes, pub["kos_uid"]))
    series = kos.series[0].retrieve_url
    async with protected_front(box, sim.url, port), aiohttp.ClientSession() as http:
        headers = {"KOS-SOPInstanceUID": pub["kos_uid"]}
        token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
        assert (await _get(http, series, Authorization=f"Bearer {token}", **headers))[0] == 200
        await asyncio.to_thread(publish_exam, orthanc, box, tmp_path, action="withdraw", control="2")
        token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
        status, body = await _get(http, series, Authorization=f"Bearer {token}", **headers)
        assert (status, body["reason"]) == (403, "withdrawn")


async def test_a_viewers_first_requests_together_read_the_kos_once(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import drimbox.source.access

    port = free_port()
    box = source_box(orthanc, box={"public_url": f"http://127.0.0.1:{port}"})
    pub = await asyncio.to_thread(publish_exam, orthanc, box, tmp_path)
    kos = parse_kos(await asyncio.to_thread(sim.document_bytes, pub["kos_uid"]))
    parsed: list[int] = []

    def counting_parse(data: bytes, content: bool = True) -> Any:
        parsed.append(len(data))
        time.sleep(0.2)  # as long as a 1300-slice KOS: the other requests arrive meanwhile
        return parse_kos(data, content)

    monkeypatch.setattr(drimbox.source.access, "parse_kos", counting_parse)
    base = f"http://127.0.0.1:{port}/dicom-web/studies/{kos.study_uid}"
    async with protected_front(box, sim.url, port), aiohttp.ClientSession() as http:
        token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
        headers = {"Authorization": f"Bearer {token}", "KOS-SOPInstanceUID": pub["kos_uid"]}
        urls = [f"{base}/series", f"{base}/metadata", kos.series[0].retrieve_url, f"{base}/series/1.2.3.999"]
        answers = await asyncio.gather(*(_get(http, url, **headers) for url in urls))
    assert [status for status, _ in answers] == [200, 200, 200, 403]
    assert answers[3][1]["reason"] == "series_not_in_kos"  # each request still checked against the KOS
    assert len(parsed) == 1
