"""`drimbox demo` as a child process: started, followed until its links are printed, stopped (tests, screenshots)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY = "Everything is running"
PORT_NAMES = ("source", "consumer", "launcher", "sim", "mllp", "dicom")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the fields that follow are after the last ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def processes_naming(text: str) -> list[int]:
    """Running processes whose command line contains `text` (a demo's work dir): orphans included, whoever the parent."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@dataclass
class DemoRun:
    """A running demo: its process, what it printed so far, and the links of its demo.json."""

    process: subprocess.Popen[str]
    workdir: Path
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    output: str = ""
    links: dict[str, Any] = field(default_factory=dict)

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.output:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise TimeoutError(f"the demo was not ready within {timeout:.0f} s:\n{self.output}") from None
            if line is None:
                raise RuntimeError(f"the demo ended (status {self.process.wait()}):\n{self.output}")
            self.output += line
        self.links = json.loads((self.workdir / "demo.json").read_text())

    def read_rest(self, timeout: float = 10.0) -> str:
        """What it printed after the last read, up to its exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.output += line
        return self.output

    def stop(self) -> None:
        """Ctrl-C, as a user would; SIGKILL only if the demo does not stop (its children then die with their parent)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_demo(workdir: Path, instances: int = 20, timeout: float = 120.0, free_ports: bool = True,
               extra: tuple[str, ...] = ()) -> DemoRun:  # fmt: skip
    """Start `drimbox demo` keeping its state in `workdir`, and wait until it prints that everything is running.

    free_ports: any free port for every service, so a demo already running on the defaults does not get in the way.
    """
    args = [
        sys.executable,
        "-m",
        "drimbox.cli",
        "demo",
        "--workdir",
        str(workdir),
        "--instances",
        str(instances),
        *extra,
    ]
    if free_ports:
        args += [a for name in PORT_NAMES for a in (f"--{name}-port", "0")]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    run = DemoRun(process, workdir)
    threading.Thread(target=run._pump, name="demo-output", daemon=True).start()
    try:
        run.wait_ready(timeout)
    except BaseException:
        run.stop()
        raise
    return run
