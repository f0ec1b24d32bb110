"""Each role wires itself onto the box's one app: the source's components live in the app's keys, /health reports
them, and stopping the box closes every listener the roles opened (the app's cleanup_ctx, in reverse order)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drimbox.consumer.routes import CONSUMER
from drimbox.source.wiring import ARCHIVE, ARCHIVE_SCP, CACHE, MLLP, OUTBOX, PROXY_SCP, WORKER
from tests.support.auth_boxes import box_settings, running_box

pytestmark = [pytest.mark.sim, pytest.mark.box]


async def listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


@pytest.mark.parametrize("profile", ["proxy", "native"])
async def test_the_roles_open_with_the_app_and_close_with_it(tmp_path: Path, sim: Any, profile: str) -> None:
    settings = box_settings(tmp_path, sim.url, ["source", "consumer"], profile)
    async with running_box(settings) as box:
        app = box.app
        assert CONSUMER in app  # the consumer's store and catalog opened with the app
        assert box.box.outbox is app[OUTBOX] and box.box.worker is app[WORKER] and box.box.mllp is app[MLLP]
        assert (CACHE in app, PROXY_SCP in app) == (profile == "proxy",) * 2
        assert (ARCHIVE in app, ARCHIVE_SCP in app) == (profile == "native",) * 2
        dicom_port = app[ARCHIVE_SCP].port if profile == "native" else app[PROXY_SCP].port
        async with aiohttp.ClientSession() as http, http.get(f"{box.url}/health") as response:
            health = await response.json()
        components = health["components"]
        assert response.status == 200 and health["status"] == "up"
        assert {"http", "outbox", "mllp", "worker"} <= set(components)
        assert components["mllp"]["port"] == settings.mllp.port
        assert ("cache" in components) == (profile == "proxy")
        assert await listening(settings.mllp.port) and await listening(dicom_port)
    # Stopped: the HL7 and DICOM listeners are closed with the app, not left to the process's end.
    assert not await listening(settings.mllp.port)
    assert not await listening(dicom_port)
    assert not await listening(settings.http.port)
