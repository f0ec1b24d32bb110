"""Rendered and thumbnail images (PS3.18 §8.3.5): one frame → windowed 8-bit → JPEG or PNG (numpy + Pillow)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.uid import UID

from drimbox.dicomweb.backend import NotFound
from drimbox.dicomweb.params import BadRequest, parse_int
from drimbox.dicomweb.pixels import number_of_frames

THUMBNAIL_SIZE = 128
MAX_VIEWPORT = 4096
_FUNCTIONS = {"linear", "linear-exact", "sigmoid"}


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """The rendering parameters of the request: window (center, width, function), viewport, JPEG quality."""

    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    quality: int = 90


def parse_options(query: Mapping[str, str], *, thumbnail: bool = False) -> RenderOptions:
    """`window=center,width[,function]`, `viewport=vw,vh`, `quality=1..100`; BadRequest names a bad one.

    Other PS3.18 parameters (annotation, charset, iccprofile) are accepted and ignored: annotation would
    burn patient identity into the pixels, which this box never does.
    """
    window = None
    if text := query.get("window"):
        parts = [p.strip() for p in text.split(",")]
        try:
            center, width = float(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            raise BadRequest(f"window={text!r}: give center,width[,function]") from None
        function = (parts[2] if len(parts) > 2 else "linear").lower().replace("_", "-")
        # isfinite: float() takes "nan" and "inf", which would render a blank image instead of a 400.
        if (
            function not in _FUNCTIONS
            or not (math.isfinite(center) and math.isfinite(width))
            or width <= 0
            or len(parts) > 3
        ):
            raise BadRequest(f"window={text!r}: width > 0, function linear, linear-exact or sigmoid")
        window = (center, width, function)
    viewport = (THUMBNAIL_SIZE, THUMBNAIL_SIZE) if thumbnail else None
    if text := query.get("viewport"):
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 6):
            raise BadRequest(f"viewport={text!r}: give vw,vh")
        viewport = (
            parse_int(parts[0], "viewport width", minimum=1, maximum=MAX_VIEWPORT),
            parse_int(parts[1], "viewport height", minimum=1, maximum=MAX_VIEWPORT),
        )
    quality = parse_int(query["quality"], "quality", minimum=1, maximum=100) if query.get("quality") else 90
    return RenderOptions(window, viewport, quality)


def _first(value: object) -> float:
    """The first of possibly several values (a data set may offer several windows)."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _voi(values: NDArray[np.float64], ds: Dataset, window: tuple[float, float, str] | None) -> NDArray[np.float64]:
    """Values of interest → [0, 1] with the asked window, else the instance's first window, else min/max."""
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR")).lower().replace("_", "-")
        window = (center, max(width, 1.0), function if function in _FUNCTIONS else "linear")
    if window is None:
        low, high = float(values.min()), float(values.max())
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    center, width, function = window
    if function == "linear-exact":
        return np.clip((values - (center - width / 2)) / width, 0.0, 1.0)
    if function == "sigmoid":
        result: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        return result
    # PS3.3 C.11.2.1.2.1: the linear function with its half-unit offsets.
    return (
        np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
        if width > 1
        else ((values > center - 0.5).astype(np.float64))
    )


def _to_8bit(ds: Dataset, arr: NDArray[np.generic], window: tuple[float, float, str] | None) -> NDArray[np.uint8]:
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        photometric = "RGB"
    if photometric.startswith("MONOCHROME"):
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        scaled = _voi(values, ds, window)
        if photometric == "MONOCHROME1":
            scaled = 1.0 - scaled
        return np.asarray(np.round(scaled * 255.0), dtype=np.uint8)
    # Colour: windowing does not apply (PS3.18 §8.3.5.1.2); bring wider samples down to 8 bits.
    bits = int(ds.get("BitsStored", 8))
    if arr.dtype != np.uint8:
        shift = max(bits - 8, 0)
        return np.asarray(np.clip(arr.astype(np.int64) >> shift, 0, 255), dtype=np.uint8)
    return np.asarray(arr, dtype=np.uint8)


def _fit(size: tuple[int, int], viewport: tuple[int, int]) -> tuple[int, int]:
    """The largest size within the viewport that keeps the image's aspect ratio."""
    width, height = size
    scale = min(viewport[0] / width, viewport[1] / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def render(ds: Dataset, frame: int, media_type: str, options: RenderOptions) -> bytes:
    """Frame `frame` (1-based) of `ds` rendered as `media_type` (image/jpeg or image/png)."""
    if "PixelData" not in ds:
        raise NotFound("this instance has no pixel data to render")
    total = number_of_frames(ds)
    if not 1 <= frame <= total:
        raise NotFound(f"frame {frame} does not exist: this instance has {total} frame(s)")
    stored = UID(str(ds.file_meta.TransferSyntaxUID))
    arr, _ = get_decoder(stored).as_array(ds, index=frame - 1)
    image = Image.fromarray(_to_8bit(ds, arr, options.window))
    if options.viewport is not None:
        image = image.resize(_fit(image.size, options.viewport), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=options.quality)
    return out.getvalue()
