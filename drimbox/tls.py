"""The box's TLS: server and client SSL contexts from [tls], checked at start, and the peer certificate per request."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from drimbox.config import ConfigError, TlsSettings

log = logging.getLogger(__name__)

# request[PEER]: the verified client certificate's subject ("CN=…,O=…"), or None (plain HTTP, no certificate).
PEER = web.RequestKey[str | None]("drimbox_tls_peer")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

# The client context of this process (set by use() at start). One per process because a box is one identity:
# the same certificate goes to the DMP, to Pro Santé Connect and to other boxes.
_client: ssl.SSLContext | None = None


def _read(key: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"tls.{key}: cannot read {path!r} ({exc.strerror or exc})") from None


def _check_certificate(key: str, path: str) -> x509.Certificate:
    pem = _read(key, path)
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ConfigError(f"tls.{key}: {path!r} is not a PEM X.509 certificate") from None
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
        # Peers will refuse it; say so in the log rather than refuse to start (the operator may be renewing it).
        log.warning(
            "tls.%s: the certificate %s expired on %s", key, cert.subject.rfc4514_string(), cert.not_valid_after_utc
        )
    return cert


def _load_pair(ctx: ssl.SSLContext, cert_key: str, cert: str, key_key: str, key: str) -> None:
    """Load a certificate and its key into ctx; every failure names the [tls] key at fault."""
    _check_certificate(cert_key, cert)
    pem = _read(key_key, key)
    try:
        serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"tls.{key_key}: {key!r} is not an unencrypted PEM private key") from None
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls.{key_key}: {key!r} does not match the certificate tls.{cert_key} ({exc.reason})"
        ) from None


def _readable(key: str, path: str) -> str:
    _read(key, path)
    return path


def _load_trust(ctx: ssl.SSLContext, key: str, path: str) -> None:
    _read(key, path)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise ConfigError(f"tls.{key}: {path!r} holds no PEM CA certificate") from None


def server_context(t: TlsSettings) -> ssl.SSLContext | None:
    """The context of the box's listeners (HTTP, MLLP), or None when tls.cert is empty (plain TCP)."""
    if not t.cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = _VERSIONS[t.min_version]
    _load_pair(ctx, "cert", t.cert, "key", t.key)
    if t.client_auth != "none":
        _load_trust(ctx, "client_ca", t.client_ca)
    ctx.verify_mode = _CLIENT_AUTH[t.client_auth]
    return ctx


def client_context(t: TlsSettings) -> ssl.SSLContext:
    """The context of outbound HTTPS: tls.ca (or the system store), hostname checked, tls.client_cert presented."""
    # With cafile only tls.ca is trusted (a private PKI, not mixed with the system store); without, the system store.
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_readable("ca", t.ca) if t.ca else None)
    except ssl.SSLError:
        raise ConfigError(f"tls.ca: {t.ca!r} holds no PEM CA certificate") from None
    ctx.minimum_version = _VERSIONS[t.min_version]
    if t.client_cert:
        _load_pair(ctx, "client_cert", t.client_cert, "client_key", t.client_key)
    return ctx


def use(t: TlsSettings) -> ssl.SSLContext | None:
    """Check [tls] and make its client context the one of every outbound session; the server context, if any."""
    global _client
    server = server_context(t)
    _client = client_context(t)
    return server


class Pending:
    """[tls] files read and checked, ready to go into the live contexts (apply()), or a reason they may not."""

    def __init__(self, t: TlsSettings, server: ssl.SSLContext | None) -> None:
        self.t = t
        self.server = server
        self.reloaded: list[str] = []
        self._dir = tempfile.TemporaryDirectory(prefix="drimbox-tls-")
        # Each file read once: what is checked here is byte for byte what apply() loads, even if the operator
        # is still copying files in.
        self._copies: dict[str, str] = {}

    def _copy(self, key: str, path: str) -> str:
        target = os.path.join(self._dir.name, key)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # private keys among them
        with os.fdopen(fd, "wb") as f:
            f.write(_read(key, path))
        self._copies[key] = target
        return target

    def check(self) -> None:
        """Read every file and build throw-away contexts from the copies; ConfigError names the key at fault."""
        t, c = self.t, self._copy
        copied = dataclasses.replace(t)
        if self.server is not None and t.cert:
            copied.cert, copied.key = c("cert", t.cert), c("key", t.key)
            if t.client_auth != "none":
                copied.client_ca = c("client_ca", t.client_ca)
        if t.ca:
            copied.ca = c("ca", t.ca)
        if t.client_cert:
            copied.client_cert, copied.client_key = c("client_cert", t.client_cert), c("client_key", t.client_key)
        server_context(copied)
        client_context(copied)

    def apply(self) -> list[str]:
        """Load the checked copies into the contexts the listeners and clients hold (on the event loop's thread:
        OpenSSL contexts are not to be changed while another thread makes connections from them)."""
        f = self._copies
        try:
            if self.server is not None and "cert" in f:
                self.server.load_cert_chain(f["cert"], f["key"])
                self.reloaded.append("tls.cert")
                if "client_ca" in f:
                    # Added to the trust store: a CA removed from the file stays trusted until the next restart.
                    self.server.load_verify_locations(cafile=f["client_ca"])
                    self.reloaded.append("tls.client_ca")
            if _client is not None:
                if "ca" in f:
                    _client.load_verify_locations(cafile=f["ca"])
                    self.reloaded.append("tls.ca")
                if "client_cert" in f:
                    _client.load_cert_chain(f["client_cert"], f["client_key"])
                    self.reloaded.append("tls.client_cert")
        finally:
            self._dir.cleanup()
        return self.reloaded

    def discard(self) -> None:
        self._dir.cleanup()


def prepare_reload(t: TlsSettings, server: ssl.SSLContext | None) -> Pending:
    """Read and check [tls]'s files again (blocking: call it off the event loop); raises ConfigError, nothing
    changed, when a file is unreadable, not PEM or a key does not match its certificate."""
    pending = Pending(t, server)
    try:
        pending.check()
    except BaseException:
        pending.discard()
        raise
    return pending


def client_ssl() -> ssl.SSLContext | bool:
    """What aiohttp's `ssl=` takes: the process's client context, or True (system store) before use()."""
    return _client if _client is not None else True


def connector(**kwargs: Any) -> aiohttp.TCPConnector:
    """A TCPConnector with the process's client context: every outbound ClientSession is built with one."""
    return aiohttp.TCPConnector(ssl=client_ssl(), **kwargs)


def peer_certificate(request: web.BaseRequest) -> x509.Certificate | None:
    """The client certificate verified during this connection's handshake, if any."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    # Only a verified certificate is here: with client_auth "none" none is asked for, otherwise a bad one fails the handshake.
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return x509.load_der_x509_certificate(der)


def peer_subject(request: web.BaseRequest) -> str | None:
    """The subject ("CN=…,O=…") of the client certificate verified during this connection's handshake, if any."""
    cert = peer_certificate(request)
    return None if cert is None else str(cert.subject.rfc4514_string())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Whether the box behind a verified client certificate may make this call (the source's whitelist check); it
# records its own refusals (audit), the middleware answers 403.
PeerCheck = Callable[[web.Request, x509.Certificate], Awaitable[bool]]


def peer_middleware(
    t: TlsSettings, needs_certificate: Callable[[web.Request], bool], admit: PeerCheck | None = None
) -> Any:
    """Records request[PEER]; with mutual TLS on, a request for which needs_certificate() holds and that came
    without a verified client certificate gets 403 (client_auth "optional" lets browsers in without one), and so
    does one whose certificate `admit` refuses (a box not on the ANS whitelist)."""
    enforce = t.client_auth != "none"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        cert = peer_certificate(request)
        subject = None if cert is None else str(cert.subject.rfc4514_string())
        request[PEER] = subject
        if enforce and needs_certificate(request):
            if cert is None:
                return web.json_response(
                    {"error": "client certificate required", "detail": "this route needs mutual TLS with a certificate "
                     "signed by a trusted CA"}, status=403)  # fmt: skip
            if admit is not None and not await admit(request, cert):
                return web.json_response(
                    {"error": "client certificate not on the ANS whitelist", "reason": "peer_not_whitelisted",
                     "detail": "the calling box's certificate subject is no DNCertificatOperateur of the whitelist"},
                    status=403)  # fmt: skip
        if subject is not None:
            log.debug("%s %s from certificate %s", request.method, request.path, subject)
        return await handler(request)

    return middleware


def box_to_box(request: web.Request) -> bool:
    """A call from another box: a Bearer token on the source's DICOMweb (the box's own viewer uses a session)."""
    return request.path.startswith("/dicom-web") and request.headers.get("Authorization", "").startswith("Bearer ")
