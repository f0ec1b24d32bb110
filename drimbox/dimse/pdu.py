"""PS3.8 §9.3 association PDUs (A-ASSOCIATE-RQ/AC/RJ, A-RELEASE, A-ABORT): encoded and parsed in place."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

# PDU types (PS3.8 §9.3.1).
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# drimbox's own Implementation Class UID (a UUID-derived 2.25 UID) and version name (≤ 16 characters).
IMPLEMENTATION_CLASS_UID = "2.25.179926669846969075915929831017356551376"
IMPLEMENTATION_VERSION = "DRIMBOX_0_1"

# Presentation context results (PS3.8 §9.3.3.2).
ACCEPTANCE = 0
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

_ITEM = struct.Struct(">BBH")
_HEADER = struct.Struct(">BBL")


class PduError(ValueError):
    """A PDU that does not follow PS3.8: the association must be aborted."""


@dataclass(frozen=True)
class ProposedContext:
    """One presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class ContextResult:
    """The acceptor's answer for one presentation context (A-ASSOCIATE-AC)."""

    context_id: int
    result: int
    transfer_syntax: str = ""


@dataclass
class AssociateRQ:
    """What the requestor proposes: AE titles, presentation contexts, maximum PDU length and roles."""

    called_ae: str
    calling_ae: str
    contexts: list[ProposedContext]
    max_length: int = 0
    # SOP Class UID → (SCU role, SCP role) proposed by SCP/SCU Role Selection items.
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version: str = IMPLEMENTATION_VERSION


@dataclass
class AssociateAC:
    """What the acceptor answers: a result per presentation context, its maximum PDU length and roles."""

    called_ae: str
    calling_ae: str
    contexts: list[ContextResult]
    max_length: int = 0
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    implementation_class_uid: str = IMPLEMENTATION_CLASS_UID
    implementation_version: str = IMPLEMENTATION_VERSION


@dataclass(frozen=True)
class AssociateRJ:
    """A rejection: result (1 permanent, 2 transient), source and reason as in PS3.8 Table 9-21."""

    result: int
    source: int
    reason: int

    def describe(self) -> str:
        kind = "permanently" if self.result == 1 else "transiently"
        reasons = {
            (1, 1): "no reason given",
            (1, 2): "application context not supported",
            (1, 3): "calling AE title not recognized",
            (1, 7): "called AE title not recognized",
            (2, 2): "protocol version not supported",
            (3, 1): "temporary congestion",
            (3, 2): "local limit exceeded",
        }
        text = reasons.get((self.source, self.reason), f"source {self.source}, reason {self.reason}")
        return f"{kind} rejected: {text}"


def _item(item_type: int, payload: bytes) -> bytes:
    return _ITEM.pack(item_type, 0, len(payload)) + payload


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16)[:16]


def _ascii(text: str) -> bytes:
    return text.encode("ascii")


def _user_information(
    max_length: int, implementation_class_uid: str, version: str, roles: dict[str, tuple[bool, bool]]
) -> bytes:
    sub = [
        _item(0x51, struct.pack(">L", max_length)),
        _item(0x52, _ascii(implementation_class_uid)),
    ]
    for uid, (scu, scp) in roles.items():
        raw = _ascii(uid)
        sub.append(_item(0x54, struct.pack(">H", len(raw)) + raw + bytes((int(scu), int(scp)))))
    if version:
        sub.append(_item(0x55, _ascii(version[:16])))
    return _item(0x50, b"".join(sub))


def _associate(pdu_type: int, called: str, calling: str, items: Sequence[bytes]) -> bytes:
    body = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32) + b"".join(items)
    return _HEADER.pack(pdu_type, 0, len(body)) + body


def encode_rq(rq: AssociateRQ) -> bytes:
    """The A-ASSOCIATE-RQ PDU for `rq`."""
    items = [_item(0x10, _ascii(APPLICATION_CONTEXT))]
    for ctx in rq.contexts:
        sub = [_item(0x30, _ascii(ctx.abstract_syntax))]
        sub.extend(_item(0x40, _ascii(ts)) for ts in ctx.transfer_syntaxes)
        items.append(_item(0x20, bytes((ctx.context_id, 0, 0, 0)) + b"".join(sub)))
    items.append(_user_information(rq.max_length, rq.implementation_class_uid, rq.implementation_version, rq.roles))
    return _associate(ASSOCIATE_RQ, rq.called_ae, rq.calling_ae, items)


def encode_ac(ac: AssociateAC) -> bytes:
    """The A-ASSOCIATE-AC PDU for `ac`."""
    items = [_item(0x10, _ascii(APPLICATION_CONTEXT))]
    for ctx in ac.contexts:
        # A rejected context still carries a transfer syntax sub-item, whose value is not significant.
        ts = _item(0x40, _ascii(ctx.transfer_syntax)) if ctx.result == ACCEPTANCE else _item(0x40, b"")
        items.append(_item(0x21, bytes((ctx.context_id, 0, ctx.result, 0)) + ts))
    items.append(_user_information(ac.max_length, ac.implementation_class_uid, ac.implementation_version, ac.roles))
    return _associate(ASSOCIATE_AC, ac.called_ae, ac.calling_ae, items)


def encode_rj(rj: AssociateRJ) -> bytes:
    return _HEADER.pack(ASSOCIATE_RJ, 0, 4) + bytes((0, rj.result, rj.source, rj.reason))


def encode_release(pdu_type: int) -> bytes:
    """A-RELEASE-RQ or A-RELEASE-RP."""
    return _HEADER.pack(pdu_type, 0, 4) + bytes(4)


def encode_abort(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT; source 0 = service user (then reason is not significant), 2 = service provider."""
    return _HEADER.pack(ABORT, 0, 4) + bytes((0, 0, source, reason))


def _items(data: bytes, start: int = 0) -> Iterator[tuple[int, bytes]]:
    pos = start
    while pos < len(data):
        if pos + 4 > len(data):
            raise PduError("truncated item header")
        item_type, _, length = _ITEM.unpack_from(data, pos)
        end = pos + 4 + length
        if end > len(data):
            raise PduError(f"item 0x{item_type:02X} longer than its PDU")
        yield item_type, data[pos + 4 : end]
        pos = end


def _printable(raw: bytes, what: str) -> str:
    # Refused here rather than replaced by U+FFFD: an AE title or UID read back into our answer must encode.
    if not raw.isascii():
        raise PduError(f"{what} is not ASCII")
    return raw.decode("ascii")


def _uid(raw: bytes) -> str:
    # Some implementations pad UIDs with NUL or space, which PS3.8 does not allow but is common.
    return _printable(raw, "UID").rstrip("\0 ")


def _parse_user_information(payload: bytes) -> tuple[int, str, str, dict[str, tuple[bool, bool]]]:
    max_length, impl_uid, version = 0, "", ""
    roles: dict[str, tuple[bool, bool]] = {}
    for sub_type, sub in _items(payload):
        if sub_type == 0x51 and len(sub) == 4:
            (max_length,) = struct.unpack(">L", sub)
        elif sub_type == 0x52:
            impl_uid = _uid(sub)
        elif sub_type == 0x55:
            version = sub.decode("ascii", "replace").strip()
        elif sub_type == 0x54 and len(sub) >= 2:
            (uid_length,) = struct.unpack_from(">H", sub)
            if len(sub) < 4 + uid_length:
                raise PduError("truncated SCP/SCU role selection item")
            roles[_uid(sub[2 : 2 + uid_length])] = (bool(sub[2 + uid_length]), bool(sub[3 + uid_length]))
    return max_length, impl_uid, version, roles


def _parse_associate(body: bytes) -> tuple[str, str, list[tuple[int, bytes]]]:
    if len(body) < 68:
        raise PduError("A-ASSOCIATE PDU shorter than its fixed fields")
    called = _printable(body[4:20], "called AE title").strip()
    calling = _printable(body[20:36], "calling AE title").strip()
    return called, calling, list(_items(body, 68))


def parse_rq(body: bytes) -> AssociateRQ:
    """The A-ASSOCIATE-RQ whose PDU body (after the 6-byte header) is `body`."""
    called, calling, items = _parse_associate(body)
    rq = AssociateRQ(called_ae=called, calling_ae=calling, contexts=[])
    for item_type, payload in items:
        if item_type == 0x20:
            if len(payload) < 4:
                raise PduError("truncated presentation context item")
            abstract, syntaxes = "", []
            for sub_type, sub in _items(payload, 4):
                if sub_type == 0x30:
                    abstract = _uid(sub)
                elif sub_type == 0x40:
                    syntaxes.append(_uid(sub))
            rq.contexts.append(ProposedContext(payload[0], abstract, tuple(syntaxes)))
        elif item_type == 0x50:
            rq.max_length, rq.implementation_class_uid, rq.implementation_version, rq.roles = _parse_user_information(
                payload
            )
    return rq


def parse_ac(body: bytes) -> AssociateAC:
    """The A-ASSOCIATE-AC whose PDU body (after the 6-byte header) is `body`."""
    called, calling, items = _parse_associate(body)
    ac = AssociateAC(called_ae=called, calling_ae=calling, contexts=[])
    for item_type, payload in items:
        if item_type == 0x21:
            if len(payload) < 4:
                raise PduError("truncated presentation context item")
            ts = next((_uid(sub) for sub_type, sub in _items(payload, 4) if sub_type == 0x40), "")
            ac.contexts.append(ContextResult(payload[0], payload[2], ts))
        elif item_type == 0x50:
            ac.max_length, ac.implementation_class_uid, ac.implementation_version, ac.roles = _parse_user_information(
                payload
            )
    return ac


def parse_rj(body: bytes) -> AssociateRJ:
    if len(body) < 4:
        raise PduError("truncated A-ASSOCIATE-RJ")
    return AssociateRJ(body[1], body[2], body[3])
