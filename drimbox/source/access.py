"""Source side of DRIM-M: who may read /dicom-web, and which part of which study (the scope every answer is cut to)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiohttp import web

from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.audit.request import RecentAccesses, audit_request
from drimbox.auth.operator import OPERATOR, is_operator
from drimbox.auth.professional import Professional
from drimbox.auth.session import Session
from drimbox.auth.tokens import TokenError
from drimbox.dicomweb.routes import cors_headers
from drimbox.dicomweb.scope import Scope, serving
from drimbox.dimse.uid import is_lenient_uid
from drimbox.i18n import DEFAULT, Messages, catalogue
from drimbox.manifest import KosError, parse_kos
from drimbox.source.kos_store import read_kos
from drimbox.source.outbox import Outbox
from drimbox.xds.habilitation import ImagingMatrix

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KOS_HEADER = "KOS-SOPInstanceUID"
_KOS_CACHE = 512


class Gate(Protocol):
    """What access asks of the box's login (auth.AuthGate fits)."""

    async def current_session(self, request: web.Request) -> Session | None: ...


class Grants(Protocol):
    """What access asks of the record of opened report links (auth.session.SessionStore fits)."""

    async def granted(self, id_hash: str, study_uid: str) -> bool: ...


class Tokens(Protocol):
    """What access asks of the token checker (auth.BearerTokenChecker fits)."""

    async def check_request(self, request: web.Request) -> Professional: ...


@dataclass(frozen=True)
class _Evidence:
    study_uid: str
    series: Mapping[str, frozenset[str]]  # series → its instances, as the KOS lists them
    patient: str = ""  # for the audit trail only (never logged)
    patient_name: str = ""


@dataclass
class _Seen:
    """What a check learnt about a request, whatever its outcome: the audit record's who and what."""

    professional: str | None = None
    via: str | None = None  # "operator", "session" (this box's own login) or "token" (another box)
    kos: str | None = None
    evidence: _Evidence | None = None


class Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def response(self, request: web.Request | None = None) -> web.Response:
        """The JSON refusal: `error` in the requester's language (a person may read it in the viewer), `reason`
        the code programs act on, `detail` the English explanation for integrators."""
        m = Messages.of(request) if request is not None else Messages(DEFAULT)
        key = f"source.refused.{self.reason}"
        error = m(key) if key in catalogue(DEFAULT) else m("source.refused.other")
        return web.json_response({"error": error, "reason": self.reason, "status": self.status,
                                  "detail": self.message}, status=self.status)  # fmt: skip


class SourceAccess:
    """Checks every request to the source's DICOMweb routes; wrap them with `protect`.

    Decisions (see `SourceAccess.check`), each refusal a 403 JSON {"error", "reason"} in the audit trail:
    - the operator token (`[auth] operator_token`): everything, searches included (the RIS, the administrator);
    - a logged-in session of this box (its viewer): only a study whose report link this session opened
      (viewer_routes records the grant), and only while the study has a published KOS: that KOS's scope;
    - otherwise `Authorization: Bearer` (checked by auth.BearerTokenChecker) AND `KOS-SOPInstanceUID` naming a KOS
      this source published and still has `published` (a `replaced` or `withdrawn` one answers 403 "withdrawn");
    - a session or token of a professional the imaging habilitation matrix does not allow (secretaries, no RPPS
      profession; pharmacists by default): refused, "not_habilitated";
    - QIDO at the root (`/studies`, `/series`, `/instances`) is the operator's only: "search_not_allowed";
    - the URL's study must be the KOS's; a series URL must name a series of its evidence, an instance URL an
      instance of it. Everything else under the study is cut to the KOS's series and instances by the Scope this
      check leaves for dicomweb.scope.ScopedBackend (QIDO rows, metadata, retrieves, thumbnails: 404 outside).
    """

    def __init__(
        self,
        outbox: Outbox,
        kos_dir: Path,
        tokens: Tokens,
        *,
        gate: Gate | None = None,
        grants: Grants | None = None,
        operator_token: str = "",
        matrix: ImagingMatrix | None = None,
        enabled: bool = True,
        cors_origins: Sequence[str] = (),
    ) -> None:
        self.outbox = outbox
        self.kos_dir = kos_dir
        self.tokens = tokens
        self.gate = gate
        self.grants = grants
        self.operator_token = operator_token
        self.matrix = matrix or ImagingMatrix()
        self.enabled = enabled
        self.cors_origins = tuple(cors_origins)
        self._evidence: OrderedDict[str, _Evidence] = OrderedDict()
        # KOS being read: a viewer's first requests come together, and a 1300-slice KOS takes ~200 ms to parse.
        self._reading: dict[str, asyncio.Task[_Evidence]] = {}
        self._recent = RecentAccesses()

    def protect(self, routes: list[web.RouteDef]) -> list[web.RouteDef]:
        """The same routes, each handler checked first (CORS preflights pass: they carry no credentials)."""
        if not self.enabled:
            return routes
        return [r if r.method == "OPTIONS" else web.RouteDef(r.method, r.path, self._wrap(r.handler), r.kwargs)
                for r in routes]  # fmt: skip

    def _cors(self, request: web.Request, response: web.Response) -> web.Response:
        response.headers.update(cors_headers(self.cors_origins, request))
        return response

    def _wrap(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            seen = _Seen()
            try:
                scope = await self._check(request, seen)
            except Refused as exc:
                log.info("DICOMweb access refused: %s %s → %d %s", request.method, request.path, exc.status, exc.reason)
                await self._audit(request, seen, REFUSED, status=exc.status, reason=exc.reason)
                return self._cors(request, exc.response(request))
            except TokenError as exc:
                log.info("DICOMweb access refused: %s %s → token %s", request.method, request.path, exc.reason)
                await self._audit(request, seen, REFUSED, status=exc.status, reason=f"token_{exc.reason}")
                return self._cors(request, exc.response())
            # Audited before it is served: once per person, KOS and series a while, never once per frame.
            if self._recent.first((seen.professional, seen.kos, request.match_info.get("study"),
                                   request.match_info.get("series"))):  # fmt: skip
                await self._audit(request, seen, SUCCESS)
            with serving(scope):
                response: web.StreamResponse = await handler(request)
            return response

        return checked

    async def _audit(self, request: web.Request, seen: _Seen, outcome: str, **detail: str | int | None) -> None:
        study = request.match_info.get("study")
        if seen.evidence is None and study is not None:
            # No KOS read yet (a session, a refusal before the KOS): the study's own KOS says whose images these are.
            seen.evidence = await self._study_evidence(study)
        ev = seen.evidence
        patient = ev.patient if ev else None
        if patient is None and study is None:
            patient = request.query.get("PatientID") or None  # a search for a patient names them itself
        await audit_request(
            request, "dicomweb.retrieve" if request.method == "GET" else f"dicomweb.{request.method.lower()}",
            outcome, professional=seen.professional, patient=patient,
            patient_name=ev.patient_name if ev else None, study=study, kos=seen.kos,
            path=request.path, via=seen.via, **detail,
        )  # fmt: skip

    async def _study_evidence(self, study: str) -> _Evidence | None:
        """The evidence of the study's live KOS, else of its latest KOS whatever its state; None when it has none."""
        published = await self.outbox.current_published(study)
        kos_uids = [published.kos_uid] if published is not None and published.kos_uid else []
        if not kos_uids:
            kos_uids = [p.kos_uid for p in reversed(await self.outbox.search(study_uid=study)) if p.kos_uid][:1]
        for kos_uid in kos_uids:
            try:
                return await self._kos(kos_uid)
            except Refused:
                return None
        return None

    async def check(self, request: web.Request) -> Scope | None:
        """The scope the request may see (None: everything); raise Refused or TokenError (each has `.response()`)."""
        return await self._check(request, _Seen())

    async def _check(self, request: web.Request, seen: _Seen) -> Scope | None:
        """check(), noting in `seen` who asked with which KOS, for the audit trail."""
        if is_operator(request, self.operator_token):
            seen.professional, seen.via = OPERATOR, "operator"
            return None
        session = await self.gate.current_session(request) if self.gate is not None else None
        if session is not None:
            professional = session.professional
            seen.professional, seen.via = professional.id, "session"
        else:
            seen.via = "token"
            professional = await self.tokens.check_request(request)
            seen.professional = professional.id
        not_allowed = self.matrix.refusal(professional.profession, [professional.specialty])
        if not_allowed is not None:
            raise Refused(403, "not_habilitated", not_allowed)
        info = request.match_info
        study = info.get("study")
        if study is None:
            raise Refused(403, "search_not_allowed", "a KOS entitles one study: search within /studies/{study}")
        if session is not None:
            kos_uid = await self._granted_kos(session, study)
        else:
            kos_uid = await self._token_kos(request, study)
        seen.kos = kos_uid
        evidence = seen.evidence = await self._kos(kos_uid)
        if evidence.study_uid != study:
            raise Refused(403, "kos_not_for_study", "the KOS references another study")
        series = info.get("series")
        if series is not None and series not in evidence.series:
            raise Refused(403, "series_not_in_kos", "the KOS does not reference this series")
        instance = info.get("instance")
        if instance is not None and instance not in evidence.series.get(series or "", frozenset()):
            raise Refused(403, "instance_not_in_kos", "the KOS does not reference this instance")
        return Scope(study, evidence.series)

    async def _granted_kos(self, session: Session, study: str) -> str:
        """The live KOS of a study this session opened a report link to (its current one, after a replacement)."""
        if self.grants is None or not await self.grants.granted(session.id_hash, study):
            raise Refused(403, "not_granted", "open this exam from the link in its report: a login alone opens nothing")
        published = await self.outbox.current_published(study)
        if published is None or not published.kos_uid:
            withdrawn = any(p.state == "withdrawn" for p in await self.outbox.search(study_uid=study))
            if withdrawn:
                raise Refused(403, "withdrawn", "the images of this exam have been withdrawn")
            raise Refused(403, "not_published", "this exam's images are not published")
        return published.kos_uid

    async def _token_kos(self, request: web.Request, study: str) -> str:
        """The KOS a consumer box names in KOS-SOPInstanceUID, when this source published it and it is live."""
        kos_uid = request.headers.get(KOS_HEADER, "").strip()
        if not kos_uid:
            raise Refused(403, "kos_missing", f"the {KOS_HEADER} header naming the entitling KOS is required")
        if not is_lenient_uid(kos_uid):  # lenient: a header from another box; the outbox lookup decides
            raise Refused(403, "kos_invalid", f"{KOS_HEADER} is not a DICOM UID")
        publication = next((p for p in await self.outbox.search(study_uid=study) if p.kos_uid == kos_uid), None)
        if publication is None:
            raise Refused(403, "kos_not_for_study", "this source published no such KOS for this study")
        if publication.state in ("withdrawn", "replaced"):
            raise Refused(403, "withdrawn", f"this KOS was {publication.state}: ask the DMP for the current one")
        if publication.state != "published":
            raise Refused(403, "not_published", "this KOS is not published")
        return kos_uid

    def prepare(self, kos_uid: str) -> None:
        """Start reading a KOS's evidence now: a report link naming it was just opened.

        The viewer's first requests, a redirect and a page load later, then find it read: parsing a KOS of 1300
        instances takes 60-90 ms here, which every one of them would otherwise wait for before the PACS is asked.
        """
        if kos_uid not in self._evidence:
            self._reading_of(kos_uid)

    async def kos_series(self, kos_uid: str) -> frozenset[str]:
        """The series a KOS lists (its evidence, read once)."""
        return frozenset((await self._kos(kos_uid)).series)

    def _reading_of(self, kos_uid: str) -> asyncio.Task[_Evidence]:
        reading = self._reading.get(kos_uid)
        if reading is None:
            reading = self._reading[kos_uid] = asyncio.create_task(self._read_kos(kos_uid), name=f"kos-{kos_uid}")
            reading.add_done_callback(self._read)
        return reading

    async def _kos(self, kos_uid: str) -> _Evidence:
        """The KOS's evidence, read once from the stored KOS (a KOS never changes: a new one has a new UID)."""
        cached = self._evidence.get(kos_uid)
        if cached is not None:
            self._evidence.move_to_end(kos_uid)
            return cached
        # Shielded: a request that leaves must not cancel the read the others wait for.
        return await asyncio.shield(self._reading_of(kos_uid))

    def _read(self, task: asyncio.Task[_Evidence]) -> None:
        self._reading = {uid: t for uid, t in self._reading.items() if t is not task}
        if not task.cancelled():
            task.exception()  # seen by the requests that waited; retrieved here in case all of them left

    async def _read_kos(self, kos_uid: str) -> _Evidence:
        try:
            data = await read_kos(self.kos_dir, self.outbox, kos_uid)
            kos = await asyncio.to_thread(parse_kos, data, False)  # the evidence alone: 2-3 times faster
        except (OSError, KosError):
            log.warning("DICOMweb access: the stored KOS %s cannot be read", kos_uid)
            raise Refused(403, "kos_unreadable", "this source cannot read the KOS it published") from None
        by_series: dict[str, frozenset[str]] = {}
        for series in kos.series:
            uids = frozenset(i.sop_instance_uid for i in series.instances)
            by_series[series.series_uid] = by_series.get(series.series_uid, frozenset()) | uids
        evidence = _Evidence(kos.study_uid, by_series, kos.patient_id, kos.patient_name)
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
