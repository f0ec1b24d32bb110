"""Frames and bulk data out of one Part-10 instance, as stored or converted (blocking: run in a thread)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pack_bits
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian

from drimbox.dicomweb.backend import NotFound
from drimbox.dicomweb.fragments import encapsulated_frames
from drimbox.dicomweb.json_model import resolve_bulk_path
from drimbox.dicomweb.negotiation import NotAcceptable, PixelChoice
from drimbox.dicomweb.transcode import is_compressed

log = logging.getLogger(__name__)
PIXEL_DATA = 0x7FE00010


@dataclass(frozen=True, slots=True)
class PixelParts:
    """The parts of a frames or bulk data response, all in the one representation that was chosen."""

    choice: PixelChoice
    parts: list[bytes]


def stored_frames(data: bytes, stored: str, frame_numbers: list[int], choices: list[PixelChoice]) -> PixelParts:
    """frames_of() for an instance held as Part-10 bytes: asked as stored, the compressed frames are cut out of the
    bytes directly (fragments.py), else the data set is read and frames_of() chooses."""
    if choices and choices[0].syntax == stored and is_compressed(stored):
        parts = encapsulated_frames(data, frame_numbers)
        if parts is not None:
            return PixelParts(choices[0], parts)
    return frames_of(read_instance(data), frame_numbers, choices)


def read_instance(data: bytes) -> Dataset:
    """The whole data set of a Part-10 instance held in memory."""
    return pydicom.dcmread(io.BytesIO(data))


def number_of_frames(ds: Dataset) -> int:
    """Number of Frames (0028,0008), 1 when absent or empty."""
    value = ds.get("NumberOfFrames")
    return int(value) if value not in (None, "") else 1


def _native_frame(ds: Dataset, stored: str, index: int) -> bytes:
    """Frame `index` (0-based) as native little-endian pixels, the bytes a native Pixel Data value holds."""
    bits = int(ds.BitsAllocated)
    if not is_compressed(stored) and stored != ExplicitVRBigEndian and bits % 8 == 0:
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * bits // 8
        # Slicing the stored value costs nothing: no decode, no copy of other frames.
        frame = bytes(ds.PixelData[index * size : (index + 1) * size])
        if len(frame) != size:
            raise ValueError(f"Pixel Data is shorter than frame {index + 1} needs")
        return frame
    arr, _ = get_decoder(UID(stored)).as_array(ds, index=index)
    if bits == 1:
        return pack_bits(arr)
    return bytes(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())


def _encoded_frame(ds: Dataset, stored: str, index: int, wanted: str) -> bytes:
    """Frame `index` compressed in `wanted` (lossless encoders only, see transcode.can_encode)."""
    encoder = get_encoder(UID(wanted))
    if not is_compressed(stored):
        return bytes(encoder.encode(ds, index=index))
    # Keep the stored colour space: the encoder is told it through the decoder's description of the pixels.
    keep_colour: Any = {"as_rgb": False}
    arr, meta = get_decoder(UID(stored)).as_array(ds, index=index, **keep_colour)
    options: dict[str, Any] = {**meta, "number_of_frames": 1}
    return bytes(encoder.encode(arr, **options))


def _frame(ds: Dataset, stored: str, index: int, frames: int, wanted: str) -> bytes:
    if wanted == stored and is_compressed(stored):
        offsets = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        return get_frame(ds.PixelData, index, number_of_frames=frames, extended_offsets=offsets)
    if wanted == ExplicitVRLittleEndian:
        return _native_frame(ds, stored, index)
    return _encoded_frame(ds, stored, index, wanted)


def frames_of(ds: Dataset, frame_numbers: list[int] | None, choices: list[PixelChoice]) -> PixelParts:
    """The frames asked (1-based; None = every frame) in the first representation that works.

    NotFound when the instance has no pixel data or a frame number is beyond its frames; NotAcceptable
    when no accepted representation can be produced (e.g. a codec plugin is missing or refuses the image).
    """
    if "PixelData" not in ds:
        raise NotFound("this instance has no pixel data")
    total = number_of_frames(ds)
    wanted_frames = frame_numbers or list(range(1, total + 1))
    beyond = [n for n in wanted_frames if n > total]
    if beyond:
        raise NotFound(f"frame {beyond[0]} does not exist: this instance has {total} frame(s)")
    stored = str(ds.file_meta.TransferSyntaxUID)
    errors: list[str] = []
    for choice in choices:
        try:
            return PixelParts(choice, [_frame(ds, stored, n - 1, total, choice.syntax) for n in wanted_frames])
        except Exception as exc:  # a codec's refusal: try the client's next choice
            errors.append(f"{choice.media_type} ({UID(choice.syntax).name}): {exc}")
            log.info("frames: cannot produce %s from %s: %s", choice.syntax, stored, exc)
    raise NotAcceptable("none of the accepted representations could be produced: " + "; ".join(errors))


def bulk_of(ds: Dataset, path: str, choices: list[PixelChoice]) -> PixelParts:
    """The value a BulkDataURI names. Native Pixel Data is one part; encapsulated Pixel Data one part per frame."""
    try:
        elem = resolve_bulk_path(ds, path)
    except KeyError as exc:
        raise NotFound(str(exc.args[0])) from None
    if elem.tag == PIXEL_DATA and path.strip("/").upper() == f"{PIXEL_DATA:08X}":
        stored = str(ds.file_meta.TransferSyntaxUID)
        native_stored = not is_compressed(stored) and stored != ExplicitVRBigEndian
        for choice in choices:
            if native_stored and choice.syntax == ExplicitVRLittleEndian:
                return PixelParts(choice, [bytes(ds.PixelData)])
        return frames_of(ds, None, choices)
    if not isinstance(elem.value, bytes):
        raise NotFound(f"attribute {path} is not bulk data")
    octet = [c for c in choices if c.media_type == "application/octet-stream"]
    if not octet:
        raise NotAcceptable('bulk data is sent as multipart/related; type="application/octet-stream"')
    return PixelParts(PixelChoice(octet[0].media_type, ExplicitVRLittleEndian, octet[0].single_part), [elem.value])
