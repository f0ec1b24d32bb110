"""`drimbox demo`: simulator + Orthanc + source box on loopback, exam C's report in, its KOS in the DMP."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from drimbox.auth.operator import operator_token_hash
from drimbox.hl7.mllp import send_message
from drimbox.samples.orthanc import OrthancServer, start_orthanc
from drimbox.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.samples.studies import exam_c_study, write_study

INS = "279035121518989"


# The demo box's operator token (loopback only): the demo and the perf scripts read publication states with it.
DEMO_OPERATOR_TOKEN = "drimbox-demo-operator"


def operator_request(url: str, method: str = "GET") -> urllib.request.Request:
    """A request to the operator API (/api/...) of a box configured by box_sections."""
    return urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {DEMO_OPERATOR_TOKEN}"})


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(operator_request(url), timeout=10) as resp:
        return json.loads(resp.read())


def _say(text: str) -> None:
    print(text, flush=True)


def box_sections(work: Path, ports: dict[str, int], orthanc: OrthancServer) -> dict[str, dict[str, Any]]:
    """The configuration of a source box in Proxy profile in front of the given Orthanc."""
    return {
        "box": {"roles": ["source"], "profile": "proxy", "var_dir": str(work / "box"),
                "public_url": f"http://127.0.0.1:{ports['http']}"},
        "http": {"port": ports["http"]},
        "mllp": {"port": ports["mllp"]},
        "dicom": {"ae_title": "DRIMBOX", "port": ports["dicom"]},
        "pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
        "dmp": {"url": f"http://127.0.0.1:{ports['sim']}/dmp"},
        "psc": {"issuer": f"http://127.0.0.1:{ports['sim']}/psc"},
        "whitelist": {"url": f"http://127.0.0.1:{ports['sim']}/whitelist",
                      "certificate_url": f"http://127.0.0.1:{ports['sim']}/whitelist/certificate"},
        "publish": {"waiting_interval": 1.0, "backoff_initial": 0.5, "backoff_max": 5.0},
        "auth": {"operator_token": operator_token_hash(DEMO_OPERATOR_TOKEN)},
    }


def run_demo(workdir: str | None = None, keep_running: bool = True, instances: int = 20) -> int:
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="drimbox-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in ("http", "mllp", "dicom", "sim")}
    started: list[Any] = []
    try:
        _say(f"drimbox demo — working directory {work}")
        orthanc = start_orthanc(work / "orthanc", box_aet="DRIMBOX", box_port=ports["dicom"])
        started.append(orthanc)
        _say(f"  PACS      Orthanc {orthanc.aet} at 127.0.0.1:{orthanc.dicom_port} (REST {orthanc.base_url})")

        sim_cfg = write_config(work / "sim.toml", {"sim": {"port": ports["sim"], "var_dir": str(work / "sim")}})
        sim = DrimboxProcess("sim", sim_cfg, f"http://127.0.0.1:{ports['sim']}/sim/dmp/documents?patient={INS}",
                             work / "sim.log").start()
        started.append(sim)
        _say(f"  simulator DMP at http://127.0.0.1:{ports['sim']}/dmp")

        box_cfg = write_config(work / "box.toml", box_sections(work, ports, orthanc))
        box = DrimboxProcess("serve", box_cfg, f"http://127.0.0.1:{ports['http']}/health", work / "box.log").start()
        started.append(box)
        _say(f"  box       source/proxy, HTTP 127.0.0.1:{ports['http']}, MLLP 127.0.0.1:{ports['mllp']}")

        files = write_study(work / "study", exam_c_study(instances=instances))
        orthanc.store_files(files)
        _say(f"  loaded    {len(files)} synthetic CT instances of exam C (study 1.2.250.1.213.4.5.2.1.103) into Orthanc")

        oru = build_oru(build_cda(ANS_EXAMS["C"]), control_id=f"DEMO{int(time.time())}")
        t0 = time.monotonic()
        ack = asyncio.run(send_message("127.0.0.1", ports["mllp"], oru))
        msa = next((seg for seg in ack.decode("utf-8", "replace").split("\r") if seg.startswith("MSA")), "")
        _say(f"  ORU^R01   exam C report sent over MLLP → {msa}")

        state = _wait_published(ports["http"], "ACN103", timeout=120)
        _say(f"  state     {json.dumps(state, indent=2)}")
        if state.get("state") != "published":
            _say("  the publication did not reach the DMP: see box.log")
            return 1
        _say(f"  published in {time.monotonic() - t0:.2f} s after the ORU was sent")
        docs = _get_json(f"http://127.0.0.1:{ports['sim']}/sim/dmp/documents?patient={INS}")
        _say("  DMP entry " + json.dumps(docs, indent=2, ensure_ascii=False))
        if keep_running:
            _say("Everything is running; Ctrl-C stops it.")
            signal.signal(signal.SIGTERM, _interrupt)
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for thing in reversed(started):
            thing.stop()
        if not workdir:
            shutil.rmtree(work, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _wait_published(http_port: int, accession: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = _get_json(f"http://127.0.0.1:{http_port}/api/publications?accession={accession}")
        if found:
            last = found[-1]
            if last["state"] in ("published", "failed", "rejected"):
                return last
        time.sleep(0.2)
    return last
