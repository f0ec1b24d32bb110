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


def test_the_image_runs_as_a_user_stops_on_sigterm_and_reports_its_health() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    final = re.split(r"^FROM ", text, flags=re.M)[-1]
    (user,) = re.findall(r"^USER (\S+)$", final, re.M)
    assert user not in ("root", "0") and not user.startswith(("root:", "0:"))
    assert re.search(rf"useradd [^\n]*\b{user}\b", final), "the user is created in the image"
    assert re.search(r"^STOPSIGNAL SIGTERM$", final, re.M)
    assert re.search(r'^VOLUME \["/var/lib/drimbox"\]$', final, re.M)
    # The health check asks the box's own /health (the URL is the one compose sets per service).
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*urlopen\(os\.environ\['DRIMBOX_HEALTH_URL'\]", final, re.M)
    assert re.search(r"^ENV [^\n]*\n?\s*DRIMBOX_HEALTH_URL=http://127\.0\.0\.1:8080/health$", final, re.M)
    # Not a configuration override (those are DRIMBOX_<SECTION>__<KEY>): the loader must let it be.
    load_settings(DOCKER / "source.toml", env={"DRIMBOX_HEALTH_URL": "http://127.0.0.1:8080/health"})


def test_the_build_context_is_what_the_wheel_needs() -> None:
    # docker/Dockerfile.dockerignore (BuildKit reads <Dockerfile>.dockerignore): everything out, then what COPY takes.
    lines = [x for x in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "**"
    kept = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    copied = {
        part
        for sources in re.findall(r"^COPY (.+) \S+$", (DOCKER / "Dockerfile").read_text(), re.M)
        for part in sources.split()
    }
    assert copied == kept
