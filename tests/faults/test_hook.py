"""The kill-point hook itself: armed by DRIMBOX_FAULT_KILL_AT, it kills on the n-th passage and only there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from drimbox.state import faults

LOOP = (
    "from drimbox.state import faults\n"
    "for i in range(5):\n"
    "    faults.checkpoint('publish.registered')\n"
    "    print(i, flush=True)\n"
    "    faults.checkpoint('publish.found')\n"
)


def run(kill_at: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, faults.ENV: kill_at}
    return subprocess.run(
        [sys.executable, "-c", LOOP], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_kills_at_the_nth_passage_of_its_stage() -> None:
    done = run("publish.found:3")
    assert done.returncode == -9
    assert done.stdout.split() == ["0", "1", "2"]
    assert "SIGKILL at publish.found (3)" in done.stderr


def test_disarmed_or_other_stage_runs_through() -> None:
    for kill_at in ("", "withdraw.done"):
        done = run(kill_at)
        assert done.returncode == 0 and done.stdout.split() == ["0", "1", "2", "3", "4"], done.stderr


@pytest.mark.parametrize("value", ["publish.fuond", "publish.found:0", "publish.found:x"])
def test_a_misspelt_kill_point_stops_the_start(value: str) -> None:
    with pytest.raises(ValueError, match=faults.ENV):
        faults.parse(value)
    done = run(value)
    assert done.returncode == 1 and faults.ENV in done.stderr
