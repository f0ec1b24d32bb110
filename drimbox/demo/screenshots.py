"""The README's screenshots, in French, taken in headless Chromium (Playwright) against a demo.

report-link-viewer.png: the viewer opened from the report link; consumer-exam-list.png: the consumer's exam list;
consumer-report.png: an exam's report beside it; viewer-measurement.png: a distance measured in mm;
viewer-comparison.png: two exams of the patient side by side.

python -m drimbox.demo.screenshots --out docs/                  # starts a demo, then stops it
python -m drimbox.demo.screenshots --demo /tmp/d --out docs/    # a demo already running with --workdir /tmp/d
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from drimbox.demo.child import DemoRun, start_demo

CHROMIUM = "/usr/bin/chromium"
RADIOLOGIST = "801234560801"
GP = "801234567897"
LOCALE = "fr-FR"  # the doctors drimbox serves read French: so do the pictures
SHOTS = ("report-link-viewer.png", "consumer-exam-list.png", "consumer-report.png", "viewer-measurement.png",
         "viewer-comparison.png")  # fmt: skip
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]  # fmt: skip


def _thumbnails_loaded(page: Any, timeout: float = 15.0) -> bool:
    """Polled from Python: the viewer's CSP forbids the eval behind Playwright's wait_for_function."""
    check = "() => { const t = [...document.querySelectorAll('#series-list img')];" \
            " return t.length > 0 && t.every(i => i.complete && i.naturalWidth > 0); }"  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate(check):
            return True
        page.wait_for_timeout(100)
    return False


def _poll(page: Any, expression: str, timeout: float = 15.0) -> bool:
    """A JavaScript expression polled from Python (the CSP again): True once it holds, False at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate(f"() => Boolean({expression})"):
            return True
        page.wait_for_timeout(100)
    return False


def _context(browser: Any) -> Any:
    return browser.new_context(viewport={"width": 1280, "height": 800}, locale=LOCALE)


def viewer_from_report_link(browser: Any, link: str, path: Path) -> list[str]:
    """Report link → the simulator's login page (the radiologist) → the viewer, image shown. Returns any problem."""
    problems: list[str] = []
    context = _context(browser)
    page = context.new_page()
    failed: list[str] = []

    def note_failure(response: Any) -> None:
        if response.status >= 400:
            failed.append(f"HTTP {response.status} {response.url}")

    page.on("response", note_failure)
    page.goto(link)
    page.click(f"button[value='{RADIOLOGIST}']")
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=30_000)
    if page.get_attribute("body", "data-state") != "ready":
        problems.append("viewer error: " + page.inner_text("#message"))
    if not _thumbnails_loaded(page):
        problems.append("some series thumbnails did not load: " + "; ".join(failed))
    if not _poll(page, "document.body.dataset.words === 'fr'"):
        problems.append("the viewer's French words did not load")
    page.wait_for_timeout(300)  # let the last preloaded images settle so the picture is stable
    page.screenshot(path=str(path))
    context.close()
    return problems


def consumer_walk(browser: Any, launch_url: str, out: Path) -> list[str]:
    """The doctor's software page posts the launch → login (the GP) → the exam list → exam C's report → the viewer,
    a distance measured → exam E beside it."""
    problems: list[str] = []
    context = _context(browser)
    page = context.new_page()
    page.goto(launch_url)
    page.click(f"button[value='{GP}']")
    page.wait_for_url("**/conso/patients/*/exams*", timeout=30_000)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(out / "consumer-exam-list.png"), full_page=True)
    list_url = page.url
    row = page.locator("tr", has_text="ACN103")  # exam C
    if not row.count() or not row.locator("a:text-is('Voir')").count():
        context.close()
        return ["the exam list does not show exam C with its Voir link"]

    row.locator("a:text-is('Compte rendu')").click()
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(1000)  # Chromium's PDF viewer draws the report in its frame
    page.screenshot(path=str(out / "consumer-report.png"))
    if page.inner_text("h1") != "Compte rendu":
        problems.append("the report page: " + page.inner_text("body")[:200])

    page.goto(list_url)
    page.locator("tr", has_text="ACN103").locator("a:text-is('Voir')").click()
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=30_000)
    if page.get_attribute("body", "data-state") != "ready" or not _thumbnails_loaded(page):
        problems.append("the viewer from the list: " + page.inner_text("#message"))
    _poll(page, "document.body.dataset.words === 'fr'")
    page.focus("#image")
    page.keyboard.press("d")
    box = page.locator("#image").bounding_box()
    y = box["y"] + box["height"] * 0.55
    page.mouse.click(box["x"] + box["width"] * 0.35, y)
    page.mouse.click(box["x"] + box["width"] * 0.65, y)
    if not _poll(page, "document.querySelectorAll('#measurements li').length === 1"):
        problems.append("no distance measured")
    page.wait_for_timeout(300)
    page.screenshot(path=str(out / "viewer-measurement.png"))

    if not _poll(page, "!document.getElementById('compare-tools').hidden"):
        problems.append("no exam offered for comparison")
    else:
        page.click("#compare")
        page.wait_for_selector("#peer")
        peer = page.frame_locator("#peer")
        peer.locator("body[data-state=ready]").wait_for(timeout=30_000)
        peer.locator("body[data-words=fr]").wait_for(timeout=10_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(out / "viewer-comparison.png"))
    context.close()
    return problems


def take(links: dict[str, Any], out: Path) -> list[str]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            problems = viewer_from_report_link(browser, links["report_links"]["C"], out / "report-link-viewer.png")
            problems += consumer_walk(browser, links["consumer_launch"], out)
        finally:
            browser.close()
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drimbox.demo.screenshots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", default="docs", help="where to write the PNG files (default docs/)")
    parser.add_argument("--demo", help="the --workdir of a running demo (its demo.json); default: start one")
    args = parser.parse_args(argv)
    run: DemoRun | None = None
    scratch = Path(tempfile.mkdtemp(prefix="drimbox-shots-"))
    try:
        if args.demo:
            links = json.loads((Path(args.demo) / "demo.json").read_text())
        else:
            # The default ports when free, so the picture shows the addresses a newcomer will see.
            run = start_demo(scratch / "demo", free_ports=False)
            links = run.links
        problems = take(links, Path(args.out))
    finally:
        if run is not None:
            run.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    for problem in problems:
        print(f"note: {problem}")
    print("written: " + ", ".join(str(Path(args.out) / name) for name in SHOTS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
