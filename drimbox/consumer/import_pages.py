"""Server-rendered import pages (no script): the progress of a batch of imports, refreshed by a meta tag."""

from __future__ import annotations

from typing import Any

from drimbox.consumer.pages import e, page
from drimbox.i18n import Messages

REFRESH_SECONDS = 2
ACTIVE = ("queued", "running")  # the importer's states of a job not yet ended


def safe_back(url: str) -> str:
    """The list to go back to, only ever one of this box's exam lists (never a redirect elsewhere)."""
    return url if url.startswith("/conso/patients/") and "//" not in url and "\\" not in url else ""


def status_page(m: Messages, jobs: list[dict[str, Any]], back: str) -> str:
    """Each job's state and counts; the page reloads itself while any job is still queued or running."""
    rows = []
    for job in jobs:
        progress = m("import.progress", stored=job["stored"], skipped=job["skipped"], failed=job["failed"],
                     total=job["total"])  # fmt: skip
        state = m(f"import.state.{job['state']}")
        target = (
            f' <span class="muted">{e(m("import.target", target=job["target"]))}</span>' if job.get("target") else ""
        )
        errors = "".join(f"<li><code>{e(x)}</code></li>" for x in job["errors"][:5])
        css = "problem" if job["state"] in ("failed", "interrupted") else ("new" if job["state"] == "done" else "")
        rows.append(f'<li data-state="{e(job["state"])}"><span class="{css}">{e(state)}</span>{target} — {e(progress)}'
                    f"{f'<ul>{errors}</ul>' if errors else ''}</li>")  # fmt: skip
    running = any(job["state"] in ACTIVE for job in jobs)
    refresh = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">' if running else ""
    note = f'<p class="muted">{e(m("import.refreshing"))}</p>' if running else ""
    link = f'<p><a href="{e(back)}">{e(m("import.back"))}</a></p>' if back else ""
    title = m("import.status_title")
    return page(title, f"{refresh}<h1>{e(title)}</h1><ul>{''.join(rows)}</ul>{note}{link}")
