"""docker/: the compose set-up's configurations must load and agree with each other (no Docker engine here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from drimbox.config import load_settings

DOCKER = Path(__file__).resolve().parent.parent / "docker"


@pytest.mark.parametrize("name", ["source.toml", "consumer.toml", "sim.toml"])
def test_every_configuration_loads(name: str) -> None:
    load_settings(DOCKER / name, env={})


def test_the_services_agree_on_addresses() -> None:
    source = load_settings(DOCKER / "source.toml", env={})
    consumer = load_settings(DOCKER / "consumer.toml", env={})
    sim = load_settings(DOCKER / "sim.toml", env={})
    orthanc = json.loads((DOCKER / "orthanc.json").read_text())
    assert source.box.roles == ["source"] and consumer.box.roles == ["consumer"]
    # The box retrieves from Orthanc, which knows the box's AE (C-MOVE destination) at the box's own address.
    assert (source.pacs.ae_title, source.pacs.port) == (orthanc["DicomAet"], orthanc["DicomPort"])
    assert orthanc["DicomModalities"][source.dicom.ae_title] == [
        source.dicom.ae_title,
        source.dicom.host,
        source.dicom.port,
    ]
    assert (consumer.consumer.local_pacs_ae_title, consumer.consumer.local_pacs_port) == (
        orthanc["DicomAet"],
        orthanc["DicomPort"],
    )
    # Both boxes use the simulator's DMP and Pro Santé Connect, which redirects back to each of them.
    sim_base = f"http://{sim.sim.host}:{sim.sim.port}"
    for box in (source, consumer):
        assert box.dmp.url.startswith(sim_base) and box.psc.issuer.startswith(sim_base)
        assert f"{box.box.public_url}/auth/callback" in sim.sim.psc_redirect_uris
        assert box.box.public_url.endswith(f":{box.http.port}")
    assert consumer.whitelist.url.startswith(sim_base)


def test_compose_and_dockerfile_name_files_that_exist() -> None:
    compose = (DOCKER / "compose.yaml").read_text()
    for mounted in re.findall(r"- \./([\w.-]+):", compose):
        assert (DOCKER / mounted).is_file(), mounted
    dockerfile = (DOCKER / "Dockerfile").read_text()
    for copied in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for part in copied.split():
            assert (DOCKER.parent / part).exists(), part


def test_the_image_runs_the_installed_wheel_not_the_source_tree() -> None:
    # The last stage installs the wheel the first one built (it carries the viewer) and copies no source beside it.
    stages = re.split(r"^FROM ", (DOCKER / "Dockerfile").read_text(), flags=re.M)
    assert "pip wheel" in stages[1] and "COPY viewer" in stages[1]
    final = stages[-1]
    assert "pip install --no-cache-dir /wheels/" in final and "from=wheel" in final
    assert not re.search(r"^COPY ", final, re.M)
