"""Patients open their own exams from Mon Espace Santé, in Debian's Chromium against a real source box, the
simulator (DMP, patient login, portal) and Orthanc: the ANS test patient logs in at the portal, opens "Voir les
images", sees the exam and its report, downloads it and re-opens it with pydicom; another patient gets nothing of
it; an INVISIBLE_PATIENT exam and a withdrawn one are refused; every access is in the trail as the patient's own,
and on the operator page."""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from drimbox.audit.trail import read_records
from drimbox.demo.samples.reports import ANS_EXAMS, DEFAULT_FLAGS, build_cda, build_oru
from drimbox.manifest import parse_kos
from drimbox.xds.xdm import read_package
from tests.support.fixtures_browser import CHROMIUM
from tests.support.fixtures_mesh import OPERATOR_TOKEN
from tests.support.patient_flow import ANS_PATIENT, OTHER_PATIENT
from tests.test_source_e2e import load_exam
from tests.test_source_e2e import send as send_in_loop

pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.orthanc, pytest.mark.sim, pytest.mark.box]

VISIBLE = ANS_EXAMS["C"]  # published with INVISIBLE_PATIENT = N
HIDDEN = ANS_EXAMS["W"]  # published with the ANS samples' default flags: INVISIBLE_PATIENT = Y


def send(box: Any, message: bytes) -> str:
    # Playwright's sync API keeps an event loop on this thread: the HL7 sender runs its own on another.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(send_in_loop, box, message).result()


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    """A phone-sized page that prefers French and has touch, as a patient's would."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  locale="fr-FR", accept_downloads=True)  # fmt: skip
    page = context.new_page()
    page.on("pageerror", lambda e: print(f"page error: {e}"))
    yield page
    context.close()


def wait_until(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression (the page's CSP forbids the eval wait_for_function uses)."""
    import time

    deadline = time.monotonic() + timeout
    while not page.evaluate(f"() => Boolean({expression})"):
        assert time.monotonic() < deadline, f"never true: {expression}"
        page.wait_for_timeout(50)


def publish_both(orthanc: Any, source_box: Any, sim: Any, tmp_path: Path) -> Any:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=4)
    load_exam(orthanc, tmp_path, "W", instances=3)
    source = source_box(orthanc, auth={"protect_dicomweb": True}, patient={"enabled": True, "issuer": f"{sim.url}/mes"})
    visible = build_oru(build_cda(VISIBLE), control_id="P-1", flags={**DEFAULT_FLAGS, "INVISIBLE_PATIENT": False})
    assert send(source, visible) == "AA"
    assert send(source, build_oru(build_cda(HIDDEN), control_id="P-2")) == "AA"
    for accession in (VISIBLE.accession, HIDDEN.accession):
        assert source.wait_state(accession, ("published", "failed", "rejected"))["state"] == "published"
    return source


def reason(page: Any) -> str:
    return str(page.get_attribute("#message", "data-reason"))


def test_the_patient_opens_their_exam_from_mon_espace_sante(
    orthanc: Any, source_box: Any, sim: Any, phone: Any, browser: Any, tmp_path: Path
) -> None:
    source = publish_both(orthanc, source_box, sim, tmp_path)
    page = phone

    # The portal: the patient logs in, sees the visible exam with its "Voir les images", not the hidden one.
    page.goto(f"{sim.url}/mes/portail")
    page.click(f"button[value='{ANS_PATIENT}']")
    links = page.locator("a.voir")
    assert links.count() == 1
    assert links.first.get_attribute("href") == f"{source.url}/patient/exams/{VISIBLE.study_uid}"
    links.first.click()

    # The box sends them to Mon Espace Santé's login (eIDAS substantial), then back to the exam.
    page.wait_for_url(f"{sim.url}/mes/auth**")
    page.click(f"button[value='{ANS_PATIENT}']")
    page.wait_for_url(f"{source.url}/patient/exams/{VISIBLE.study_uid}")
    assert page.locator("html").get_attribute("lang") == "fr"
    assert "Visualisation non diagnostique" in page.inner_text("#notice")
    assert "PAT-TROIS" in page.inner_text("#who")
    assert page.locator("meta[name=viewport]").count() == 1
    page.wait_for_selector("body[data-state=ready]", timeout=30_000)
    assert page.evaluate("() => document.getElementById('image').naturalWidth") > 0
    # Readable on a phone: nothing wider than the screen.
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    # Simple tools only: scroll, zoom, window presets; no measurement.
    assert page.locator("[data-tool=distance], [data-tool=angle]").count() == 0
    index = page.get_attribute("#image", "data-index")
    page.focus("#image")
    page.keyboard.press("ArrowDown")
    wait_until(page, f"document.getElementById('image').dataset.index !== '{index}'")
    page.click("#zoom-in")
    assert float(page.get_attribute("#image", "data-zoom") or "1") > 1
    # Zoomed in, a finger moves the image instead of changing it.
    shown = page.get_attribute("#image", "data-index")
    page.dispatch_event("#frame", "touchstart", {"touches": [{"identifier": 1, "clientX": 200, "clientY": 500}]})
    page.dispatch_event("#frame", "touchmove", {"touches": [{"identifier": 1, "clientX": 240, "clientY": 440}]})
    page.dispatch_event("#frame", "touchend", {"touches": []})
    assert "translate(40px, -60px)" in (page.get_attribute("#image", "style") or "")
    assert page.get_attribute("#image", "data-index") == shown
    page.select_option("#preset", "300,1500")
    wait_until(page, "document.getElementById('image').src.includes('window=300%2C1500')")

    # The report the box holds.
    page.click("#report")
    assert page.inner_text("h1") == "Compte rendu"
    page.go_back()

    # The download: an XDM package with the images (DICOMDIR), JPEG previews and the report, re-opened by pydicom.
    with page.expect_download() as download:
        page.click("#download")
    data = Path(download.value.path()).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as package:
        names = package.namelist()
        dicomdir = pydicom.dcmread(io.BytesIO(package.read("DICOMDIR")))
        files = [n for n in names if n.startswith("PT")]
        images = [pydicom.dcmread(io.BytesIO(package.read(n))) for n in files]
        kos = parse_kos(next(package.read(n) for n in names if (n.startswith("IHE_XDM/") and n.endswith(".DCM"))
                             or (n.lower().endswith(".dcm") and n.startswith("IHE_XDM/"))))  # fmt: skip
    referenced = {i.sop_instance_uid for s in kos.series for i in s.instances}
    assert {str(ds.SOPInstanceUID) for ds in images} == referenced and len(referenced) == 4
    assert all(ds.PatientID == ANS_PATIENT and hasattr(ds, "PixelData") for ds in images)
    assert len(dicomdir.DirectoryRecordSequence) >= 4
    assert len([n for n in names if n.startswith("APERCUS/") and n.endswith(".jpg")]) == 4
    assert "COMPTE-RENDU/compte-rendu.xml" in names and "COMPTE-RENDU/compte-rendu.pdf" in names
    exam = read_package(data)  # an XDM importer reads the same ZIP
    assert exam is not None

    # The exam the DMP hides from the patient (INVISIBLE_PATIENT): a clear French refusal.
    response = page.goto(f"{source.url}/patient/exams/{HIDDEN.study_uid}")
    assert response is not None and response.status == 403 and reason(page) == "invisible_patient"
    assert "expliquer" in page.inner_text("#message")

    # Another patient gets nothing of it: not the page, not DICOMweb, not the download.
    other = browser.new_context(locale="fr-FR")
    try:
        intruder = other.new_page()
        intruder.goto(f"{source.url}/patient/exams/{VISIBLE.study_uid}")
        intruder.click(f"button[value='{OTHER_PATIENT}']")
        intruder.wait_for_url(f"{source.url}/patient/exams/**")
        assert reason(intruder) == "not_published"
        for path in (f"/patient/exams/{VISIBLE.study_uid}/download", f"/patient/exams/{VISIBLE.study_uid}/report",
                     f"/patient/dicom-web/studies/{VISIBLE.study_uid}/series",
                     f"/patient/dicom-web/studies/{VISIBLE.study_uid}/series/{next(iter(kos.series)).series_uid}/instances"):  # fmt: skip
            answer = intruder.request.get(source.url + path)
            assert answer.status == 404, (path, answer.status)
            assert ANS_PATIENT not in answer.text() and "PAT-TROIS" not in answer.text()
    finally:
        other.close()

    # Withdrawn by the imaging centre: refused from then on.
    assert send(source, build_oru(build_cda(VISIBLE), "withdraw", control_id="P-3")) == "AA"
    source.wait_state(VISIBLE.accession, ("withdrawn",))
    response = page.goto(f"{source.url}/patient/exams/{VISIBLE.study_uid}")
    assert response is not None and response.status == 410 and reason(page) == "withdrawn"

    # The trail: each access as the patient's own (their INS as the actor).
    records = list(read_records(source.work / "box-var" / "audit.sqlite"))
    mine = [r for r in records if r["action"].startswith("patient.") and r["detail"].get("actor") == "patient"]
    outcomes = {(r["action"], r["professional"], r["outcome"], r["detail"].get("reason")) for r in mine}
    assert ("patient.login", ANS_PATIENT, "success", None) in outcomes
    assert ("patient.exam", ANS_PATIENT, "success", None) in outcomes
    assert ("patient.download", ANS_PATIENT, "success", None) in outcomes
    assert ("patient.dicomweb", ANS_PATIENT, "success", None) in outcomes
    assert ("patient.exam", ANS_PATIENT, "refused", "invisible_patient") in outcomes
    assert ("patient.exam", ANS_PATIENT, "refused", "withdrawn") in outcomes
    assert ("patient.exam", OTHER_PATIENT, "refused", "not_yours") in outcomes
    assert all(
        r["patient"] == r["professional"] for r in mine if r["action"] != "patient.login" or r["outcome"] == "success"
    )

    # The operator page lists those accesses: who (the patient's INS), which study, when.
    with requests.Session() as operator:
        operator.post(f"{source.url}/operator/login", data={"token": OPERATOR_TOKEN}, headers={"Origin": source.url})
        text = operator.get(f"{source.url}/operator").text
    table = re.search(r"<table id=accesses>.*?</table>", text, re.S)
    assert table, text[:500]
    assert ANS_PATIENT in table[0] and VISIBLE.study_uid in table[0] and 'data-kind="patient"' in table[0]
