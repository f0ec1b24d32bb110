"""The ANS whitelist of DRIMboxes ("liste blanche"): fetched, its signature and signer verified, hosts and operators matched."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography import x509
from lxml import etree

from drimbox import tls
from drimbox.auth import xmlsig
from drimbox.auth.whitelist_trust import (
    Trust,
    TrustError,
    ca_issuer_urls,
    check_revocation,
    crl_of,
    crl_urls,
    load_certificates,
    load_crls,
    signer_chain,
)
from drimbox.config import WhitelistSettings

log = logging.getLogger(__name__)

DS = xmlsig.DS
ROOT_NAME = "ListeBlancheDRIM-M"
MAX_LIST_BYTES = 5 * 1024 * 1024
MAX_CRL_BYTES = 20 * 1024 * 1024
MAX_CERT_BYTES = 64 * 1024
MAX_ISSUERS_FETCHED = 4
Role = Literal["db", "vi", "any"]
# app[WHITELISTS]: every AnsWhitelist a box holds (the consumer's, the source's peer check), for SIGHUP and the
# operator page.
WHITELISTS = web.AppKey("drimbox_whitelists", list["AnsWhitelist"])
_DEFAULT_PORTS = {"https": 443, "http": 80}


class WhitelistError(Exception):
    """The list cannot be used; `reason`: unavailable, malformed, unsigned, bad_signature, untrusted,
    wrong_signer (CN/OU), expired, revoked, revocation_unknown (no current CRL)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# An entry "host:*": every port of a loopback host (a simulator's list for tests whose boxes pick their ports).
ANY_PORT = 0


class Endpoint(NamedTuple):
    """One listed endpoint: a host, and the port, scheme and path prefix the entry pins.

    port None: the default port of the URL's scheme (443 for https, 80 for http); ANY_PORT: any (loopback only).
    scheme None: https, or plain http towards a loopback host. path: a prefix, matched whole segment by segment.
    """

    host: str
    port: int | None = None
    scheme: str | None = None
    path: str = "/"

    def admits(self, scheme: str, host: str, port: int, path: str) -> bool:
        if host != self.host or (self.scheme is not None and scheme != self.scheme):
            return False
        if self.port != ANY_PORT and (self.port if self.port is not None else _DEFAULT_PORTS[scheme]) != port:
            return False
        return self.path == "/" or path == self.path or path.startswith(self.path + "/")


Entry = Endpoint


@dataclass(frozen=True)
class Whitelist:
    """One verified list: the DRIMbox (`db`) and viewer (`vi`) endpoints.

    Rules of `allows(url)` (the professional's token goes only where they say):
    - the URL is http or https, without user info; https always, plain http only towards a loopback host
      (the demo on one machine: real boxes are reached over TLS);
    - its host must be one of the list's `<db>` entries (`<vi>` for viewer links), compared literally and
      case-insensitively: no DNS lookup, "localhost" and "127.0.0.1" are different entries, and a loopback
      or private address is allowed only when it is listed as such;
    - and so must its port: an entry "host" (the only form the ANS list uses) admits the default port of the
      scheme only (443), never another service on the same machine; "host:port" (an extension, for a machine
      that runs several boxes) admits exactly that port; "host:*" any port, for loopback hosts only (a simulator
      whose test boxes pick their ports at run time);
    - an entry given as a URL "https://host[:port]/prefix" also pins the scheme and a path prefix (whole
      segments); a URL path with dot segments or encoded slashes is refused (it could climb out of the prefix).

    `admits_operator(subject)`: a calling box's client certificate subject is the DNCertificatOperateur of an
    entry (what a source checks with mutual TLS).
    """

    db: frozenset[Endpoint]
    vi: frozenset[Endpoint]
    generated_at: str = ""
    signed: bool = False
    # The Domaine entries' DNCertificatOperateur, normalised (see operator_key): who may call a source box.
    operators: frozenset[OperatorKey] = field(default_factory=frozenset)

    @classmethod
    def from_element(cls, root: etree._Element, *, signed: bool) -> Whitelist:
        if etree.QName(root).localname != ROOT_NAME:
            raise WhitelistError("malformed", f"root element is not {ROOT_NAME}")
        generated = root.find("{*}DateDeGeneration")
        return cls(
            db=frozenset(_entries(e.text for e in root.iter("{*}db"))),
            vi=frozenset(_entries(e.text for e in root.iter("{*}vi"))),
            generated_at=(generated.text or "").strip() if generated is not None else "",
            signed=signed,
            operators=frozenset(_operators(e.text for e in root.iter("{*}DNCertificatOperateur"))),
        )

    def admits_operator(self, subject: x509.Name) -> bool:
        """Whether a certificate subject is one of the list's operator DNs (same attributes, case-insensitive)."""
        return operator_key(subject) in self.operators

    def allows(self, url: str, role: Role = "db") -> bool:
        """Whether `url` points at a listed endpoint: host, port, scheme and path (rules in the class docstring)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        host = _normal_host(parts.hostname or "")
        if parts.scheme not in _DEFAULT_PORTS or not host or parts.username is not None or parts.password is not None:
            return False
        if parts.scheme == "http" and not _is_loopback(host):
            return False
        path = parts.path or "/"
        if not _plain_path(path):
            return False
        entries = self.db if role == "db" else self.vi if role == "vi" else self.db | self.vi
        effective = port if port is not None else _DEFAULT_PORTS[parts.scheme]
        return any(entry.admits(parts.scheme, host, effective, path) for entry in entries)


def verify_signed(
    xml: bytes, *, trust: Trust | None, require_signature: bool, now: datetime | None = None,
) -> tuple[Whitelist, list[x509.Certificate]]:  # fmt: skip
    """Parse a list and verify its XAdES signature and its signer (chain to a root of `trust`, CN/OU, dates).

    Returns the list and the signer's chain ([] when unsigned lists are accepted); revocation is left to
    `check_revocation`, which may need the network. Unsigned, or signed with no trust configured, is accepted
    only when `require_signature` is false.
    """
    try:
        root = etree.fromstring(xml, xmlsig.parser())
    except etree.XMLSyntaxError as exc:
        raise WhitelistError("malformed", str(exc)) from None
    if etree.QName(root).localname != ROOT_NAME:
        raise WhitelistError("malformed", f"root element is not {ROOT_NAME}")
    if root.find(f".//{{{DS}}}Signature") is None:
        if require_signature:
            raise WhitelistError("unsigned", "the list carries no signature and whitelist.require_signature is true")
        log.warning("whitelist: the list is unsigned; accepted because whitelist.require_signature is false")
        return Whitelist.from_element(root, signed=False), []
    if trust is None or not trust.roots:
        if require_signature:
            raise WhitelistError("untrusted", "no trusted root to check the signer with (whitelist.trust_roots)")
        log.warning("whitelist: signature NOT checked (no whitelist.trust_roots); accepted as unsigned")
        return Whitelist.from_element(root, signed=False), []
    try:
        verified = xmlsig.verify_enveloped(xml)
    except xmlsig.SignatureError as exc:
        raise WhitelistError("bad_signature", str(exc)) from None
    except (etree.LxmlError, ValueError) as exc:
        raise WhitelistError("bad_signature", type(exc).__name__) from None
    try:
        chain = signer_chain(verified.signer, verified.certificates, trust, now or datetime.now(UTC))
    except TrustError as exc:
        raise WhitelistError(exc.reason, exc.detail) from None
    # Everything but the one signature is covered by the reference to the whole document: read it all.
    return Whitelist.from_element(root, signed=True), chain


def verify_whitelist(
    xml: bytes, *, trust: Trust | None, require_signature: bool, crls: Sequence[x509.CertificateRevocationList] = (),
    now: datetime | None = None,
) -> Whitelist:  # fmt: skip
    """`verify_signed` then revocation against `crls` (no network): the whole check, for a list at hand."""
    moment = now or datetime.now(UTC)
    whitelist, chain = verify_signed(xml, trust=trust, require_signature=require_signature, now=moment)
    if chain and trust is not None and trust.check_revocation:
        try:
            check_revocation(chain, crls, moment)
        except TrustError as exc:
            raise WhitelistError(exc.reason, exc.detail) from None
    return whitelist


class AnsWhitelist:
    """The box's view of the whitelist: fetched from whitelist.url, verified, refreshed; fails closed."""

    def __init__(
        self,
        settings: WhitelistSettings,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._current: Whitelist | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._first_use_roots: tuple[x509.Certificate, ...] = ()
        self._lock = asyncio.Lock()
        self.last_error = ""
        # The last verified list's signer chain (signer first), for the operator page's expiry dates.
        self.chain: tuple[x509.Certificate, ...] = ()

    def age(self) -> tuple[float | None, float, int]:
        """(seconds since the last verified fetch or None, seconds until the next one is due, entries listed)."""
        if self._current is None:
            return None, 0.0, 0
        age = self._clock() - self._fetched_at
        entries = len(self._current.db) + len(self._current.vi)
        return age, max(0.0, self.settings.refresh_interval - age), entries

    @property
    def current(self) -> Whitelist | None:
        """The last verified list while it is usable (not older than refresh_interval + max_stale)."""
        if self._current is None:
            return None
        if self._clock() - self._fetched_at > self.settings.refresh_interval + self.settings.max_stale:
            return None
        return self._current

    def is_allowed(self, url: str, role: Role = "db") -> bool:
        """On the list held now (no fetch): False when there is none. Use `check` to refresh first."""
        current = self.current
        return current is not None and current.allows(url, role)

    async def check(self, url: str, role: Role = "db") -> bool:
        """Whether `url` may be fetched, after refreshing the list if it is due."""
        await self.ensure_fresh()
        return self.is_allowed(url, role)

    async def admits_operator(self, subject: x509.Name) -> bool:
        """Whether a calling box's certificate subject is the DNCertificatOperateur of a listed Domaine."""
        current = await self.ensure_fresh()
        return current is not None and current.admits_operator(subject)

    async def ensure_fresh(self) -> Whitelist | None:
        """Refresh when due; a failed refresh keeps the previous list (until max_stale) and is retried later."""
        due = self._current is None or self._clock() - self._fetched_at >= self.settings.refresh_interval
        # After a failure, wait a little before asking again: every retrieve must not hit a down server.
        retry_ok = self._attempted_at is None or self._clock() - self._attempted_at >= min(
            30.0, self.settings.refresh_interval
        )
        if due and retry_ok:
            async with self._lock:
                if self._current is None or self._clock() - self._fetched_at >= self.settings.refresh_interval:
                    try:
                        await self.refresh()
                    except WhitelistError as exc:
                        log.warning(
                            "whitelist refresh failed, %s: %s",
                            "keeping the previous list" if self.current else "every host refused",
                            exc,
                        )
        return self.current

    async def refresh(self) -> Whitelist:
        """Fetch and verify now (signature, signer chain, revocation); raises WhitelistError (the previous list stays)."""
        self._attempted_at = self._clock()
        try:
            trust = await self._trust()
            xml = await self._fetch(self.settings.url)
            now = datetime.now(UTC)
            whitelist, chain = await self._verify(xml, trust, now)
            if chain and trust is not None and trust.check_revocation:
                crls = await self._crls(chain)
                try:
                    check_revocation(chain, crls, now)
                except TrustError as exc:
                    raise WhitelistError(exc.reason, exc.detail) from None
        except WhitelistError as exc:
            self.last_error = str(exc)
            raise
        self._current, self._fetched_at, self.last_error = whitelist, self._clock(), ""
        self.chain = tuple(chain)
        log.info(
            "whitelist loaded: %d box hosts, %d viewer hosts, %d operators, %s, generated %s",
            len(whitelist.db),
            len(whitelist.vi),
            len(whitelist.operators),
            "signer chain and revocation verified" if whitelist.signed else "UNSIGNED",
            whitelist.generated_at or "?",
        )
        return whitelist

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def _verify(self, xml: bytes, trust: Trust | None, now: datetime) -> tuple[Whitelist, list[x509.Certificate]]:
        require = self.settings.require_signature
        try:
            return await asyncio.to_thread(verify_signed, xml, trust=trust, require_signature=require, now=now)
        except WhitelistError as exc:
            if exc.reason != "untrusted" or trust is None or not trust.roots:
                raise
            # The ANS's KeyInfo carries the signer only: its issuers are where its caIssuers say (IGC-Santé
            # publishes them), as a validator like esignsante finds them. They only help build the path.
            fetched = await self._issuers(xml, trust)
            if not fetched:
                raise
        trust = dataclasses.replace(trust, intermediates=(*trust.intermediates, *fetched))
        return await asyncio.to_thread(verify_signed, xml, trust=trust, require_signature=require, now=now)

    async def _issuers(self, xml: bytes, trust: Trust) -> tuple[x509.Certificate, ...]:
        try:
            current = (await asyncio.to_thread(xmlsig.verify_enveloped, xml)).signer
        except xmlsig.SignatureError:
            return ()
        found: list[x509.Certificate] = []
        roots = {root.subject for root in trust.roots}
        while current.issuer not in roots and len(found) < MAX_ISSUERS_FETCHED:
            issuer = None
            for url in ca_issuer_urls(current):
                try:
                    certs = load_certificates(await self._fetch(url, limit=MAX_CERT_BYTES), url)
                except (WhitelistError, TrustError) as exc:
                    log.warning("whitelist: issuer certificate %s unusable: %s", url, exc)
                    continue
                issuer = next((c for c in certs if c.subject == current.issuer), None)
                if issuer is not None:
                    break
            if issuer is None or issuer in found or issuer.subject == issuer.issuer:
                break
            found.append(issuer)
            current = issuer
        return tuple(found)

    async def _trust(self) -> Trust | None:
        s = self.settings
        try:
            roots: tuple[x509.Certificate, ...] = ()
            if s.trust_roots:
                roots = tuple(
                    load_certificates(await asyncio.to_thread(Path(s.trust_roots).read_bytes), "whitelist.trust_roots")
                )
            elif s.trust_on_first_use and s.certificate_url:
                roots = self._first_use_roots or await self._root_on_first_use()
            intermediates: tuple[x509.Certificate, ...] = ()
            if s.intermediates:
                data = await asyncio.to_thread(Path(s.intermediates).read_bytes)
                intermediates = tuple(load_certificates(data, "whitelist.intermediates"))
        except OSError as exc:
            raise WhitelistError("untrusted", f"cannot read a trust file: {exc.strerror or exc}") from None
        except TrustError as exc:
            raise WhitelistError(exc.reason, exc.detail) from None
        if not roots:
            return None
        return Trust(roots, intermediates, s.signer_cn, s.signer_ou, s.check_revocation)

    async def _root_on_first_use(self) -> tuple[x509.Certificate, ...]:
        # Explicit opt-in (whitelist.trust_on_first_use): the simulator on loopback; never the national list.
        pem = await self._fetch(self.settings.certificate_url)
        try:
            roots = tuple(load_certificates(pem, self.settings.certificate_url))
        except TrustError as exc:
            raise WhitelistError("untrusted", str(exc)) from None
        log.warning(
            "whitelist: trusted root taken from %s on first use (whitelist.trust_on_first_use); set "
            "whitelist.trust_roots to the IGC-Santé root instead",
            self.settings.certificate_url,
        )
        self._first_use_roots = roots
        return roots

    async def _crls(self, chain: Sequence[x509.Certificate]) -> list[x509.CertificateRevocationList]:
        """The configured CRLs, then, for a certificate whose issuer has none there, its distribution point's."""
        crls: list[x509.CertificateRevocationList] = []
        try:
            if self.settings.crl:
                crls += load_crls(await asyncio.to_thread(Path(self.settings.crl).read_bytes), "whitelist.crl")
        except OSError as exc:
            raise WhitelistError("revocation_unknown", f"whitelist.crl: {exc.strerror or exc}") from None
        except TrustError as exc:
            raise WhitelistError(exc.reason, exc.detail) from None
        for cert, issuer in pairwise(chain):
            for url in crl_urls(cert) if crl_of(issuer, crls) is None else []:
                try:
                    crls += load_crls(await self._fetch(url, limit=MAX_CRL_BYTES), url)
                    break
                except (WhitelistError, TrustError) as exc:
                    log.warning("whitelist: CRL %s unusable: %s", url, exc)
        return crls

    async def _fetch(self, url: str, limit: int = MAX_LIST_BYTES) -> bytes:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout), connector=tls.connector()
            )
            self._own_session = True
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    raise WhitelistError("unavailable", f"{url}: HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > limit:
                        raise WhitelistError("malformed", f"{url}: larger than {limit} bytes")
                return bytes(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WhitelistError("unavailable", f"{url}: {type(exc).__name__}") from None


# A DN as compared: per RDN (in order), its attributes as (OID, value casefolded, spaces collapsed).
OperatorKey = tuple[frozenset[tuple[str, str]], ...]


def operator_key(name: x509.Name) -> OperatorKey:
    """X.500 compares directory strings case-insensitively and ignoring extra spaces; so does this."""
    return tuple(
        frozenset((a.oid.dotted_string, " ".join(str(a.value).split()).casefold()) for a in rdn) for rdn in name.rdns
    )


def _operators(texts: Iterable[str | None]) -> Iterable[OperatorKey]:
    for text in texts:
        value = (text or "").strip()
        if not value:
            continue
        try:
            yield operator_key(x509.Name.from_rfc4514_string(value))
        except ValueError:
            log.warning("whitelist: DNCertificatOperateur %r ignored (not an RFC 4514 DN)", value[:200])


def _entries(texts: Iterable[str | None]) -> Iterable[Endpoint]:
    for text in texts:
        value = (text or "").strip()
        if not value:
            continue
        entry = parse_entry(value)
        if entry is None:
            log.warning(
                "whitelist: entry %r ignored (not a host, host:port, loopback host:* or http(s) URL)", value[:100]
            )
        else:
            yield entry


def parse_entry(value: str) -> Endpoint | None:
    """'host', 'host:port', '[v6]:port', 'host:*' (loopback only), or a URL 'scheme://host[:port][/prefix]'."""
    any_port = value.endswith(":*") and "://" not in value
    if any_port:
        value = value[:-2]
    is_url = "://" in value
    try:
        parts = urlsplit(value if is_url else "//" + value)
        port = parts.port
    except ValueError:
        return None
    host = _normal_host(parts.hostname or "")
    if not host or parts.username is not None or not all(c.isalnum() or c in ".-:" for c in host):
        return None
    if any_port:
        return Endpoint(host, ANY_PORT) if port is None and _is_loopback(host) else None
    if not is_url:
        return None if parts.path or parts.query or parts.fragment else Endpoint(host, port)
    path = parts.path.rstrip("/") or "/"
    if parts.scheme not in _DEFAULT_PORTS or parts.query or parts.fragment or not _plain_path(path):
        return None
    return Endpoint(host, port, parts.scheme, path)


def _plain_path(path: str) -> bool:
    """No dot segment, encoded slash or backslash: what a client or server might normalise out of a prefix."""
    lowered = path.lower()
    if "\\" in path or any(code in lowered for code in ("%2f", "%5c", "%2e")):
        return False
    return not any(segment in (".", "..") for segment in path.split("/"))


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
