"""A throw-away PostgreSQL server from Debian's binaries (tests and perf): initdb in a temporary directory, loopback."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(os.environ.get("DRIMBOX_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PostgresMissing(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root (tests often run as root in containers): run it as `postgres`.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PostgresServer:
    directory: Path
    port: int
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str) -> str:
        """The same database through the Unix socket (`?host=/socket/dir`)."""
        return f"postgresql://postgres@/{database}?host={self.directory}&port={self.port}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            [str(BIN / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, self.url(database)],
            check=True, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return out.stdout.strip()

    def create_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def _ctl(self, *args: str) -> None:
        subprocess.run(_as_postgres([str(BIN / "pg_ctl"), "-D", str(self.directory / "data"), *args]),
                       check=True, capture_output=True, timeout=60)  # fmt: skip

    def start(self) -> PostgresServer:
        # fsync on, as in production: the latency figures must include durable commits.
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.directory} -c fsync=on -c max_connections=300"
        self._ctl("start", "-w", "-t", "30", "-l", str(self.directory / "server.log"), "-o", options)
        return self

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-w", "-m", mode)

    def restart(self) -> None:
        """Stop and start again on the same port (clients' connections break: they must reconnect)."""
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop the server (at once) and delete its directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """A new cluster in a temporary directory, listening on 127.0.0.1 and a free port; `remove()` when done."""
    if not (BIN / "initdb").exists():
        raise PostgresMissing(f"PostgreSQL binaries not found in {BIN} (Debian package postgresql-15)")
    # Not under pytest's basetemp (mode 700, root's): the postgres user must be able to reach the directory.
    directory = Path(tempfile.mkdtemp(prefix="drimbox-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    server = PostgresServer(directory, _free_port())
    try:
        subprocess.run(_as_postgres([str(BIN / "initdb"), "-D", str(directory / "data"), "-U", "postgres",
                                     "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]),
                       check=True, capture_output=True, timeout=120)  # fmt: skip
        server.start()
    except Exception:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return server
