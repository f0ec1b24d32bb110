"""`drimbox demo`'s command-line options and its port plan: fixed defaults that don't clash, free ports as fallback."""

from __future__ import annotations

import argparse
import socket
from dataclasses import dataclass

from drimbox.demo.samples.processes import free_port

# One HTTP port per service, so the links a newcomer sees are the same from one run to the next.
DEFAULT_PORTS: dict[str, int] = {
    "source": 8080,  # source box HTTP: report link, viewer, DICOMweb
    "consumer": 8081,  # consumer box HTTP: launch, exam list, viewer
    "launcher": 8082,  # the page that plays the doctor's software (auto-submitted launch form)
    "sim": 8090,  # DMP, Pro Santé Connect, whitelist
    "mllp": 2575,  # the source box's HL7 v2 listener
    "dicom": 11112,  # the source box's DICOM AE (C-MOVE destination; the archive in Native profile)
}


@dataclass
class PortPlan:
    """The ports the demo uses, and the services that could not have their default."""

    ports: dict[str, int]
    moved: list[str]


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def plan_ports(wanted: dict[str, int]) -> PortPlan:
    """Each wanted port if free on loopback, else a free one; 0 means "any free port"."""
    ports: dict[str, int] = {}
    moved: list[str] = []
    for name, port in wanted.items():
        if port and port not in ports.values() and _is_free(port):
            ports[name] = port
            continue
        if port:
            moved.append(name)
        chosen = free_port()
        while chosen in ports.values():
            chosen = free_port()
        ports[name] = chosen
    return PortPlan(ports, moved)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The `drimbox demo` options (the CLI stays thin: it only forwards them)."""
    p.add_argument("--workdir", help="where to keep the demo's state (default: a temporary directory, removed at exit)")
    p.add_argument("--exit", action="store_true", help="stop everything once the reports are in the DMP")
    p.add_argument("--instances", type=int, default=20, help="instances per synthetic study (default 20)")
    p.add_argument("--native", action="store_true", help="Native profile (the box is the archive) even with Orthanc")
    for name, port in DEFAULT_PORTS.items():
        p.add_argument(
            f"--{name}-port",
            type=int,
            default=port,
            metavar="PORT",
            help=f"{name} port (default {port}; 0 = any free port; a taken port falls back to a free one)",
        )


def wanted_ports(args: argparse.Namespace) -> dict[str, int]:
    return {name: int(getattr(args, f"{name}_port")) for name in DEFAULT_PORTS}
