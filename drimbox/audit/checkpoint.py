"""Signed checkpoints of the trail's head in a separate append-only file: a cut tail no longer leaves a valid chain."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from drimbox.audit.store import open_reader
from drimbox.state.durable import fsync_dir

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)
# Fields a checkpoint's signature covers (everything but `signature`).
SIGNED = ("seq", "hash", "at", "reason", "cert_sha256")


def signed_bytes(checkpoint: dict[str, Any]) -> bytes:
    """Canonical JSON of the signed fields: sorted keys, no spaces, UTF-8 (the same rule as a record's hash)."""
    body = {k: checkpoint.get(k) for k in SIGNED}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


class CheckpointWriter:
    """Appends signed heads to the checkpoint file, each line fsynced before write() returns.

    `publish` (the syslog copy) gets each checkpoint too: a copy off the machine survives the file being cut.
    """

    def __init__(self, path: Path, key_path: Path, cert_path: Path,
                 publish: Callable[[dict[str, Any]], None] | None = None) -> None:  # fmt: skip
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{key_path}: the structure key must be an RSA key")
        self.path = path
        self.publish = publish
        self._key = key
        self._cert_sha256 = fingerprint(load_certificate(cert_path))
        lines = read_checkpoints(path) if path.is_file() else []
        self.last: dict[str, Any] | None = next((c for c in reversed(lines) if isinstance(c, dict)), None)
        # A line torn by a power cut must not swallow the next checkpoint: start on a fresh line.
        self._torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")

    @property
    def last_seq(self) -> int:
        return int(self.last["seq"]) if self.last is not None and isinstance(self.last.get("seq"), int) else 0

    def write(self, seq: int, head: str, at: str, reason: str) -> dict[str, Any]:
        checkpoint: dict[str, Any] = {"seq": seq, "hash": head, "at": at, "reason": reason,
                                      "cert_sha256": self._cert_sha256}  # fmt: skip
        signature = self._key.sign(signed_bytes(checkpoint), padding.PKCS1v15(), hashes.SHA256())
        checkpoint["signature"] = base64.b64encode(signature).decode("ascii")
        line = (json.dumps(checkpoint, sort_keys=True) + "\n").encode()
        if self._torn:
            line = b"\n" + line
        created = not self.path.exists()
        # O_APPEND: each line goes to the end whatever else has the file open; fsync: on disk before we go on.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # the new file's directory entry must survive a power cut too
            fsync_dir(self.path.parent)
        self.last, self._torn = checkpoint, False
        if self.publish is not None:
            self.publish(checkpoint)
        return checkpoint


def read_checkpoints(path: Path) -> list[dict[str, Any] | str]:
    """The file's lines in order: a dict per readable checkpoint, the raw text of a line that is not one."""
    out: list[dict[str, Any] | str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        out.append(value if isinstance(value, dict) else line)
    return out


@dataclass(frozen=True)
class CheckpointReport:
    """What `drimbox audit verify` says of the checkpoints: how many hold, the last one, and every problem."""

    count: int
    last_seq: int
    problems: list[str]


def verify_checkpoints(
    trail: Path, path: Path, cert: x509.Certificate, every: int, *, url: str = ""
) -> CheckpointReport:
    """Check each checkpoint's signature against the box's certificate, that its (seq, hash) is still in the
    trail, and that the trail reaches the last one (a tail cut beyond it is reported).

    With the trail on PostgreSQL, each instance keeps its checkpoints in its own file (outside the database,
    which is what makes them worth having): every one must name a record of the one shared chain.
    """
    db = open_reader(trail, url)
    try:
        row = db.execute("SELECT max(seq), count(*) FROM audit").fetchone()
        end, stored = int(row[0] or 0), int(row[1])
        if not path.is_file():
            # Until the first N records or the first clean stop there is none; after that, none means removed.
            problems = (
                [f"no checkpoint file at {path} although the trail holds {stored} records"] if stored >= every else []
            )
            return CheckpointReport(0, 0, problems)
        problems = []
        good, last_seq, last_at = 0, 0, ""
        mine = fingerprint(cert)
        public_key = cert.public_key()
        for n, checkpoint in enumerate(read_checkpoints(path), start=1):
            if isinstance(checkpoint, str):
                problems.append(f"checkpoint line {n} is not a checkpoint (edited, or a write cut by a power failure)")
                continue
            seq, head = checkpoint.get("seq"), checkpoint.get("hash")
            if not isinstance(seq, int) or not isinstance(head, str):
                problems.append(f"checkpoint line {n} has no record number or hash (the file was edited)")
                continue
            if checkpoint.get("cert_sha256") != mine:
                problems.append(
                    f"checkpoint line {n} (record {seq}) was signed with another certificate than the box's"
                )
                continue
            try:
                signature = base64.b64decode(str(checkpoint.get("signature", "")), validate=True)
                if not isinstance(public_key, rsa.RSAPublicKey):
                    raise InvalidSignature
                public_key.verify(signature, signed_bytes(checkpoint), padding.PKCS1v15(), hashes.SHA256())
            except (InvalidSignature, ValueError):
                problems.append(
                    f"checkpoint line {n} (record {seq}): the signature does not hold (it was forged or edited)"
                )
                continue
            if seq > last_seq:
                last_seq, last_at = seq, str(checkpoint.get("at"))
            found = db.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
            if found is None:
                if seq > end:
                    continue  # reported once below, as a cut tail
                problems.append(f"record {seq}, checkpointed at line {n}, is missing from the trail")
            elif found[0] != head:
                problems.append(
                    f"record {seq} is not the one checkpointed at line {n} (it or one before was rewritten)"
                )
            else:
                good += 1
        if last_seq > end:
            problems.append(
                f"the trail ends at record {end} but record {last_seq} was checkpointed at {last_at}: "
                f"records {end + 1} to {last_seq} at least were removed (a truncated tail)"
            )
        return CheckpointReport(good, last_seq, problems)
    finally:
        db.close()


def check_on_open(trail_head: int, db: Any, last: dict[str, Any] | None) -> str | None:
    """At start: does the trail still hold the last checkpointed head? A problem to log, or None."""
    if last is None or not isinstance(last.get("seq"), int):
        return None
    seq = int(last["seq"])
    if trail_head < seq:
        return f"the audit trail ends at record {trail_head}, before its last checkpoint (record {seq})"
    found = db.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
    if found is None or found[0] != last.get("hash"):
        return f"audit record {seq} is not the one last checkpointed"
    return None
