"""A large instance streams source → consumer → viewer as it arrives, checked against the KOS before its first byte
goes on: the viewer reads it while the source is still sending, and a forged one never reaches a viewer or the cache."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from drimbox.consumer import backend, retrieval
from drimbox.consumer.images import IMAGES
from drimbox.consumer.retrieval import HEAD, KOS_HEADER
from drimbox.demo.samples.processes import free_port
from tests.security._consumer_support import (
    ACCEPT,
    POISON,
    DicomwebServer,
    multipart_instances,
    poisoned,
    running_consumer,
    serving,
    stow_pacs,
    study_files,
)
from tests.support.consumer import consumer_settings, publish, study_spec

pytestmark = [pytest.mark.sim]

# 512² slices, 0.5 MB each: streamed once STREAM_FROM is lowered to just above the head.
SPEC = study_spec(rows=512, columns=512)


class HeldServer(DicomwebServer):
    """Sends each series' first part up to a little past its head, then holds the rest until `release` is set."""

    def __init__(self, port: int, *, cut: bool = False, **kwargs: Any) -> None:
        super().__init__(port, **kwargs)
        self.release = asyncio.Event()
        self.finished = 0
        self.cut = cut  # on release, break the connection off instead of sending the rest

    async def handle(self, request: web.Request) -> web.StreamResponse:
        instances = self.series.get(request.match_info.get("series", ""), {})
        if not instances or request.headers.get(KOS_HEADER) not in (self.published or set()):
            return await super().handle(request)
        self.paths.append(request.path)
        boundary = secrets.token_hex(8)
        resp = web.StreamResponse(headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                          f"boundary={boundary}"})  # fmt: skip
        await resp.prepare(request)
        body = b"".join(b"--%s\r\nContent-Type: application/dicom\r\nContent-Length: %d\r\n\r\n%s\r\n"
                        % (boundary.encode(), len(d), d) for d in instances.values()) + b"--%s--\r\n" % boundary.encode()  # fmt: skip
        cut = body.index(b"\r\n\r\n") + 4 + HEAD + 1000
        await resp.write(body[:cut])
        await self.release.wait()
        if self.cut:
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write(body[cut:])
        await resp.write_eof()
        self.finished += 1
        return resp


async def test_a_large_instance_reaches_the_viewer_while_the_source_still_sends_it(
    sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend, "STREAM_FROM", HEAD + 1)
    files = study_files(SPEC)
    series_uid, instances = next(iter(files.items()))
    source = HeldServer(free_port(), series={series_uid: instances})
    dmp = f"{sim.url}/dmp"
    kos_uid = await publish(dmp, consumer_settings(tmp_path / "publisher", dmp), SPEC, public_url=source.url)
    source.published = {kos_uid}
    async with serving(source), running_consumer(tmp_path, sim.url, "pro-token") as conso:
        try:
            await _first_bytes_while_held(conso, source, kos_uid, series_uid, instances)
        finally:
            source.release.set()  # a failing check must not leave the source hanging until timeouts


async def _first_bytes_while_held(
    conso: Any, source: HeldServer, kos_uid: str, series_uid: str, instances: dict[str, bytes]
) -> None:
    """The viewer's side: the first instance's head arrives while the source holds the rest of it."""
    assert kos_uid in await conso.open_exam_list()
    url = f"/conso/dicom-web/studies/{SPEC.study_uid}/series/{series_uid}"
    resp = await conso.client.get(url, headers={**ACCEPT, KOS_HEADER: kos_uid})
    assert resp.status == 200
    first = next(iter(instances.values()))
    # The head of the first instance, checked, is passed on while the source holds the rest of it.
    received = b""
    async with asyncio.timeout(10):
        while first[:HEAD] not in received:
            received += await resp.content.readany()
    assert source.finished == 0
    source.release.set()
    received += await resp.content.read()
    assert source.finished == 1
    assert received.count(b"\r\n--") >= len(instances)
    # Whole and exact, and kept: asked again, the series comes from the cache.
    again = await conso.client.get(url, headers={**ACCEPT, KOS_HEADER: kos_uid})
    assert await multipart_instances(again) == instances
    assert len(source.paths) == 1
    assert all(data in received for data in instances.values())


async def test_streamed_instances_outside_the_kos_never_reach_a_viewer_the_cache_or_an_import(
    sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend, "STREAM_FROM", HEAD + 1)
    streamed: list[str] = []

    def spy(head: bytes, size: int, buffer: Any) -> Any:
        found = real(head, size, buffer)
        if found is not None:
            streamed.append(found.sop_instance_uid)
        return found

    real = retrieval._streamed
    monkeypatch.setattr(retrieval, "_streamed", spy)
    files = study_files(SPEC)
    rogue = DicomwebServer(free_port())
    for series_uid, instances in files.items():
        first_uid, first = next(iter(instances.items()))
        # Each large enough to stream: an unreferenced instance, a referenced UID with another patient's content,
        # an instance of another study, then a genuine one.
        rogue.series[series_uid] = {
            f"{first_uid}.666": poisoned(first, f"{first_uid}.666"),
            first_uid: poisoned(first, PatientID="SOMEONE-ELSE"),
            f"{first_uid}.667": poisoned(first, f"{first_uid}.667", StudyInstanceUID="1.2.3.666"),
            **dict(list(instances.items())[1:]),
        }
    dmp = f"{sim.url}/dmp"
    forged_kos = await publish(dmp, consumer_settings(tmp_path / "publisher", dmp), SPEC, public_url=rogue.url)
    async with (serving(rogue), stow_pacs(free_port()) as pacs,
                running_consumer(tmp_path, sim.url, "pro-token", local_pacs_method="stow-rs",
                                 local_pacs_stow_url=pacs.url) as conso):  # fmt: skip
        assert forged_kos in await conso.open_exam_list()
        status, view = await conso.study(SPEC.study_uid, forged_kos)
        assert status == 200, view
        assert isinstance(view, dict) and all(
            POISON.encode() not in data for data in view.values() if isinstance(data, bytes)
        )
        genuine_rest = {uid: data for instances in files.values() for uid, data in list(instances.items())[1:]}
        assert view == genuine_rest
        dropped = [e for e in conso.events("consumer.retrieve") if e.detail.get("reason") == "instance_not_in_kos"]
        assert sum(int(e.detail["dropped"]) for e in dropped) == 3 * len(files)
        # What the cache kept is what was served: nothing of the rogue's on disk.
        cache_dir = tmp_path / "consumer-var" / "consumer-cache"
        kept = [p.read_bytes() for p in cache_dir.rglob("*.dcm")] if cache_dir.exists() else []
        assert all(POISON.encode() not in data for data in kept)
        assert len(streamed) == sum(len(instances) for instances in rogue.series.values())  # all of them streamed
        # An import from a cold cache takes each file once whole: the genuine instances only, complete.
        await conso.clear_cache()
        started = await conso.client.post(f"/conso/api/exams/{forged_kos}/import")
        assert started.status == 202, await started.text()
        status_url = (await started.json())["status_url"]
        async with asyncio.timeout(20):
            while (job := await (await conso.client.get(status_url)).json())["state"] in ("queued", "running"):
                await asyncio.sleep(0.05)
        assert job["state"] == "done", job
        assert sorted(pacs.stored) == sorted(genuine_rest.values())
        assert len(streamed) == 2 * sum(len(instances) for instances in rogue.series.values())


async def test_a_source_cut_off_midway_cuts_the_viewer_off_too_and_leaves_nothing_cached(
    sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The viewer already has the head of an instance the source then breaks off: its response ends broken (never
    a short instance that looks whole), and the cache keeps nothing of the series."""
    monkeypatch.setattr(backend, "STREAM_FROM", HEAD + 1)
    files = study_files(SPEC)
    series_uid, instances = next(iter(files.items()))
    source = HeldServer(free_port(), cut=True, series={series_uid: instances})
    dmp = f"{sim.url}/dmp"
    kos_uid = await publish(dmp, consumer_settings(tmp_path / "publisher", dmp), SPEC, public_url=source.url)
    source.published = {kos_uid}
    async with serving(source), running_consumer(tmp_path, sim.url, "pro-token") as conso:
        try:
            assert kos_uid in await conso.open_exam_list()
            url = f"/conso/dicom-web/studies/{SPEC.study_uid}/series/{series_uid}"
            resp = await conso.client.get(url, headers={**ACCEPT, KOS_HEADER: kos_uid})
            first = next(iter(instances.values()))
            received = b""
            async with asyncio.timeout(10):
                while first[:HEAD] not in received:
                    received += await resp.content.readany()
            source.release.set()
            with pytest.raises(aiohttp.ClientPayloadError):
                async with asyncio.timeout(10):
                    while chunk := await resp.content.readany():
                        received += chunk
            assert first not in received
        finally:
            source.release.set()
        cache = conso.app[IMAGES].cache
        async with asyncio.timeout(10):
            while cache._fills:  # the fill's end (its files removed) follows the viewer's by a moment
                await asyncio.sleep(0.02)
        assert not list((tmp_path / "consumer-var" / "consumer-cache").rglob("*.dcm"))
