"""The `drimbox` command as an operator uses it: check, publish, configuration errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from drimbox.demo.samples.processes import free_port, write_config
from drimbox.source.outbox import Outbox


def drimbox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drimbox.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_configuration_error_names_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "box.toml", {"pacs": {"retreive": "c-get"}})
    out = drimbox("check", "-c", str(cfg))
    assert out.returncode == 2
    assert "pacs.retreive" in out.stderr


@pytest.mark.orthanc
@pytest.mark.sim
def test_check_reports_each_peer(tmp_path: Path, orthanc: Any, sim: Any) -> None:
    good = write_config(
        tmp_path / "good.toml",
        {
            "pacs": {"ae_title": orthanc.aet, "port": orthanc.dicom_port},
            "dmp": {"url": f"{sim.url}/dmp"},
        },
    )
    out = drimbox("check", "-c", str(good))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout and "PACS C-ECHO" in out.stdout
    bad = write_config(
        tmp_path / "bad.toml",
        {
            "pacs": {"ae_title": orthanc.aet, "port": free_port(), "timeout": 2.0},
            "dmp": {"url": f"http://127.0.0.1:{free_port()}/dmp"},
        },
    )
    out = drimbox("check", "-c", str(bad))
    assert out.returncode == 1
    failed = [line for line in out.stdout.splitlines() if line.startswith("FAIL")]
    assert any("PACS" in line for line in failed) and any("DMP" in line for line in failed)


def test_publish_requeues_a_failed_publication(tmp_path: Path) -> None:
    var = tmp_path / "var"
    outbox = Outbox(var / "drimbox.sqlite")

    async def seed() -> int:
        accepted = await outbox.accept(
            sender="RIS|X",
            control_id="1",
            raw=b"MSH",
            action="publish",
            document_id="D",
            accession="ACN9",
            study_uid="1.2.3",
            report={},
        )
        await outbox.update(accepted.publication_id, state="failed", last_error="DMP refused")
        return accepted.publication_id

    pub_id = asyncio.run(seed())
    outbox.close()
    cfg = write_config(tmp_path / "box.toml", {"box": {"var_dir": str(var)}})
    out = drimbox("publish", "--accession", "ACN9", "-c", str(cfg))
    assert out.returncode == 0 and "1 publication" in out.stdout
    assert drimbox("publish", "--accession", "NOPE", "-c", str(cfg)).returncode == 1
    outbox = Outbox(var / "drimbox.sqlite")
    try:
        pub = asyncio.run(outbox.get(pub_id))
        assert pub is not None and pub.state == "received"
    finally:
        outbox.close()
