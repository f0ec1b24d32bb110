"""The README's screenshots, taken in headless Chromium (Playwright) against a demo: the viewer and the exam list.

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


def viewer_from_report_link(browser: Any, link: str, path: Path) -> list[str]:
    """Report link → the simulator's login page (the radiologist) → the viewer, image shown. Returns any problem."""
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 1280, "height": 800})
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
    page.wait_for_timeout(300)  # let the last preloaded images settle so the picture is stable
    page.screenshot(path=str(path))
    context.close()
    return problems


def consumer_exam_list(browser: Any, launch_url: str, path: Path) -> list[str]:
    """The doctor's software page posts the launch → login (the GP) → the consumer's exam list."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(launch_url)
    page.click(f"button[value='{GP}']")
    page.wait_for_url("**/conso/patients/*/exams*", timeout=30_000)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(path), full_page=True)
    problems = [] if page.locator("text=View").count() else ["the exam list shows no exam"]
    context.close()
    return problems


def take(links: dict[str, Any], out: Path) -> list[str]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            problems = viewer_from_report_link(browser, links["report_links"]["C"], out / "report-link-viewer.png")
            problems += consumer_exam_list(browser, links["consumer_launch"], out / "consumer-exam-list.png")
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
    print(f"written: {Path(args.out) / 'report-link-viewer.png'}, {Path(args.out) / 'consumer-exam-list.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
