"""The `drimbox` command: serve, sim, check, publish, link, xdm, demo, audit."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Coroutine
from typing import Any

from drimbox.cli.signals import reload_on_sighup, until_signalled
from drimbox.config import ConfigError, Settings, load_settings
from drimbox.demo.options import add_demo_arguments


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # uvloop is a dependency; this keeps odd platforms working
        return asyncio.run(coro)


class JsonFormatter(logging.Formatter):
    """[box] log_format = "json": one JSON object a line (time, level, logger, message; exception when any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


JsonFormatter.converter = time.gmtime


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    # pynetdicom logs every PDU at INFO; keep the box's own log readable.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # signxml logs at DEBUG each canonicalized VIHF it signs or checks, patient INS included: never, at any level.
    logging.getLogger("signxml").setLevel(logging.INFO)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings.box.log_level, settings.box.log_format)
    count = settings.http.worker_count()
    if count > 1:  # [http] workers: a supervisor and its serving processes (drimbox.cli.workers)
        from drimbox.cli.workers import supervise

        return supervise(settings, count, _run)
    from drimbox.app import serve

    _run(serve(settings, until_signalled, reload_on=reload_on_sighup))
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    if getattr(args, "sim_command", None) == "certs":
        from drimbox.sim.certs import main as certs_main

        return certs_main(args.out, args.hosts)
    from drimbox.sim.server import run_sim

    settings = _settings(args)
    _setup_logging(settings.box.log_level, settings.box.log_format)
    _run(run_sim(settings, until_signalled))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from drimbox.cli.check import run_checks

    settings = _settings(args)
    _setup_logging("WARNING")
    problems = _run(run_checks(settings))
    return 1 if problems else 0


def cmd_publish(args: argparse.Namespace) -> int:
    from drimbox.source.outbox import Outbox

    settings = _settings(args)
    outbox = Outbox(settings.var_path / "drimbox.sqlite", url=settings.state.url)
    try:
        n = outbox.requeue(args.accession)
    finally:
        outbox.close()
    print(f"{n} publication(s) of accession {args.accession} queued again")
    return 0 if n else 1


def cmd_migrate(args: argparse.Namespace) -> int:
    from drimbox.cli.migrate import cmd_migrate as migrate

    return migrate(args, _settings(args))


def cmd_link(args: argparse.Namespace) -> int:
    from drimbox.auth.links import ReportLinks
    from drimbox.dimse.uid import is_lenient_uid

    settings = _settings(args)
    if not is_lenient_uid(args.study):  # lenient: the study as the PACS holds it
        print("drimbox link: --study must be a DICOM UID (digits and dots, at most 64)", file=sys.stderr)
        return 2
    link = ReportLinks(settings.auth, settings.box.public_url).issue(args.study, args.accession, args.cda)
    print(link.url)
    return 0


def cmd_xdm(args: argparse.Namespace) -> int:
    from pathlib import Path

    from drimbox.dimse.uid import is_lenient_uid
    from drimbox.source.outbox import Outbox
    from drimbox.source.xdm_export import ExportError, export_study

    settings = _settings(args)
    _setup_logging("WARNING")
    if not is_lenient_uid(args.study):  # lenient: the study as the PACS holds it
        print("drimbox xdm export: --study must be a DICOM UID (digits and dots, at most 64)", file=sys.stderr)
        return 2
    outbox = Outbox(settings.var_path / "drimbox.sqlite", url=settings.state.url)
    try:
        package = _run(export_study(settings, outbox, args.study))
    except ExportError as exc:
        print(f"drimbox xdm export: {exc}", file=sys.stderr)
        return 1
    finally:
        outbox.close()
    out = Path(args.out or f"XDM_{args.study}.zip")
    out.write_bytes(package)
    print(f"{out}: {len(package)} bytes")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from drimbox.demo.main import run_demo

    _setup_logging("WARNING")
    return int(run_demo(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drimbox", description="An open-source DRIMbox (DRIM-M imaging gateway).")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", help="TOML configuration file (defaults apply without one)")
        return p

    with_config(sub.add_parser("serve", help="run the box's roles until SIGTERM/SIGINT")).set_defaults(func=cmd_serve)
    p = with_config(sub.add_parser("sim", help="run the national-services simulator (DMP, PSC, whitelist)"))
    p.set_defaults(func=cmd_sim)
    sim_sub = p.add_subparsers(dest="sim_command")
    certs = sim_sub.add_parser("certs", help="write a test CA and certificates for the simulator and two boxes")
    certs.add_argument("--out", required=True, help="directory to write the PEM files to")
    certs.add_argument("--hosts", default="127.0.0.1,localhost", help="names and addresses the servers answer at")
    with_config(sub.add_parser("check", help="check the configuration and every peer it names")).set_defaults(
        func=cmd_check
    )
    p = with_config(sub.add_parser("publish", help="queue the publication of an accession number again"))
    p.add_argument("--accession", required=True)
    p.set_defaults(func=cmd_publish)
    p = with_config(sub.add_parser("migrate", help="bring the stores' schemas to this release (also done at start)"))
    p.set_defaults(func=cmd_migrate)
    p = with_config(sub.add_parser("link", help="print the report link (signed when [auth] report_link_keys is set)"))
    p.add_argument("--study", required=True, help="Study Instance UID")
    p.add_argument("--accession", default="", help="accession number")
    p.add_argument("--cda", default="", help="the report's CDA document id")
    p.set_defaults(func=cmd_link)
    p = sub.add_parser("xdm", help="IHE XDM packages of published exams")
    xdm_sub = p.add_subparsers(dest="xdm_command", required=True)
    export = with_config(xdm_sub.add_parser("export", help="write the XDM ZIP of a study's live KOS"))
    export.add_argument("--study", required=True, help="Study Instance UID")
    export.add_argument("--out", help="file to write (default XDM_<study>.zip in the current directory)")
    export.set_defaults(func=cmd_xdm)
    p = sub.add_parser("demo", help="the whole mesh on loopback: simulator, Orthanc, source and consumer boxes")
    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo)
    from drimbox.audit.commands import add_parser as add_audit_parser

    add_audit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"drimbox: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
