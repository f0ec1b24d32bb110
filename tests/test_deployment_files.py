"""Deployment files: the two-instance compose, HAProxy (checked by the real binary) and the systemd unit agree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from drimbox.config import Settings, load_settings
from drimbox.demo.samples.processes import write_config

DOCKER = Path(__file__).resolve().parent.parent / "docker"
UNIT = DOCKER / "systemd" / "drimbox.service"
COMPOSE_FILES = ["compose.yaml", "compose.ha.yaml"]


def load_box(path: Path, tmp_path: Path) -> tuple[Settings, dict[str, Any]]:
    """drimbox's own loader on a deployment TOML, and the raw TOML."""
    raw = tomllib.loads(path.read_text())
    return load_settings(write_config(tmp_path / path.name, raw), env={}), raw


def services(compose: str) -> dict[str, str]:
    """Each service's block of a compose file (two-space service names, as the files here are written)."""
    text = (DOCKER / compose).read_text()
    body = text.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    parts = re.split(r"^  ([\w-]+):\n", body, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def named_volumes(compose: str) -> set[str]:
    text = (DOCKER / compose).read_text()
    return set(re.findall(r"^  ([\w-]+):$", text.split("\nvolumes:\n", 1)[1], re.M))


def mounts(block: str) -> dict[str, str]:
    """target → source of a service's volumes."""
    return {target: source for source, target in re.findall(r"^      - ([^:\s]+):([^:\s]+)(?::ro)?$", block, re.M)}


def environment(block: str) -> dict[str, str]:
    return dict(re.findall(r"^      ([A-Z][A-Z0-9_]*): (\S+)$", block, re.M))


def box_services() -> list[tuple[str, str]]:
    return [(c, s) for c in COMPOSE_FILES for s, b in services(c).items() if "/etc/drimbox/box.toml" in mounts(b)]


@pytest.mark.parametrize(("compose", "service"), box_services())
def test_every_compose_service_config_exists_and_loads(compose: str, service: str, tmp_path: Path) -> None:
    source = mounts(services(compose)[service])["/etc/drimbox/box.toml"]
    path = DOCKER / source
    assert path.is_file(), source
    settings, raw = load_box(path, tmp_path)
    if re.search(r'^    command: \["migrate"', services(compose)[service], re.M):
        return  # a one-shot: no health to check
    # The image's HEALTHCHECK asks DRIMBOX_HEALTH_URL: each service names its own port (a box's /health, the
    # simulator's discovery document).
    health = urlsplit(environment(services(compose)[service])["DRIMBOX_HEALTH_URL"])
    port = settings.sim.port if "sim" in raw else settings.http.port
    assert (health.hostname, health.port) == ("127.0.0.1", port)
    assert health.path == ("/psc/.well-known/openid-configuration" if "sim" in raw else "/health")


def test_every_file_and_volume_a_compose_file_names_exists() -> None:
    for compose in COMPOSE_FILES:
        declared = named_volumes(compose)
        for name, block in services(compose).items():
            for target, source in mounts(block).items():
                if source.startswith("./"):
                    assert (DOCKER / source).is_file(), (compose, name, source)
                else:
                    assert source in declared, (compose, name, source)
                    assert target.startswith("/"), (compose, name, target)


@pytest.fixture
def instances(tmp_path: Path) -> list[tuple[Settings, dict[str, Any]]]:
    return [load_box(DOCKER / f"source-{n}.toml", tmp_path) for n in ("a", "b")]


def test_the_instances_differ_only_in_their_own_ports(instances: list[tuple[Settings, dict[str, Any]]]) -> None:
    # Same public address, same state, same shared directory, same peers: any instance does any request's work.
    (a, raw_a), (b, raw_b) = instances
    own = [("http", "port"), ("mllp", "port"), ("dicom", "port")]
    for raw in (raw_a, raw_b):
        for section, key in own:
            del raw[section][key]
    assert raw_a == raw_b
    ports = [a.http.port, a.mllp.port, a.dicom.port, b.http.port, b.mllp.port, b.dicom.port]
    assert len(set(ports)) == len(ports)
    assert raw_a["state"]["url"].startswith("postgresql://") and raw_a["state"]["shared_dir"].startswith("/")


def haproxy_sections() -> dict[str, str]:
    """ "frontend http" → its lines, "backend drimbox_http" → …"""
    text = (DOCKER / "haproxy.cfg").read_text()
    parts = re.split(r"^((?:frontend|backend|global|defaults)(?: \S+)?)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def frontend_port(name: str) -> int:
    (port,) = re.findall(r"^\s+bind 127\.0\.0\.1:(\d+)$", haproxy_sections()[f"frontend {name}"], re.M)
    return int(port)


def backend_servers(name: str) -> dict[str, tuple[int, str]]:
    block = haproxy_sections()[f"backend {name}"]
    return {s: (int(p), rest) for s, p, rest in re.findall(r"^\s+server (\S+) 127\.0\.0\.1:(\d+)(.*)$", block, re.M)}


def test_haproxy_sends_each_protocol_to_the_instances_own_ports(instances: list[tuple[Settings, Any]]) -> None:
    (a, _), (b, _) = instances
    sections = haproxy_sections()
    for protocol, ports in (("http", (a.http.port, b.http.port)), ("mllp", (a.mllp.port, b.mllp.port)),
                            ("dicom", (a.dicom.port, b.dicom.port))):  # fmt: skip
        servers = backend_servers(f"drimbox_{protocol}")
        assert {"source-a": ports[0], "source-b": ports[1]} == {s: p for s, (p, _) in servers.items()}, protocol
        assert all(re.search(r"\bcheck\b", rest) for _, rest in servers.values()), protocol
        assert f"default_backend drimbox_{protocol}" in sections[f"frontend {protocol}"]
    assert "mode http" in sections["backend drimbox_http"]
    assert re.search(r"option httpchk GET /health\n", sections["backend drimbox_http"])
    for protocol in ("mllp", "dicom"):
        assert "mode tcp" in sections[f"frontend {protocol}"] and "mode tcp" in sections[f"backend drimbox_{protocol}"]
    assert "option redispatch" in sections["defaults"] and re.search(r"^\s+retries \d+$", sections["defaults"], re.M)


def test_clients_reach_the_balancer_not_an_instance(instances: list[tuple[Settings, Any]]) -> None:
    # Report links and OIDC redirects name the balancer; the simulator's PSC and whitelist know that address; the
    # PACS sends IOCM notes to the balancer's DICOM port (docker/orthanc.json), the RIS its reports to MLLP 2575.
    (a, _), (b, _) = instances
    public = urlsplit(a.box.public_url)
    assert a.box.public_url == b.box.public_url and public.port == frontend_port("http")
    sim = load_settings(DOCKER / "sim.toml", env={})
    assert f"{a.box.public_url}/auth/callback" in sim.sim.psc_redirect_uris
    assert f"{a.box.public_url}/dicom-web" in sim.sim.whitelist_hosts
    orthanc = json.loads((DOCKER / "orthanc.json").read_text())
    assert orthanc["DicomModalities"][a.dicom.ae_title][1:] == ["127.0.0.1", frontend_port("dicom")]
    assert frontend_port("mllp") == 2575
    # C-GET: the images come back on the calling instance's association (C-MOVE would target one address).
    assert a.pacs.retrieve == b.pacs.retrieve == "c-get"


def test_the_ha_compose_runs_two_instances_on_postgresql_and_a_shared_volume(
    instances: list[tuple[Settings, dict[str, Any]]],
) -> None:
    svc = services("compose.ha.yaml")
    assert {"postgres", "migrate", "source-a", "source-b", "haproxy", "sim", "orthanc"} <= set(svc)
    shared_dir = instances[0][1]["state"]["shared_dir"]
    own_vars = set()
    for name, (settings, raw) in zip(("source-a", "source-b"), instances, strict=True):
        block = svc[name]
        volumes = mounts(block)
        assert volumes["/etc/drimbox/box.toml"] == f"./{name}.toml"
        assert volumes[shared_dir] == "shared", name
        own_vars.add(volumes["/var/lib/drimbox"])
        # The image's HEALTHCHECK asks this instance's own /health; its workers match its CPU limit.
        assert environment(block)["DRIMBOX_HEALTH_URL"] == f"http://127.0.0.1:{settings.http.port}/health"
        cpus = re.search(r"^    cpus: (\d+)$", block, re.M)
        assert cpus and int(cpus.group(1)) == raw["http"]["workers"], name
        assert "service_completed_successfully" in block and "stop_grace_period" in block
    assert len(own_vars) == 2, "each instance has its own var volume"
    # PostgreSQL: the official image, a volume, a health check, and the account the instances' [state] url names.
    pg = svc["postgres"]
    assert re.search(r"^    image: postgres:\d+", pg, re.M) and mounts(pg)["/var/lib/postgresql/data"] == "pg-data"
    assert "pg_isready" in pg
    env = environment(pg)
    url = urlsplit(instances[0][1]["state"]["url"])
    assert (url.username, url.password, url.path.lstrip("/")) == (
        env["POSTGRES_USER"],
        env["POSTGRES_PASSWORD"],
        env["POSTGRES_DB"],
    )
    assert f"port={url.port}" in pg and f"listen_addresses={url.hostname}" in pg
    assert mounts(svc["haproxy"])["/usr/local/etc/haproxy/haproxy.cfg"] == "./haproxy.cfg"


@pytest.mark.haproxy
def test_haproxy_accepts_the_configuration() -> None:
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).is_file():
        pytest.skip("haproxy is not installed (Debian package haproxy; `make test` installs it)")
    check = subprocess.run(
        [binary, "-c", "-f", str(DOCKER / "haproxy.cfg")], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "Configuration file is valid" in check.stdout + check.stderr


def unit_entries(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of a systemd unit, in order: a key may repeat (ReadWritePaths=)."""
    entries, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, line
        entries.append((section, key.strip(), value.strip()))
    return entries


def test_the_systemd_unit_runs_the_box_hardened() -> None:
    entries = unit_entries(UNIT.read_text())
    service = {k: v for s, k, v in entries if s == "Service"}
    # exec, not notify: nothing in drimbox calls sd_notify (a notify unit would time out at start).
    assert service["Type"] == "exec"
    sources = Path(__file__).resolve().parent.parent.joinpath("drimbox").rglob("*.py")
    assert not [p for p in sources if re.search(r"sd_notify|NOTIFY_SOCKET", p.read_text())]
    assert service["User"] == "drimbox" and service["Restart"] == "on-failure"
    assert re.fullmatch(r"/\S+/drimbox serve -c /etc/drimbox/box\.toml", service["ExecStart"])
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID" and service["KillSignal"] == "SIGTERM"
    assert int(service["LimitNOFILE"]) >= 8192
    assert service["NoNewPrivileges"] == "true" and service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "true" and service["CapabilityBoundingSet"] == ""
    writable = [v for s, k, v in entries if k == "ReadWritePaths"]
    assert service["WorkingDirectory"] in writable and service["WorkingDirectory"] == "/var/lib/drimbox"
    assert {k for s, k, _ in entries if s == "Install"} == {"WantedBy"}


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify on a copy whose ExecStart is this environment's drimbox (verify checks it exists)."""
    drimbox = Path(sys.executable).parent / "drimbox"
    copy = tmp_path / "drimbox.service"
    copy.write_text(unit_text.replace("/opt/drimbox/bin/drimbox", str(drimbox)))
    return subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: test_the_systemd_unit_runs_the_box_hardened parses the unit")
    text = UNIT.read_text()
    assert "/opt/drimbox/bin/drimbox serve" in text
    result = _verify(text, tmp_path)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    # The check sees a mistake: an unknown key is reported (verify's exit status stays 0 for it).
    broken = _verify(text.replace("ProtectSystem=strict", "ProtectSytem=strict"), tmp_path)
    assert "Unknown key" in broken.stderr, broken.stderr
