"""`drimbox serve` on every core: the HTTP socket bound once, [http] workers forked processes serving it, supervised.

Why one socket bound by the parent and inherited, rather than SO_REUSEPORT in each process: the port is bound (and
a clash reported) once, before any process starts; every process accepts from one queue, so an idle process takes
the next connection while a busy one is streaming a series (SO_REUSEPORT hashes each connection to one process,
busy or not); and connections waiting in the queue survive a process that dies (with SO_REUSEPORT, the dead
socket's queue is reset).

Process 0, the primary, also runs the source's DICOM and HL7 listeners and the publication worker: one of each
per host, so no port clash and no double publication. A process that exits is restarted (the primary as the
primary); SIGTERM or SIGINT stops them all, each draining its requests (drimbox.app.serve). Metrics: the parent
sets PROMETHEUS_MULTIPROC_DIR (a fresh directory each start) before the processes import prometheus_client, and
marks each dead process's gauges dead.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drimbox.config import Settings

log = logging.getLogger(__name__)

# A process that lived less than this was failing at start: wait longer before each new attempt (up to BACKOFF_MAX).
HEALTHY_AFTER = 10.0
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
# How long the processes get to drain their requests after SIGTERM before they are killed.
STOP_TIMEOUT = 75.0


@dataclass
class _Process:
    index: int
    pid: int
    started_at: float
    ready_fd: int  # the read end of a pipe the process writes one byte to once it serves
    ready: bool = False

    @property
    def primary(self) -> bool:
        return self.index == 0


def bind(settings: Settings) -> socket.socket:
    """The HTTP listening socket, bound once for every process (raises OSError when the port is taken)."""
    family = socket.AF_INET6 if ":" in settings.http.host else socket.AF_INET
    return socket.create_server((settings.http.host, settings.http.port), family=family, backlog=1024)


def supervise(settings: Settings, count: int, run: Callable[[Coroutine[Any, Any, Any]], Any]) -> int:
    """Serve with `count` processes until SIGTERM/SIGINT; 1 when a process cannot start at all. `run`: the event loop."""
    sock = bind(settings)
    # Private to this start (0700): the metrics' files and the primary's fill socket; removed at stop.
    runtime = Path(tempfile.mkdtemp(prefix="drimbox-"))
    metrics_dir = str(runtime / "metrics")
    os.mkdir(metrics_dir)
    _multiprocess_metrics(metrics_dir)
    from prometheus_client import multiprocess

    from drimbox.app import serve
    from drimbox.cli.signals import reload_on_sighup, until_signalled

    stopping = False

    def stop(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True

    processes: dict[int, _Process] = {}

    def forward(signum: int, _: object) -> None:
        for p in processes.values():  # SIGHUP: each process reloads what it reloads (certificates, whitelist)
            _signal(p.pid, signum)

    parent = os.getpid()

    def spawn(index: int) -> None:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)  # until_signalled installs the loop's own handlers
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # forwarded by the parent; a reload handler may take it
                _die_with_parent(parent)

                def started() -> None:
                    os.write(write_fd, b"1")
                    os.close(write_fd)

                run(serve(settings, until_signalled, reload_on=reload_on_sighup, index=index, sock=sock, runtime=runtime,
                          started=started))  # fmt: skip
                code = 0
            except BaseException:
                log.exception("process %d (%s) failed", os.getpid(), "primary" if index == 0 else "HTTP")
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write_fd)
        processes[pid] = _Process(index, pid, time.monotonic(), read_fd)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, forward)
    backoff: dict[int, float] = {}
    due: dict[int, float] = {}  # index → when to start it again
    ever_ready: set[int] = set()
    code = 0
    try:
        # The primary first: until its listeners are up, HTTP clients wait in the socket's queue rather than find
        # a box that answers /health but not yet MLLP or DICOM.
        spawn(0)
        others = False
        while not stopping:
            _read_ready(processes, ever_ready)
            if not others and 0 in ever_ready:
                others = True
                for index in range(1, count):
                    spawn(index)
                log.info("drimbox: %d processes on HTTP %s:%d", count, settings.http.host, settings.http.port)
            while not stopping:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                gone = processes.pop(pid, None)
                multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
                if gone is None:
                    continue
                os.close(gone.ready_fd)
                role = "primary" if gone.primary else "HTTP"
                if gone.index not in ever_ready:
                    # Never served: a configuration or a port the process itself binds (MLLP, DICOM) is wrong.
                    log.error("process %d (%s) exited before serving (%s): stopping", pid, role, _status(status))
                    code = 1
                    stopping = True
                    break
                lived = time.monotonic() - gone.started_at
                wait = BACKOFF_MIN if lived > HEALTHY_AFTER else min(BACKOFF_MAX, 2 * backoff.get(gone.index, 0.25))
                backoff[gone.index] = wait
                due[gone.index] = time.monotonic() + wait
                log.warning("process %d (%s) exited (%s) after %.0f s: restarted in %.1f s",
                            pid, role, _status(status), lived, wait)  # fmt: skip
            now = time.monotonic()
            for index, when in list(due.items()):
                if when <= now and not stopping:
                    del due[index]
                    spawn(index)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        _stop_all(processes)
        sock.close()
        shutil.rmtree(runtime, ignore_errors=True)
    log.info("drimbox: every process stopped")
    return code


def _multiprocess_metrics(directory: str) -> None:
    """Every process's instruments keep their values in files under `directory` (prometheus_client multiprocess).

    prometheus_client picks where values live when it is imported, and the command line imported it already (the
    audit commands import the instruments): that choice and the instruments are made again, before any process
    starts. The modules that record read them as `metrics.NAME`, so they see the new ones.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    import prometheus_client.values

    importlib.reload(prometheus_client.values)
    if "drimbox.metrics" in sys.modules:
        importlib.reload(sys.modules["drimbox.metrics"])


def _die_with_parent(parent: int) -> None:
    """A supervisor killed outright (SIGKILL, OOM) takes its processes with it: SIGTERM when it goes (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the processes outlive a killed supervisor
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _read_ready(processes: dict[int, _Process], ever_ready: set[int]) -> None:
    """Wait up to 0.2 s for a process to say it serves (the supervisor's tick)."""
    waiting = {p.ready_fd: p for p in processes.values() if not p.ready}
    if not waiting:
        time.sleep(0.2)
        return
    readable, _, _ = select.select(list(waiting), [], [], 0.2)
    for fd in readable:
        p = waiting[fd]
        if os.read(fd, 1):
            p.ready = True
            ever_ready.add(p.index)


def _stop_all(processes: dict[int, _Process]) -> None:
    """SIGTERM to each process, then wait for them to drain; SIGKILL what is left after STOP_TIMEOUT."""
    for p in processes.values():
        _signal(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while processes and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.05)
            continue
        gone = processes.pop(pid, None)
        if gone is not None:
            os.close(gone.ready_fd)
    for p in processes.values():
        log.warning("process %d did not stop in %.0f s: killed", p.pid, STOP_TIMEOUT)
        _signal(p.pid, signal.SIGKILL)
        os.waitpid(p.pid, 0)
        os.close(p.ready_fd)
    processes.clear()


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
