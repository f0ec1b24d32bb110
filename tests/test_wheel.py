"""The package as an operator installs it: a wheel (not the source tree) that carries the viewer and serves it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import sysconfig
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from drimbox.demo.samples.processes import free_port, wait_http, write_config

ROOT = Path(__file__).resolve().parent.parent
VIEWER_FILES = sorted(p.name for p in (ROOT / "viewer").iterdir() if p.suffix in (".html", ".css", ".js"))


def test_pyproject_lists_every_package_and_maps_the_viewer() -> None:
    # The packages are listed by hand (setuptools' `find` cannot see the viewer's folder): none may be forgotten.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for d in (ROOT / "drimbox").rglob("*")
        if d.is_dir() and ((d / "__init__.py").is_file() or any(d.glob("*.xsd")))
    }
    assert on_disk | {"drimbox", "drimbox.viewer.static"} == set(config["packages"])
    assert config["package-dir"] == {"drimbox.viewer.static": "viewer"}
    assert {"index.html", "main.js", "viewer.css"} <= set(VIEWER_FILES)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # pip builds in an isolated environment (setuptools from the index, or pip's find-links when offline).
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    (built,) = out.glob("drimbox-*.whl")
    return built


def test_the_wheel_carries_the_viewer_inside_the_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"drimbox/viewer/static/{name}" for name in VIEWER_FILES} <= set(names)
    assert all(name.startswith(("drimbox/", "drimbox-")) for name in names), "only the drimbox package is installed"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; its dependencies come from this venv (a .pth), not from the network."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    # A path line only: the .pth files of this venv (its editable install of drimbox) are not run over there.
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return venv


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    cfg = write_config(tmp_path / "box.toml", {
        "box": {"roles": ["source"], "var_dir": str(tmp_path / "var"), "public_url": f"http://127.0.0.1:{port}"},
        "http": {"port": port},
        "mllp": {"port": free_port()},
        "dicom": {"port": free_port()},
    })  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DRIMBOX_VIEWER_DIR")}
    log = tmp_path / "box.log"
    with open(log, "wb") as out:
        # Started from elsewhere than the clone, so nothing of the source tree is found by accident.
        proc = subprocess.Popen([str(installed / "bin" / "drimbox"), "serve", "-c", str(cfg)], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/health", timeout=30, proc=proc)
        except (RuntimeError, TimeoutError):
            pytest.fail(f"the installed drimbox did not start; log:\n{log.read_text(errors='replace')[-3000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.box
@pytest.mark.wheel
def test_an_installed_wheel_serves_the_viewer(installed: Path, served: str) -> None:
    where = subprocess.run([str(installed / "bin" / "python"), "-c", "import drimbox; print(drimbox.__file__)"],
                           cwd=installed, check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert where.startswith(str(installed)), where
    with urllib.request.urlopen(f"{served}/viewer/", timeout=10) as resp:
        page = resp.read().decode()
    assert resp.status == 200 and "Visionneuse" in page
    for name in VIEWER_FILES:
        with urllib.request.urlopen(f"{served}/viewer/{name}", timeout=10) as resp:
            assert resp.read() == (ROOT / "viewer" / name).read_bytes(), name
        if name.endswith(".js"):
            # The page names each module by its content, as the installed package holds it: kept a year.
            version = hashlib.sha256((ROOT / "viewer" / name).read_bytes()).hexdigest()[:16]
            assert f'"/viewer/{name}":"/viewer/{name}?v={version}"' in page, name
            with urllib.request.urlopen(f"{served}/viewer/{name}?v={version}", timeout=10) as resp:
                assert "immutable" in resp.headers["Cache-Control"], name
    # The vendored WebAssembly codecs too, as WebAssembly (the viewer's workers compile them while they stream in).
    for wasm in sorted((ROOT / "viewer" / "vendor").glob("*/*.wasm")):
        path = f"vendor/{wasm.parent.name}/{wasm.name}"
        with urllib.request.urlopen(f"{served}/viewer/{path}", timeout=10) as resp:
            assert resp.headers["Content-Type"] == "application/wasm" and resp.read() == wasm.read_bytes(), path
