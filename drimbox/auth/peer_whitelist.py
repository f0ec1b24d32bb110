"""Mutual TLS on a source box: the calling box's certificate must be an operator of the ANS whitelist."""

from __future__ import annotations

import logging

from aiohttp import web
from cryptography import x509

from drimbox.audit.events import REFUSED
from drimbox.audit.request import audit_request
from drimbox.auth.whitelist import AnsWhitelist
from drimbox.tls import PeerCheck

log = logging.getLogger(__name__)


def whitelist_peer_check(whitelist: AnsWhitelist) -> PeerCheck:
    """A tls.peer_middleware check: the certificate subject must be a Domaine's DNCertificatOperateur (the
    ANS list names each box's certificate); a refusal is audited. No usable list: every box is refused."""

    async def admit(request: web.Request, cert: x509.Certificate) -> bool:
        if await whitelist.admits_operator(cert.subject):
            return True
        # A box's certificate subject, not a person: it may be logged.
        log.warning(
            "box-to-box call refused: certificate %s is not an operator of the whitelist%s",
            cert.subject.rfc4514_string(),
            "" if whitelist.current else " (no usable whitelist)",
        )
        await audit_request(request, "dicomweb.box-to-box", REFUSED, reason="peer_not_whitelisted",
                            path=request.path[:200])  # fmt: skip
        return False

    return admit
