"""Frames asked as stored are cut out of the instance's bytes exactly as pydicom would cut them, in every layout."""

from __future__ import annotations

import io
import random

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import UID, JPEGLSLossless, SecondaryCaptureImageStorage

from drimbox.dicomweb.fragments import encapsulated_frames
from drimbox.dicomweb.negotiation import PixelChoice
from drimbox.dicomweb.pixels import frames_of, read_instance, stored_frames

AS_STORED = [PixelChoice("image/jls", JPEGLSLossless)]


def _frame_bytes(rng: random.Random, n: int) -> bytes:
    # Compressed-looking bytes, with what an item tag or a delimiter looks like inside, and JPEG markers at the ends.
    body = bytes(rng.randrange(256) for _ in range(n)) + b"\xfe\xff\x00\xe0\xfe\xff\xdd\xe0"
    return b"\xff\xd8" + body + b"\xff\xd9"


def _instance(frames: list[bytes], *, per_frame: int = 1, bot: bool = True, nested: bool = False,
              extended: bool = False, padding: bool = False) -> bytes:  # fmt: skip
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, "1.2.826.0.1.3680043.10.1313.77.1"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    if nested:
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator = "X", "99TEST"
        item = Dataset()
        item.ConceptNameCodeSequence = Sequence([inner])
        item.TextValue = "a value"
        ds.ContentSequence = Sequence([item, Dataset()])
    if extended:
        ds.ExtendedOffsetTable = bytes(8 * len(frames))
        ds.ExtendedOffsetTableLengths = bytes(8 * len(frames))
    ds.PixelData = encapsulate(frames, fragments_per_frame=per_frame, has_bot=bot)
    ds["PixelData"].VR = "OB"
    if padding:
        ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 16)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(ds.SOPInstanceUID)
    out = io.BytesIO()
    # Sequences of undefined length (pydicom's default when writing): the walk must step over them.
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _pydicom(data: bytes, numbers: list[int]) -> list[bytes]:
    return frames_of(read_instance(data), numbers, AS_STORED).parts


LAYOUTS = {
    "one frame, one fragment": dict(count=1),
    "one frame, three fragments": dict(count=1, per_frame=3),
    "one frame, no offset table": dict(count=1, bot=False),
    "one fragment a frame": dict(count=5),
    "one fragment a frame, no table": dict(count=5, bot=False),
    "three fragments a frame and a table": dict(count=4, per_frame=3),
    "sequences of undefined length first": dict(count=3, nested=True),
    "trailing padding": dict(count=2, padding=True),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_frames_are_pydicom_s(layout: str) -> None:
    options = dict(LAYOUTS[layout])
    rng = random.Random(layout)
    frames = [_frame_bytes(rng, rng.randrange(40, 400)) for _ in range(int(options.pop("count")))]
    data = _instance(frames, **options)  # type: ignore[arg-type]
    numbers = list(range(1, len(frames) + 1))
    cut = encapsulated_frames(data, numbers)
    assert cut is not None, "the walk should read this layout"
    assert cut == _pydicom(data, numbers)
    assert [f.rstrip(b"\x00") for f in cut] == [f.rstrip(b"\x00") for f in frames]
    assert encapsulated_frames(data, [len(frames)]) == cut[-1:]


def test_what_the_walk_leaves_to_pydicom_is_answered_all_the_same() -> None:
    rng = random.Random(7)
    frames = [_frame_bytes(rng, 100) for _ in range(3)]
    several_no_table = _instance(frames, per_frame=2, bot=False)  # frame boundaries need the JPEG markers
    extended = _instance(frames, extended=True)
    for data in (several_no_table, extended):
        assert encapsulated_frames(data, [2]) is None
        assert stored_frames(data, JPEGLSLossless, [2], AS_STORED).parts == _pydicom(data, [2])
    whole = _instance(frames)
    assert encapsulated_frames(whole, [4]) is None  # beyond the last frame: pydicom's 404 says so
    assert encapsulated_frames(whole[:-40], [1]) is None  # truncated
    assert encapsulated_frames(b"\x00" * 200, [1]) is None  # not Part 10
    assert stored_frames(whole, JPEGLSLossless, [3, 1], AS_STORED).parts == _pydicom(whole, [3, 1])


def test_a_random_cut_never_answers_wrong_bytes() -> None:
    """Whatever the bytes (cut short, a byte changed), the walk answers pydicom's frames or leaves them to pydicom."""
    rng = random.Random(11)
    frames = [_frame_bytes(rng, 60) for _ in range(3)]
    good = _instance(frames, nested=True)
    expected = _pydicom(good, [1, 2, 3])
    for _ in range(300):
        data = bytearray(good)
        position = rng.randrange(132, len(data))
        if rng.random() < 0.5:
            data[position] = rng.randrange(256)
        else:
            del data[position:]
        cut = encapsulated_frames(bytes(data), [1, 2, 3])
        if cut is not None and cut != expected:
            # A changed byte inside a frame is that frame's own: anything else must not come out as a frame.
            assert sum(a != b for a, b in zip(cut, expected, strict=True)) == 1 and len(data) == len(good)
