"""`drimbox check`: the configuration is valid and every peer it names answers."""

from __future__ import annotations

import asyncio

import aiohttp

from drimbox import tls
from drimbox.config import ConfigError, Settings
from drimbox.dimse.study_instances import echo


async def _http_reachable(url: str) -> str | None:
    try:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=tls.connector()) as session,
            session.get(url) as resp,
        ):
            if resp.status >= 500:
                return f"answers HTTP {resp.status}"
            return None
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"unreachable ({exc.__class__.__name__}: {exc})"


async def run_checks(settings: Settings) -> list[str]:
    """Print one line per check and return the problems found."""
    problems: list[str] = []

    def report(name: str, problem: str | None) -> None:
        print(f"{'ok  ' if problem is None else 'FAIL'} {name}{'' if problem is None else ': ' + problem}")
        if problem is not None:
            problems.append(f"{name}: {problem}")

    report("configuration", None)
    try:  # certificates readable, keys matching; peers below are then reached with the box's own client context
        tls.use(settings.tls)
        report("TLS certificates", None)
    except ConfigError as exc:
        report("TLS certificates", str(exc))
    if "source" in settings.box.roles:
        p = settings.pacs
        ok = await asyncio.to_thread(echo, p, settings.dicom.ae_title)
        report(
            f"PACS C-ECHO {p.ae_title}@{p.host}:{p.port}",
            None if ok else "no answer to C-ECHO (is the PACS up and does it know our AE title?)",
        )
        report(f"DMP registry {settings.dmp.url}/registry", await _http_reachable(settings.dmp.url + "/registry"))
        report(
            f"DMP repository {settings.dmp.url}/repository",
            await _http_reachable(settings.dmp.url + "/repository"),
        )
    return problems
