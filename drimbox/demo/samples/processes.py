"""Starting drimbox processes on loopback with their own config and ports (demo, tests, perf)."""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, for a server started a moment later.

    Taken below the OS's ephemeral range: a port the OS picked (bind to port 0) is also what it hands out to the
    next outgoing connection, which then holds it before our server binds ("address already in use" under load).
    Never the same port twice in this process.
    """
    low = max(10000, min(_ephemeral_low(), 65536) - 20000)
    high = min(_ephemeral_low(), 65536) - 1
    for _ in range(200):
        port = random.randint(low, high)
        if port in _given:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None, context: ssl.SSLContext | None = None
) -> None:
    """Wait until url answers any HTTP status (HTTPS with `context`); fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context):
                return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """Write a drimbox TOML configuration from nested dicts (a box: one process unless [http] workers says more)."""
    if "box" in sections:
        # The boxes these helpers start (tests, the demo, perf) are many on 2 cores: N processes each would crowd them.
        sections = {**sections, "http": {"workers": 1, **sections.get("http", {})}}
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class DrimboxProcess:
    """`drimbox serve` or `drimbox sim` running as a child process with its own config file."""

    command: str
    config: Path
    health_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    # For an HTTPS health_url: the trust (and, with mutual TLS, the client certificate) to reach it with.
    ssl_context: ssl.SSLContext | None = None

    def start(self, timeout: float = 30.0) -> DrimboxProcess:
        env = {**os.environ, **self.env}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drimbox.cli", self.command, "-c", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        try:
            wait_http(self.health_url, timeout=timeout, proc=self.proc, context=self.ssl_context)
        except Exception:
            self.stop()
            raise RuntimeError(f"drimbox {self.command} did not start; log:\n{self.log()}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: the crash case (nothing flushed, nothing closed)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""
