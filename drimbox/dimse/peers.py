"""DICOM peers the box's SCPs accept: an AE title AND the network address it calls from, as the configuration lists them."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from drimbox.config import DicomSettings, Settings

LOG = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: permanent, service user, "calling AE title not recognized" (PS3.8 9.3.4).
CALLING_AE_NOT_RECOGNIZED = (1, 1, 3)


@dataclass(frozen=True)
class Caller:
    """Who is at the other end of an incoming association: the AE title it claims and the address it calls from."""

    ae_title: str
    address: str

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.address}"


def normal_address(address: str) -> str:
    """The address as a comparable literal: an IPv4 peer seen on a dual-stack socket (::ffff:a.b.c.d) is a.b.c.d."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def parse_peer(entry: str) -> tuple[str, str]:
    """ "AE_TITLE@host" → (AE title, host). Raises ValueError naming what is wrong."""
    ae_title, sep, host = entry.strip().rpartition("@")
    ae_title, host = ae_title.strip(), host.strip().strip("[]")
    if not sep or not ae_title or not host:
        raise ValueError(f"expected AE_TITLE@host, got {entry!r}")
    if len(ae_title) > 16 or "\\" in ae_title:
        raise ValueError(f"a DICOM AE title is 1 to 16 characters without backslash, got {ae_title!r}")
    return ae_title, host


def _addresses(host: str) -> frozenset[str]:
    """The addresses `host` stands for: itself when a literal, else what the resolver says now (at start)."""
    try:
        return frozenset({normal_address(str(ipaddress.ip_address(host)))})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        # The peer cannot be recognised until the box restarts with a name that resolves: say so once.
        LOG.warning("DICOM peer host %s does not resolve (%s): its associations will be refused", host, exc)
        return frozenset()
    return frozenset(normal_address(str(info[4][0])) for info in infos)


class PeerList:
    """A set of (AE title, address) pairs; an AE title alone is not a credential, so both must match."""

    def __init__(self, entries: Iterable[tuple[str, str]] = ()) -> None:
        self.entries = tuple(dict.fromkeys((ae, host) for ae, host in entries))
        self._allowed = {(ae, address) for ae, host in self.entries for address in _addresses(host)}

    @classmethod
    def parse(cls, entries: Iterable[str]) -> PeerList:
        return cls(parse_peer(e) for e in entries)

    def __or__(self, other: PeerList) -> PeerList:
        return PeerList((*self.entries, *other.entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def allows(self, caller: Caller) -> bool:
        return (caller.ae_title.strip(), normal_address(caller.address)) in self._allowed

    def describe(self) -> str:
        return ", ".join(f"{ae}@{host}" for ae, host in self.entries) or "nobody"


def store_peers(settings: Settings) -> PeerList:
    """Native: who may C-STORE into the archive ([dicom] store_peers; empty = nobody)."""
    return PeerList.parse(settings.dicom.store_peers)


def iocm_senders(settings: Settings) -> PeerList:
    """Who may send IOCM rejection notes: [dicom] iocm_senders, else the [pacs] peer in Proxy and nobody in Native."""
    if settings.dicom.iocm_senders:
        return PeerList.parse(settings.dicom.iocm_senders)
    if settings.box.profile == "proxy":
        return PeerList([(settings.pacs.ae_title, settings.pacs.host)])
    return PeerList()


def own_peer(dicom: DicomSettings) -> PeerList:
    """The box itself: its Native publication pipeline C-FINDs its own archive as its own AE, from its own host."""
    hosts = ["127.0.0.1", "::1"]
    if dicom.host not in ("", "0.0.0.0", "::"):
        hosts.append(dicom.host)
    return PeerList((dicom.ae_title, host) for host in hosts)
