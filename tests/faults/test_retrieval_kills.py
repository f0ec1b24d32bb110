"""The source box SIGKILLed while it fills its cache from the PACS: after a restart the study comes back whole."""

from __future__ import annotations

import http.client
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.studies import exam_c_study, write_study
from tests.faults.harness import cases, file_parts, get_study, restart, study_parts, wait_killed

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.box]

STUDY = "1.2.250.1.213.4.5.2.1.103"
SERIES_DONE_BEFORE = {"retrieve.instance:13": 1, "retrieve.ended:2": 1}


@pytest.fixture(scope="module")
def exam_c(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_study(tmp_path_factory.mktemp("examc"), exam_c_study(instances=20))


@pytest.mark.parametrize(
    "kill_at",
    cases(
        ["retrieve.instance:3", "retrieve.ended"],
        ["retrieve.instance:1", "retrieve.instance:13", "retrieve.ended:2"],
    ),
)
def test_killed_mid_retrieve_then_the_study_retrieves_whole(
    kill_at: str, orthanc: Any, armed_box: Any, exam_c: list[Path]
) -> None:
    orthanc.clear()
    orthanc.store_files(exam_c)
    box = armed_box(orthanc, kill_at)
    with pytest.raises((http.client.HTTPException, ConnectionError, AssertionError)):
        status, boundary, body = get_study(box, STUDY)
        study_parts(body, boundary)  # a body cut by the kill is not a terminated multipart
    wait_killed(box, kill_at)
    restart(box)
    health = json.loads(urllib.request.urlopen(f"{box.url}/health", timeout=10).read())
    # Exam C is two series of 10: a kill in the second leaves the first complete, and only that one indexed.
    assert health["components"]["cache"]["series"] == SERIES_DONE_BEFORE.get(kill_at, 0), health
    expected = file_parts(exam_c)
    for _ in ("from the PACS", "from the cache"):
        status, boundary, body = get_study(box, STUDY)
        assert status == 200
        assert study_parts(body, boundary) == expected
