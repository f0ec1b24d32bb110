"""A quick walk of an instance's explicit VR little endian elements: its identity, and whether the pixels were reached."""

from __future__ import annotations

import struct

# The four identifying values, by tag: tag → (name, padding its VR strips).
_QUICK_TAGS = {0x00080018: ("SOPInstanceUID", "\x00"), 0x00100020: ("PatientID", " "),
               0x0020000D: ("StudyInstanceUID", "\x00"), 0x0020000E: ("SeriesInstanceUID", "\x00")}  # fmt: skip
_PIXEL_DATA = 0x7FE00010
# Data sets not in explicit VR little endian (implicit, big endian, deflated) are not walked.
NOT_EXPLICIT_LE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}


def quick_identity(data: bytes, transfer_syntax_uid: str) -> tuple[dict[str, str], bool] | None:
    """The identifying values of a Part-10 data set, and True when the walk reached the pixel data; None: pydicom's.

    Top-level elements are walked in strictly ascending order (a tag repeated further on, that pydicom would read
    last, answers None); values are ASCII without their VR's padding, which pydicom strips too, so a match here is a
    match there. Undefined lengths, odd VRs and non-ASCII values answer None. Reaching the pixel data means every
    element before it was in `data`: the first bytes of a large instance then tell its identity as the whole would.
    """
    if transfer_syntax_uid in NOT_EXPLICIT_LE:
        return None
    try:
        found: dict[str, str] = {}
        pos, previous = 132, 0
        while pos + 8 <= len(data):
            group, element = struct.unpack_from("<HH", data, pos)
            tag = group << 16 | element
            if tag <= previous:
                return None
            if tag >= _PIXEL_DATA:
                return found, True
            previous = tag
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from("<I", data, pos + 8)
                start = pos + 12
            elif vr.isalpha() and vr.isupper():
                (length,) = struct.unpack_from("<H", data, pos + 6)
                start = pos + 8
            else:
                return None  # not a VR: not explicit VR after all
            if length == 0xFFFFFFFF or start + length > len(data):
                return None  # an undefined length (a sequence) or a truncated element
            quick = _QUICK_TAGS.get(tag)
            if quick is not None:
                found[quick[0]] = data[start : start + length].decode("ascii").rstrip(quick[1])
            pos = start + length
        return found, False
    except (struct.error, UnicodeDecodeError):
        return None
