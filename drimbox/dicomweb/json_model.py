"""DICOM JSON (PS3.18 Annex F) from pydicom data sets, with BulkDataURIs instead of large binary values."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import re
from collections.abc import AsyncIterator, Collection, Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from drimbox.dicomweb.backend import FileBody, StoredInstance

# Binary values above this size become BulkDataURIs; the same size bounds what a header read loads.
BULK_THRESHOLD = 1024
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_INT_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})
_PIXEL_DATA = 0x7FE00010
_JSON_SAFE_INT = 2**53 - 1
JsonDataset = dict[str, Any]
# A series' instances repeat most of their attributes (patient, study, series, equipment, pixel module): their JSON
# is kept by raw value while the series' metadata is built, and each is converted once. Bounded per series.
ElementMemo = dict[tuple[Any, ...], dict[str, Any]]
MEMO_ENTRIES = 20_000


def bulkdata_prefix(base: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The bulkdata resource of one instance; a tag path follows (`…/bulkdata/7FE00010`)."""
    return f"{base}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulkdata"


def _vr_of(elem: DataElement | RawDataElement, ds: Dataset) -> str:
    vr = elem.VR
    if vr is None:  # implicit VR file, not yet converted
        try:
            vr = dictionary_VR(elem.tag)
        except KeyError:
            vr = "UN"
    if " or " in vr:  # still ambiguous: resolve as PS3.5 §A.1 says for the common cases
        if "SS" in vr:
            return "SS" if ds.get("PixelRepresentation", 0) == 1 else "US"
        if elem.tag == _PIXEL_DATA:
            return "OB" if int(ds.get("BitsAllocated", 16)) <= 8 else "OW"
        return "OW"
    return str(vr)


def _number(value: Any, vr: str) -> Any:
    try:
        if vr in _INT_VRS:
            number = int(value)
            # Annex F.2.3.1: 64-bit integers beyond what a JSON number holds exactly are sent as strings.
            return number if abs(number) <= _JSON_SAFE_INT else str(number)
        number_f = float(value)
    except (TypeError, ValueError):
        # A stored DS/IS that is not a number ("abc"): sent as the string it is, like a non-finite one below,
        # rather than failing the whole /metadata (HTTP 500).
        return str(value).strip()
    return number_f if math.isfinite(number_f) else str(value)


def _person_name(value: PersonName | str) -> dict[str, str] | None:
    pn = value if isinstance(value, PersonName) else PersonName(value)
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), pn.components, strict=False))
    kept = {k: v for k, v in groups.items() if v}
    return kept or None


def _values(elem: DataElement) -> list[Any]:
    if elem.VM == 0 or elem.value is None:
        return []
    value = elem.value
    if elem.VR in _SINGLE_TEXT_VRS or isinstance(value, (str, bytes, PersonName)) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def element_json(
    elem: DataElement | RawDataElement,
    ds: Dataset,
    bulk_uri: str | None,
    threshold: int = BULK_THRESHOLD,
    memo: ElementMemo | None = None,
) -> dict[str, Any] | None:
    """One attribute as Annex F JSON; None when it is large binary and there is nowhere to point to.

    A raw element (deferred or not yet converted) is converted only when it is small or not binary, so a
    header read with `defer_size` never loads pixel data here. With a `memo`, a raw element whose value bytes,
    VR, encoding and character set were seen already gets the JSON made then (shared: the caller only encodes it).
    """
    vr = _vr_of(elem, ds)
    if vr in BINARY_VRS:
        length = elem.length if isinstance(elem, RawDataElement) else len(elem.value or b"")
        if length > threshold or (isinstance(elem, RawDataElement) and elem.value is None and length):
            return {"vr": vr, "BulkDataURI": bulk_uri} if bulk_uri is not None else None
    key = None
    if memo is not None and isinstance(elem, RawDataElement) and elem.value is not None and vr != "SQ":
        # The character set decodes text values; the encoding, binary numbers.
        key = (elem.tag, vr, elem.value, elem.is_little_endian, elem.is_implicit_VR, _charset(ds))
        known = memo.get(key)
        if known is not None:
            return known
    fast = None
    if isinstance(elem, RawDataElement):
        if vr in ("DS", "IS"):
            fast = _ascii_numbers(elem.value, vr)
        elif vr == "UI":
            fast = _plain_uids(elem.value)
    if fast is not None:
        out = fast
    else:
        if isinstance(elem, RawDataElement):
            elem = ds[elem.tag]  # converts (and reads a deferred text value) with the data set's character set
        out = _converted_json(elem, vr, bulk_uri, threshold)
    if key is not None and memo is not None:
        if len(memo) >= MEMO_ENTRIES:
            memo.clear()
        memo[key] = out
    return out


def _ascii_numbers(raw: bytes | None, vr: str) -> dict[str, Any] | None:
    """A DS or IS value's JSON straight from its bytes (what pydicom's conversion gives, without its per-value
    objects: most of a C-FIND answer's cost, an Image Position's three DS above all); None: convert it as usual."""
    if raw is None:
        return None
    try:
        text = raw.decode("ascii").strip(" \x00")
    except UnicodeDecodeError:
        return None
    if not text:
        return {"vr": vr}
    values: list[Any] = []
    for part in text.split("\\"):
        part = part.strip(" ")
        if not part:
            values.append(None)
            continue
        try:
            number: float = int(part) if vr == "IS" else float(part)
        except ValueError:
            return None  # "1.0" as an IS, or not a number: pydicom's reading decides
        if (vr == "IS" and abs(number) > _JSON_SAFE_INT) or not math.isfinite(number):
            return None
        values.append(number)
    return {"vr": vr, "Value": values}


_UID_TEXT = re.compile(rb"[0-9.]+(?:\\[0-9.]+)*")


def _plain_uids(raw: bytes | None) -> dict[str, Any] | None:
    """A UI value's JSON straight from its bytes when it is plain digits and dots (pydicom's conversion validates
    each UID with a regular expression: a C-FIND answer's SOP Instance UID is new every time); None otherwise."""
    if raw is None:
        return None
    text = raw.rstrip(b"\x00 ")
    if not _UID_TEXT.fullmatch(text):
        return None  # empty, padded oddly or not a plain UID: pydicom's reading decides
    return {"vr": "UI", "Value": text.decode("ascii").split("\\")}


def _charset(ds: Dataset) -> Any:
    found = ds.get_item(0x00080005)
    if found is None:
        return None
    value = found.value
    return tuple(value) if isinstance(value, list) else value  # raw bytes, or a converted (multi-)value


def _converted_json(elem: DataElement, vr: str, bulk_uri: str | None, threshold: int) -> dict[str, Any]:
    out: dict[str, Any] = {"vr": vr}
    if vr == "SQ":
        items = [
            dataset_json(item, f"{bulk_uri}/{i}" if bulk_uri is not None else None, threshold=threshold)
            for i, item in enumerate(elem.value or [])
        ]
        if items:
            out["Value"] = items
        return out
    if vr in BINARY_VRS:
        data = elem.value or b""
        if data:
            out["InlineBinary"] = base64.b64encode(data).decode("ascii")
        return out
    values = _values(elem)
    if not values:
        return out
    if vr == "PN":
        out["Value"] = [_person_name(v) for v in values]
    elif vr == "AT":
        out["Value"] = [f"{int(v):08X}" for v in values]
    elif vr in _INT_VRS or vr in _FLOAT_VRS:
        out["Value"] = [None if v is None or v == "" else _number(v, vr) for v in values]
    else:
        out["Value"] = [None if v is None or v == "" else str(v) for v in values]
    return out


def raw_elements(ds: Dataset) -> Iterator[DataElement | RawDataElement]:
    """The top-level elements in tag order, deferred ones left unread (`Dataset.elements()` reads them)."""
    for tag in sorted(ds.keys()):
        elem = ds.get_item(tag, keep_deferred=True)
        if isinstance(elem, (DataElement, RawDataElement)):
            yield elem


def dataset_json(
    ds: Dataset,
    bulk_prefix: str | None,
    *,
    tags: Collection[int] | None = None,
    threshold: int = BULK_THRESHOLD,
    memo: ElementMemo | None = None,
) -> JsonDataset:
    """A data set as Annex F JSON (file meta and group lengths left out), only `tags` when given.

    `bulk_prefix` is where its BulkDataURIs point (`…/bulkdata[/seq/item]`); without one, large binary
    values are left out (QIDO answers have no bulk data to point to).
    """
    out: JsonDataset = {}
    for elem in raw_elements(ds):
        tag = int(elem.tag)
        if (tag >> 16) in (0x0002, 0xFFFC, 0xFFFE) or (tag & 0xFFFF) == 0:
            continue
        if tags is not None and tag not in tags:
            continue
        uri = f"{bulk_prefix}/{tag:08X}" if bulk_prefix is not None else None
        value = element_json(elem, ds, uri, threshold, memo)
        if value is not None:
            out[f"{tag:08X}"] = value
    return out


def instance_json(ds: Dataset, base: str, memo: ElementMemo | None = None) -> JsonDataset:
    """The metadata of one instance, its BulkDataURIs under `base` (e.g. "/dicom-web")."""
    prefix = bulkdata_prefix(base, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    return dataset_json(ds, prefix, memo=memo)


def instance_json_bytes(ds: Dataset, base: str, memo: ElementMemo | None = None) -> bytes:
    """`instance_json` encoded: what a metadata cache keeps."""
    return encode(instance_json(ds, base, memo))


def encode(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as sent."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def read_header(source: Path | bytes) -> Dataset:
    """The data set of a Part-10 instance without loading large values (blocking: run it in a thread).

    From a file, values of BULK_THRESHOLD bytes or more stay on disk (deferred); from memory they are
    there already and are merely not converted.
    """
    if isinstance(source, Path):
        return pydicom.dcmread(source, defer_size=BULK_THRESHOLD)
    return pydicom.dcmread(io.BytesIO(source))


def _metadata_of(sources: list[Path | bytes], base: str, memo: ElementMemo) -> list[bytes]:
    return [instance_json_bytes(read_header(source), base, memo) for source in sources]


# Instances read and converted per thread job: a job per instance cost two thread hand-offs each (a tenth of the
# series' time), while a batch holds a few MB of headers at most.
_BATCH = 32


async def metadata_from_instances(instances: AsyncIterator[StoredInstance], base: str) -> AsyncIterator[bytes]:
    """`DicomwebBackend.metadata` for backends without a metadata cache: read each instance's header.

    Batches of instances per thread job (header and JSON), and the attributes the instances share converted
    once: a 1300-slice CT took 2.1 s of CPU here before, most of it converting the same values again.
    """
    memo: ElementMemo = {}  # used by one thread job at a time: each is awaited before the next starts
    batch: list[Path | bytes] = []
    try:
        async for instance in instances:
            batch.append(instance.body.path if isinstance(instance.body, FileBody) else await instance.body.read())
            if len(batch) >= _BATCH:
                for item in await asyncio.to_thread(_metadata_of, batch, base, memo):
                    yield item
                batch = []
        if batch:
            for item in await asyncio.to_thread(_metadata_of, batch, base, memo):
                yield item
    finally:
        aclose = getattr(instances, "aclose", None)
        if aclose is not None:
            await aclose()


def resolve_bulk_path(ds: Dataset, path: str) -> DataElement:
    """The element a BulkDataURI tag path names (`7FE00010`, or `00880200/0/7FE00010` inside a sequence).

    KeyError names the missing part; the value is read (from disk if deferred).
    """
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts or len(parts) % 2 == 0:
        raise KeyError(f"bulk data path {path!r} must be TAG or SEQTAG/ITEM/TAG")
    current = ds
    for i in range(0, len(parts) - 1, 2):
        seq = current.get(_tag(parts[i]))
        index = int(parts[i + 1]) if parts[i + 1].isascii() and parts[i + 1].isdigit() else -1
        if seq is None or seq.VR != "SQ" or not 0 <= index < len(seq.value):
            raise KeyError(f"no item {parts[i + 1]} in sequence {parts[i]}")
        current = seq.value[index]
    tag = _tag(parts[-1])
    if tag not in current:
        raise KeyError(f"no attribute {parts[-1]} in this instance")
    return current[tag]


def _tag(text: str) -> int:
    if len(text) != 8:
        raise KeyError(f"{text!r} is not a tag of 8 hex digits")
    try:
        return int(text, 16)
    except ValueError:
        raise KeyError(f"{text!r} is not a tag of 8 hex digits") from None
