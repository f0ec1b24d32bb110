"""Signed, expiring report links: issued by `drimbox link` and POST /api/report-links, checked by the report link."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
import pytest

from drimbox.auth.links import ReportLinks
from drimbox.cli import main
from drimbox.config import AuthSettings
from drimbox.demo.samples.processes import write_config
from tests.support.auth_boxes import LINK_KEY, OLD_LINK_KEY, OPERATOR_TOKEN, box_settings, running_box

pytestmark = [pytest.mark.box]
STUDY = "1.2.250.1.213.4.5.2.1.103"
SIM = "http://127.0.0.1:9"  # never asked: these requests stop at the link check or at the login redirect


def with_param(url: str, name: str, value: str) -> str:
    """The same link with one parameter changed (or added), the others kept as they were."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query[name] = value
    return f"{parts.path}?{urlencode(query)}"


async def opens(http: aiohttp.ClientSession, base: str, link: str) -> tuple[int, str]:
    """(status, Location or page text) of a report link asked without a session."""
    path = link if link.startswith("/") else urlsplit(link).path + "?" + urlsplit(link).query
    async with http.get(base + path, allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Location") or await resp.text()


def test_cli_prints_a_signed_link_that_the_box_accepts(tmp_path: Path, capsys: Any) -> None:
    cfg = write_config(tmp_path / "box.toml", {"box": {"public_url": "https://ris.example:8443"},
                                               "auth": {"report_link_keys": [LINK_KEY, OLD_LINK_KEY]}})  # fmt: skip
    assert (
        main(["link", "--study", STUDY, "--accession", "ACN103", "--cda", "1.2.250.1.213.4.5.4.403", "-c", str(cfg)])
        == 0
    )
    url = capsys.readouterr().out.strip()
    assert url.startswith("https://ris.example:8443/IHEInvokeImageDisplay?requestType=STUDY&studyUID=" + STUDY)
    query = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
    assert int(query["exp"]) - time.time() == pytest.approx(90 * 24 * 3600, abs=60)
    links = ReportLinks(AuthSettings(report_link_keys=[LINK_KEY]), "https://ris.example:8443")
    links.verify(query)  # the box, holding the key, accepts what the CLI printed
    assert main(["link", "--study", "1.2;DROP", "-c", str(cfg)]) == 2


async def test_signed_links_open_and_altered_expired_or_unsigned_ones_are_refused(tmp_path: Path) -> None:
    settings = box_settings(tmp_path, SIM, ["source"], report_link_keys=[LINK_KEY, OLD_LINK_KEY])
    async with running_box(settings) as box, aiohttp.ClientSession() as http:
        api = f"{box.url}/api/report-links"
        body = {"study": STUDY, "accession": "ACN103", "cda": "1.2.250.1.213.4.5.4.403"}
        assert (await http.post(api, json=body)).status == 401  # the RIS's operator token is required
        resp = await http.post(api, json=body, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
        assert resp.status == 200
        issued = await resp.json()
        assert issued["expires_at"] > time.time() + 89 * 24 * 3600
        bad = await http.post(api, json={"study": "1.2.x"}, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
        assert bad.status == 400

        # A good link goes on to the login (and from there to the viewer).
        status, where = await opens(http, box.url, issued["url"])
        assert status == 303 and where.startswith("/auth/login?next=/IHEInvokeImageDisplay?")
        # Parameter names are matched without case, as reports write them.
        status, _ = await opens(http, box.url, issued["url"].replace("studyUID=", "StudyUID="))
        assert status == 303

        for name, value in (("studyUID", "1.2.250.1.213.4.5.2.1.105"), ("accessionNumber", "ACN105"),
                            ("exp", str(int(time.time()) + 10 * 365 * 24 * 3600)), ("sig", "A" * 43)):  # fmt: skip
            status, page = await opens(http, box.url, with_param(issued["url"], name, value))
            assert status == 403 and "Lien altéré" in page, name

        unsigned = f"/IHEInvokeImageDisplay?requestType=STUDY&studyUID={STUDY}"
        status, page = await opens(http, box.url, unsigned)
        assert status == 403 and "pas signé" in page

        stale = ReportLinks(settings.auth, box.url).issue(STUDY, "ACN103", now=time.time() - 91 * 24 * 3600)
        status, page = await opens(http, box.url, stale.url)
        assert status == 403 and "a expiré" in page

        # Rotation: a link signed with the previous key still opens; one signed with a foreign key does not.
        old = ReportLinks(AuthSettings(report_link_keys=[OLD_LINK_KEY]), box.url).issue(STUDY, "ACN103")
        assert (await opens(http, box.url, old.url))[0] == 303
        foreign = ReportLinks(AuthSettings(report_link_keys=["z" * 40]), box.url).issue(STUDY, "ACN103")
        assert (await opens(http, box.url, foreign.url))[0] == 403

    refused = [reason for action, outcome, reason in box.actions() if action == "report-link.refused"]
    assert refused == ["tampered"] * 4 + ["unsigned", "expired", "tampered"]
    assert all(e.study for e in box.audit.events if e.action == "report-link.refused")


async def test_without_keys_links_stay_unsigned_and_open_as_before(tmp_path: Path) -> None:
    async with running_box(box_settings(tmp_path, SIM, ["source"])) as box, aiohttp.ClientSession() as http:
        resp = await http.post(f"{box.url}/api/report-links", json={"study": STUDY},
                               headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})  # fmt: skip
        issued = await resp.json()
        assert issued == {
            "url": f"{box.url}/IHEInvokeImageDisplay?requestType=STUDY&studyUID={STUDY}",
            "expires_at": None,
        }
        assert (await opens(http, box.url, issued["url"]))[0] == 303
