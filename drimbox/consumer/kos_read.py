"""A KOS read once per process: its summary and patient identifiers, shared by the exam list and the images."""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict

from drimbox.consumer.evidence import patient_ids
from drimbox.manifest import KosSummary, parse_kos

# Parsed KOS kept (a few tens of KB each in memory); pydicom's reading of one costs 30 ms per 200 referenced
# instances (perf/consumer_retrieve.py), paid on the exam list, again on opening it and again at its first image.
KEPT = 256

ReadKos = tuple[KosSummary, frozenset[str]]
_read: OrderedDict[bytes, ReadKos] = OrderedDict()


async def read_kos(data: bytes) -> ReadKos:
    """The KOS's summary and patient identifiers (raises KosError); parsed in one thread call, then remembered.

    Keyed by the digest of its bytes, not its UID: what is remembered is what these very bytes say. The summary is
    shared: callers read it, never change it.
    """
    key = hashlib.sha256(data).digest()
    found = _read.get(key)
    if found is not None:
        _read.move_to_end(key)
        return found
    found = await asyncio.to_thread(_parse, data)
    _read[key] = found
    while len(_read) > KEPT:
        _read.popitem(last=False)
    return found


def _parse(data: bytes) -> ReadKos:
    return parse_kos(data), patient_ids(data)
