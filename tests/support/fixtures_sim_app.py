"""The simulator as an in-process aiohttp server (no process to start): `dmp_url`, its DMP base URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from drimbox.config import Settings
from drimbox.sim import build_sim_app


@pytest.fixture
async def dmp_url(tmp_path: Path) -> AsyncIterator[str]:
    settings = Settings()
    settings.sim.var_dir = str(tmp_path / "sim")
    server = TestServer(build_sim_app(settings), host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}/dmp"
    await server.close()
