"""The operator page's peers (PACS, DMP, Pro Santé Connect, whitelist) and certificates, against the simulator."""

from __future__ import annotations

import asyncio
import datetime
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drimbox.demo.samples.processes import free_port
from drimbox.ops.health import TIMEOUT
from drimbox.sim.certs import issue, make_ca
from tests.support.auth_boxes import OPERATOR_TOKEN, box_settings, running_box

pytestmark = [pytest.mark.sim, pytest.mark.box]


def rows(html: str, table: str) -> dict[str, str]:
    """The rows of one of the page's tables, by their first cell's text (tags stripped)."""
    body = html[html.index(f"id={table}") :]
    body = body[: body.index("</table>")]
    found = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)[1:]:
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
        found[cells[0]] = " | ".join(cells[1:]) + " " + row
    return found


async def operator_page(url: str, ssl_context: ssl.SSLContext | bool = True) -> tuple[str, float]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     connector=aiohttp.TCPConnector(ssl=ssl_context)) as http:  # fmt: skip
        await http.post(
            url + "/operator/login", data={"token": OPERATOR_TOKEN}, headers={"Origin": url}, allow_redirects=False
        )
        started = time.monotonic()
        async with http.get(url + "/operator") as resp:
            assert resp.status == 200
            return await resp.text(), time.monotonic() - started


async def test_peers_are_checked_when_the_page_loads_each_with_its_state_and_latency(tmp_path: Path, sim: Any) -> None:
    settings = box_settings(tmp_path, sim.url, ["source", "consumer"])
    settings.patient.enabled, settings.patient.issuer = True, f"{sim.url}/mes"
    async with running_box(settings) as box:
        html, took = await operator_page(box.url)
    peers = rows(html, "peers")
    assert "joignable" in peers["Mon Espace Santé (connexion des patients)"]
    assert "injoignable" not in peers["Mon Espace Santé (connexion des patients)"]
    assert "joignable" in peers["DMP"] and "injoignable" not in peers["DMP"] and " ms" in peers["DMP"]
    assert "joignable" in peers["Pro Santé Connect (découverte)"]
    assert "injoignable" not in peers["Pro Santé Connect (découverte)"]
    # The consumer fetched and verified the simulator's signed list at start.
    whitelist = peers["Liste blanche ANS"]
    assert re.search(r"chargée il y a \d+ s, prochaine vérification dans \d+ (min|s|h), [1-9]\d* entrées", whitelist)
    # Nobody answers on the PACS port: said so, with why, and quickly (each check is bounded).
    assert "injoignable" in peers["PACS (C-ECHO)"] and "C-ECHO" in peers["PACS (C-ECHO)"]
    assert took < 10
    # The whitelist's signer chain is among the certificates, with the days each has left.
    certs = rows(html, "certificates")
    assert "Chaîne de signature de la liste blanche" in certs and "jours" in certs["Signature des VIHF (structure)"]


async def test_a_consumer_only_box_says_what_does_not_apply(tmp_path: Path, sim: Any) -> None:
    async with running_box(box_settings(tmp_path, sim.url, ["consumer"])) as box:
        html, _ = await operator_page(box.url)
    assert "Sans objet : cette box n'a pas le rôle source." in html.replace("&#x27;", "'")
    assert "sans objet pour cette box" in rows(html, "peers")["PACS (C-ECHO)"]
    assert "Mon Espace Santé (connexion des patients)" not in rows(html, "peers")  # no patient routes here
    assert 'id="empty-cache"' not in html


async def test_a_certificate_expiring_within_30_days_is_flagged(tmp_path: Path, sim: Any) -> None:
    ca = make_ca(tmp_path / "ca")
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10, hours=1)
    (tmp_path / "leaf").mkdir()
    cert, key = issue(ca, tmp_path / "leaf", "source", not_after=soon)
    settings = box_settings(tmp_path, sim.url, ["source"])
    settings.tls.cert, settings.tls.key = str(cert), str(key)
    settings.box.public_url = settings.box.public_url.replace("http://", "https://")
    async with running_box(settings) as box:
        html, _ = await operator_page(box.url.replace("http://", "https://"),
                                      ssl.create_default_context(cafile=str(ca.cert_path)))  # fmt: skip
    certs = rows(html, "certificates")
    server = certs["Serveur TLS de la box"]
    assert "10 jours" in server and 'class="warn"' in server
    assert 'class="ok"' in certs["Signature des VIHF (structure)"]  # the test pair: years left


async def test_a_silent_pacs_costs_the_page_its_time_out_and_never_holds_the_box_up(tmp_path: Path) -> None:
    """A PACS that accepts the connection and never answers: the page waits TIMEOUT for it, and meanwhile the box
    answers everyone else at once (the C-ECHO runs on a thread, not on the event loop)."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel's backlog), never answers
    try:
        nobody = f"http://127.0.0.1:{free_port()}"
        settings = box_settings(tmp_path, nobody, ["source"])
        settings.pacs.port, settings.pacs.timeout = silent.getsockname()[1], 30.0
        async with running_box(settings) as box:
            loading = asyncio.create_task(operator_page(box.url))
            worst = 0.0
            async with aiohttp.ClientSession() as http:
                while not loading.done():
                    started = time.monotonic()
                    async with http.get(box.url + "/health") as resp:
                        assert resp.status == 200
                    worst = max(worst, time.monotonic() - started)
                    await asyncio.sleep(0.1)
            html, took = await loading
        assert TIMEOUT - 0.5 < took < TIMEOUT + 2, took
        assert worst < 0.5, worst
        assert f"no answer within {TIMEOUT:g} s" in rows(html, "peers")["PACS (C-ECHO)"]
    finally:
        silent.close()
