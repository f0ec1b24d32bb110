"""A stored frame's compressed bytes found by a walk of the Part-10 bytes, without pydicom, for the common layouts."""

# A viewer asks every slice of a series as stored: pydicom reading the whole data set to hand back one fragment was
# 0.26 ms of each 177 KB JPEG-LS frame here, a fifth of what the box spends on it. The walk knows explicit VR little
# endian (every compressed transfer syntax) and the frame layouts DICOM allows without an index of its own: one
# frame in any number of fragments, one fragment per frame, or a Basic Offset Table. Anything else (an Extended
# Offset Table, a data set it cannot walk) answers None and pydicom does the work, as before.

from __future__ import annotations

import itertools
import struct

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_NUMBER_OF_FRAMES = 0x00280008
_PIXEL_DATA = 0x7FE00010
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_TAG_LENGTH = struct.Struct("<HHI")
_TAG_VR = struct.Struct("<HH2s")


class _Unwalkable(Exception):
    """Not a layout this walk reads: pydicom's turn."""


def encapsulated_frames(data: bytes, numbers: list[int]) -> list[bytes] | None:
    """Frames `numbers` (1-based) of a Part-10 instance with encapsulated Pixel Data, as stored; None: ask pydicom.

    None also for what pydicom reports better (no pixel data, a frame beyond the last, a truncated file).
    """
    try:
        start = _data_set_start(data)
        frames, pixels = _walk_to_pixels(data, start)
        fragments, offsets = _items(data, pixels)
    except (_Unwalkable, struct.error, ValueError, IndexError, RecursionError):
        return None  # RecursionError: sequences nested thousands deep, as a crafted file may have
    if not numbers or any(n < 1 or n > frames for n in numbers):
        return None
    if frames == 1:
        whole = b"".join(data[s:e] for s, e in fragments)
        return [whole for _ in numbers]
    if len(fragments) == frames:
        return [data[slice(*fragments[n - 1])] for n in numbers]
    if len(offsets) != frames:
        return None  # several fragments a frame and no table to tell which: pydicom finds the frame boundaries
    # The table's offsets count from the first fragment item's tag: each fragment is told by where its item starts.
    first = fragments[0][0] - 8 if fragments else 0
    starts = {s - 8 - first for s, _ in fragments}
    if offsets[0] != 0 or any(b <= a for a, b in itertools.pairwise(offsets)) or not starts.issuperset(offsets):
        return None  # a table that does not fall on the fragments' items: pydicom's reading decides
    out = []
    for n in numbers:
        low, high = offsets[n - 1], offsets[n] if n < frames else None
        parts = [data[s:e] for s, e in fragments if s - 8 - first >= low and (high is None or s - 8 - first < high)]
        if not parts:
            return None
        out.append(b"".join(parts))
    return out


def _data_set_start(data: bytes) -> int:
    if data[128:132] != b"DICM":
        raise _Unwalkable("not Part 10")
    group, element, vr = _TAG_VR.unpack_from(data, 132)
    if (group, element) != (0x0002, 0x0000) or vr != b"UL":
        raise _Unwalkable("no File Meta Information Group Length")
    meta_length: int = struct.unpack_from("<I", data, 140)[0]
    return 144 + meta_length


def _element(data: bytes, pos: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, value start, value length) of the explicit VR little endian element at `pos`."""
    group, element, vr = _TAG_VR.unpack_from(data, pos)
    tag = group << 16 | element
    if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
        (length,) = struct.unpack_from("<I", data, pos + 4)
        return tag, b"", pos + 8, length
    if vr in _LONG_VRS:
        (length,) = struct.unpack_from("<I", data, pos + 8)
        return tag, vr, pos + 12, length
    if not (vr.isalpha() and vr.isupper()):
        raise _Unwalkable("not explicit VR")
    (length,) = struct.unpack_from("<H", data, pos + 6)
    return tag, vr, pos + 8, length


def _walk_to_pixels(data: bytes, pos: int) -> tuple[int, int]:
    """(Number of Frames, where the Pixel Data's items start), walking the top-level elements in tag order."""
    frames, previous = 1, -1
    while pos < len(data):
        tag, vr, start, length = _element(data, pos)
        if tag <= previous:
            raise _Unwalkable("elements out of order")  # pydicom would keep the last of a repeated tag
        previous = tag
        if tag == _EXTENDED_OFFSET_TABLE:
            raise _Unwalkable("an Extended Offset Table")
        if tag == _PIXEL_DATA:
            if vr not in (b"OB", b"OW") or length != _UNDEFINED:
                raise _Unwalkable("native Pixel Data")
            return frames, start
        if length == _UNDEFINED:
            if vr != b"SQ":  # an undefined-length UN holds implicit VR items: not walked here
                raise _Unwalkable("undefined length outside a sequence")
            pos = _after_sequence(data, start)
            continue
        if start + length > len(data):
            raise _Unwalkable("truncated")
        if tag == _NUMBER_OF_FRAMES:
            text = data[start : start + length].decode("ascii").strip(" \x00")
            frames = int(text) if text else 1
        pos = start + length
    raise _Unwalkable("no Pixel Data")


def _after_sequence(data: bytes, pos: int) -> int:
    """Past the Sequence Delimitation Item of an undefined-length sequence whose items start at `pos`."""
    while True:
        tag, _, start, length = _element(data, pos)
        if tag == _SEQUENCE_END:
            return start
        if tag != _ITEM:
            raise _Unwalkable("not an item")
        pos = _after_item(data, start) if length == _UNDEFINED else start + length


def _after_item(data: bytes, pos: int) -> int:
    """Past the Item Delimitation Item of an undefined-length item whose elements start at `pos`."""
    while True:
        tag, vr, start, length = _element(data, pos)
        if tag == _ITEM_END:
            return start
        if length == _UNDEFINED:
            if vr != b"SQ":
                raise _Unwalkable("undefined length outside a sequence")
            pos = _after_sequence(data, start)
        else:
            pos = start + length


def _items(data: bytes, pos: int) -> tuple[list[tuple[int, int]], list[int]]:
    """The fragments' (start, end) after the Basic Offset Table, and the table's offsets (empty when it is)."""
    tag, _, start, length = _element(data, pos)
    if tag != _ITEM or length % 4 or start + length > len(data):
        raise _Unwalkable("no Basic Offset Table item")
    offsets = list(struct.unpack_from(f"<{length // 4}I", data, start))
    pos = start + length
    fragments: list[tuple[int, int]] = []
    while True:
        tag, _, start, length = _element(data, pos)
        if tag == _SEQUENCE_END:
            return fragments, offsets
        if tag != _ITEM or length == _UNDEFINED or start + length > len(data):
            raise _Unwalkable("not a fragment item")
        fragments.append((start, start + length))
        pos = start + length
