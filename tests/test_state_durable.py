"""write_atomic: the whole new file or the old one, never a temporary file left beside it."""

import os
from pathlib import Path

import pytest

from drimbox.state.durable import write_atomic


def test_writes_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    write_atomic(target, b"one", mode=0o600)
    assert target.read_bytes() == b"one"
    assert target.stat().st_mode & 0o777 == 0o600 & ~_umask()
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_named_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "1.2.3.dcm"
    write_atomic(target, b"kos", tmp=target.with_suffix(".tmp"))
    assert [p.name for p in tmp_path.iterdir()] == ["1.2.3.dcm"]


def test_fsyncs_file_and_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(tmp_path / "f", b"x")
    assert len(synced) == 2  # the file, then its directory


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
