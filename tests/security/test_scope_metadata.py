"""A KOS's scope over a series' metadata: what it references is served as stored, and nothing else ever is."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drimbox.dicomweb.backend import NotFound
from drimbox.dicomweb.scope import Scope, ScopedBackend, serving

STUDY, SERIES = "1.2.3", "1.2.3.1"


def _item(sop: str, nested: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
                            "00080018": {"vr": "UI", "Value": [sop]}, "00100010": {"vr": "PN"}}  # fmt: skip
    if nested is not None:  # an instance quoting another in a sequence
        item["00082112"] = {"vr": "SQ", "Value": [{"00080018": {"vr": "UI", "Value": [nested]}}]}
    return item


class Blob:
    """A backend whose series metadata is one stored blob, as the Proxy's cache keeps it."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.blob = b",".join(json.dumps(i, separators=(",", ":")).encode() for i in items)

    async def metadata(self, study: str, series: str | None, sop: str | None, *, base: str) -> AsyncIterator[bytes]:
        yield self.blob


async def _served(items: list[dict[str, Any]], allowed: set[str]) -> tuple[bytes, bytes]:
    inner = Blob(items)
    with serving(Scope(STUDY, {SERIES: frozenset(allowed)})):
        out = b"".join([b async for b in ScopedBackend(inner).metadata(STUDY, SERIES, base="")])  # type: ignore[arg-type]
    return inner.blob, out


def _sops(blob: bytes) -> list[str]:
    return [i["00080018"]["Value"][0] for i in json.loads(b"[" + blob + b"]")]


async def test_a_series_the_kos_names_whole_is_served_as_stored() -> None:
    stored, served = await _served([_item(f"1.2.3.1.{n}") for n in range(50)], {f"1.2.3.1.{n}" for n in range(50)})
    assert served == stored


async def test_instances_the_kos_does_not_name_are_cut_even_when_only_a_nested_item_says_so() -> None:
    allowed = {f"1.2.3.1.{n}" for n in range(5)}
    _, served = await _served([_item(f"1.2.3.1.{n}") for n in range(6)], allowed)
    assert _sops(served) == sorted(allowed)
    # A nested reference to an instance outside the KOS: the blob is decoded and judged item by item.
    items = [_item("1.2.3.1.0"), _item("1.2.3.1.1", nested="9.9.9")]
    _, served = await _served(items, {"1.2.3.1.0", "1.2.3.1.1"})
    assert _sops(served) == ["1.2.3.1.0", "1.2.3.1.1"]
    # Nothing of the series in the KOS: nothing served.
    with pytest.raises(NotFound):
        await _served([_item("1.2.3.1.7")], {"1.2.3.1.0"})
