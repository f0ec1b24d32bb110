"""MTOM/XOP packaging of SOAP 1.2 messages (multipart/related with binary attachments), both directions."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from lxml import etree

from drimbox.xds.namespaces import XOP

ROOT_CID = "root.message@drimbox"


class MtomError(ValueError):
    """The HTTP body is not a well-formed SOAP or MTOM/XOP message."""


@dataclass(frozen=True)
class Attachment:
    content_id: str  # without the angle brackets and without the "cid:" prefix
    data: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class SoapMessage:
    """A SOAP envelope (raw XML bytes) and the XOP attachments that travelled with it, by Content-ID."""

    envelope: bytes
    attachments: dict[str, bytes]


def encode(envelope: bytes, attachments: list[Attachment], action: str) -> tuple[str, bytes]:
    """Package the envelope and its attachments as MTOM; return (Content-Type header, body)."""
    boundary = "MIMEBoundary_" + secrets.token_hex(16)
    content_type = (
        f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
        f'start="<{ROOT_CID}>"; start-info="application/soap+xml"; action="{action}"'
    )
    parts = [
        (
            f"--{boundary}\r\n"
            "Content-Type: application/xop+xml; charset=UTF-8; "
            f'type="application/soap+xml"; action="{action}"\r\n'
            "Content-Transfer-Encoding: binary\r\n"
            f"Content-ID: <{ROOT_CID}>\r\n\r\n"
        ).encode("ascii")
        + envelope
        + b"\r\n"
    ]
    for att in attachments:
        parts.append(
            (
                f"--{boundary}\r\n"
                f"Content-Type: {att.content_type}\r\n"
                "Content-Transfer-Encoding: binary\r\n"
                f"Content-ID: <{att.content_id}>\r\n\r\n"
            ).encode("ascii")
            + att.data
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    return content_type, b"".join(parts)


# RFC 2046 §5.1.1: 1 to 70 characters from this set, not ending with a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_PARAM = re.compile(r';\s*([A-Za-z0-9_\-\.]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into its lowercased media type and its parameters."""
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for m in _PARAM.finditer(";" + rest):
        v = m.group(2).strip()
        if len(v) >= 2 and v[0] == v[-1] == '"':
            v = v[1:-1]
        params[m.group(1).lower()] = v
    return media.strip().lower(), params


def decode(content_type: str, body: bytes) -> SoapMessage:
    """Read a SOAP 1.2 request or response, plain or MTOM, into envelope and attachments."""
    media, params = parse_content_type(content_type or "")
    if media in ("application/soap+xml", "text/xml", "application/xml"):
        return SoapMessage(envelope=body, attachments={})
    if media != "multipart/related":
        raise MtomError(f"Content-Type {media or '(none)'!r} is neither SOAP nor MTOM")
    boundary = params.get("boundary")
    if not boundary:
        raise MtomError("multipart/related Content-Type without a boundary parameter")
    if not _BOUNDARY.fullmatch(boundary):
        # Checked before use: a non-ASCII boundary cannot even be encoded to search the body with.
        raise MtomError("multipart/related boundary is not 1 to 70 RFC 2046 characters")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 3:
        raise MtomError("MTOM body has no parts")
    start = params.get("start", "").strip("<>")
    root: bytes | None = None
    attachments: dict[str, bytes] = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        if chunk.startswith(b"\r\n"):
            chunk = chunk[2:]
        elif chunk.startswith(b"\n"):
            chunk = chunk[1:]
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            head, sep, data = chunk.partition(b"\n\n")
            if not sep:
                raise MtomError("MTOM part without a header/body separator")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").splitlines():
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        cid = headers.get("content-id", "").strip().strip("<>")
        if root is None and (not start or cid == start):
            root = data
        else:
            if not cid:
                raise MtomError("MTOM attachment without a Content-ID")
            attachments[cid] = data
    if root is None:
        raise MtomError(f"MTOM root part <{start}> not found")
    return SoapMessage(envelope=root, attachments=attachments)


def resolve_include(element: etree._Element, attachments: dict[str, bytes]) -> bytes:
    """Return the binary content of an element holding either base64 text or an xop:Include."""
    include = element.find(f"{{{XOP}}}Include")
    if include is not None:
        href = include.get("href", "")
        cid = href[4:] if href.startswith("cid:") else href
        from urllib.parse import unquote

        cid = unquote(cid)
        if cid not in attachments:
            raise MtomError(f"xop:Include href {href!r} names no attachment")
        return attachments[cid]
    import base64
    import binascii

    try:
        return base64.b64decode("".join((element.text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        name = etree.QName(element).text
        raise MtomError(f"element {name} holds neither an xop:Include nor valid base64") from None
