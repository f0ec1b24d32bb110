"""Peers' health for the operator page: PACS C-ECHO, DMP, Pro Santé Connect discovery, whitelist age; each bounded."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import aiohttp

from drimbox import tls
from drimbox.auth.whitelist import AnsWhitelist
from drimbox.config import Settings
from drimbox.dimse.study_instances import echo

# Every check answers within this: the page loads in a few seconds even when a peer is down or silent.
TIMEOUT = 3.0

OK, DOWN, WARN, NONE = "ok", "down", "warn", "none"


@dataclass(frozen=True)
class PeerHealth:
    """One peer as the page shows it: `peer` (an i18n key's last part), where, state, latency and the why."""

    peer: str
    target: str
    state: str  # OK, DOWN, WARN (answers, but not as it should) or NONE (not used by this box)
    latency_ms: float | None = None
    detail: str = ""
    # The whitelist's (seconds): since its last verified fetch, until the next one; hosts it lists.
    age_s: float | None = None
    next_s: float | None = None
    entries: int | None = None


async def _timed(peer: str, target: str, check: Awaitable[str | None]) -> PeerHealth:
    """Run `check` (None when healthy, else why not) within TIMEOUT, with its latency."""
    started = time.perf_counter()
    try:
        problem = await asyncio.wait_for(check, TIMEOUT)
    except TimeoutError:
        problem = f"no answer within {TIMEOUT:g} s"
    except Exception as exc:  # whatever a peer does, the page shows it rather than fail
        problem = f"{exc.__class__.__name__}: {exc}"[:300]
    latency = (time.perf_counter() - started) * 1000
    return PeerHealth(peer, target, OK if problem is None else DOWN, round(latency, 1), problem or "")


async def _echo(settings: Settings) -> str | None:
    pacs = dataclasses.replace(settings.pacs, timeout=min(settings.pacs.timeout, TIMEOUT))
    # pynetdicom-free, but blocking: on a thread, never on the loop.
    answered = await asyncio.to_thread(echo, pacs, settings.dicom.ae_title)
    return None if answered else "no success answer to C-ECHO (is the PACS up, does it know our AE title?)"


async def _http(session: aiohttp.ClientSession, url: str, want_json_key: str = "") -> str | None:
    async with session.get(url, allow_redirects=False) as resp:
        if resp.status >= 500:
            return f"HTTP {resp.status}"
        if want_json_key:
            if resp.status != 200:
                return f"HTTP {resp.status}"
            body = await resp.json(content_type=None)
            if not isinstance(body, dict) or want_json_key not in body:
                return f"no {want_json_key!r} in the answer"
        return None


def _whitelist(whitelists: Sequence[AnsWhitelist], url: str) -> PeerHealth:
    if not whitelists:
        return PeerHealth("whitelist", url, NONE)
    w = whitelists[0]
    age, next_in, entries = w.age()
    if age is None:
        return PeerHealth("whitelist", url, DOWN, detail=w.last_error or "never fetched yet")
    stale = age > w.settings.refresh_interval + w.settings.max_stale
    state = DOWN if stale else WARN if w.last_error else OK
    return PeerHealth("whitelist", url, state, detail=w.last_error, age_s=round(age), next_s=round(next_in),
                      entries=entries)  # fmt: skip


async def check_peers(settings: Settings, whitelists: Sequence[AnsWhitelist]) -> list[PeerHealth]:
    """Every peer this box talks to, checked at once (concurrently); those it does not use marked NONE."""
    s = settings
    pacs_target = f"{s.pacs.ae_title}@{s.pacs.host}:{s.pacs.port}"
    discovery = s.psc.issuer.rstrip("/") + "/.well-known/openid-configuration"
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, connector=tls.connector()) as session:
        checks: list[Awaitable[PeerHealth]] = [
            _timed("dmp", s.dmp.url + "/registry", _http(session, s.dmp.url + "/registry")),
            _timed("psc", discovery, _http(session, discovery, "issuer")),
        ]
        if "source" in s.box.roles and s.box.profile == "proxy":
            checks.insert(0, _timed("pacs", pacs_target, _echo(s)))
        if s.patient.enabled and "source" in s.box.roles:  # the patients' login (Mon Espace Santé)
            patients = s.patient.issuer.rstrip("/") + "/.well-known/openid-configuration"
            checks.append(_timed("patient_idp", patients, _http(session, patients, "issuer")))
        found = list(await asyncio.gather(*checks))
    if not ("source" in s.box.roles and s.box.profile == "proxy"):
        found.insert(0, PeerHealth("pacs", pacs_target, NONE))
    found.append(_whitelist(whitelists, s.whitelist.url))
    return found
