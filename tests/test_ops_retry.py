"""Retry from the operator page: a publication that failed (its images never came) is queued again and published,
over HTTP and by clicking in Chromium."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message
from tests.support.fixtures_mesh import OPERATOR_TOKEN

pytestmark = [pytest.mark.orthanc, pytest.mark.sim, pytest.mark.box]

EXAM = "C"
INS = "279035121518989"


def send_report(orthanc: Any, box: Any, control: str) -> None:
    """Send the exam's report while the PACS holds none of its images."""
    orthanc.clear()
    message = build_oru(build_cda(ANS_EXAMS[EXAM]), control_id=f"{EXAM}-{control}")
    # On a thread of its own: Playwright's sync API keeps an event loop running in the test's thread.
    with ThreadPoolExecutor(1) as pool:
        ack = pool.submit(asyncio.run, send_message("127.0.0.1", box.mllp_port, message, timeout=30)).result()
    assert b"MSA|AA" in ack, ack


def failed_publication(orthanc: Any, box: Any, control: str) -> dict[str, Any]:
    """The report without its images: the box waits, then gives up (`failed`)."""
    send_report(orthanc, box, control)
    failed: dict[str, Any] = box.wait_state(ANS_EXAMS[EXAM].accession, ("failed", "published"), timeout=30)
    assert failed["state"] == "failed" and "waiting window" in failed["last_error"], failed
    return failed


def images_arrive(orthanc: Any, work: Path) -> None:
    orthanc.store_files(write_study(work / "study", study_for_exam(ANS_EXAMS[EXAM], instances=3)))


@pytest.fixture
def box(orthanc: Any, source_box: Any) -> Any:
    # A waiting window of one second: the report's images never come, the job fails at once.
    return source_box(orthanc, publish={"waiting_window": 1.0, "waiting_interval": 0.3})


def test_retry_over_http_queues_a_failed_publication_again_and_the_worker_publishes_it(
    orthanc: Any, box: Any, sim: Any, tmp_path: Path
) -> None:
    failed = failed_publication(orthanc, box, "1")
    http = requests.Session()
    r = http.post(box.url + "/operator/login", data={"token": OPERATOR_TOKEN}, allow_redirects=False, timeout=10)
    assert r.status_code == 303
    page = http.get(box.url + "/operator?state=failed", timeout=30).text
    assert f'id="retry-{failed["id"]}"' in page and "en échec" in page
    assert "waiting window" in page  # the reason, as the JSON API words it
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    # The images come; the operator retries.
    images_arrive(orthanc, tmp_path)
    r = http.post(box.url + "/operator/retry", data={"id": failed["id"], "csrf_token": token.group(1)},
                  allow_redirects=False, timeout=10)  # fmt: skip
    assert r.status_code == 303 and "notice=retried" in r.headers["Location"]
    done = box.wait_state(ANS_EXAMS[EXAM].accession, ("published", "failed"), timeout=30)
    assert done["state"] == "published" and done["id"] == failed["id"], done
    assert [d["uniqueId"] for d in sim.documents(INS)] == [done["kos_uid"]]
    # Audited in the operator's name, with the publication and its previous state.
    export = subprocess.run([sys.executable, "-m", "drimbox.cli", "audit", "export", "-c", str(box.config)],
                            capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    retries = [e for e in map(json.loads, export.splitlines()) if e["action"] == "operator.retry"]
    assert len(retries) == 1 and retries[0]["professional"] == "operator", retries
    assert retries[0]["detail"]["previous_state"] == "failed" and retries[0]["study"] == done["study_uid"]
    # Only failed and rejected publications are retried: a published one is not sent twice.
    r = http.post(box.url + "/operator/retry", data={"id": failed["id"], "csrf_token": token.group(1)},
                  allow_redirects=False, timeout=10)  # fmt: skip
    assert "notice=not_retryable" in r.headers["Location"]
    assert len(sim.documents(INS)) == 1


def test_an_exam_waiting_for_its_images_is_listed_with_no_patient_identity(
    orthanc: Any, source_box: Any, tmp_path: Path
) -> None:
    box = source_box(orthanc, publish={"waiting_window": 120.0, "waiting_interval": 0.3})
    send_report(orthanc, box, "W")
    waiting = box.wait_state(ANS_EXAMS[EXAM].accession, ("waiting",), timeout=30)
    http = requests.Session()
    http.post(box.url + "/operator/login", data={"token": OPERATOR_TOKEN}, timeout=10)
    page = http.get(box.url + "/operator", timeout=30).text
    waiting_table = page[page.index("id=waiting") :]
    assert ANS_EXAMS[EXAM].accession in waiting_table and ANS_EXAMS[EXAM].study_uid in waiting_table
    assert "il y a" in waiting_table and waiting["state"] == "waiting"
    spec = ANS_EXAMS[EXAM]
    for identity in (spec.ins, spec.family, spec.given, spec.ipp):
        assert identity not in page


@pytest.mark.browser
def test_the_operator_logs_in_and_clicks_retry_in_chromium(
    orthanc: Any, box: Any, sim: Any, tmp_path: Path, browser: Any
) -> None:
    failed = failed_publication(orthanc, box, "2")
    images_arrive(orthanc, tmp_path)
    page = browser.new_page(locale="fr-FR")
    try:
        page.goto(box.url + "/operator")
        page.fill("input[name=token]", OPERATOR_TOKEN)
        page.click("#login")
        page.wait_for_selector("#publications")
        row = page.locator(f"#pub-{failed['id']}")
        assert "en échec" in row.locator(".state").inner_text()
        page.click(f"#retry-{failed['id']}")
        assert "remise en file" in page.locator("#notice").inner_text()
        done = box.wait_state(ANS_EXAMS[EXAM].accession, ("published", "failed"), timeout=30)
        assert done["state"] == "published", done
        page.goto(box.url + "/operator?state=published")
        assert "publiée" in page.locator(f"#pub-{failed['id']} .state").inner_text()
    finally:
        page.close()
