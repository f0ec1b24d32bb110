"""STOW-RS (PS3.18 §10.5): multipart/related application/dicom in, one instance at a time, a DICOM JSON receipt out."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from drimbox.dicomweb.params import BadRequest, check_uid

# What aiohttp's multipart reader raises on a body that is not well-formed multipart (bad part headers included).
_MALFORMED = (ValueError, AssertionError, BadHttpMessage)
# One part is held in memory while it is stored; bigger instances are refused (413) rather than buffered.
MAX_PART_BYTES = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Stored:
    """What the store says of one accepted instance."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_uid: str


class StoreRefused(Exception):
    """The store refused an instance: `reason` is a DICOM failure reason (e.g. 0xA700 out of resources)."""

    def __init__(self, message: str, reason: int, sop_class_uid: str = "", sop_uid: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_uid = sop_uid


Store = Callable[[bytes], Awaitable[Stored]]
# Who may store: None lets the request through, a response refuses it (answered before the body is read).
Authorize = Callable[[web.Request], Awaitable[web.Response | None]]


def _item(sop_class_uid: str, sop_uid: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [sop_class_uid]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    item.update(extra or {})
    return item


def stow_routes(
    store: Store, base: str = "/dicom-web", public_url: str = "", authorize: Authorize | None = None
) -> list[web.RouteDef]:
    """POST {base}/studies and {base}/studies/{study}: every part stored durably before the answer is sent."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if authorize is not None and (refused := await authorize(request)) is not None:
            return refused
        expected_study = request.match_info.get("study")
        if expected_study is not None:
            try:
                check_uid(expected_study, "Study Instance UID")
            except BadRequest as exc:  # this route has no error-mapping guard: answer here, not with a bare 500
                return web.json_response({"error": str(exc)}, status=400)
        content_type = request.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/related"):
            return web.json_response({"error": 'STOW-RS takes multipart/related; type="application/dicom"'}, status=415)
        if "application/dicom+json" in content_type.lower() or "application/dicom+xml" in content_type.lower():
            return web.json_response({"error": "only application/dicom parts are accepted"}, status=415)
        try:
            reader = await request.multipart()
        except _MALFORMED as exc:
            return web.json_response({"error": f"unreadable multipart body: {exc}"}, status=400)
        stored: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        studies: set[str] = set()
        while True:
            try:
                part = await reader.next()
            except _MALFORMED as exc:
                return _unreadable(exc)
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                return web.json_response({"error": "nested multipart is not accepted"}, status=400)
            part_type = part.headers.get("Content-Type", "application/dicom").split(";")[0].strip().lower()
            if part_type != "application/dicom":
                failed.append(_item("", "", {"00081197": {"vr": "US", "Value": [0x0122]}}))
                try:
                    await part.release()
                except _MALFORMED as exc:
                    return _unreadable(exc)
                continue
            data = bytearray()
            try:
                while chunk := await part.read_chunk(1024 * 1024):
                    data += chunk
                    if len(data) > MAX_PART_BYTES:
                        return web.json_response({"error": f"a part exceeds {MAX_PART_BYTES} bytes"}, status=413)
            except _MALFORMED as exc:
                return _unreadable(exc)
            try:
                result = await store(bytes(data))
            except StoreRefused as exc:
                failed.append(_item(exc.sop_class_uid, exc.sop_uid, {"00081197": {"vr": "US", "Value": [exc.reason]}}))
                continue
            if expected_study is not None and result.study_uid != expected_study:
                # Stored already (it is a valid instance), but the client named another study: say so.
                warning = {"00081196": {"vr": "US", "Value": [0xB007]}}
                stored.append(_item(result.sop_class_uid, result.sop_uid, warning))
            else:
                stored.append(_item(result.sop_class_uid, result.sop_uid, _retrieve_url(public_url, base, result)))
            studies.add(result.study_uid)
        if not stored and not failed:
            return web.json_response({"error": "the request holds no instance"}, status=400)
        receipt: dict[str, Any] = {}
        if len(studies) == 1:
            (study,) = studies
            receipt["00081190"] = {"vr": "UR", "Value": [f"{public_url}{base}/studies/{study}"]}
        if stored:
            receipt["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            receipt["00081198"] = {"vr": "SQ", "Value": failed}
        status = 200 if not failed else (202 if stored else 409)
        return web.Response(body=json.dumps(receipt).encode(), status=status, content_type="application/dicom+json")

    return [web.post(f"{base}/studies", handler), web.post(f"{base}/studies/{{study}}", handler)]


def _unreadable(exc: Exception) -> web.Response:
    # Parts before the malformed one may be stored already; storing them again is harmless (same UIDs).
    return web.json_response({"error": f"unreadable multipart body: {exc}"}, status=400)


def _retrieve_url(public_url: str, base: str, s: Stored) -> dict[str, Any]:
    url = f"{public_url}{base}/studies/{s.study_uid}/series/{s.series_uid}/instances/{s.sop_uid}"
    return {"00081190": {"vr": "UR", "Value": [url]}}
