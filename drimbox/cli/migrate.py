"""`drimbox migrate`: bring every store of the box's roles to its latest schema step, and say what it applied."""

from __future__ import annotations

import argparse
from pathlib import Path

from drimbox.config import Settings
from drimbox.state.db import Database
from drimbox.state.migrations import Step


def stores(settings: Settings) -> list[tuple[str, Path, list[Step]]]:
    """(store, SQLite file, migrations) of each store the configured roles use."""
    from drimbox.auth.session import MIGRATIONS as AUTH

    var = settings.var_path
    found: list[tuple[str, Path, list[Step]]] = [("auth", var / "auth.sqlite", AUTH)]
    if "source" in settings.box.roles:
        from drimbox.source.outbox import MIGRATIONS as OUTBOX

        found.append(("outbox", var / "drimbox.sqlite", OUTBOX))
    if "consumer" in settings.box.roles:
        from drimbox.consumer.access_store import MIGRATIONS as ACCESS
        from drimbox.consumer.importer import MIGRATIONS as IMPORTS
        from drimbox.consumer.store import MIGRATIONS as CONSUMER
        from drimbox.consumer.xdm_import import MIGRATIONS as XDM

        consumer = var / "consumer"
        found += [("consumer", consumer / "consumer.sqlite", CONSUMER), ("access", consumer / "access.sqlite", ACCESS),
                  ("xdm", consumer / "xdm.sqlite", XDM), ("imports", consumer / "imports.sqlite", IMPORTS)]  # fmt: skip
    return found


def _audit(settings: Settings) -> list[str]:
    from drimbox.audit.store import MIGRATIONS, migrate
    from drimbox.audit.trail import audit_path

    applied = migrate(audit_path(settings), settings.state.url)
    done = f"applied {', '.join(map(str, applied))}" if applied else "up to date"
    return [f"audit: {done} (version {len(MIGRATIONS)})"]


def run(settings: Settings) -> list[str]:
    """Migrate each store (what the box also does at start); one line per store saying what was applied."""
    lines = []
    for name, path, steps in stores(settings):
        db = Database(path, steps, url=settings.state.url, store=name)
        try:
            applied = db.applied
        finally:
            db.close()
        done = f"applied {', '.join(map(str, applied))}" if applied else "up to date"
        lines.append(f"{name}: {done} (version {len(steps)})")
    if settings.audit.enabled:
        lines += _audit(settings)
    return lines


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    where = "PostgreSQL" if settings.state.url else f"SQLite under {settings.var_path}"
    print(f"state: {where}")
    for line in run(settings):
        print(line)
    return 0
