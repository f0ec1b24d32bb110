"""`drimbox demo`: the whole DRIM-M mesh on loopback — simulator, PACS, source box, consumer box, ANS reports in the DMP.

Read top-down: ports → simulator → PACS (Orthanc, or none: Native profile) → source box → consumer box → studies of
the ANS test patient into the PACS → reports over MLLP → wait for the KOS in the DMP → print the links → wait for
Ctrl-C or SIGTERM → stop everything that was started, in reverse order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from drimbox.config import load_settings
from drimbox.demo.launcher import LaunchPageServer, launch_fields, launch_page
from drimbox.demo.mesh import CONSUMER_AET, DEMO_OPERATOR_TOKEN, consumer_sections, sim_sections, source_sections, stow
from drimbox.demo.options import plan_ports, wanted_ports
from drimbox.demo.ris import publish_report
from drimbox.demo.samples.orthanc import OrthancServer, ToolMissing, start_orthanc
from drimbox.demo.samples.processes import DrimboxProcess, write_config
from drimbox.demo.samples.reports import ANS_EXAMS, DEFAULT_FLAGS, ExamSpec, build_cda, build_oru
from drimbox.demo.samples.studies import study_for_exam, write_study
from drimbox.hl7.mllp import send_message
from drimbox.sim.psc_professionals import BUILT_IN

INS = "279035121518989"
# The ANS exams of the test patient that the demo publishes: C (CT head) and E (thyroid scintigraphy).
DEMO_EXAMS = ("C", "E")
# The simulator's test professionals a visitor logs in as: the radiologist who signs the reports, the GP.
LOGINS = {"801234560801": "radiologist, author of the reports", "801234567897": "general practitioner"}


class Stoppable(Protocol):
    def stop(self) -> None: ...


def _say(text: str = "") -> None:
    print(text, flush=True)


def operator_request(url: str, method: str = "GET") -> urllib.request.Request:
    """A request to the operator API (/api/...) of a source box configured by source_sections/box_sections."""
    return urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {DEMO_OPERATOR_TOKEN}"})


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(operator_request(url), timeout=10) as resp:
        return json.loads(resp.read())


def _stop_on_sigterm(signum: int, frame: object) -> None:
    # SIGTERM takes the same path as Ctrl-C: the `finally` of run_demo stops every child.
    raise KeyboardInterrupt


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while a child starts, then act on them.

    Raised in the middle of subprocess.Popen, KeyboardInterrupt would leave a child forked but not yet recorded,
    which nothing would then stop. So a Ctrl-C during a start takes effect as soon as that child is up (or its start
    has failed), at worst after its start time-out.
    """
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt


def report_link(source_url: str, exam: ExamSpec) -> str:
    """The link a report carries (DIGEST §3): opens the viewer on the exam at the source box."""
    query = {"requestType": "STUDY", "studyUID": exam.study_uid, "Accessionnumber": exam.accession,
             "idCDA": exam.document_id}  # fmt: skip
    return f"{source_url}/IHEInvokeImageDisplay?{urlencode(query)}"


def box_sections(work: Path, ports: dict[str, int], orthanc: OrthancServer) -> dict[str, dict[str, Any]]:
    """A source box in Proxy profile in front of `orthanc` (ports: http, mllp, dicom, sim); used by perf/."""
    mapped = {"source": ports["http"], "mllp": ports["mllp"], "dicom": ports["dicom"], "sim": ports["sim"]}
    return source_sections(work, mapped, orthanc)


def run_demo(args: argparse.Namespace) -> int:
    # Ctrl-C is how the demo is stopped: taken even when the demo was started with SIGINT ignored (from a
    # non-interactive shell's `&`, which Python would otherwise leave ignored: the demo could then not be stopped).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="drimbox-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    started: list[Stoppable] = []
    try:
        return _run(args, work, started)
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave children behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for thing in reversed(started):
            try:
                thing.stop()
            except Exception as exc:  # the others must still be stopped
                _say(f"drimbox demo: could not stop {type(thing).__name__}: {type(exc).__name__}: {exc}")
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
        _say("drimbox demo: everything it started is stopped.")


def _run(args: argparse.Namespace, work: Path, started: list[Stoppable]) -> int:
    plan = plan_ports(wanted_ports(args))
    ports = plan.ports
    _say(f"drimbox demo — the DRIM-M mesh on loopback (working directory {work})")
    for name in plan.moved:
        _say(f"  note        port {getattr(args, name + '_port')} for {name} is taken: using {ports[name]}")
    sim_url = f"http://127.0.0.1:{ports['sim']}"

    sim = DrimboxProcess("sim", write_config(work / "sim.toml", sim_sections(work, ports)),
                         f"{sim_url}/sim/dmp/documents?patient=0", work / "sim.log")  # fmt: skip
    started.append(sim)
    with _signals_deferred():
        sim.start()
    _say(f"  simulator   DMP, Pro Santé Connect, whitelist at {sim_url}")

    orthanc: OrthancServer | None = None
    if not args.native:
        try:
            with _signals_deferred():
                orthanc = start_orthanc(work / "orthanc", box_aet="DRIMBOX", box_port=ports["dicom"],
                                        extra_modalities={CONSUMER_AET: ("127.0.0.1", 104)})  # fmt: skip
            started.append(orthanc)
            _say(f"  PACS        Orthanc {orthanc.aet}, DICOM 127.0.0.1:{orthanc.dicom_port}, REST {orthanc.base_url}")
        except ToolMissing as exc:
            _say(f"  PACS        none ({exc}): the source box runs in Native profile, it is the archive")

    source_url = f"http://127.0.0.1:{ports['source']}"
    source = DrimboxProcess("serve", write_config(work / "source.toml", source_sections(work, ports, orthanc)),
                            f"{source_url}/health", work / "source.log")  # fmt: skip
    started.append(source)
    with _signals_deferred():
        source.start()
    profile = "Proxy (in front of Orthanc)" if orthanc else "Native (its own archive)"
    _say(f"  source box  {profile}, {source_url}, MLLP 127.0.0.1:{ports['mllp']}, DICOM DRIMBOX@{ports['dicom']}")

    consumer_url = f"http://127.0.0.1:{ports['consumer']}"
    consumer = DrimboxProcess("serve", write_config(work / "consumer.toml", consumer_sections(work, ports, orthanc)),
                              f"{consumer_url}/health", work / "consumer.log")  # fmt: skip
    started.append(consumer)
    with _signals_deferred():
        consumer.start()
    _say(f"  consumer    {consumer_url} (imports go to {'the same Orthanc' if orthanc else 'no local PACS'})")

    exams = [ANS_EXAMS[name] for name in DEMO_EXAMS]
    for exam in exams:
        files = write_study(work / "studies" / exam.name,
                            study_for_exam(exam, instances=args.instances, rows=256, columns=256))  # fmt: skip
        if orthanc is not None:
            orthanc.store_files(files)
        else:
            stow(source_url, files)
        _say(f"  images      exam {exam.name}: {len(files)} {exam.modalities[0][0]} instances, study {exam.study_uid}")

    sent_at = time.monotonic()
    orus: dict[str, bytes] = {}
    for exam in exams:
        # The first exam is visible to the patient (INVISIBLE_PATIENT = N): the patient path has something to show.
        flags = {**DEFAULT_FLAGS, "INVISIBLE_PATIENT": False} if exam is exams[0] else None
        oru = orus[exam.name] = build_oru(build_cda(exam), control_id=f"DEMO-{exam.name}-{int(time.time())}",
                                          flags=flags)  # fmt: skip
        ack = asyncio.run(send_message("127.0.0.1", ports["mllp"], oru, timeout=30))
        msa = next((s for s in ack.decode("utf-8", "replace").split("\r") if s.startswith("MSA")), "no MSA")
        _say(f"  ORU^R01     exam {exam.name}'s report over MLLP → {msa}")

    for exam in exams:
        state = _wait_published(source_url, exam.accession, timeout=120)
        if state.get("state") != "published":
            _say(f"  exam {exam.name} did not reach the DMP ({json.dumps(state)}): see {work / 'source.log'}")
            return 1
        _say(f"  published   exam {exam.name}: KOS {state['kos_uid']} in the DMP")
    # The RIS publishes the reports to the DMP itself (the box publishes only the KOS); the consumer shows them.
    ris_settings = load_settings(work / "source.toml")
    for exam in exams:
        report_uid = asyncio.run(publish_report(ris_settings, orus[exam.name]))
        _say(f"  RIS         exam {exam.name}'s report (CDA) in the DMP: {report_uid}")
    in_dmp = _get_json(f"{sim_url}/sim/dmp/documents?patient={INS}")
    kos_count = sum(1 for d in in_dmp if d["mimeType"] == "application/dicom")
    report_count = sum(1 for d in in_dmp if "18748-4" in json.dumps(d.get("typeCode")))
    _say(f"  DMP         {kos_count} KOS and {report_count} reports for the test patient, "
         f"{time.monotonic() - sent_at:.1f} s after the reports")  # fmt: skip

    launcher = LaunchPageServer(ports["launcher"], launch_page(consumer_url, launch_fields(exams[0]))).start()
    started.append(launcher)
    links = {"report_links": {e.name: report_link(source_url, e) for e in exams}, "consumer_launch": launcher.url,
             "source": source_url, "consumer": consumer_url, "sim": sim_url, "logins": list(LOGINS)}  # fmt: skip
    (work / "demo.json").write_text(json.dumps(links, indent=2))
    _print_links(links)
    if args.exit:
        return 0
    _say("Everything is running; Ctrl-C stops it.")
    while True:
        time.sleep(3600)


def _print_links(links: dict[str, Any]) -> None:
    names = {p.national_id: p.label() for p in BUILT_IN}
    _say()
    _say("Open in a browser:")
    _say("  (a) the link written in the reports, on the source box (opens the viewer after the login):")
    for name, link in links["report_links"].items():
        _say(f"      report link, exam {name}: {link}")
    _say("  (b) the consumer box, launched as the doctor's software would (a page that posts the ANS launch form):")
    _say(f"      consumer launch: {links['consumer_launch']}")
    _say("  (c) log in at the simulated Pro Santé Connect by picking one of its test professionals:")
    for national_id, role in LOGINS.items():
        _say(f"      {national_id}  {names.get(national_id, '')} ({role})")
    _say("  (d) the patient's side: the simulated Mon Espace Santé portal (log in as the ANS test patient,")
    _say(f'      then "Voir les images"): {links["sim"]}/mes/portail')
    _say()


def _wait_published(source_url: str, accession: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = _get_json(f"{source_url}/api/publications?accession={accession}")
        if found:
            last = found[-1]
            if last["state"] in ("published", "failed", "rejected"):
                return last
        time.sleep(0.2)
    return last
