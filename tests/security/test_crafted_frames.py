"""A crafted instance (stored by an uploader, or sent by a PACS) against the walk that cuts frames out of its bytes.

What the walk cannot vouch for it leaves to pydicom; it never answers bytes that are not the frame's, never raises
past itself, and never reads beyond the instance: sequences nested thousands deep, item lengths that lie, a Number
of Frames far above the fragments, a Basic Offset Table pointing outside them.
"""

from __future__ import annotations

import struct

import pytest
from pydicom.uid import JPEGLSLossless

from drimbox.dicomweb.fragments import encapsulated_frames

_ITEM, _ITEM_END, _SEQ_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF


def _tag(group: int, element: int, length: int) -> bytes:
    return struct.pack("<HHI", group, element, length)


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _part10(body: bytes) -> bytes:
    uid = JPEGLSLossless.encode() + b"\x00" * (len(JPEGLSLossless) % 2)
    meta = _explicit(0x0002, 0x0010, b"UI", uid)
    return b"\x00" * 128 + b"DICM" + _explicit(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta))) + meta + body


def _pixels(fragments: list[bytes], offsets: list[int] | None = None) -> bytes:
    table = b"".join(struct.pack("<I", o) for o in offsets or [])
    out = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, _UNDEFINED) + _tag(*_ITEM, len(table)) + table
    for fragment in fragments:
        out += _tag(*_ITEM, len(fragment)) + fragment
    return out + _tag(*_SEQ_END, 0)


def _nested(depth: int) -> bytes:
    """(0040,A730) Content Sequence nested `depth` deep, every sequence and item of undefined length."""
    opening = (struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, _UNDEFINED) + _tag(*_ITEM, _UNDEFINED)) * depth
    return opening + (_tag(*_ITEM_END, 0) + _tag(*_SEQ_END, 0)) * depth


FRAME = b"\xff\xd8" + bytes(range(200)) + b"\xff\xd9"


def test_a_well_formed_instance_is_walked() -> None:
    """The reference for the attacks below: the same layout, honest, gives the frame."""
    assert encapsulated_frames(_part10(_nested(3) + _pixels([FRAME])), [1]) == [FRAME]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_part10(_nested(20_000) + _pixels([FRAME])), id="sequences nested 20000 deep"),
        pytest.param(
            _part10(_pixels([FRAME])).replace(struct.pack("<I", len(FRAME)), struct.pack("<I", 10**9)),
            id="a fragment longer than the file",
        ),
        pytest.param(_part10(_pixels([FRAME]))[:-8], id="no sequence delimiter"),
        pytest.param(
            _part10(_explicit(0x0028, 0x0008, b"IS", b"99999999") + _pixels([FRAME, FRAME])),
            id="far more frames than fragments",
        ),
        pytest.param(
            _part10(_explicit(0x0028, 0x0008, b"IS", b"3 ") + _pixels([FRAME] * 6, [0, 10**6, 2 * 10**6])),
            id="an offset table pointing outside the fragments",
        ),
        pytest.param(_part10(_explicit(0x0028, 0x0008, b"IS", b"-1") + _pixels([FRAME])), id="a negative count"),
        pytest.param(
            _part10(
                _explicit(0x0010, 0x0020, b"LO", b"ID") + _explicit(0x0008, 0x0018, b"UI", b"1.2") + _pixels([FRAME])
            ),
            id="elements out of order",
        ),
    ],
)
def test_what_cannot_be_vouched_for_is_left_to_pydicom(data: bytes) -> None:
    for numbers in ([1], [2], [1, 3]):
        assert encapsulated_frames(data, numbers) is None
