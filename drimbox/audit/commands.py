"""`drimbox audit export` and `drimbox audit verify`: read the trail of a box (it may be running: WAL readers)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from drimbox.audit.checkpoint import load_certificate, verify_checkpoints
from drimbox.audit.trail import audit_path, checkpoints_path, iso, read_records, verify
from drimbox.config import ConfigError, Settings, load_settings
from drimbox.state.credentials import structure_credentials


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `audit export` and `audit verify` on the drimbox command line."""
    p = sub.add_parser("audit", help="export or verify the box's audit trail")
    actions = p.add_subparsers(dest="audit_command", required=True)
    export = actions.add_parser("export", help="the records as JSON lines on stdout")
    export.add_argument("--since", type=_instant, help="first instant included (ISO 8601; no zone = UTC)")
    export.add_argument("--until", type=_instant, help="first instant excluded (ISO 8601; no zone = UTC)")
    check = actions.add_parser(
        "verify", help="recompute the hash chain and check the signed checkpoints; exit 1 naming what is wrong"
    )
    for q in (export, check):
        q.add_argument("-c", "--config", help="TOML configuration file of the box")
    export.set_defaults(func=cmd_export)
    check.set_defaults(func=cmd_verify)


def _instant(text: str) -> str:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return iso(when.timestamp())


def _trail(args: argparse.Namespace, settings: Settings | None = None) -> Path:
    settings = settings or load_settings(args.config)
    path = audit_path(settings)
    if not settings.state.url and not path.is_file():
        raise ConfigError(f"audit.path: no audit trail at {path}")
    return path


def cmd_export(args: argparse.Namespace) -> int:
    out = sys.stdout
    settings = load_settings(args.config)
    for record in read_records(_trail(args, settings), since=args.since, until=args.until, url=settings.state.url):
        out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
    out.flush()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    trail = _trail(args, settings)
    count, broken = verify(trail, url=settings.state.url)
    failed = broken is not None
    if broken is not None:
        print(f"audit trail BROKEN at record {broken.seq}: {broken.reason} ({count} records before it hold)")
    every = settings.audit.checkpoint_every
    if every <= 0:
        if not failed:
            print(f"audit trail OK: {count} records, chain intact (checkpoints off: a cut tail cannot be seen)")
        return 1 if failed else 0
    # The box's own certificate is the trust anchor, never one the checkpoint file could bring along.
    cert = load_certificate(structure_credentials(settings)[1])
    report = verify_checkpoints(trail, checkpoints_path(settings), cert, every, url=settings.state.url)
    for problem in report.problems:
        print(f"audit checkpoints BROKEN: {problem}")
    if failed or report.problems:
        return 1
    print(f"audit trail OK: {count} records, chain intact; {report.count} signed checkpoints hold"
          f" (the last at record {report.last_seq})")  # fmt: skip
    return 0
