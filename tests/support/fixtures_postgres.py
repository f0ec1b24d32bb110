"""Pytest fixtures for a real PostgreSQL (Debian's postgresql 15): one server per session, a fresh database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from drimbox.demo.samples.postgres import PostgresMissing, PostgresServer, start_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server listening on 127.0.0.1 and a free port (socket in its temporary directory), run as the
    `postgres` user when the tests run as root; stopped and removed at session end, also after a failure."""
    try:
        server = start_postgres()
    except PostgresMissing as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database of the session's server for this test: its URL."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest) -> str:
    """Both backends: "" (SQLite files, the default) and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("postgres_url"))
