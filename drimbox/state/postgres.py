"""PostgreSQL behind the store seam: a psycopg 3 connection that takes `?` placeholders and gives rows by name."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg

from drimbox.state.sql import POSTGRES, postgres_query

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class Row(tuple[Any, ...]):
    """A result row readable as row[0] and row["name"], like sqlite3.Row."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row._names = names
        return row

    return make


class PgConnection:
    """One psycopg connection in autocommit mode: a store's BEGIN … COMMIT are its own, as with SQLite."""

    dialect = POSTGRES

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        if not parameters:
            return self.raw.execute(postgres_query(sql) if sql.lstrip().upper().startswith("BEGIN") else sql)
        return self.raw.execute(postgres_query(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any:
        cur = self.raw.cursor()
        cur.executemany(postgres_query(sql), [tuple(p) for p in parameters])
        return cur

    @property
    def broken(self) -> bool:
        return bool(self.raw.closed or self.raw.broken)

    def close(self) -> None:
        self.raw.close()


def connect(url: str, schema: str) -> PgConnection:
    """A connection whose unqualified names are the store's own schema (several stores share one database)."""
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"not a schema name: {schema!r}")
    raw = psycopg.connect(url, autocommit=True, row_factory=_row_factory, connect_timeout=10)
    raw.execute(f"SET search_path TO {schema}")
    return PgConnection(raw)


def is_disconnect(exc: BaseException, conn: PgConnection) -> bool:
    """The server went away (restart, failover): reconnecting is the cure, not a retry of the same connection."""
    return isinstance(exc, psycopg.OperationalError) and conn.broken
