"""GET /metrics on a real source box: an exam published and read through /dicom-web, then scraped and parsed."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drimbox.config import ConfigError, load_settings
from tests.support.drim_flow import publish_exam

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]

UID_LIKE = re.compile(r"\d+\.\d+\.\d+")


@pytest.fixture(autouse=True)
def empty_pacs(orthanc: Any) -> None:
    orthanc.clear()


def get(url: str, token: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
        data: bytes = resp.read()
    return data


def scrape(box: Any) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of /metrics by its name: [(labels, value)], parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(box.operator_request("/metrics"), timeout=30) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lbl, v in samples.get(name, []) if all(lbl.get(k) == w for k, w in labels.items()))


def test_metrics_after_a_publication_and_a_read(orthanc: Any, source_box: Any, tmp_path: Path) -> None:
    box = source_box(orthanc, box={"log_format": "json"})
    before = scrape(box)
    pub = publish_exam(orthanc, box, tmp_path, exam="C")
    study = pub["study_uid"]
    series = json.loads(get(f"{box.url}/dicom-web/studies/{study}/series"))
    assert series
    series_uid = series[0]["0020000E"]["Value"][0]
    for _ in range(2):  # the first read fills the cache (a miss), the second is served from it (a hit)
        assert get(f"{box.url}/dicom-web/studies/{study}/series/{series_uid}/metadata")
        assert get(f"{box.url}/dicom-web/studies/{study}/series/{series_uid}")
    after = scrape(box)

    # Publications by state, read from the outbox at scrape time; one latency observation.
    assert total(after, "drimbox_publications", state="published") == 1
    assert (
        total(after, "drimbox_publication_latency_seconds_count")
        - total(before, "drimbox_publication_latency_seconds_count")
        >= 1
    )
    # DMP calls by transaction (the KOS registered: ITI-41), without errors.
    dmp = {lbl["transaction"] for lbl, v in after["drimbox_dmp_calls_total"] if v and lbl["outcome"] == "ok"}
    assert dmp, after["drimbox_dmp_calls_total"]
    assert total(after, "drimbox_dmp_call_duration_seconds_count") >= 1
    # PACS operations: C-FIND (the publication's and QIDO's) and a retrieve (C-GET or C-MOVE) for the read.
    assert total(after, "drimbox_dimse_calls_total", operation="C-FIND", outcome="ok") >= 1
    retrieves = sum(total(after, "drimbox_dimse_calls_total", operation=op) for op in ("C-GET", "C-MOVE"))
    assert retrieves >= 1
    assert {lbl["state"] for lbl, _ in after["drimbox_dimse_pool_associations"]} == {"idle", "in_use"}
    # DICOMweb requests by route template, with status, durations and bytes; no UID in any label.
    route = "/dicom-web/studies/{study}/series/{series}"
    assert total(after, "drimbox_http_requests_total", route=route, method="GET", status="200") >= 2
    assert total(after, "drimbox_http_request_duration_seconds_count", route=route) >= 2
    assert total(after, "drimbox_http_response_bytes_total", route=route) > 0
    for name, samples in after.items():
        for labels, _ in samples:
            assert not any(UID_LIKE.search(v) for k, v in labels.items() if k != "le"), (name, labels)
    # The cache: one miss (the fill), at least one hit, its size.
    assert total(after, "drimbox_cache_misses_total") - total(before, "drimbox_cache_misses_total") >= 1
    assert total(after, "drimbox_cache_hits_total") - total(before, "drimbox_cache_hits_total") >= 1
    assert total(after, "drimbox_cache_bytes") > 0 and total(after, "drimbox_cache_series") >= 1
    assert "drimbox_cache_evictions_total" in after

    # Without the operator token: 401 JSON.
    with pytest.raises(urllib.error.HTTPError) as refused:
        get(f"{box.url}/metrics")
    assert refused.value.code == 401 and json.loads(refused.value.read())["reason"] == "operator_required"
    with pytest.raises(urllib.error.HTTPError) as wrong:
        get(f"{box.url}/metrics", token="not-the-operator")
    assert wrong.value.code == 401

    # [box] log_format = "json": every line of the box's log is one JSON object.
    lines = [line for line in (box.work / "box.log").read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["message"].startswith("drimbox started") for r in records)


def test_metrics_networks_let_a_scraper_in_without_the_token(orthanc: Any, source_box: Any) -> None:
    box = source_box(orthanc, metrics={"networks": ["127.0.0.0/8"]})
    text = get(f"{box.url}/metrics").decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"drimbox_publications", "drimbox_http_requests", "drimbox_dmp_calls"} <= names


def test_metrics_settings_are_checked(tmp_path: Path) -> None:
    assert load_settings(env={}).metrics.networks == []
    assert load_settings(env={}).box.log_format == "text"
    with pytest.raises(ConfigError, match=r"metrics\.networks"):
        load_settings(env={"DRIMBOX_METRICS__NETWORKS": "10.0.0.0/8,not-a-network"})
    with pytest.raises(ConfigError, match=r"box\.log_format"):
        load_settings(env={"DRIMBOX_BOX__LOG_FORMAT": "xml"})
