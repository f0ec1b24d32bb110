"""Command-line DICOM peers and validators used by the tests: dcmtk storescu, dicom3tools dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def require_tool(name: str, package: str) -> str:
    """The tool's path, or skip the test with the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: apt-get install {package} (make test installs it)")
    return path


@dataclass
class DciodvfyReport:
    """dciodvfy's verdict on one file: its error and warning lines and the whole output."""

    output: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def dciodvfy(path: Path, profile: str | None = None) -> DciodvfyReport:
    """Run dciodvfy (optionally with `-profile`) on `path` and sort its lines into errors and warnings."""
    exe = require_tool("dciodvfy", "dicom3tools")
    args = [exe, *(["-profile", profile] if profile else []), str(path)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    output = proc.stdout + proc.stderr
    lines = output.splitlines()
    return DciodvfyReport(
        output=output,
        errors=[line for line in lines if "Error" in line],
        warnings=[line for line in lines if "Warning" in line],
    )
