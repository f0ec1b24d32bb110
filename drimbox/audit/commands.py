"""`drimbox audit export` and `drimbox audit verify`: read the trail of a box (it may be running: WAL readers)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from drimbox.audit.trail import audit_path, iso, read_records, verify
from drimbox.config import ConfigError, load_settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `audit export` and `audit verify` on the drimbox command line."""
    p = sub.add_parser("audit", help="export or verify the box's audit trail")
    actions = p.add_subparsers(dest="audit_command", required=True)
    export = actions.add_parser("export", help="the records as JSON lines on stdout")
    export.add_argument("--since", type=_instant, help="first instant included (ISO 8601; no zone = UTC)")
    export.add_argument("--until", type=_instant, help="first instant excluded (ISO 8601; no zone = UTC)")
    check = actions.add_parser("verify", help="recompute the hash chain; exit 1 naming the first broken record")
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


def _trail(args: argparse.Namespace) -> Path:
    path = audit_path(load_settings(args.config))
    if not path.is_file():
        raise ConfigError(f"audit.path: no audit trail at {path}")
    return path


def cmd_export(args: argparse.Namespace) -> int:
    out = sys.stdout
    for record in read_records(_trail(args), since=args.since, until=args.until):
        out.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
    out.flush()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    count, broken = verify(_trail(args))
    if broken is not None:
        print(f"audit trail BROKEN at record {broken.seq}: {broken.reason} ({count} records before it hold)")
        return 1
    print(f"audit trail OK: {count} records, chain intact")
    return 0
