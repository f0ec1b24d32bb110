"""Source side of DRIM-M: /dicom-web for a box session, or a PSC bearer token plus a live KOS naming the study."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import RecentAccesses, audit_request
from drimbox.auth.professional import Professional
from drimbox.auth.tokens import TokenError
from drimbox.manifest import KosError, parse_kos
from drimbox.state.outbox import Outbox

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KOS_HEADER = "KOS-SOPInstanceUID"
_KOS_CACHE = 512
_UID_CHARS = frozenset("0123456789.")


class Gate(Protocol):
    """What access asks of the box's login (auth.AuthGate fits)."""

    async def current_professional(self, request: web.Request) -> Professional | None: ...


class Tokens(Protocol):
    """What access asks of the token checker (auth.BearerTokenChecker fits)."""

    async def check_request(self, request: web.Request) -> Professional: ...


@dataclass(frozen=True)
class _Evidence:
    study_uid: str
    series: frozenset[str]
    instances: frozenset[str]
    patient: str = ""  # for the audit trail only (never logged)
    patient_name: str = ""


@dataclass
class _Seen:
    """What a check learnt about a request, whatever its outcome: the audit record's who and what."""

    professional: str | None = None
    via: str | None = None  # "session" (this box's own login) or "token" (another box)
    kos: str | None = None
    evidence: _Evidence | None = None


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def response(self) -> web.Response:
        return web.json_response({"error": self.message, "reason": self.reason, "status": self.status},
                                 status=self.status)


class SourceAccess:
    """Checks every request to the source's DICOMweb routes; wrap them with `protect`.

    Decisions (see `SourceAccess.check`):
    - a logged-in session of this box (its own viewer) passes: the session already is a PSC login;
    - otherwise `Authorization: Bearer` (checked by auth.BearerTokenChecker) AND `KOS-SOPInstanceUID` naming a KOS
      this source published and still has `published` (a `replaced` or `withdrawn` one answers 403 "withdrawn");
    - the URL's study must be the KOS's; a series URL must name a series of its evidence, an instance URL an
      instance of it. A study-scoped QIDO (`/studies/{s}/series`, ...) is allowed like a study retrieve (the KOS
      entitles the study); QIDO at the root (`/studies`, `/series`, `/instances`) is refused with 403
      "search_not_allowed": a token must not let a consumer search the whole PACS.
    """

    def __init__(
        self, outbox: Outbox, kos_dir: Path, tokens: Tokens, *, gate: Gate | None = None,
        enabled: bool = True,
    ) -> None:
        self.outbox = outbox
        self.kos_dir = kos_dir
        self.tokens = tokens
        self.gate = gate
        self.enabled = enabled
        self._evidence: OrderedDict[str, _Evidence] = OrderedDict()
        self._recent = RecentAccesses()

    def protect(self, routes: list[web.RouteDef]) -> list[web.RouteDef]:
        """The same routes, each handler checked first (CORS preflights pass: they carry no credentials)."""
        if not self.enabled:
            return routes
        return [r if r.method == "OPTIONS" else web.RouteDef(r.method, r.path, self._wrap(r.handler), r.kwargs)
                for r in routes]  # fmt: skip

    def _wrap(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            seen = _Seen()
            try:
                await self._check(request, seen)
            except Refused as exc:
                log.info("DICOMweb access refused: %s %s → %d %s", request.method, request.path, exc.status, exc.reason)
                await self._audit(request, seen, REFUSED, status=exc.status, reason=exc.reason)
                return exc.response()
            except TokenError as exc:
                log.info("DICOMweb access refused: %s %s → token %s", request.method, request.path, exc.reason)
                await self._audit(request, seen, REFUSED, status=exc.status, reason=f"token_{exc.reason}")
                return exc.response()
            # Audited before it is served: once per person, KOS and series a while, never once per frame.
            if self._recent.first((seen.professional, seen.kos, request.match_info.get("study"),
                                   request.match_info.get("series"))):  # fmt: skip
                await self._audit(request, seen, SUCCESS)
            response: web.StreamResponse = await handler(request)
            return response

        return checked

    async def _audit(self, request: web.Request, seen: _Seen, outcome: str, **detail: str | int | None) -> None:
        study = request.match_info.get("study")
        if seen.via == "session" and study is not None:
            # This box's own viewer names no KOS: the study's published one says whose images these are.
            published = await self.outbox.current_published(study)
            if published is not None and published.kos_uid:
                try:
                    seen.evidence = await self._kos(published.kos_uid)
                except Refused:
                    pass
        ev = seen.evidence
        await audit_request(
            request, "dicomweb.retrieve" if request.method == "GET" else f"dicomweb.{request.method.lower()}",
            outcome, professional=seen.professional, patient=ev.patient if ev else None,
            patient_name=ev.patient_name if ev else None, study=study, kos=seen.kos,
            path=request.path, via=seen.via, **detail,
        )  # fmt: skip

    async def check(self, request: web.Request) -> None:
        """Return when the request may proceed; raise Refused or TokenError (each has `.response()`)."""
        await self._check(request, _Seen())

    async def _check(self, request: web.Request, seen: _Seen) -> None:
        """check(), noting in `seen` who asked with which KOS, for the audit trail."""
        gate = self.gate
        if gate is not None:
            professional = await gate.current_professional(request)
            if professional is not None:
                seen.professional, seen.via = professional.id, "session"
                return
        seen.via = "token"
        seen.professional = (await self.tokens.check_request(request)).id
        kos_uid = request.headers.get(KOS_HEADER, "").strip()
        if not kos_uid:
            raise Refused(403, "kos_missing", f"the {KOS_HEADER} header naming the entitling KOS is required")
        if len(kos_uid) > 64 or not set(kos_uid) <= _UID_CHARS:
            raise Refused(403, "kos_invalid", f"{KOS_HEADER} is not a DICOM UID")
        seen.kos = kos_uid
        info = request.match_info
        study = info.get("study")
        if study is None:
            raise Refused(403, "search_not_allowed", "a KOS entitles one study: search within /studies/{study}")
        publication = next((p for p in await self.outbox.search(study_uid=study) if p.kos_uid == kos_uid), None)
        if publication is None:
            raise Refused(403, "kos_not_for_study", "this source published no such KOS for this study")
        if publication.state in ("withdrawn", "replaced"):
            raise Refused(403, "withdrawn", f"this KOS was {publication.state}: ask the DMP for the current one")
        if publication.state != "published":
            raise Refused(403, "not_published", "this KOS is not published")
        evidence = seen.evidence = await self._kos(kos_uid)
        if evidence.study_uid != study:
            raise Refused(403, "kos_not_for_study", "the KOS references another study")
        series = info.get("series")
        if series is not None and series not in evidence.series:
            raise Refused(403, "series_not_in_kos", "the KOS does not reference this series")
        instance = info.get("instance")
        if instance is not None and instance not in evidence.instances:
            raise Refused(403, "instance_not_in_kos", "the KOS does not reference this instance")

    async def _kos(self, kos_uid: str) -> _Evidence:
        """The KOS's evidence, read once from the stored KOS (a KOS never changes: a new one has a new UID)."""
        cached = self._evidence.get(kos_uid)
        if cached is not None:
            self._evidence.move_to_end(kos_uid)
            return cached
        path = self.kos_dir / f"{kos_uid}.dcm"
        try:
            kos = await asyncio.to_thread(lambda: parse_kos(path.read_bytes()))
        except (OSError, KosError):
            log.warning("DICOMweb access: the stored KOS %s cannot be read", kos_uid)
            raise Refused(403, "kos_unreadable", "this source cannot read the KOS it published") from None
        evidence = _Evidence(kos.study_uid, frozenset(s.series_uid for s in kos.series),
                             frozenset(kos.instance_uids()), kos.patient_id, kos.patient_name)  # fmt: skip
        self._evidence[kos_uid] = evidence
        while len(self._evidence) > _KOS_CACHE:
            self._evidence.popitem(last=False)
        return evidence


def audit_open_access(routes: list[web.RouteDef]) -> list[web.RouteDef]:
    """The routes of a source whose /dicom-web is open (`[auth] protect_dicomweb = false`): traced all the same."""
    recent = RecentAccesses()

    def wrap(handler: Handler) -> Handler:
        async def traced(request: web.Request) -> web.StreamResponse:
            study, series = request.match_info.get("study"), request.match_info.get("series")
            if recent.first((request.remote, study, series)):
                await audit_request(request, "dicomweb.retrieve" if request.method == "GET"
                                    else f"dicomweb.{request.method.lower()}", SUCCESS, study=study,
                                    path=request.path, via="open")  # fmt: skip
            response: web.StreamResponse = await handler(request)
            return response

        return traced

    return [r if r.method == "OPTIONS" else web.RouteDef(r.method, r.path, wrap(r.handler), r.kwargs)
            for r in routes]  # fmt: skip
