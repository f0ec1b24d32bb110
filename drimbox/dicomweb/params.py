"""Checks of what a DICOMweb request names (UIDs, frame lists, numbers) before any backend sees it."""

from __future__ import annotations

from drimbox.dimse.uid import is_lenient_uid

MAX_FRAMES_PER_REQUEST = 10_000


class BadRequest(ValueError):
    """The request is malformed (HTTP 400); the message names the parameter and is sent to the client."""


def check_uid(value: str, what: str) -> str:
    """`value` if it is a UID, else BadRequest naming `what` (e.g. "StudyInstanceUID")."""
    # lenient: PS3.5 forbids leading zeros in a component, but real PACS hold such UIDs and must stay reachable.
    if not is_lenient_uid(value):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise BadRequest(f"{what} {shown!r} is not a UID (digits and dots, at most 64 characters)")
    return value


def parse_frame_list(text: str) -> list[int]:
    """`1,3,5` → [1, 3, 5]; frame numbers start at 1 (PS3.18 §8.1.1)."""
    frames: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()) or int(item) < 1:
            raise BadRequest(f"frame number {item!r} is not a positive integer")
        frames.append(int(item))
    if not frames or len(frames) > MAX_FRAMES_PER_REQUEST:
        raise BadRequest(f"a frame list holds 1 to {MAX_FRAMES_PER_REQUEST} frame numbers")
    return frames


def parse_int(value: str, name: str, *, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer query parameter within bounds, else BadRequest naming it."""
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name}={value!r} is not an integer") from None
    if number < minimum or (maximum is not None and number > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise BadRequest(f"{name}={number} must be at least {minimum}{upper}")
    return number
