"""C-STORE throughput into the Native archive SCP against dcmtk storescp, same study, same run: `python perf/native_store.py`.

storescp answers success once a file is in the page cache; the archive only once file, directory
entry and index are fsynced. `storescp_synced` adds the time of one sync() after storescp's run:
what the same data takes to reach the disk, for a like-for-like reading of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.studies import exam_c_study, write_study

AE_TITLE = "DRIMBOX"
# dcmtk leaves Nagle on unless told: without this every tool crawls at ~11 MB/s on loopback.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SCP exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def _storescu(port: int, files: list[Path]) -> float:
    """Seconds storescu takes to send every file over one association (it stops at the first failure)."""
    started = time.perf_counter()
    proc = subprocess.run(
        ["storescu", "-aec", AE_TITLE, "127.0.0.1", str(port), *map(str, files)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_storescp(work: Path, files: list[Path]) -> tuple[float, float]:
    """Seconds until storescu is done, and until the received files are also on disk (sync)."""
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "-aet", AE_TITLE, "-pdu", "131072", "+B", "-od", str(out), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        elapsed = _storescu(port, files)
        # storescp acknowledges from the page cache; what it would take to have the data on disk too.
        started = time.perf_counter()
        os.sync()
        return elapsed, elapsed + time.perf_counter() - started
    finally:
        _stop(proc)


def run_drimbox(work: Path, files: list[Path], fast: bool) -> float:
    var = work / ("box-fast" if fast else "box-plain")
    env = {
        **os.environ,
        "DRIMBOX_BOX__VAR_DIR": str(var),
        "DRIMBOX_DICOM__PORT": "0",
        "DRIMBOX_BOX__LOG_LEVEL": "WARNING",
        # storescu calls as STORESCU from loopback: the archive takes C-STOREs from configured peers only.
        "DRIMBOX_DICOM__STORE_PEERS": "STORESCU@127.0.0.1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "drimbox.archive", *([] if fast else ["--plain-transport"])],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "READY":
            raise RuntimeError(f"archive SCP did not start: {line}")
        port = int(line[1])
        _wait_port(port, proc)
        return _storescu(port, files)
    finally:
        _stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each 16-bit image")
    parser.add_argument("--rounds", type=int, default=3, help="each SCP is measured this many times; best kept")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        print("dcmtk storescu/storescp not found: apt-get install dcmtk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="native-store-") as tmp:
        work = Path(tmp)
        files = write_study(work / "study", exam_c_study(args.instances, rows=args.size, columns=args.size))
        total = sum(f.stat().st_size for f in files)
        print(f"{len(files)} instances, {total / 1e6:.1f} MB; best of {args.rounds} rounds", flush=True)
        times: dict[str, list[float]] = {"storescp": [], "storescp_synced": [], "drimbox": [], "drimbox_plain": []}
        for round_no in range(args.rounds):
            for name in ("storescp", "drimbox", "drimbox_plain"):
                round_dir = work / f"{name}-{round_no}"
                round_dir.mkdir()
                # Start each run with no dirty pages left by the previous one (its writeback would
                # otherwise be charged to the next run).
                os.sync()
                if name == "storescp":
                    acked, synced = run_storescp(round_dir, files)
                    times["storescp"].append(acked)
                    times["storescp_synced"].append(synced)
                else:
                    times[name].append(run_drimbox(round_dir, files, fast=name == "drimbox"))
                shutil.rmtree(round_dir)
                shown = ["storescp", "storescp_synced"] if name == "storescp" else [name]
                for key in shown:
                    print(f"  round {round_no + 1}: {key:16s} {total / times[key][-1] / 1e6:7.1f} MB/s", flush=True)
        best = {name: min(values) for name, values in times.items()}
        figures = {
            "instances": len(files),
            "bytes": total,
            "seconds": best,
            "mb_per_s": {name: total / t / 1e6 for name, t in best.items()},
            "ratio_drimbox_to_storescp": best["storescp"] / best["drimbox"],
            "ratio_drimbox_to_storescp_synced": best["storescp_synced"] / best["drimbox"],
            "ratio_plain_to_storescp": best["storescp"] / best["drimbox_plain"],
        }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
