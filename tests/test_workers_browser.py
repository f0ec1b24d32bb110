"""The doctor's flows in Chromium with [http] workers = 2: whichever process each request lands on, they hold.

Sessions, pending logins, report-link grants and consumer state are in the shared stores; CSRF tokens derive from
the session. Each response says which process answered (X-Drimbox-Process): both must have served the flow.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from tests import test_walkthrough_browser as walk
from tests.support.consumer import INS
from tests.support.fixtures_browser import CHROMIUM
from tests.test_source_e2e import load_exam
from tests.test_viewer_browser import PROFESSIONAL, STUDY_C, check_viewer_shows_exam_c, send

if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")

pytestmark = [pytest.mark.browser, pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]


class Recording:
    """The browser, each of its contexts noting which box process answered each response, by host."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.processes: dict[str, set[str]] = defaultdict(set)
        self.states: list[Any] = []  # each context's cookies and storage, kept when it closes

    def new_context(self, **options: Any) -> Any:
        context = self.browser.new_context(**options)
        context.on("response", self._record)
        close = context.close

        def keep_state_then_close(*args: Any, **kwargs: Any) -> Any:
            self.states.append(context.storage_state())
            return close(*args, **kwargs)

        context.close = keep_state_then_close
        return context

    def _record(self, response: Any) -> None:
        process = response.headers.get("x-drimbox-process")
        if process is not None:
            self.processes[urlsplit(response.url).netloc].add(process)


def test_the_doctors_walk_on_two_processes(orthanc: Any, orthanc_factory: Any, browser: Any, tmp_path: Path) -> None:
    """Launch → PSC login → exam list → report → viewer → compare → import, on a consumer and a source of 2 each."""
    recording = Recording(browser)
    with walk.walk_mesh(orthanc, orthanc_factory, tmp_path, workers=2) as mesh:
        walk.test_the_doctors_walk(mesh, recording, "fr", walk.GP)
        # Which process accepts a connection is the kernel's choice: a short walk may have found process 0 idle every
        # time. Then the walk's session opens the exam list again on fresh connections until the other one answers.
        consumer = urlsplit(mesh.consumer).netloc
        for _ in range(12):
            if recording.processes[consumer] == {"0", "1"}:
                break
            other = recording.new_context(storage_state=recording.states[-1], locale=walk.WORDS["fr"]["locale"])
            try:
                page = other.new_page()
                page.goto(f"{mesh.consumer}/conso/patients/{INS}/exams")
                assert page.inner_text("h1") == walk.WORDS["fr"]["list"], page.inner_text("body")
            finally:
                other.close()
        assert recording.processes[consumer] == {"0", "1"}, recording.processes


def test_report_link_to_viewer_on_two_processes(
    orthanc: Any, source_box: Any, sim: Any, browser: Any, tmp_path: Path
) -> None:
    """The source's report link → PSC login → the viewer, then the viewer again in new tabs of the same session."""
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=8)
    source = source_box(orthanc, auth={"protect_dicomweb": True}, http={"workers": 2})
    assert send(source, build_oru(build_cda(ANS_EXAMS["C"]), control_id="W-1")) == "AA"
    assert source.wait_state("ACN103", ("published", "failed", "rejected"))["state"] == "published"
    link = f"{source.url}/IHEInvokeImageDisplay?" + urlencode(
        {"requestType": "STUDY", "studyUID": STUDY_C, "Accessionnumber": "ACN103", "idCDA": "1.2.250.1.213.4.5.4.403"}
    )
    recording = Recording(browser)
    context = recording.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB")
    try:
        page = context.new_page()
        page.goto(link)
        assert page.url.startswith(sim.url), page.url
        page.click(f"button[value='{PROFESSIONAL}']")
        page.wait_for_url(f"{source.url}/viewer/**")
        check_viewer_shows_exam_c(page)
        viewer = page.url
        state = context.storage_state()
        # The same session in fresh contexts (new connections): the grant the link gave holds on every process.
        for _ in range(4):
            other = recording.new_context(viewport={"width": 1280, "height": 800}, locale="en-GB",
                                          storage_state=state)  # fmt: skip
            try:
                tab = other.new_page()
                tab.goto(viewer)
                check_viewer_shows_exam_c(tab)
            finally:
                other.close()
            if recording.processes[urlsplit(source.url).netloc] == {"0", "1"}:
                break
        assert recording.processes[urlsplit(source.url).netloc] == {"0", "1"}, recording.processes
    finally:
        context.close()
