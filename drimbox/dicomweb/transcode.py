"""Which transfer syntaxes this process can produce, and the conversion of one Part-10 instance (pydicom)."""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import os
import weakref

import pydicom
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

log = logging.getLogger(__name__)

UNCOMPRESSED = frozenset(
    {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    }
)
# Encoded on request only when the encoder is installed (pydicom has RLE built in; JPEG-LS needs pyjpegls,
# JPEG 2000 and JPEG Lossless need pylibjpeg plugins). Lossy targets are never produced: a gateway must not
# degrade images it did not make lossy.
_LOSSLESS_TARGETS = frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1})
# Stored lossy (or possibly lossy: near-lossless JPEG-LS, JPEG 2000 "lossy or lossless", video): re-encoding it
# in a lossless syntax would label degraded pixels as exact. Sent as stored, or decompressed, never re-encoded.
LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.203",
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)),
    }
)


# Pixel data encoded on the fly at once, per event loop (one a process; tests run several): one per CPU the process
# may use. Encoding (~6 ms a 512² slice) must not take every thread of the loop's default pool, which also reads the
# files every response sends.
_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def encoding_slot() -> asyncio.Semaphore:
    """Held while encoding pixel data on the fly (in a thread): a bound on the CPU that work takes at once."""
    loop = asyncio.get_running_loop()
    if loop not in _SLOTS:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        _SLOTS[loop] = asyncio.Semaphore(max(1, cpus))
    return _SLOTS[loop]


class TranscodeError(Exception):
    """The instance could not be converted to the asked transfer syntax (the caller tries its next choice)."""


def is_compressed(ts: str) -> bool:
    """True for an encapsulated (compressed) transfer syntax."""
    return ts not in UNCOMPRESSED


@functools.cache
def can_decode(ts: str) -> bool:
    """Can this process decompress pixel data in `ts`?"""
    if ts in UNCOMPRESSED:
        return True
    try:
        return bool(get_decoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError):
        return False


@functools.cache
def can_encode(ts: str) -> bool:
    """Can this process produce `ts` from uncompressed pixel data?"""
    if ts == ExplicitVRLittleEndian:
        return True
    if ts not in _LOSSLESS_TARGETS:
        return False
    try:
        return bool(get_encoder(UID(ts)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(stored: str, wanted: str) -> bool:
    """Can an instance stored in `stored` be sent in `wanted` (as is, re-encoded, or through decompression)?

    Lossy data is never re-encoded into another compressed syntax (see LOSSY), only sent as stored or decompressed.
    """
    if stored == wanted:
        return True
    if stored in LOSSY and is_compressed(wanted):
        return False
    return can_encode(wanted) and can_decode(stored)


def producible_syntaxes() -> list[str]:
    """The transfer syntaxes this process can encode to: for /health and the 406 message."""
    return sorted(ts for ts in {ExplicitVRLittleEndian, *_LOSSLESS_TARGETS} if can_encode(ts))


def transcode_part10(data: bytes, wanted: str) -> bytes:
    """The Part-10 bytes of `data` in transfer syntax `wanted`, same SOP Instance UID (lossless only).

    CPU-bound and holding one instance: run it in a thread.
    """
    stored = "an unreadable transfer syntax"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
        stored = str(ds.file_meta.TransferSyntaxUID)
        has_pixels = "PixelData" in ds
        if stored == wanted:
            return data
        if has_pixels and is_compressed(stored):
            # Decompression updates Photometric Interpretation (YBR → RGB) so the data set stays consistent.
            ds.decompress(generate_instance_uid=False)
        if wanted == ExplicitVRLittleEndian or not has_pixels:
            ds.file_meta.TransferSyntaxUID = UID(wanted)
        else:
            ds.compress(UID(wanted), generate_instance_uid=False)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    except Exception as exc:  # pydicom and its plugins raise many kinds; the caller falls back or fails the part
        names = f"{UID(stored).name} to {UID(wanted).name}"
        raise TranscodeError(f"cannot convert an instance from {names}: {exc}") from exc
