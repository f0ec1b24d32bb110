"""The report page in Debian's Chromium: the CDA's PDF shows in the page, under its CSP and sandbox, in French."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from drimbox.config import Settings
from drimbox.consumer import setup_consumer
from drimbox.demo.ris import publish_report
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from tests.support.consumer import LAUNCH_FORM, FakeAuth, Pro, consumer_settings, publish, study_spec
from tests.support.fixtures_browser import CHROMIUM

if shutil.which(CHROMIUM) is None:
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.async_api")

pytestmark = [pytest.mark.browser, pytest.mark.sim]
PDF_VIEWER = "chrome-extension://mhjfbmdgcfjbbpaeojofohoefgiehjai/"  # Chromium's built-in PDF viewer


async def test_the_report_pdf_shows_in_the_page(dmp_url: str, tmp_path: Path) -> None:
    settings = consumer_settings(tmp_path, dmp_url)
    kos_c = await publish(dmp_url, settings, study_spec())
    ris = Settings()
    ris.box.var_dir, ris.dmp.url = str(tmp_path / "ris"), dmp_url
    await publish_report(ris, build_oru(build_cda(ANS_EXAMS["C"]), control_id="T-C"))
    app = web.Application()
    setup_consumer(app, settings, FakeAuth(Pro()))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client, playwright.async_playwright() as p:
        assert (await client.post("/conso/launch", data=LAUNCH_FORM)).status == 200  # the exam is listed
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                          args=["--no-sandbox", "--disable-gpu", "--no-first-run"])  # fmt: skip
        try:
            page = await browser.new_page(locale="fr-FR")
            problems: list[str] = []

            def console(msg: Any) -> None:
                if msg.type == "error":
                    problems.append(msg.text)

            page.on("console", console)
            await page.goto(str(client.make_url(f"/conso/exams/{kos_c}/report")))
            assert await page.locator("h1").inner_text() == "Compte rendu"
            assert await page.locator(".banner").inner_text() == "Visualisation non diagnostique"
            for _ in range(50):  # the PDF viewer is a frame of its own, up once the PDF is read
                if any(f.url.startswith(PDF_VIEWER) for f in page.frames):
                    break
                await page.wait_for_timeout(100)
            assert any(f.url.startswith(PDF_VIEWER) for f in page.frames), [f.url for f in page.frames]
            assert not [t for t in problems if "Content Security Policy" in t], problems
        finally:
            await browser.close()
