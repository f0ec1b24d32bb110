"""What the box's own configuration withholds from patients ([patient] withhold_modalities), and the DMP's
visibility asked at each opening: when the DMP cannot be asked, the exam is not opened (fail closed)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, DEFAULT_FLAGS, build_cda, build_oru
from tests.support.patient_flow import PATIENT_COOKIE, patient_login
from tests.test_source_e2e import load_exam, send

pytestmark = [pytest.mark.orthanc, pytest.mark.sim, pytest.mark.box]
VISIBLE = {**DEFAULT_FLAGS, "INVISIBLE_PATIENT": False}


def test_withheld_modalities_and_an_unreachable_dmp_are_refused(
    orthanc: Any, source_box: Any, sim: Any, tmp_path: Path
) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=2)  # CT
    load_exam(orthanc, tmp_path, "E", instances=2)  # NM
    source = source_box(orthanc, auth={"protect_dicomweb": True},
                        patient={"enabled": True, "issuer": f"{sim.url}/mes", "withhold_modalities": ["NM"]})  # fmt: skip
    for exam, control in ((ANS_EXAMS["C"], "A-1"), (ANS_EXAMS["E"], "A-2")):
        assert send(source, build_oru(build_cda(exam), control_id=control, flags=VISIBLE)) == "AA"
        assert source.wait_state(exam.accession, ("published", "failed", "rejected"))["state"] == "published"

    async def visit() -> tuple[int, int, int]:
        async with aiohttp.ClientSession() as http:
            cookie = {"Cookie": f"{PATIENT_COOKIE}={await patient_login(http, source.url)}"}
            ct = await http.get(f"{source.url}/patient/exams/{ANS_EXAMS['C'].study_uid}", headers=cookie)
            nm = await http.get(f"{source.url}/patient/exams/{ANS_EXAMS['E'].study_uid}", headers=cookie)
            assert 'data-reason="withheld"' in await nm.text()
            nm_images = await http.get(f"{source.url}/patient/dicom-web/studies/{ANS_EXAMS['E'].study_uid}/series",
                                       headers=cookie)  # fmt: skip
            assert (await nm_images.json())["reason"] == "withheld"
            sim.stop()  # the DMP (and the login) go away: the session is the box's, the visibility the DMP's
            gone = await http.get(f"{source.url}/patient/exams/{ANS_EXAMS['C'].study_uid}", headers=cookie)
            assert 'data-reason="dmp_unreachable"' in await gone.text()
            return ct.status, nm.status, gone.status

    assert asyncio.run(visit()) == (200, 403, 503)
