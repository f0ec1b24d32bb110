"""Fixtures that start the simulator and source boxes as real processes on loopback."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from drimbox.auth.operator import operator_token_hash
from drimbox.demo.samples.orthanc import STORESCU_AET
from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config

# The test boxes' operator token: /api/publications and DELETE /api/cache need it (or a professional's login).
OPERATOR_TOKEN = "test-operator-token"


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


class Sim:
    def __init__(self, work: Path, port: int | None = None, whitelist: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work = work
        section: dict[str, Any] = {"port": self.port, "var_dir": str(work / "sim-var")}
        if whitelist is not None:  # else the simulator's default: every port of 127.0.0.1 and localhost
            section["whitelist_hosts"] = whitelist
        cfg = write_config(work / "sim.toml", {"sim": section})
        self.process = DrimboxProcess("sim", cfg, f"{self.url}/sim/dmp/documents?patient=0", work / "sim.log")

    def start(self) -> Sim:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def documents(self, patient: str = "279035121518989") -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = get_json(f"{self.url}/sim/dmp/documents?patient={patient}")
        return result

    def document_bytes(self, unique_id: str) -> bytes:
        with urllib.request.urlopen(f"{self.url}/sim/dmp/documents/{unique_id}", timeout=10) as resp:
            data: bytes = resp.read()
            return data


class SourceBox:
    def __init__(self, work: Path, sim_url: str, peer: Any, /, **overrides: dict[str, Any]) -> None:
        self.work = work
        self.http_port, self.mllp_port, self.dicom_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        sections: dict[str, dict[str, Any]] = {
            "box": {"var_dir": str(work / "box-var"), "public_url": self.url},
            "http": {"port": self.http_port},
            "mllp": {"port": self.mllp_port},
            "dicom": {"port": self.dicom_port},
            "pacs": {"ae_title": peer.aet, "host": "127.0.0.1", "port": peer.dicom_port, "timeout": 5.0},
            "dmp": {"url": f"{sim_url}/dmp", "timeout": 5.0},
            "psc": {"issuer": f"{sim_url}/psc"},
            "publish": {"waiting_interval": 0.5, "backoff_initial": 0.2, "backoff_max": 1.0},
            # Open /dicom-web unless a test asks otherwise: auth={"protect_dicomweb": True}.
            "auth": {"protect_dicomweb": False, "operator_token": operator_token_hash(OPERATOR_TOKEN)},
        }
        if overrides.get("box", {}).get("profile") == "native":
            # The archive takes C-STOREs from known peers only: the test PACS (which also sends the IOCM notes)
            # and the storescu helper of drimbox.demo.samples, both on loopback. A test may replace either list.
            sections["dicom"]["store_peers"] = [f"{peer.aet}@127.0.0.1", f"{STORESCU_AET}@127.0.0.1"]
            sections["dicom"]["iocm_senders"] = [f"{peer.aet}@127.0.0.1"]
        for name, values in overrides.items():
            sections.setdefault(name, {}).update(values)
        self.config = write_config(work / "box.toml", sections)
        self.process = DrimboxProcess("serve", self.config, f"{self.url}/health", work / "box.log")

    def start(self) -> SourceBox:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def operator_request(self, path: str, method: str = "GET") -> urllib.request.Request:
        """A request to this box's operator API (path from the root: "/api/cache"), with the operator token."""
        return urllib.request.Request(f"{self.url}{path}", method=method,
                                      headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})  # fmt: skip

    def publications(self, accession: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.operator_request(f"/api/publications?accession={accession}"), timeout=10) as r:
            result: list[dict[str, Any]] = json.loads(r.read())
        return result

    def wait_state(
        self, accession: str, states: tuple[str, ...], timeout: float = 60.0, index: int = -1
    ) -> dict[str, Any]:
        """Wait until the publication (by default the latest) of an accession reaches one of the states."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            last = self.publications(accession)
            if last and last[index]["state"] in states:
                return last[index]
            time.sleep(0.1)
        raise AssertionError(f"publication of {accession} never reached {states}: {last}\n{self.process.log()}")


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Sim]:
    s = Sim(tmp_path).start()
    yield s
    s.stop()


@pytest.fixture
def source_box(tmp_path: Path, sim: Sim) -> Iterator[Callable[..., SourceBox]]:
    """A factory: source_box(orthanc, **section_overrides) → a started source box in Proxy profile."""
    boxes: list[SourceBox] = []

    def make(peer: Any, /, **overrides: dict[str, Any]) -> SourceBox:
        work = tmp_path / f"box{len(boxes)}"
        work.mkdir()
        box = SourceBox(work, sim.url, peer, **overrides).start()
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.stop()
