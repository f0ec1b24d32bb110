"""Re-fetch the viewer's vendored npm files from registry.npmjs.org and check them against lock.json (stdlib only).

    python viewer/vendor/fetch.py           # check the vendored files against the lock (offline)
    python viewer/vendor/fetch.py --fetch   # download each tarball, check its dist.integrity, extract the files

Each package's tarball is checked against the sha-512 the registry publishes (`dist.integrity`), then each file we
keep against the lock's own sha-512: the files in git, the wheel and a fresh clone are the ones npm published.
Nothing is fetched at run time: the box serves these files as they are, and no build step touches them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import Any

VENDOR = Path(__file__).resolve().parent
LOCK = VENDOR / "lock.json"


def sri(data: bytes) -> str:
    """The Subresource Integrity form npm uses: sha512-<base64>."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def load_lock(path: Path = LOCK) -> dict[str, Any]:
    lock: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return lock


def verify(root: Path = VENDOR) -> list[str]:
    """What differs between the vendored files and the lock (empty: all match)."""
    problems = []
    for name, package in load_lock(root / "lock.json")["packages"].items():
        folder = root / package["folder"]
        for source, entry in package["files"].items():
            path = folder / entry["as"]
            if not path.is_file():
                problems.append(f"{name}: {entry['as']} is missing")
            elif sri(path.read_bytes()) != entry["integrity"]:
                problems.append(f"{name}: {entry['as']} differs from {source} in the lock")
    return problems


def fetch(root: Path = VENDOR) -> None:
    """Download every locked package, check the tarball, write the files the lock names."""
    for name, package in load_lock(root / "lock.json")["packages"].items():
        with urllib.request.urlopen(package["tarball"], timeout=60) as response:  # noqa: S310 (a fixed https URL)
            tarball = response.read()
        if sri(tarball) != package["integrity"]:
            raise SystemExit(f"{name}: the tarball does not match its dist.integrity")
        folder = root / package["folder"]
        folder.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
            for source, entry in package["files"].items():
                member = tar.extractfile(f"package/{source}")
                if member is None:
                    raise SystemExit(f"{name}: {source} is not in the tarball")
                data = member.read()
                if sri(data) != entry["integrity"]:
                    raise SystemExit(f"{name}: {source} in the tarball differs from the lock")
                (folder / entry["as"]).write_bytes(data)
        print(f"{name}@{package['version']}: {len(package['files'])} files")


if __name__ == "__main__":
    if "--fetch" in sys.argv[1:]:
        fetch()
    problems = verify()
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(1 if problems else 0)
