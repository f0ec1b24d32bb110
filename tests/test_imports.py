"""What each entry point loads: `drimbox serve` nothing of the demo nor of perf/, the command nothing of perf/."""

from __future__ import annotations

import subprocess
import sys

import pytest

from drimbox.cli import build_parser


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after `statement`."""
    code = f"{statement}\nimport sys\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    return set(out.stdout.split())


def test_the_box_imports_no_demo_and_no_perf() -> None:
    loaded = loaded_after("import drimbox.app")
    assert "drimbox.app" in loaded
    assert not {m for m in loaded if m.startswith(("drimbox.demo", "perf"))}


def test_the_command_imports_no_perf() -> None:
    loaded = loaded_after("import drimbox.cli; drimbox.cli.build_parser()")
    assert not {m for m in loaded if m == "perf" or m.startswith("perf.")}


def test_the_benchmarks_are_run_from_the_clone_not_through_the_command() -> None:
    # `make perf` / `python -m perf`: the perf/ folder is not in the package, so `drimbox` offers no way to it.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["perf"])
