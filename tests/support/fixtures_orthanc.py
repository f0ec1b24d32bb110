"""Pytest fixtures for a real Orthanc (Debian package) as the test PACS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drimbox.demo.samples.orthanc import OrthancServer, ToolMissing, start_orthanc


@pytest.fixture(scope="session")
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., OrthancServer]]:
    """Start extra Orthanc servers: `orthanc_factory(box_port=..., box_aet=...)`; all stop at session end."""
    servers: list[OrthancServer] = []

    def start(**kwargs: Any) -> OrthancServer:
        try:
            server = start_orthanc(tmp_path_factory.mktemp("orthanc"), **kwargs)
        except ToolMissing as exc:
            pytest.skip(str(exc))
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            # Its data is thrown away: no need to wait for the associations some test left open (up to 15 s each).
            server.stop(timeout=2)


@pytest.fixture(scope="session")
def orthanc(orthanc_factory: Callable[..., OrthancServer]) -> OrthancServer:
    """One Orthanc shared by the session (DRIMBOX declared at 127.0.0.1:11112; move it with add_modality)."""
    return orthanc_factory()
