"""Boxes started in the test's own process (drimbox.app.Box) for the authentication tests: fast, and their router visible."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from drimbox.app import Box
from drimbox.audit import AUDIT, MemoryAudit
from drimbox.auth.operator import operator_token_hash
from drimbox.config import Settings
from drimbox.demo.samples.processes import free_port

OPERATOR_TOKEN = "auth-test-operator-token"
LINK_KEY = "k1-" + "x" * 40
OLD_LINK_KEY = "k0-" + "y" * 40


@dataclass
class RunningBox:
    url: str
    box: Box
    app: web.Application

    @property
    def audit(self) -> MemoryAudit:
        sink = self.app[AUDIT]
        assert isinstance(sink, MemoryAudit)
        return sink

    def actions(self) -> list[tuple[str, str, str]]:
        """(action, outcome, reason) of each recorded event."""
        return [(e.action, e.outcome, e.detail.get("reason", "")) for e in self.audit.events]


def box_settings(work: Path, sim_url: str, roles: list[str], profile: str = "proxy", **auth: Any) -> Settings:
    s = Settings()
    port = free_port()
    s.box.roles, s.box.profile = roles, profile
    s.box.var_dir, s.box.public_url = str(work / "var"), f"http://127.0.0.1:{port}"
    s.http.port, s.mllp.port, s.dicom.port = port, free_port(), free_port()
    # A PACS nobody listens on: the requests these tests make are answered (or refused) before any C-FIND.
    s.pacs.port, s.pacs.timeout = free_port(), 2.0
    s.dmp.url, s.psc.issuer = f"{sim_url}/dmp", f"{sim_url}/psc"
    s.whitelist.url, s.whitelist.certificate_url = f"{sim_url}/whitelist", f"{sim_url}/whitelist/certificate"
    s.whitelist.trust_on_first_use = True  # the simulator's test root, on loopback
    s.auth.operator_token = operator_token_hash(OPERATOR_TOKEN)
    # Events kept in memory, where these tests read them (the on-disk trail has its own tests).
    s.audit.enabled = False
    for key, value in auth.items():
        setattr(s.auth, key, value)
    return s


@asynccontextmanager
async def running_box(settings: Settings) -> AsyncIterator[RunningBox]:
    box = Box(settings)
    await box.start()
    runner = box._runner
    assert runner is not None
    try:
        yield RunningBox(settings.box.public_url, box, runner.app)
    finally:
        await box.stop()
