"""Certificates' expiry for the operator page: the TLS server and client ones, the VIHF signer, the whitelist's chain."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from drimbox.config import Settings
from drimbox.state.credentials import structure_credentials

# Under this many days left, the page warns: time to order and install the renewal.
WARN_DAYS = 30


@dataclass(frozen=True)
class CertExpiry:
    """One certificate: what it is for (`role`, an i18n key's last part), whose, until when, or why unreadable."""

    role: str
    subject: str
    not_after: datetime.datetime | None
    days_left: int | None
    error: str = ""

    @property
    def warn(self) -> bool:
        return self.days_left is None or self.days_left < WARN_DAYS


def _of(role: str, cert: x509.Certificate, now: datetime.datetime) -> CertExpiry:
    end = cert.not_valid_after_utc
    return CertExpiry(role, cert.subject.rfc4514_string(), end, (end - now).days)


def _file(role: str, path: str, now: datetime.datetime) -> CertExpiry:
    """The first certificate of a PEM file (the leaf of a chain)."""
    try:
        return _of(role, x509.load_pem_x509_certificate(Path(path).read_bytes()), now)
    except (OSError, ValueError) as exc:
        return CertExpiry(role, path, None, None, error=f"{exc.__class__.__name__}: {exc}"[:200])


def expiries(settings: Settings, whitelist_chain: Sequence[x509.Certificate]) -> list[CertExpiry]:
    """Every certificate the box holds or relies on (blocking file reads: call it off the event loop)."""
    now = datetime.datetime.now(datetime.UTC)
    t = settings.tls
    found = []
    if t.cert:
        found.append(_file("tls_server", t.cert, now))
    if t.client_cert:
        found.append(_file("tls_client", t.client_cert, now))
    # The structure's signing certificate ([dmp] signing_cert, or the test pair the box made under var_dir).
    found.append(_file("vihf", str(structure_credentials(settings)[1]), now))
    found += [_of("whitelist_chain", cert, now) for cert in whitelist_chain]
    return found
