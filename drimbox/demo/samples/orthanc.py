"""A real Orthanc (Debian package) on loopback with its own temp config: the PACS of the demo, tests and perf."""

from __future__ import annotations

import ctypes
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drimbox.config import PacsSettings
from drimbox.demo.samples.processes import free_port

ORTHANC_AET = "ORTHANC"
_PR_SET_PDEATHSIG = 1
STORESCU_AET = "STORESCU"
_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
)


class ToolMissing(RuntimeError):
    """A Debian tool the project relies on is not installed."""


def nodelay_env() -> dict[str, str]:
    """The environment for dcmtk tools: TCP_NODELAY=1 makes dcmtk's DUL disable Nagle on its sockets."""
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    host: str,
    port: int,
    called_aet: str,
    paths: Sequence[Path],
    calling_aet: str = "STORESCU",
    timeout: float = 120.0,
) -> None:
    """C-STORE `paths` with dcmtk storescu; raise with its output if any store fails."""
    exe = shutil.which("storescu")
    if exe is None:
        raise ToolMissing("storescu not found: apt-get install dcmtk (make test installs it)")
    # Stay well under the kernel's argument-length limit for big studies.
    for start in range(0, len(paths), 500):
        chunk = [str(p) for p in paths[start : start + 500]]
        proc = subprocess.run(
            [
                exe,
                "-R",
                "-xt",
                "-aet",
                calling_aet,
                "-aec",
                called_aet,
                "-to",
                "30",
                "-ta",
                "30",
                host,
                str(port),
                *chunk,
            ],
            env=nodelay_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = proc.stdout + proc.stderr
        # -R -xt: propose each file's own syntax (JPEG-LS included), so nothing is converted on the way.
        # storescu exits 0 even when the peer answers a C-STORE with a failure status; its log says so.
        if proc.returncode != 0 or "E:" in output or "Failed" in output:
            raise RuntimeError(f"storescu failed (exit {proc.returncode}):\n{output}")


def _die_with_parent() -> None:
    """In the child, before exec: have the kernel send SIGTERM if pytest dies, so no Orthanc outlives it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def dicomweb_plugin() -> str | None:
    """Path of the orthanc-dicomweb plugin library, if the package is installed."""
    for pattern in _PLUGIN_CANDIDATES:
        for path in sorted(glob.glob(pattern)):
            return path
    return None


@dataclass
class OrthancServer:
    """A running Orthanc: where to reach it, and the few REST calls the tests need."""

    aet: str
    host: str
    dicom_port: int
    http_port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    dicomweb: bool
    modalities: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def pacs_settings(self, timeout: float = 10.0) -> PacsSettings:
        """The box's [pacs] settings pointing at this Orthanc."""
        return PacsSettings(ae_title=self.aet, host=self.host, port=self.dicom_port, timeout=timeout)

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        """Call Orthanc's REST API; return the decoded JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=30) as rsp:
            payload = rsp.read()
        return json.loads(payload) if payload else None

    def store_files(self, paths: Sequence[Path]) -> None:
        """C-STORE the files into Orthanc with dcmtk storescu (TCP_NODELAY on)."""
        storescu(self.host, self.dicom_port, self.aet, paths, calling_aet=STORESCU_AET)

    def instances(self) -> list[str]:
        """SOP Instance UIDs of every instance Orthanc holds."""
        expanded = self.rest("GET", "/instances?expand")
        return [str(i["MainDicomTags"]["SOPInstanceUID"]) for i in expanded]

    def clear(self) -> None:
        """Delete every patient (hence every study, series and instance)."""
        for patient in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{patient}")

    def add_modality(self, aet: str, host: str, port: int) -> None:
        """Declare (or move) a DICOM peer at run time, e.g. the box's SCP on a port chosen by the test."""
        self.rest("PUT", f"/modalities/{aet}", {"AET": aet, "Host": host, "Port": port})
        self.modalities[aet] = (host, port)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL after `timeout` s (Orthanc waits for open associations before it exits)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log(self) -> str:
        path = self.workdir / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _config(
    workdir: Path,
    aet: str,
    dicom_port: int,
    http_port: int,
    modalities: dict[str, tuple[str, int]],
    plugin: str | None,
) -> dict[str, Any]:
    return {
        "Name": "drimbox-test-pacs",
        "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"),
        "StorageCompression": False,
        "Plugins": [plugin] if plugin else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Host": "127.0.0.1"},
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        # Orthanc 1.10 cannot bind one interface: it refuses non-loopback HTTP clients instead.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "KeepAlive": True,
        # TCP_NODELAY on the HTTP sockets; the DICOM ones follow the TCP_NODELAY variable (dcmtk).
        "TcpNoDelay": True,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        # The DICOM port listens on every interface: only declared peers, from loopback, do more than echo.
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomModalities": {name: [name, host, port] for name, (host, port) in modalities.items()},
        "DicomModalitiesInDatabase": False,
        "DicomScuTimeout": 10,
        "DicomScpTimeout": 30,
        "DefaultEncoding": "Utf8",
        "UnknownSopClassAccepted": False,
        "OverwriteInstances": True,
        "SaveJobs": False,
        "StableAge": 2,
        "HttpThreadsCount": 20,
        "DicomThreadsCount": 4,
    }


def _wait_ready(server: OrthancServer, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            server.rest("GET", "/system")
            with socket.create_connection((server.host, server.dicom_port), timeout=1):
                return True
        except (OSError, urllib.error.URLError):
            time.sleep(0.05)
    return False


def start_orthanc(
    workdir: Path,
    box_aet: str = "DRIMBOX",
    box_port: int = 11112,
    extra_modalities: dict[str, tuple[str, int]] | None = None,
    aet: str = ORTHANC_AET,
) -> OrthancServer:
    """Start Orthanc on free loopback ports, the box and storescu declared as peers; wait until ready."""
    exe = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if exe is None:
        raise ToolMissing("Orthanc not found: apt-get install orthanc orthanc-dicomweb (make test installs it)")
    plugin = dicomweb_plugin()
    modalities = {box_aet: ("127.0.0.1", box_port), STORESCU_AET: ("127.0.0.1", 104)}
    modalities.update(extra_modalities or {})
    last_log = ""
    # A port found free can be taken before Orthanc binds it: try again with new ones.
    for attempt in range(3):
        run_dir = workdir / f"orthanc-{attempt}"
        run_dir.mkdir(parents=True, exist_ok=True)
        dicom_port, http_port = free_port(), free_port()
        config_path = run_dir / "orthanc.json"
        config = _config(run_dir, aet, dicom_port, http_port, modalities, plugin)
        config_path.write_text(json.dumps(config, indent=2))
        with open(run_dir / "orthanc.log", "wb") as log:
            process = subprocess.Popen(
                [exe, "--no-jobs", str(config_path)],
                cwd=run_dir,
                env=nodelay_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        server = OrthancServer(
            aet=aet,
            host="127.0.0.1",
            dicom_port=dicom_port,
            http_port=http_port,
            workdir=run_dir,
            process=process,
            dicomweb=plugin is not None,
            modalities=dict(modalities),
        )
        if _wait_ready(server, time.monotonic() + 30):
            return server
        server.stop()
        last_log = server.log()
    raise RuntimeError(f"Orthanc did not start; last log:\n{last_log[-4000:]}")
