"""The operator's page (/operator): its login, publications and retries, the cache, peers' health, certificates."""

from __future__ import annotations

from typing import NamedTuple


class Reloaded(NamedTuple):
    """One thing a reload (SIGHUP, the page's button) read again: its name, and the error that kept the old one."""

    what: str
    error: str | None
