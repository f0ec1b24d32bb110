"""Signed, expiring report links (/IHEInvokeImageDisplay): HMAC-SHA256 over the canonical parameters, key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from drimbox.config import AuthSettings

LINK_PATH = "/IHEInvokeImageDisplay"
# What the signature covers, in this order. Parameter names are matched without case (reports in the field
# write "Accessionnumber", "accessionNumber"…), values exactly: any other parameter plays no part in what opens.
SIGNED = ("requesttype", "studyuid", "accessionnumber", "idcda", "exp")
_VERSION = b"drimbox-report-link-v1"


class LinkRefused(Exception):
    """A report link this box will not open; `reason` is one of unsigned, tampered, expired (safe to show)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class SignedLink:
    url: str
    expires_at: int  # epoch seconds; 0 when links are not signed (no key configured)


def canonical(params: Mapping[str, str]) -> bytes:
    """The bytes the HMAC covers: a version tag, then name=value per signed parameter (names lower-cased)."""
    lines = [_VERSION] + [f"{name}={params.get(name, '')}".encode() for name in SIGNED]
    # A newline cannot appear inside a value unnoticed: values holding one are refused before (see verify).
    return b"\n".join(lines)


def _mac(key: str, params: Mapping[str, str]) -> str:
    digest = hmac.new(key.encode(), canonical(params), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class ReportLinks:
    """Issues and checks report links with [auth] report_link_keys (first signs, all verify) and report_link_ttl."""

    def __init__(self, auth: AuthSettings, public_url: str) -> None:
        self.keys = list(auth.report_link_keys)
        self.ttl = auth.report_link_ttl
        self.base = public_url.rstrip("/") + LINK_PATH

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def issue(self, study_uid: str, accession: str = "", cda_id: str = "", *, now: float | None = None) -> SignedLink:
        """The link the RIS writes in the report; signed and expiring when keys are configured."""
        query = {"requestType": "STUDY", "studyUID": study_uid}
        if accession:
            query["accessionNumber"] = accession
        if cda_id:
            query["idCDA"] = cda_id
        if not self.keys:
            return SignedLink(f"{self.base}?{urlencode(query)}", 0)
        exp = int((time.time() if now is None else now) + self.ttl)
        query["exp"] = str(exp)
        query["sig"] = _mac(self.keys[0], {k.lower(): v for k, v in query.items()})
        return SignedLink(f"{self.base}?{urlencode(query)}", exp)

    def verify(self, query: Mapping[str, str], *, now: float | None = None) -> None:
        """Return when the link may open; raise LinkRefused otherwise. `query` has lower-cased names."""
        if not self.keys:
            return
        sig = query.get("sig", "")
        if not sig:
            raise LinkRefused("unsigned", "This link is not signed, and this imaging centre only opens signed links.")
        if any("\n" in query.get(name, "") for name in SIGNED) or len(sig) > 64:
            raise LinkRefused("tampered", "This link has been altered: ask the imaging centre for a new one.")
        # Every key is tried (rotation), and each comparison takes the same time whatever the signature.
        if not any(hmac.compare_digest(_mac(key, query), sig) for key in self.keys):
            raise LinkRefused("tampered", "This link has been altered: ask the imaging centre for a new one.")
        # Checked after the signature: only a genuine expiry date is reported as such.
        exp = query.get("exp", "")
        if not exp.isdigit() or int(exp) <= (time.time() if now is None else now):
            raise LinkRefused("expired", "This link has expired. The images remain available through the DMP "
                                         "(your DRIMbox), or ask the imaging centre for a new link.")  # fmt: skip
