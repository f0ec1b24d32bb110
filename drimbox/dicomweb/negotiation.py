"""Accept header parsing and the choice of media type and transfer syntax per response (PS3.18 §8.7)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.uid import ExplicitVRLittleEndian

from drimbox.dicomweb.transcode import can_transcode, is_compressed
from drimbox.dimse.uid import is_lenient_uid

ANY_SYNTAX = "*"
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
DICOM_JSON = "application/dicom+json"
MULTIPART = "multipart/related"

# Compressed pixel data media types (PS3.18 Table 8.7.3-5): transfer syntax → media type, and the syntax a
# media type means when the Accept names no transfer-syntax.
_PIXEL_MEDIA: dict[str, str] = {
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
}
_MEDIA_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
_MEDIA_DEFAULT_SYNTAX = {
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    OCTET_STREAM: ExplicitVRLittleEndian,
}


# `[http] compress_on_the_fly`: when the box may encode pixel data the client asks compressed but it stores
# uncompressed. "auto" (the default): only when the client weights a compressed syntax strictly above every form it
# accepts that needs no encoding (a viewer on a slow link: q=1 for JPEG-LS, q=0.5 uncompressed); equal weights leave
# the choice to the box (RFC 9110 §12.5.1), which then spends no CPU. True: whenever the client lists it first.
# False: never. Lossy is never produced and lossy data is never re-encoded (transcode.can_transcode).
ALWAYS, NEVER, AUTO = "always", "never", "auto"


def encode_policy(setting: bool | str) -> str:
    """The policy a `compress` setting means: ALWAYS (true), NEVER (false) or AUTO ("auto")."""
    if setting is True or setting == ALWAYS:
        return ALWAYS
    if setting is False or setting == NEVER:
        return NEVER
    if setting == AUTO:
        return AUTO
    raise ValueError(f'compress_on_the_fly: true, false or "auto", got {setting!r}')


def _encoding_allowed(policy: str, q: float, plain_q: float) -> bool:
    """Whether a choice that needs encoding (weight `q`) may be served, the best choice needing none weighing
    `plain_q` (0 when there is none: a client that accepts compressed frames only is served under AUTO too)."""
    return policy == ALWAYS or (policy == AUTO and q > plain_q)


class NotAcceptable(Exception):
    """No representation the client accepts can be produced (HTTP 406); the message says what we offer."""


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an Accept header: `type/subtype`, its parameters (lower-case names), its q-value."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


def _split_unquoted(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes (a quoted `type="a,b"` stays whole)."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            quoted = not quoted
            current.append(char)
        elif char == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, best first (q descending, then order); no header means `*/*`.

    Lenient as real clients require: empty elements (a trailing comma), parameters after `q` (the ANS
    sample puts `boundary=**` there), unquoted or quoted values; ranges with q=0 are dropped.
    """
    if header is None or not header.strip():
        return [MediaRange("*/*")]
    ranges: list[tuple[float, int, MediaRange]] = []
    for position, element in enumerate(_split_unquoted(header, ",")):
        pieces = _split_unquoted(element, ";")
        media_type = pieces[0].strip().lower()
        if not media_type:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for piece in pieces[1:]:
            name, sep, value = piece.partition("=")
            name = name.strip().lower()
            if not name or not sep:
                continue
            if name == "q":
                try:
                    q = min(1.0, max(0.0, float(value.strip())))
                except ValueError:
                    q = 1.0  # an unreadable weight does not make the choice unacceptable
            else:
                params[name] = _unquote(value)
        if q > 0:
            ranges.append((-q, position, MediaRange(media_type, params, q)))
    return [r for _, _, r in sorted(ranges, key=lambda item: (item[0], item[1]))]


def _wanted_syntax(params: dict[str, str], default: str) -> str | None:
    syntax = params.get("transfer-syntax", default).strip() or default
    return syntax if syntax == ANY_SYNTAX or is_lenient_uid(syntax) else None


@dataclass(frozen=True, slots=True)
class InstanceChoice:
    """One acceptable way to send a DICOM instance: a transfer syntax (or `*`), multipart or a single body."""

    syntax: str
    single_part: bool = False
    q: float = 1.0


def instance_choices(ranges: list[MediaRange], *, single_part_allowed: bool) -> list[InstanceChoice]:
    """What the client accepts for DICOM instances, best first; NotAcceptable when nothing is.

    `multipart/related; type="application/dicom"` (a missing type means it too), `*/*` and `multipart/*`
    with Explicit VR Little Endian unless `transfer-syntax` says otherwise; a bare `application/dicom` only
    for a single instance.
    """
    choices: list[InstanceChoice] = []
    for r in ranges:
        part_type = r.params.get("type", DICOM).lower()
        if r.media_type in (MULTIPART, "multipart/*", "*/*") and part_type in (DICOM, "application/*", "*/*"):
            syntax = _wanted_syntax(r.params, ExplicitVRLittleEndian)
            if syntax is not None:
                choices.append(InstanceChoice(syntax, q=r.q))
        elif r.media_type == DICOM and single_part_allowed:
            syntax = _wanted_syntax(r.params, ExplicitVRLittleEndian)
            if syntax is not None:
                choices.append(InstanceChoice(syntax, single_part=True, q=r.q))
    if not choices:
        raise NotAcceptable(
            'instances are sent as multipart/related; type="application/dicom" '
            "[; transfer-syntax=<UID>|*]" + (" or application/dicom" if single_part_allowed else "")
        )
    return choices


def syntaxes_for(
    stored: str, choices: list[InstanceChoice], *, compress: bool | str = True
) -> Iterator[InstanceChoice]:
    """The choices that can deliver an instance stored in `stored`, best first, `*` resolved to `stored`.

    `compress` (see encode_policy) says when choices that would compress on the fly (CPU-bound: a box may prefer
    to spend bandwidth rather than CPU) are kept; as stored and decompression always are.
    """
    policy = encode_policy(compress)

    def encodes(choice: InstanceChoice) -> bool:
        return choice.syntax not in (ANY_SYNTAX, stored) and is_compressed(choice.syntax)

    def plain(choice: InstanceChoice) -> bool:  # deliverable without encoding: as stored, or decompressed
        return not encodes(choice) and (choice.syntax in (ANY_SYNTAX, stored) or can_transcode(stored, choice.syntax))

    plain_q = max((c.q for c in choices if plain(c)), default=0.0)
    for choice in choices:
        if choice.syntax == ANY_SYNTAX:
            yield InstanceChoice(stored, choice.single_part, choice.q)
        elif choice.syntax == stored or (
            can_transcode(stored, choice.syntax)
            and (not encodes(choice) or _encoding_allowed(policy, choice.q, plain_q))
        ):
            yield choice


@dataclass(frozen=True, slots=True)
class PixelChoice:
    """One acceptable way to send frames or pixel bulk data: part media type, transfer syntax, multipart."""

    media_type: str
    syntax: str  # the syntax the bytes are in; ExplicitVRLittleEndian = native (uncompressed) pixels
    single_part: bool = False


def pixel_media_type(syntax: str) -> str:
    """Media type of pixel data in `syntax`: its compressed image type, or application/octet-stream."""
    return _PIXEL_MEDIA.get(syntax, OCTET_STREAM) if is_compressed(syntax) else OCTET_STREAM


def pixel_choices(
    ranges: list[MediaRange], stored: str, *, single_part_allowed: bool, compress: bool | str = True
) -> list[PixelChoice]:
    """What the client accepts for the frames of an instance stored in `stored`, best first (PS3.18 §8.7.3.5).

    `*/*`, `image/*` and `transfer-syntax=*` mean as stored (never decompress); octet-stream without a syntax
    means native pixels; a compressed image type is served when stored so, or when we can encode it and
    `compress` allows encoding on the fly (`[http] compress_on_the_fly`, see encode_policy: CPU the box may
    prefer not to spend).
    """
    policy = encode_policy(compress)
    weighted: list[tuple[PixelChoice, float]] = []  # the choices and their weights, before the policy's filter
    native = PixelChoice(OCTET_STREAM, ExplicitVRLittleEndian)
    as_stored = PixelChoice(pixel_media_type(stored), stored if is_compressed(stored) else ExplicitVRLittleEndian)
    for r in ranges:
        if r.media_type in (MULTIPART, "multipart/*"):
            part_type = r.params.get("type", OCTET_STREAM).lower()
            media, single = _MEDIA_ALIASES.get(part_type, part_type), False
        elif r.media_type == "*/*":
            media, single = "*/*", False
        elif single_part_allowed:
            media, single = _MEDIA_ALIASES.get(r.media_type, r.media_type), True
        else:
            continue
        syntax = _wanted_syntax(r.params, _MEDIA_DEFAULT_SYNTAX.get(media, ANY_SYNTAX))
        if syntax is None:
            continue
        if media in ("*/*", "image/*") or (media == OCTET_STREAM and syntax == ANY_SYNTAX):
            if media == "image/*" and not is_compressed(stored):
                continue
            # `transfer-syntax=*` under octet-stream: the stored bitstream, labelled by the part's syntax.
            media_type = OCTET_STREAM if media == OCTET_STREAM else as_stored.media_type
            weighted.append((PixelChoice(media_type, as_stored.syntax, single), r.q))
        elif media == OCTET_STREAM:
            if syntax == ExplicitVRLittleEndian and can_transcode(stored, ExplicitVRLittleEndian):
                weighted.append((PixelChoice(native.media_type, native.syntax, single), r.q))
            elif syntax == stored:  # the stored bitstream, named explicitly rather than with `*`
                weighted.append((PixelChoice(OCTET_STREAM, stored, single), r.q))
        elif _PIXEL_MEDIA.get(syntax) == media and (syntax == stored or can_transcode(stored, syntax)):
            weighted.append((PixelChoice(media, syntax, single), r.q))
    plain_q = max((q for c, q in weighted if not encodes_pixels(stored, c)), default=0.0)
    choices = [c for c, q in weighted if not encodes_pixels(stored, c) or _encoding_allowed(policy, q, plain_q)]
    if not choices:
        raise NotAcceptable(
            f'frames of this instance are sent as multipart/related; type="{OCTET_STREAM}" (native pixels, or '
            f'transfer-syntax=* for the stored bitstream) or type="{as_stored.media_type}" (as stored)'
        )
    return choices


def encodes_pixels(stored: str, choice: PixelChoice) -> bool:
    """Whether serving `choice` for data stored in `stored` means compressing pixels on the fly (CPU-bound)."""
    return is_compressed(choice.syntax) and choice.syntax != stored


def json_media_type(ranges: list[MediaRange]) -> str:
    """application/dicom+json (or application/json when only that is accepted); NotAcceptable otherwise."""
    for r in ranges:
        if r.media_type in (DICOM_JSON, "application/*", "*/*"):
            return DICOM_JSON
        if r.media_type == "application/json":
            return "application/json"
    raise NotAcceptable(f"this resource is available as {DICOM_JSON} only")


def rendered_media_type(ranges: list[MediaRange]) -> str:
    """image/jpeg or image/png for rendered resources (JPEG for wildcards); NotAcceptable otherwise."""
    for r in ranges:
        if r.media_type in ("image/jpeg", "image/png"):
            return r.media_type
        if r.media_type in ("image/*", "*/*"):
            return "image/jpeg"
    raise NotAcceptable("rendered images are available as image/jpeg or image/png")
