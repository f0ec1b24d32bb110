"""The one rule for a DICOM UID (PS3.5 §9.1), and its lenient form for UIDs that come from other systems.

A UID is at most 64 characters of components separated by dots; each component is ASCII digits, not empty, and
has no leading zero unless it is "0" itself. `is_uid` applies that rule: use it for what this box makes or what a
user types. Real PACS and modalities hold UIDs with leading zeros in a component, and a box must still reach them:
`is_lenient_uid` drops only that part of the rule, for UIDs read from outside (a PACS answer, a stored file, a link).

It lives in `dimse/`, the lowest DICOM layer, because every layer that names a UID (hl7, dimse, archive,
dicomweb, source, consumer) may import it there without a cycle (`manifest/` imports `dimse/`).
"""

from __future__ import annotations

MAX_UID_LENGTH = 64


def is_uid(value: str) -> bool:
    """True when `value` is a UID by PS3.5 §9.1: digits and dots, no empty component, no leading zero, ≤ 64."""
    return _components_ok(value, leading_zero=False)


def is_lenient_uid(value: str) -> bool:
    """True when `value` is a UID that may have a leading zero in a component (PS3.5 forbids it; real PACS hold
    such UIDs). Everything else of the rule holds: ASCII digits, no empty component, at most 64 characters."""
    return _components_ok(value, leading_zero=True)


def _components_ok(value: str, *, leading_zero: bool) -> bool:
    if not 0 < len(value) <= MAX_UID_LENGTH or not value.isascii():
        return False
    for part in value.split("."):
        # isdigit() on an ASCII string: only 0-9 ("²" is not ASCII, and a final "\n" is not a digit).
        if not part.isdigit() or (not leading_zero and len(part) > 1 and part[0] == "0"):
            return False
    return True
