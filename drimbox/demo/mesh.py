"""The demo's configurations: simulator, source box (Proxy or Native) and consumer box, each with its ports and var dir."""

from __future__ import annotations

import urllib.request
import uuid
from pathlib import Path
from typing import Any

from drimbox.auth.operator import operator_token_hash
from drimbox.demo.samples.orthanc import STORESCU_AET, OrthancServer
from drimbox.sim.certs import whitelist_root

SOURCE_AET = "DRIMBOX"
# The demo source box's operator token (loopback only): the demo, perf/ and the screenshots read publication
# states (/api/publications) and empty the cache with it.
DEMO_OPERATOR_TOKEN = "drimbox-demo-operator"
CONSUMER_AET = "DRIMCONSO"


def national_services(sim_url: str, work: Path) -> dict[str, dict[str, Any]]:
    """The [dmp], [psc] and [whitelist] sections every box of the demo shares: all played by the simulator.

    The whitelist's signer chain ends at the simulator's test root, made now in the simulator's var dir (it keeps
    it): the boxes trust that file, as a real box trusts the IGC-Santé root; no trust on first use.
    """
    return {
        "dmp": {"url": f"{sim_url}/dmp"},
        "psc": {"issuer": f"{sim_url}/psc"},
        "whitelist": {"url": f"{sim_url}/whitelist", "trust_roots": str(whitelist_root(work / "sim" / "whitelist"))},
    }


def sim_sections(work: Path, ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The simulator; its whitelist names the demo's two boxes exactly (scheme, port, path): nothing else on loopback
    receives a professional's token."""
    boxes = [f"http://127.0.0.1:{ports['source']}/dicom-web", f"http://127.0.0.1:{ports['consumer']}/conso"]
    return {"sim": {"port": ports["sim"], "var_dir": str(work / "sim"), "whitelist_hosts": boxes}}


def source_sections(work: Path, ports: dict[str, int], pacs: OrthancServer | None) -> dict[str, dict[str, Any]]:
    """A source box: Proxy in front of `pacs`, or Native (the box is the archive) when there is none."""
    url = f"http://127.0.0.1:{ports['source']}"
    sections: dict[str, dict[str, Any]] = {
        "box": {"roles": ["source"], "profile": "proxy" if pacs else "native", "var_dir": str(work / "source"),
                "public_url": url},
        "http": {"port": ports["source"]},
        "mllp": {"port": ports["mllp"]},
        "dicom": {"ae_title": SOURCE_AET, "port": ports["dicom"]},
        **national_services(f"http://127.0.0.1:{ports['sim']}", work),
        # Short waits: a demo's images are all in the PACS before the report is sent.
        "publish": {"waiting_interval": 1.0, "backoff_initial": 0.5, "backoff_max": 5.0},
        "auth": {"operator_token": operator_token_hash(DEMO_OPERATOR_TOKEN)},
        # Patients open their exams from the simulated Mon Espace Santé (its portal links to /patient/exams/…).
        "patient": {"enabled": True, "issuer": f"http://127.0.0.1:{ports['sim']}/mes"},
    }  # fmt: skip
    if pacs is not None:
        sections["pacs"] = {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
    else:
        # The archive takes C-STOREs from configured peers only: `storescu -aet STORESCU` on this machine may push.
        sections["dicom"]["store_peers"] = [f"{STORESCU_AET}@127.0.0.1"]
    return sections


def consumer_sections(work: Path, ports: dict[str, int], pacs: OrthancServer | None) -> dict[str, dict[str, Any]]:
    """A consumer box on its own port and var dir; its local PACS (imports) is the demo's Orthanc when there is one."""
    url = f"http://127.0.0.1:{ports['consumer']}"
    sections: dict[str, dict[str, Any]] = {
        "box": {"roles": ["consumer"], "var_dir": str(work / "consumer"), "public_url": url},
        "http": {"port": ports["consumer"]},
        "dicom": {"ae_title": CONSUMER_AET},
        **national_services(f"http://127.0.0.1:{ports['sim']}", work),
    }
    if pacs is not None:
        sections["consumer"] = {"local_pacs_ae_title": pacs.aet, "local_pacs_host": "127.0.0.1",
                                "local_pacs_port": pacs.dicom_port, "local_pacs_stow_url": pacs.dicomweb_url}  # fmt: skip
    return sections


def stow(base_url: str, paths: list[Path], batch: int = 50) -> None:
    """STOW-RS the files into a Native box (no dcmtk needed when Orthanc, hence perhaps dcmtk, is missing)."""
    for start in range(0, len(paths), batch):
        boundary = uuid.uuid4().hex
        body = bytearray()
        for path in paths[start : start + batch]:
            body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes() + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        req = urllib.request.Request(
            f"{base_url}/dicom-web/studies", data=bytes(body), method="POST",
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                     "Accept": "application/dicom+json", "Authorization": f"Bearer {DEMO_OPERATOR_TOKEN}"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
