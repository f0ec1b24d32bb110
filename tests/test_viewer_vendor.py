"""The viewer's vendored npm codecs match viewer/vendor/lock.json (offline) and reach the wheel's package data."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tomllib
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "viewer" / "vendor"


def _fetch_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vendor_fetch", VENDOR / "fetch.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_vendored_files_are_the_ones_the_lock_records() -> None:
    fetch = _fetch_script()
    assert fetch.verify(VENDOR) == []


def test_a_changed_vendored_file_is_reported(tmp_path: Path) -> None:
    fetch = _fetch_script()
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR, copy)
    (copy / "codec-charls@1.2.7" / "charlswasm_decode.js").write_text("// altered\n")
    assert fetch.verify(copy) == [
        "@cornerstonejs/codec-charls: charlswasm_decode.js differs from dist/charlswasm_decode.js in the lock"
    ]


def test_every_locked_file_is_package_data_with_its_licence() -> None:
    lock = json.loads((VENDOR / "lock.json").read_text(encoding="utf-8"))
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"
    ]["drimbox.viewer.static"]
    for package in lock["packages"].values():
        names = [f"vendor/{package['folder']}/{entry['as']}" for entry in package["files"].values()]
        assert f"vendor/{package['folder']}/{package['licence_file']}" in names  # the licence travels with the code
        for name in [*names, "vendor/lock.json"]:
            assert any(fnmatch(name, p) for p in patterns), name
