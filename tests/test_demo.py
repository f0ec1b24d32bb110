"""`drimbox demo` as a newcomer runs it: the links it prints work end to end, and Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import aiohttp
import pytest

from drimbox.demo.child import PORT_NAMES, DemoRun, descendants, processes_naming, start_demo

pytestmark = [pytest.mark.orthanc, pytest.mark.dcmtk, pytest.mark.sim, pytest.mark.box]

INS = "279035121518989"
STUDY_C = "1.2.250.1.213.4.5.2.1.103"
GP = "801234567897"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoRun]:
    run = start_demo(tmp_path / "demo", instances=4, timeout=90)
    yield run
    run.stop()


class _Form(HTMLParser):
    """The first form of a page: its action and its inputs, as a browser would submit them."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and not self.action:
            self.action = a.get("action", "")
        elif tag == "input" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")


async def login_with_hint(http: aiohttp.ClientSession, login_url: str, professional: str) -> aiohttp.ClientResponse:
    """The box's /auth/login with a login hint, then the simulator's auto-login (stands for the CPS card)."""
    resp = await http.get(f"{login_url}&login_hint={professional}", allow_redirects=False)
    assert resp.status in (302, 303), await resp.text()
    authorize = resp.headers["Location"]
    assert "/psc/auth?" in authorize
    return await http.get(f"{authorize}&sim_auto=1")


async def test_demo_prints_working_links_and_stops_everything_on_ctrl_c(demo: DemoRun) -> None:
    assert demo.links["consumer_launch"] and set(demo.links["report_links"]) == {"C", "E"}
    assert "801234560801" in demo.output and GP in demo.output  # the logins to use are printed
    assert f"{demo.links['sim']}/mes/portail" in demo.output  # and the patient's way in (tests/test_patient_*.py)
    children = descendants(demo.process.pid)
    assert len(children) >= 4, children  # simulator, Orthanc, source box, consumer box

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        # (a) The report link: not logged in → Pro Santé Connect → the viewer on exam C, whose images are served.
        link = demo.links["report_links"]["C"]
        resp = await http.get(link, allow_redirects=False)
        assert resp.status in (302, 303)
        login = (
            urlsplit(link)._replace(path="/auth/login", query="").geturl()
            + "?"
            + urlsplit(resp.headers["Location"]).query
        )
        viewer = await login_with_hint(http, login, GP)
        assert viewer.status == 200 and urlsplit(str(viewer.url)).path == "/viewer/"
        assert f"study={STUDY_C}" in str(viewer.url)
        source = demo.links["source"]
        meta = await http.get(
            f"{source}/dicom-web/studies/{STUDY_C}/metadata", headers={"Accept": "application/dicom+json"}
        )
        assert meta.status == 200, await meta.text()
        instances = await meta.json()
        assert len(instances) == 4 and {i["00100020"]["Value"][0] for i in instances} == {INS}
        # The link opened: the same session reads the report the source box received with the study.
        report = await http.get(f"{source}/reports/{STUDY_C}")
        text = await report.text()
        assert report.status == 200 and "Compte rendu" in text and f'<iframe src="/reports/{STUDY_C}/pdf"' in text
        pdf = await http.get(f"{source}/reports/{STUDY_C}/pdf")
        assert pdf.content_type == "application/pdf" and (await pdf.read()).startswith(b"%PDF-")

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        # A login alone, without the report link, opens no report on the source box.
        source = demo.links["source"]
        refused = await login_with_hint(http, f"{source}/auth/login?next=/reports/{STUDY_C}", GP)
        assert urlsplit(str(refused.url)).path == f"/reports/{STUDY_C}"
        assert refused.status == 403 and "depuis le lien de son compte rendu" in await refused.text()
        assert (await http.get(f"{source}/reports/{STUDY_C}/pdf")).status == 403

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        # (b) The consumer launch page posts the ANS form; after the login the exam list shows both exams.
        page = await http.get(demo.links["consumer_launch"])
        form = _Form()
        form.feed(await page.text())
        assert form.action == f"{demo.links['consumer']}/conso/launch"
        assert form.fields["Patient.identifier.value"] == INS
        resp = await http.post(form.action, data=form.fields, allow_redirects=False)
        assert resp.status == 303, await resp.text()
        exams_page = await login_with_hint(http, demo.links["consumer"] + resp.headers["Location"], GP)
        assert exams_page.status == 200 and urlsplit(str(exams_page.url)).path == f"/conso/patients/{INS}/exams"
        listed = await (await http.get(f"{demo.links['consumer']}/conso/api/patients/{INS}/exams")).json()
        assert sorted(m for e in listed["exams"] for m in e["modalities"]) == ["CT", "NM"]
        # The RIS published each exam's report: the list links it, its page shows the PDF.
        reports = [e["report"] for e in listed["exams"]]
        assert all(e["report"] and e["report"]["url"] == f"/conso/exams/{e['kos_uid']}/report" for e in listed["exams"])
        report = await http.get(demo.links["consumer"] + reports[0]["url"])
        assert report.status == 200 and "Visualisation non diagnostique" in await report.text()
        pdf = await http.get(demo.links["consumer"] + reports[0]["url"] + ".pdf")
        assert pdf.content_type == "application/pdf" and (await pdf.read()).startswith(b"%PDF-")

    # Ctrl-C: the demo stops every process it started, and says so.
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(timeout=40) == 0
    assert "everything it started is stopped" in demo.read_rest()
    deadline = time.monotonic() + 5
    while (alive := _left_running(children, demo.workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"still running after Ctrl-C: {alive}"


def test_sigterm_during_start_up_leaves_nothing_running(tmp_path: Path) -> None:
    # Stopped while the boxes are still starting (before any link is printed): the clean-up must still run.
    proc = subprocess.Popen(
        [sys.executable, "-m", "drimbox.cli", "demo", "--workdir", str(tmp_path), "--native",
         *[a for name in PORT_NAMES for a in (f"--{name}-port", "0")]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    _read_until(proc.stdout, re.compile(r"^\s+simulator\s"), 30)
    children = descendants(proc.pid)
    assert children, "the simulator should be running"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0
    deadline = time.monotonic() + 5
    while (alive := _left_running(children, tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"still running after SIGTERM: {alive}"


def test_ctrl_c_stops_a_demo_started_with_sigint_ignored(tmp_path: Path) -> None:
    # A non-interactive shell's `cmd &` starts the demo with SIGINT ignored, which Python keeps: Ctrl-C (or a test
    # harness's SIGINT) then did nothing, and a whole suite launched that way failed on the demo's Ctrl-C test.
    proc = subprocess.Popen(
        [sys.executable, "-m", "drimbox.cli", "demo", "--workdir", str(tmp_path), "--native", "--instances", "1",
         *[a for name in PORT_NAMES for a in (f"--{name}-port", "0")]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    assert proc.stdout is not None
    _read_until(proc.stdout, re.compile("Everything is running"), 90)  # running: no start-up guard catches it
    children = descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=40)
    deadline = time.monotonic() + 5
    while (alive := _left_running(children, tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive, f"still running after Ctrl-C: {alive}"


def test_native_profile_publishes_both_exams_without_a_pacs(tmp_path: Path) -> None:
    # What a machine without Orthanc gets: the source box is the archive, the images go in by STOW-RS.
    proc = subprocess.run(
        [sys.executable, "-m", "drimbox.cli", "demo", "--workdir", str(tmp_path), "--native", "--exit", "--instances", "2",
         *[a for name in PORT_NAMES for a in (f"--{name}-port", "0")]],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Native (its own archive)" in out and not re.search(r"^\s+PACS\s", out, re.M)  # no Orthanc started
    assert re.search(r"published\s+exam C: KOS [0-9.]+ in the DMP", out), out
    assert re.search(r"published\s+exam E: KOS [0-9.]+ in the DMP", out), out
    assert "2 KOS and 2 reports for the test patient" in out  # the RIS step published the CDA reports
    assert re.search(r"RIS\s+exam C's report \(CDA\) in the DMP: 1\.2\.250\.1\.213\.4\.5\.4\.403", out), out
    assert not processes_naming(str(tmp_path)), "--exit must stop everything it started"


def _read_until(stream: IO[str], pattern: re.Pattern[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        line = stream.readline()
        seen += line
        if pattern.search(line):
            return seen
        assert line, f"the demo ended early:\n{seen}"
    raise AssertionError(f"not seen in {timeout} s: {pattern.pattern}\n{seen}")


def _left_running(children: list[int], workdir: Path) -> list[int]:
    """The children seen while it ran, and any process started later from its work dir (an orphan has another parent)."""
    return sorted({p for p in children if _alive(p)} | set(processes_naming(str(workdir))))


def _alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (a dead child not yet reaped is not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
