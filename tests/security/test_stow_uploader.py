"""Security finding 7: STOW-RS on a Native source takes the operator token or a professional the matrix allows."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drimbox.demo.samples.studies import study_for_exam, write_study
from tests.security._scope_support import DOCTOR, EXAM, OPERATOR, SECRETARY, stow
from tests.support.auth_boxes import box_settings, running_box
from tests.support.drim_flow import psc_token

pytestmark = [pytest.mark.sim, pytest.mark.box]


async def test_a_secretary_token_stores_nothing(tmp_path: Path, sim: Any) -> None:
    files = write_study(tmp_path / "study", study_for_exam(EXAM, instances=2, rows=16, columns=16))
    secretary = (await asyncio.to_thread(psc_token, sim.url, SECRETARY))["access_token"]
    doctor = (await asyncio.to_thread(psc_token, sim.url, DOCTOR))["access_token"]
    async with running_box(box_settings(tmp_path, sim.url, ["source"], "native")) as box:
        url = f"{box.url}/dicom-web/studies"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=b"--x--", headers={"Authorization": f"Bearer {secretary}",
                                 "Content-Type": 'multipart/related; type="application/dicom"; boundary=x'}) as resp:  # fmt: skip
                body = await resp.json()
                assert resp.status == 403 and body["reason"] == "not_habilitated" and body["error"]
            assert await stow(http, url, files, {"Authorization": f"Bearer {secretary}"}) == 403
            async with http.get(f"{url}/{EXAM.study_uid}/series", headers=OPERATOR) as resp:
                assert resp.status == 204  # nothing was stored
            # A doctor's token and the operator's store.
            assert await stow(http, url, files[:1], {"Authorization": f"Bearer {doctor}"}) == 200
            assert await stow(http, url, files[1:], OPERATOR) == 200
    stows = [(e.outcome, e.professional, e.detail.get("reason")) for e in box.audit.events if e.action == "auth.stow"]
    assert ("refused", SECRETARY, "not_habilitated") in stows
    assert ("success", DOCTOR, None) in stows
    assert any(outcome == "success" and who == "operator" for outcome, who, _ in stows)
