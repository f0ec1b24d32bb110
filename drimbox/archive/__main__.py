"""`python -m drimbox.archive [-c FILE]`: the archive SCP alone ([dicom] and [box] var_dir), until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from drimbox.archive.archive import Archive
from drimbox.archive.scp import ArchiveScp
from drimbox.config import ConfigError, load_settings
from drimbox.dimse.peers import own_peer, store_peers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drimbox.archive", description=__doc__)
    parser.add_argument("-c", "--config", help="drimbox TOML configuration (DRIMBOX_* variables apply too)")
    parser.add_argument(
        "--plain-transport", action="store_true", help="pynetdicom's own receive loop (for comparison in perf/)"
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.box.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    archive = Archive.open(settings.shared_path)
    # The same rule as `drimbox serve`: only the [dicom] store_peers may store (empty: nobody); the box's own AE
    # from its own host may query.
    storers = store_peers(settings)
    scp = ArchiveScp(settings.dicom, archive, fast_transport=not args.plain_transport,
                     peers=storers | own_peer(settings.dicom), store_peers=storers)  # fmt: skip
    try:
        port = scp.start()
        # Scripts and tests that asked for port 0 read the real one here.
        print(f"READY {port}", flush=True)
        stop.wait()
    finally:
        scp.stop()
        archive.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
