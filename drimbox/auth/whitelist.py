"""The ANS whitelist of DRIMboxes ("liste blanche"): fetched, its XML signature verified, hosts matched."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import urlsplit

import aiohttp
from cryptography import x509
from lxml import etree
from signxml.exceptions import InvalidInput, SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier
from signxml.xades.xades import XAdESSignatureConfiguration, XAdESVerifier

from drimbox import tls
from drimbox.config import WhitelistSettings

log = logging.getLogger(__name__)

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES = "http://uri.etsi.org/01903/v1.3.2#"
ROOT_NAME = "ListeBlancheDRIM-M"
MAX_LIST_BYTES = 5 * 1024 * 1024
Role = Literal["db", "vi", "any"]
_DEFAULT_PORTS = {"https": 443, "http": 80}


class WhitelistError(Exception):
    """The list cannot be used; `reason`: unavailable, malformed, unsigned, bad_signature, untrusted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _parser() -> etree.XMLParser:
    # No entities, no network, no huge trees: the list comes from the network.
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False)


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
    """

    db: frozenset[Endpoint]
    vi: frozenset[Endpoint]
    generated_at: str = ""
    signed: bool = False

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
        )

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


def verify_whitelist(xml: bytes, *, certificate: x509.Certificate | None, require_signature: bool) -> Whitelist:
    """Parse and verify a list: the enveloped XML-DSig (or XAdES) signature must verify with `certificate`.

    Only what the signature covers is read ("see what is signed"). Unsigned, or signed but with no
    certificate to check it against, is accepted only when `require_signature` is false.
    """
    try:
        root = etree.fromstring(xml, _parser())
    except etree.XMLSyntaxError as exc:
        raise WhitelistError("malformed", str(exc)) from None
    signature = root.find(f"{{{DS}}}Signature")
    if signature is None:
        if root.find(f".//{{{DS}}}Signature") is not None:
            raise WhitelistError("bad_signature", "the signature is not enveloped at the top of the list")
        if require_signature:
            raise WhitelistError("unsigned", "the list carries no signature and whitelist.require_signature is true")
        log.warning("whitelist: the list is unsigned; accepted because whitelist.require_signature is false")
        return Whitelist.from_element(root, signed=False)
    if certificate is None:
        if require_signature:
            raise WhitelistError("untrusted", "no certificate to check the signature with (whitelist.certificate)")
        log.warning("whitelist: signature NOT checked (no whitelist.certificate); accepted as unsigned")
        return Whitelist.from_element(root, signed=False)
    is_xades = signature.find(f".//{{{XADES}}}QualifyingProperties") is not None
    try:
        if is_xades:
            # The ANS signs with XAdES-BASELINE-B: the list, the SignedProperties and maybe the KeyInfo.
            results = XAdESVerifier().verify(
                xml, x509_cert=certificate, parser=_parser(),
                expect_config=XAdESSignatureConfiguration(location="./", expect_references=True),
            )
        else:
            result = XMLVerifier().verify(
                xml, x509_cert=certificate, parser=_parser(), expect_config=SignatureConfiguration(location="./")
            )
            results = [result] if not isinstance(result, list) else result
    except (SignXMLException, InvalidInput) as exc:
        raise WhitelistError("bad_signature", str(exc)) from None
    except (etree.LxmlError, ValueError) as exc:
        raise WhitelistError("bad_signature", type(exc).__name__) from None
    for result in results:
        signed = result.signed_xml
        if signed is not None and etree.QName(signed).localname == ROOT_NAME:
            return Whitelist.from_element(signed, signed=True)
    raise WhitelistError("bad_signature", "the signature does not cover the whole list")


class AnsWhitelist:
    """The box's view of the whitelist: fetched from whitelist.url, verified, refreshed; fails closed."""

    def __init__(
        self, settings: WhitelistSettings, *, session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._current: Whitelist | None = None
        self._fetched_at = 0.0
        self._attempted_at: float | None = None
        self._certificate: x509.Certificate | None = None
        self._lock = asyncio.Lock()
        self.last_error = ""

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

    async def ensure_fresh(self) -> Whitelist | None:
        """Refresh when due; a failed refresh keeps the previous list (until max_stale) and is retried later."""
        due = self._current is None or self._clock() - self._fetched_at >= self.settings.refresh_interval
        # After a failure, wait a little before asking again: every retrieve must not hit a down server.
        retry_ok = self._attempted_at is None or self._clock() - self._attempted_at >= min(30.0, self.settings.refresh_interval)
        if due and retry_ok:
            async with self._lock:
                if self._current is None or self._clock() - self._fetched_at >= self.settings.refresh_interval:
                    try:
                        await self.refresh()
                    except WhitelistError as exc:
                        log.warning("whitelist refresh failed, %s: %s",
                                    "keeping the previous list" if self.current else "every host refused", exc)
        return self.current

    async def refresh(self) -> Whitelist:
        """Fetch and verify now; raises WhitelistError (the previous list stays in place)."""
        self._attempted_at = self._clock()
        try:
            certificate = await self._trusted_certificate()
            xml = await self._fetch(self.settings.url)
            whitelist = await asyncio.to_thread(
                verify_whitelist, xml, certificate=certificate, require_signature=self.settings.require_signature
            )
        except WhitelistError as exc:
            self.last_error = str(exc)
            raise
        self._current, self._fetched_at, self.last_error = whitelist, self._clock(), ""
        log.info("whitelist loaded: %d box hosts, %d viewer hosts, %s, generated %s", len(whitelist.db),
                 len(whitelist.vi), "signature verified" if whitelist.signed else "UNSIGNED", whitelist.generated_at or "?")
        return whitelist

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def _trusted_certificate(self) -> x509.Certificate | None:
        if self._certificate is not None:
            return self._certificate
        pem: bytes | None = None
        if self.settings.certificate:
            pem = await asyncio.to_thread(Path(self.settings.certificate).read_bytes)
        elif self.settings.certificate_url:
            pem = await self._fetch(self.settings.certificate_url)
            # Pinned for the life of the process; acceptable for the simulator, not for the national list.
            log.warning("whitelist: signer certificate taken from %s (trust on first use); set whitelist.certificate "
                        "to pin it", self.settings.certificate_url)
        if pem is None:
            return None
        try:
            self._certificate = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise WhitelistError("untrusted", "the whitelist certificate is not a PEM X.509 certificate") from None
        return self._certificate

    async def _fetch(self, url: str) -> bytes:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout), connector=tls.connector())
            self._own_session = True
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    raise WhitelistError("unavailable", f"{url}: HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_LIST_BYTES:
                        raise WhitelistError("malformed", f"{url}: larger than {MAX_LIST_BYTES} bytes")
                return bytes(body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WhitelistError("unavailable", f"{url}: {type(exc).__name__}") from None


def _entries(texts: Iterable[str | None]) -> Iterable[Endpoint]:
    for text in texts:
        value = (text or "").strip()
        if not value:
            continue
        entry = parse_entry(value)
        if entry is None:
            log.warning("whitelist: entry %r ignored (not a host, host:port, loopback host:* or http(s) URL)", value[:100])
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
