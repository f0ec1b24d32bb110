"""A real HAProxy (Debian's binary) on loopback in front of given box processes: HTTP and MLLP (TCP) balanced."""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from drimbox.demo.samples.orthanc import _die_with_parent
from drimbox.demo.samples.processes import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

# Health checks every 200 ms, out after 2 misses: a dead box leaves the pool within ~0.5 s. Until then a refused
# connection is retried on another server at once (`option redispatch 1`: every retry may change server).
_CONFIG = """\
global
    maxconn 512
    pidfile {work}/haproxy.pid
    stats socket {socket} mode 600 level operator

defaults
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch 1
    default-server inter 200ms fastinter 100ms downinter 200ms fall 2 rise 1
{sections}"""

_HTTP = """
frontend http
    mode http
    bind 127.0.0.1:{port}
    default_backend boxes

backend boxes
    mode http
    balance roundrobin
    retry-on conn-failure empty-response
    option httpchk GET /health
    http-check expect status 200
{servers}"""

_TCP = """
frontend mllp
    mode tcp
    bind 127.0.0.1:{port}
    default_backend mllp

backend mllp
    mode tcp
    balance roundrobin
{servers}"""


def stats_socket(work: Path) -> Path:
    """Where the stats socket is: in `work`, unless that path is too long for a Unix socket (108 bytes)."""
    path = work / "haproxy.sock"
    if len(str(path)) < 100:
        return path
    return Path(tempfile.gettempdir()) / f"haproxy-{hashlib.sha256(str(work).encode()).hexdigest()[:12]}.sock"


def haproxy_config(work: Path, http_port: int | None, http_backends: Sequence[int],
                   mllp_port: int | None, mllp_backends: Sequence[int]) -> str:  # fmt: skip
    """The configuration text: an HTTP frontend and/or an MLLP (TCP) frontend, each with its checked servers."""
    sections = ""
    if http_port is not None:
        servers = "".join(f"    server box{i} 127.0.0.1:{p} check\n" for i, p in enumerate(http_backends))
        sections += _HTTP.format(port=http_port, servers=servers)
    if mllp_port is not None:
        servers = "".join(f"    server mllp{i} 127.0.0.1:{p} check\n" for i, p in enumerate(mllp_backends))
        sections += _TCP.format(port=mllp_port, servers=servers)
    return _CONFIG.format(work=work, socket=stats_socket(work), sections=sections)


@dataclass
class Balancer:
    """A running haproxy: `url` and `mllp_port` are its frontends on 127.0.0.1."""

    http_port: int | None
    mllp_port: int | None
    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def server_states(self) -> dict[str, str]:
        """Each server's state as HAProxy sees it ("box0": "UP", "mllp1": "DOWN", …), from its stats socket."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(stats_socket(self.config.parent)))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        header, *rows = data.decode().strip().splitlines()
        columns = header.lstrip("# ").split(",")
        name, status = columns.index("svname"), columns.index("status")
        states = {}
        for row in rows:
            cells = row.split(",")
            if cells[name] not in ("FRONTEND", "BACKEND"):
                states[cells[name]] = cells[status]
        return states

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # -db: a hard stop (SIGUSR1 would wait for open connections)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_haproxy(work: Path, http_backends: Sequence[int] = (), mllp_backends: Sequence[int] = (),
                  timeout: float = 10.0) -> Balancer:  # fmt: skip
    """Start haproxy in the foreground (-db) in front of the given loopback ports; return once its frontends listen."""
    http_port = free_port() if http_backends else None
    mllp_port = free_port() if mllp_backends else None
    text = haproxy_config(work, http_port, http_backends, mllp_port, mllp_backends)
    return run_haproxy(work, text, http_port, mllp_port, timeout=timeout)


def run_haproxy(work: Path, config_text: str, http_port: int | None, mllp_port: int | None,
                timeout: float = 10.0) -> Balancer:  # fmt: skip
    """Run haproxy -db on a given configuration (whose frontends are these ports) until they listen."""
    if not Path(HAPROXY).is_file():
        pytest.skip("haproxy is not installed (Debian package haproxy; `make test` installs it)")
    work.mkdir(parents=True, exist_ok=True)
    config = work / "haproxy.cfg"
    config.write_text(config_text)
    log_path = work / "haproxy.log"
    with open(log_path, "ab") as log:
        # Its own session (a test's Ctrl-C is not its), and SIGTERM from the kernel if pytest itself dies.
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip
    balancer = Balancer(http_port, mllp_port, config, log_path, proc)
    deadline = time.monotonic() + timeout
    ports = [p for p in (http_port, mllp_port) if p is not None]
    while not all(_listening(p) for p in ports):
        if proc.poll() is not None or time.monotonic() > deadline:
            balancer.stop()
            raise RuntimeError(f"haproxy did not start; log:\n{balancer.log()}")
        time.sleep(0.05)
    return balancer


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[..., Balancer]]:
    """A factory: haproxy(http_backends=[port, ...], mllp_backends=[port, ...]) → a started Balancer, stopped after."""
    started: list[Balancer] = []

    def make(http_backends: Sequence[int] = (), mllp_backends: Sequence[int] = ()) -> Balancer:
        balancer = start_haproxy(tmp_path / f"haproxy{len(started)}", http_backends, mllp_backends)
        started.append(balancer)
        return balancer

    yield make
    for balancer in started:
        balancer.stop()
