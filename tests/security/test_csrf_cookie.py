"""Finding 6 (CSRF), the cookie: a box that serves HTTPS itself ([tls] certificate) marks its cookies Secure, even
when its public_url (behind a misconfiguration, or left at its default) says http."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drimbox.config import TlsSettings
from drimbox.sim.certs import issue_test_pki
from drimbox.tls import client_context
from tests.support.auth_boxes import box_settings, running_box
from tests.support.consumer import LAUNCH_FORM
from tests.support.drim_flow import psc_token

pytestmark = [pytest.mark.sim, pytest.mark.box]


async def test_a_box_serving_https_sets_secure_cookies(tmp_path: Path, sim: Any) -> None:
    pki = issue_test_pki(tmp_path / "pki")
    settings = box_settings(tmp_path, sim.url, ["consumer"])
    assert settings.box.public_url.startswith("http://")
    settings.tls.cert, settings.tls.key = str(pki["consumer"]), str(pki["consumer-key"])
    https = settings.box.public_url.replace("http://", "https://")
    ctx = client_context(TlsSettings(ca=str(pki["ca"])))
    token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
    async with running_box(settings), aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
        launched = await http.post(f"{https}/conso/launch", data=LAUNCH_FORM, allow_redirects=False,
                                   headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert launched.status == 303, await launched.text()
        session = launched.cookies["drimbox_session"]
        assert session["secure"] and session["httponly"] and session["samesite"] == "Lax"
        login = await http.get(f"{https}/auth/login", params={"next": "/"}, allow_redirects=False)
        assert login.status in (302, 303) and login.cookies["drimbox_session_login"]["secure"]
