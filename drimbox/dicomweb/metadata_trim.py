"""Metadata trimmed to the attributes a client names (`includefield`, as in QIDO): what a viewer needs of 1300 items."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydicom.datadict import tag_for_keyword

from drimbox.dicomweb.params import BadRequest

# Always kept: without them an item cannot be told from another or placed in its series.
_ALWAYS = frozenset({"00080018", "00080016", "0020000E", "0020000D"})
MAX_FIELDS = 200


def parse_includefield(values: Sequence[str]) -> frozenset[str] | None:
    """The tags asked (8 hex digits or keywords, comma-separated, repeatable) as DICOM JSON keys; None for every
    attribute (no parameter, or `all`)."""
    tags: set[str] = set()
    for value in values:
        for field in value.split(","):
            field = field.strip()
            if not field:
                continue
            if field.lower() == "all":
                return None
            tags.add(_tag_key(field))
    if not values:
        return None
    if len(tags) > MAX_FIELDS:
        raise BadRequest(f"includefield names at most {MAX_FIELDS} attributes")
    return frozenset(tags | _ALWAYS)


def trim(items: list[bytes], fields: frozenset[str]) -> list[bytes]:
    """Each blob (DICOM JSON objects joined by commas) with only the `fields` of each object."""
    out: list[bytes] = []
    for blob in items:
        objects: list[dict[str, Any]] = json.loads(b"[" + blob + b"]")
        kept = [{k: v for k, v in item.items() if k in fields} for item in objects]
        out.append(b",".join(json.dumps(k, ensure_ascii=False, separators=(",", ":")).encode() for k in kept))
    return out


def _tag_key(field: str) -> str:
    if len(field) == 8 and all(c in "0123456789abcdefABCDEF" for c in field):
        return field.upper()
    tag = tag_for_keyword(field)
    if tag is None:
        raise BadRequest(f"includefield={field[:64]!r} is neither a tag (8 hex digits) nor a DICOM keyword")
    return f"{tag:08X}"
