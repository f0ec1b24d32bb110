"""Security finding 4 (HTTP): a token and KOS C reach only what KOS C references, never another series of the study."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.security._scope_support import Published, published_source, status_json
from tests.support.drim_flow import psc_token, read_multipart

pytestmark = [pytest.mark.sim, pytest.mark.box]


@pytest.fixture(params=[pytest.param("proxy", marks=[pytest.mark.orthanc, pytest.mark.dcmtk]), "native"])
async def exam(request: Any, tmp_path: Path, sim: Any) -> Any:
    if request.param == "proxy":
        orthanc = request.getfixturevalue("orthanc")
        orthanc.clear()
    else:
        orthanc = None
    async with published_source(tmp_path, sim.url, request.param, orthanc) as published:
        yield published


def _uids(items: Any, tag: str) -> set[str]:
    return {item[tag]["Value"][0] for item in items if tag in item}


async def test_everything_under_the_study_is_what_the_kos_references(exam: Published, sim: Any) -> None:
    token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
    headers = {"Authorization": f"Bearer {token}", "KOS-SOPInstanceUID": exam.kos_uid}
    allowed = set(exam.series)
    instances = set().union(*exam.series.values())
    base = exam.study_url
    async with aiohttp.ClientSession() as http:
        status, rows = await status_json(http, f"{base}/series", **headers)
        assert status == 200 and _uids(rows, "0020000E") == allowed
        counts = {r["0020000E"]["Value"][0]: r["00201209"]["Value"][0] for r in rows if "00201209" in r}
        assert all(counts[s] <= len(exam.series[s]) for s in counts)
        status, rows = await status_json(http, f"{base}/instances", **headers)
        assert status == 200 and _uids(rows, "00080018") == instances
        assert _uids(rows, "0020000E") == allowed
        status, items = await status_json(http, f"{base}/metadata", **headers)
        assert status == 200 and _uids(items, "00080018") == instances
        async with http.get(base, headers={**headers, "Accept": 'multipart/related; type="application/dicom"'}) as resp:
            assert resp.status == 200
            assert set(await read_multipart(resp)) == instances
        # A thumbnail of the study shows one of the KOS's images: the first series it references, not the other.
        status, study_thumb = await status_json(http, f"{base}/thumbnail", **headers)
        assert status == 200
        thumbs = {s: (await status_json(http, f"{base}/series/{s}/thumbnail", **headers))[1] for s in allowed}
        assert study_thumb in thumbs.values()
        # Nothing of the other series, at any depth, with the same KOS.
        extra = f"{base}/series/{exam.extra_series}"
        for url in (extra, f"{extra}/metadata", f"{extra}/instances", f"{extra}/thumbnail",
                    f"{extra}/instances/{exam.extra_instance}", f"{extra}/instances/{exam.extra_instance}/metadata",
                    f"{extra}/instances/{exam.extra_instance}/rendered",
                    f"{extra}/instances/{exam.extra_instance}/frames/1"):  # fmt: skip
            status, _ = await status_json(http, url, **headers)
            assert status in (403, 404), url
        # An instance the KOS does not reference, in a series it does: never listed, never served.
        hidden_in = exam.hidden_in
        for url in (f"{base}/series/{hidden_in}/instances", f"{base}/series/{hidden_in}/metadata"):
            status, items = await status_json(http, url, **headers)
            assert status == 200 and _uids(items, "00080018") == exam.series[hidden_in], url
        for sop in (exam.hidden_instance, exam.extra_instance):
            status, _ = await status_json(http, f"{base}/series/{hidden_in}/instances/{sop}/metadata", **headers)
            assert status in (403, 404)
