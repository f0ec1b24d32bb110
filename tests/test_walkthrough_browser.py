"""The doctor's walk in Debian's Chromium, in French and in English, for the GP and for the radiologist.

One mesh for the four walks: the simulator (DMP, Pro Santé Connect), Orthanc A as the centre's PACS behind a
source box, a consumer box whose local PACS is Orthanc B. The patient has two exams (ANS C and E) whose KOS the
source box published and whose reports (CDA) the RIS published to the DMP. Each walk: contextual launch → the
exam list → exam C's report → the viewer → a distance in mm → the two exams side by side → one series imported
into Orthanc B, found there under the launch's local patient ID; each step checks the words the doctor reads.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from drimbox.config import load_settings
from drimbox.demo.ris import publish_report
from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from tests.support.consumer import INS, LAUNCH_FORM
from tests.support.fixtures_browser import CHROMIUM
from tests.support.fixtures_mesh import Sim, SourceBox
from tests.test_source_e2e import load_exam
from tests.test_viewer_browser import send, variance, wait_ready, wait_until

playwright_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]

GP, RADIOLOGIST = "801234567897", "801234560801"
EXAMS = ("C", "E")
NAMES = {GP: "MEDIONI", RADIOLOGIST: "BIDEAULT"}


@dataclass
class Mesh:
    sim: Sim
    source: SourceBox
    consumer: str  # the consumer box's base URL
    local_pacs: Any
    kos: dict[str, str]  # exam letter → the KOS's uniqueId


@pytest.fixture(scope="module")
def mesh(orthanc: Any, orthanc_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with walk_mesh(orthanc, orthanc_factory, tmp_path_factory.mktemp("walk")) as started:
        yield started


@contextmanager
def walk_mesh(orthanc: Any, orthanc_factory: Any, work: Path, *, workers: int = 1) -> Iterator[Mesh]:
    """The walk's mesh; `workers`: [http] workers of both boxes (tests/test_workers_browser.py walks with 2)."""
    orthanc.clear()
    for exam in EXAMS:
        load_exam(orthanc, work, exam, instances=4)
    local_pacs = orthanc_factory()
    (work / "sim").mkdir()
    (work / "source").mkdir()
    sim = Sim(work / "sim").start()
    started: list[Any] = [sim]
    try:
        source = SourceBox(work / "source", sim.url, orthanc, auth={"protect_dicomweb": True},
                           http={"workers": workers}).start()  # fmt: skip
        started.append(source)
        port = free_port()
        cfg = write_config(work / "consumer.toml", {
            "box": {"roles": ["consumer"], "var_dir": str(work / "consumer-var"), "public_url": f"http://127.0.0.1:{port}"},
            "http": {"port": port, "workers": workers},
            "dmp": {"url": f"{sim.url}/dmp"},
            "psc": {"issuer": f"{sim.url}/psc"},
            "whitelist": {"url": f"{sim.url}/whitelist", "certificate_url": f"{sim.url}/whitelist/certificate",
                          "trust_on_first_use": True},
            "auth": {"authorize_params": ["sim_auto=1"]},
            "consumer": {"local_pacs_ae_title": local_pacs.aet, "local_pacs_port": local_pacs.dicom_port},
        })  # fmt: skip
        consumer = DrimboxProcess("serve", cfg, f"http://127.0.0.1:{port}/health", work / "consumer.log").start()
        started.append(consumer)
        orus = {e: build_oru(build_cda(ANS_EXAMS[e]), control_id=f"W-{e}") for e in EXAMS}
        kos = {}
        for exam in EXAMS:
            assert send(source, orus[exam]) == "AA"
        for exam in EXAMS:
            pub = source.wait_state(ANS_EXAMS[exam].accession, ("published", "failed", "rejected"))
            assert pub["state"] == "published", pub
            kos[exam] = pub["kos_uid"]
        # The RIS publishes each report (CDA) to the DMP itself, as `drimbox demo` does.
        ris = load_settings(source.config)
        with ThreadPoolExecutor(1) as pool:  # its own event loop, off any other one (as send does)
            for exam in EXAMS:
                pool.submit(asyncio.run, publish_report(ris, orus[exam])).result()
        yield Mesh(sim, source, f"http://127.0.0.1:{port}", local_pacs, kos)
    finally:
        for process in reversed(started):
            process.stop()


# What the doctor reads, per language.
WORDS = {
    "fr": {"locale": "fr-FR", "list": "Examens d'imagerie", "report": "Compte rendu", "view": "Voir",
           "series": "Séries", "notice": "Visionneuse non diagnostique", "compare": "Comparer",
           "import": "Importer cette série", "done": "terminé", "back": "Retour à la liste des examens",
           "no_report": "Aucun compte rendu", "signed_in": "Connecté(e) :", "born": "né(e) le 28/03/1979",
           "report_exam": "Examen : CT Head W contrast IV, du 08/01/2021", "distance": r"\d+,\d mm",
           "progress": r"\d+ image\(s\) envoyée\(s\), \d+ déjà présente\(s\), 0 en échec, sur 2"},
    "en": {"locale": "en-GB", "list": "Imaging exams", "report": "Report", "view": "View", "series": "Series",
           "notice": "Non-diagnostic viewer", "compare": "Compare", "import": "Import this series", "done": "done",
           "back": "Back to the exam list", "no_report": "No report", "signed_in": "Signed in as", "born": "born",
           "report_exam": "Exam: CT Head W contrast IV, of", "distance": r"\d+\.\d mm",
           "progress": r"\d+ image\(s\) sent, \d+ already there, 0 failed, of 2"},
}  # fmt: skip


def click_image(page: Any, fx: float, fy: float) -> None:
    """A click at a fraction of the image's canvas."""
    box = page.locator("#image").bounding_box()
    page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)


@pytest.mark.parametrize("professional", [GP, RADIOLOGIST], ids=["gp", "radiologist"])
@pytest.mark.parametrize("language", ["fr", "en"])
def test_the_doctors_walk(mesh: Mesh, browser: Any, language: str, professional: str) -> None:
    w = WORDS[language]
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale=w["locale"])
    page = context.new_page()
    page.on("pageerror", lambda e: print(f"page error: {e}"))
    # (A 504 to an only-if-cached request is the viewer's normal way to learn that a series is cold.)
    page.on("response", lambda r: r.status >= 400 and "only-if-cached" not in r.request.headers.get("cache-control", "")
            and print(f"HTTP {r.status} {r.request.method} {r.url}"))  # fmt: skip
    base = mesh.consumer
    try:
        # 1. Contextual launch: the doctor's software posts the patient; Pro Santé Connect logs the doctor in.
        launch = page.request.post(f"{base}/conso/launch", form=LAUNCH_FORM, max_redirects=0)
        assert launch.status == 303, launch.text()
        next_path = parse_qs(urlsplit(launch.headers["location"]).query)["next"][0]
        page.goto(f"{base}/auth/login?" + urlencode({"next": next_path, "login_hint": professional}))
        assert urlsplit(page.url).path == f"/conso/patients/{INS}/exams"
        list_url = page.url

        # 2. The exam list: both exams, each with its report, view and series.
        body = page.inner_text("body")
        assert page.inner_text("h1") == w["list"]
        assert w["signed_in"] in body and NAMES[professional] in body, body
        assert w["born"] in body and "PAT-TROIS" in body
        row_c = page.locator("tr", has_text="ACN103")
        row_e = page.locator("tr", has_text="ACN105")
        assert row_c.count() == 1 and row_e.count() == 1, page.inner_text("body")
        assert row_c.locator(f"a:text-is('{w['view']}')").count() == 1
        assert (
            "CT Head W contrast IV" in row_c.inner_text() and "ACN105" in row_e.inner_text()
        )  # the exams, not the class
        assert w["no_report"] not in body

        # 3. Exam C's report, from the list.
        row_c.locator(f"a:text-is('{w['report']}')").click()
        page.wait_for_load_state()
        assert page.inner_text("h1") == w["report"], page.inner_text("body")
        assert w["report_exam"] in page.inner_text("body")
        assert (page.get_attribute("iframe", "src") or "").endswith("/report.pdf")  # the CDA's PDF, in the page
        assert page.request.get(base + (page.get_attribute("iframe", "src") or "")).body().startswith(b"%PDF")
        page.goto(list_url)

        # 4. View exam C: its images, the non-diagnostic notice in the doctor's language.
        page.locator("tr", has_text="ACN103").locator(f"a:text-is('{w['view']}')").click()
        page.wait_for_url(f"{base}/viewer/**")
        wait_ready(page)
        wait_until(page, f"document.body.dataset.words === '{language}'")
        assert w["notice"] in page.inner_text(".notice")
        assert "PAT-TROIS" in page.inner_text("#patient")
        assert variance(page.locator("#image").screenshot()) > 20, "the canvas is blank"
        page.wait_for_selector("#report", state="visible", timeout=10_000)  # the report, from the viewer too
        assert page.inner_text("#report") == w["report"]

        # 5. Measure a distance: in mm, from the images' Pixel Spacing.
        page.focus("#image")
        page.keyboard.press("d")
        click_image(page, 0.3, 0.5)
        click_image(page, 0.7, 0.5)
        wait_until(page, "document.querySelectorAll('#measurements li').length === 1")
        (distance,) = page.locator("#measurements li").all_inner_texts()
        assert re.fullmatch(w["distance"], distance.strip()), distance  # exam C's images carry their Pixel Spacing

        # 6. Compare: the patient's other exam opens beside this one.
        page.wait_for_selector("#compare-tools", state="visible", timeout=15_000)
        assert page.inner_text("#compare") == w["compare"]
        assert "NM · MN glande thyroide" in page.inner_text("#compare-with option:checked")  # exam E, offered
        page.click("#compare")
        page.wait_for_selector("#peer")
        peer = page.frame_locator("#peer")
        peer.locator("body[data-state=ready]").wait_for(timeout=30_000)
        peer.locator(f"body[data-words={language}]").wait_for(timeout=10_000)  # its words come after its first image
        assert w["notice"] in peer.locator(".notice").inner_text()
        left, right = page.locator("#image").bounding_box(), peer.locator("#image").bounding_box()
        assert right["x"] >= left["x"] + left["width"] - 1, (left, right)

        # 7. Import one series of exam C into the local PACS, from the exam's series page.
        page.goto(list_url)
        page.locator("tr", has_text="ACN103").locator(f"a:text-is('{w['series']}')").click()
        page.wait_for_load_state()
        series_uid = page.locator("input[name=series]").first.get_attribute("value")
        page.locator(f"button:text-is('{w['import']}')").first.click()
        deadline = time.monotonic() + 60
        while page.locator("[data-state=done], [data-state=failed]").count() == 0:
            assert time.monotonic() < deadline, page.inner_text("body")
            page.wait_for_timeout(200)
            if page.locator("[data-state=done], [data-state=failed]").count() == 0:
                try:  # sooner than the page's own refresh, every 2 s; the two may cross
                    page.reload()
                except playwright_api.Error:
                    pass
        body = page.inner_text("body")
        assert page.locator("[data-state=done]").count() == 1 and w["done"] in body and w["back"] in body, body
        assert re.search(w["progress"], body), body
        found = mesh.local_pacs.rest("POST", "/tools/find", {"Level": "Series", "Query": {
            "PatientID": LAUNCH_FORM["PatientID"], "SeriesInstanceUID": series_uid}})  # fmt: skip
        assert len(found) == 1, found  # reconciled: under the launch's local patient ID
    finally:
        context.close()
