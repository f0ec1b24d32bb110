"""The simulated ANS whitelist at /whitelist: the ANS format, XAdES-B signed under a simulated IGC-Santé, its CRLs."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from lxml import etree

from drimbox.auth.xmlsig import sign_enveloped
from drimbox.config import Settings
from drimbox.sim.certs import SignerKit, WhitelistPki, whitelist_root

# The namespace of the ANS's signed list (informatif/listeblanche/LISTEBLANCHE_DRIM-M_TEST_SIGNEE.xml).
NS = "https://listeblanche.mesimagesmedicales.fr/schema"
FORMAT_VERSION = "1.0.0"
XML_TYPE = "application/xml"
CRL_NAMES = ("root.crl", "org.crl")
CA_NAMES = ("root.cer", "org.cer")


@dataclass(frozen=True)
class Whitelist:
    """What /whitelist serves for one base URL: the list signed and unsigned, the PKI behind its signer."""

    signed: bytes
    unsigned: bytes
    pki: WhitelistPki
    signer: SignerKit


class WhitelistService:
    """The list, signed when first asked for at a base URL: the certificates' CRL distribution points must be
    URLs of this simulator as its clients reach it (tests pick the port when the app is already built)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = settings.sim_var_path / "whitelist"
        self.root_pem = whitelist_root(self.directory).read_bytes()
        self._by_base: dict[str, Whitelist] = {}
        # Requests build in threads: two at once must not make two PKIs (a list from one, a CRL from the other).
        self._lock = threading.Lock()

    def at(self, base: str) -> Whitelist:
        base = self.settings.sim.public_url.rstrip("/") or base
        with self._lock:
            if base not in self._by_base:
                self._by_base[base] = build_whitelist(self.settings, f"{base}/whitelist")
            return self._by_base[base]

    def for_request(self, request: web.Request) -> Whitelist:
        return self.at(str(request.url.origin()))


WHITELIST = web.AppKey("whitelist", WhitelistService)


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_operator_dn(host: str) -> str:
    return f"CN={host},OU=drimbox-sim,O=drimbox,C=FR"


def build_document(hosts: list[str], generated: datetime, operator_dns: list[str] | None = None) -> etree._Element:
    """<ListeBlancheDRIM-M>: one <Domaine> per entry (host, host:port, loopback host:* or URL), both its db and vi,
    with its operator's certificate DN (operator_dns, in order, else a made-up one)."""
    E = f"{{{NS}}}"
    dns = operator_dns or []
    root = etree.Element(f"{E}ListeBlancheDRIM-M", nsmap={None: NS}, versionFormat=FORMAT_VERSION)
    etree.SubElement(root, f"{E}DateDeGeneration").text = _timestamp(generated)
    domains = etree.SubElement(root, f"{E}ListeDomaines")
    for number, host in enumerate(hosts, start=1):
        domain = etree.SubElement(domains, f"{E}Domaine")
        for tag, text in (
            ("Identifiant", str(number)),
            ("db", host),
            ("vi", host),
            ("Denomination", "DRIMbox de test (simulateur drimbox)"),
            ("DNCertificatOperateur", dns[number - 1] if number <= len(dns) else default_operator_dn(host)),
            ("ResponsableContact", "simulateur drimbox, pas de contact"),
            ("SupportContact", "simulateur drimbox, pas de support"),
            ("DateMAJ", _timestamp(generated)),
        ):
            etree.SubElement(domain, f"{E}{tag}").text = text
    etree.indent(root, space="    ")
    return root


def sign_document(root: etree._Element, signer: SignerKit, now: datetime | None = None) -> bytes:
    """The list with its enveloped XAdES-B signature in the ANS's shape: KeyInfo carries the signer only, as the
    ANS's; a box finds the ORG CA through the signer's caIssuers (or whitelist.intermediates)."""
    sign_enveloped(root, signer.key, signer.cert, signing_time=now)
    data: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return data


def build_whitelist(settings: Settings, base_url: str, now: datetime | None = None) -> Whitelist:
    """The configured hosts, signed by the configured kind of signer (sim.whitelist_signer); the certificates
    point at CRLs and the ORG CA under base_url (this simulator's /whitelist)."""
    moment = now or datetime.now(UTC)
    pki = WhitelistPki(settings.sim_var_path / "whitelist", base_url)
    signer = pki.signer(settings.sim.whitelist_signer)
    hosts, dns = list(settings.sim.whitelist_hosts), list(settings.sim.whitelist_operator_dns)
    unsigned = etree.tostring(build_document(hosts, moment, dns), xml_declaration=True, encoding="UTF-8")
    signed = sign_document(build_document(hosts, moment, dns), signer, moment)
    return Whitelist(signed=signed, unsigned=unsigned, pki=pki, signer=signer)


async def signed_list(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(request.app[WHITELIST].for_request, request)  # the first time: keys are made
    return web.Response(body=body.signed, content_type=XML_TYPE, charset="utf-8")


async def unsigned_list(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(request.app[WHITELIST].for_request, request)
    return web.Response(body=body.unsigned, content_type=XML_TYPE, charset="utf-8")


async def certificate(request: web.Request) -> web.Response:
    return web.Response(body=request.app[WHITELIST].root_pem, content_type="application/x-pem-file")


async def crl(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in CRL_NAMES:
        raise web.HTTPNotFound()
    whitelist = await asyncio.to_thread(request.app[WHITELIST].for_request, request)
    return web.Response(body=whitelist.pki.crl(name), content_type="application/pkix-crl")


async def ca_certificate(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in CA_NAMES:
        raise web.HTTPNotFound()
    whitelist = await asyncio.to_thread(request.app[WHITELIST].for_request, request)
    return web.Response(body=whitelist.pki.ca_certificate(name), content_type="application/pkix-cert")


def setup_whitelist(app: web.Application, settings: Settings) -> WhitelistService:
    """Mount /whitelist (signed), /whitelist/unsigned, /whitelist/certificate (the simulated IGC-Santé root, PEM)
    /whitelist/crl/{root,org}.crl (DER CRLs, the certificates' distribution points) and /whitelist/ca/{org,root}.cer
    (DER CA certificates, the signer's caIssuers)."""
    whitelist = WhitelistService(settings)
    app[WHITELIST] = whitelist
    app.router.add_get("/whitelist", signed_list)
    app.router.add_get("/whitelist/unsigned", unsigned_list)
    app.router.add_get("/whitelist/certificate", certificate)
    app.router.add_get("/whitelist/crl/{name}", crl)
    app.router.add_get("/whitelist/ca/{name}", ca_certificate)
    return whitelist
