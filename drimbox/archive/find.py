"""Study Root C-FIND SCP over the archive index (STUDY, SERIES and IMAGE levels, relational matching)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.events import Event

from drimbox.archive.errors import QueryError
from drimbox.archive.index import ArchiveIndex
from drimbox.archive.query import FIELDS, Level, Match, Value, fields_at

LOG = logging.getLogger(__name__)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_LEVELS: dict[str, Level] = {"STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
_PENDING = 0xFF00
_CANCELLED = 0xFE00
_IDENTIFIER_MISMATCH = 0xA900
_UNABLE_TO_PROCESS = 0xC000
# Keys that describe the query or its encoding rather than ask for a value.
_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC"}

FindAnswer = tuple[int | Dataset, Dataset | None]


def _query_value(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def _answer_value(keyword: str, value: Value) -> object:
    if keyword == "IssuerOfAccessionNumberSequence":
        items = []
        for fields in value if isinstance(value, list) else []:
            item = Dataset()
            for k, v in fields.items() if isinstance(fields, dict) else ():
                setattr(item, k, v)
            items.append(item)
        return items
    return value


def _answer(identifier: Dataset, level: str, match: Match) -> Dataset:
    """The identifier's keys, each with the archive's value (or empty when it has none)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for elem in identifier:
        keyword = elem.keyword
        if keyword in _NOT_KEYS:
            continue
        if keyword in match:
            setattr(ds, keyword, _answer_value(keyword, match[keyword]))
        elif elem.VR == "SQ":
            ds.add_new(elem.tag, "SQ", [])
        else:
            ds.add_new(elem.tag, elem.VR, None)
    return ds


def handle_find(event: Event, index: ArchiveIndex) -> Iterator[FindAnswer]:
    """EVT_C_FIND handler: match the identifier against the index and yield each answer."""
    try:
        identifier = event.identifier
        level_name = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    except Exception as exc:
        LOG.warning("C-FIND: identifier cannot be decoded (%s)", type(exc).__name__)
        yield _failure(_UNABLE_TO_PROCESS, "identifier cannot be decoded")
        return
    level = _LEVELS.get(level_name)
    if level is None:
        yield _failure(_IDENTIFIER_MISMATCH, f"Query/Retrieve Level {level_name!r} not supported")
        return
    known = set(fields_at(level))
    filters: dict[str, str] = {}
    returned: list[str] = []
    for elem in identifier:
        keyword = elem.keyword
        if keyword in _NOT_KEYS or keyword not in known:
            # Keys the archive does not index come back empty; they never restrict the match.
            continue
        returned.append(keyword)
        if elem.VR != "SQ" and FIELDS[keyword].kind not in ("count", "issuer"):
            filters[keyword] = _query_value(elem)
    try:
        matches = index.search(level, filters, includefields=returned)
    except QueryError as exc:
        yield _failure(_IDENTIFIER_MISMATCH, str(exc))
        return
    for match in matches:
        if event.is_cancelled:
            yield _CANCELLED, None
            return
        yield _PENDING, _answer(identifier, level_name, match)


def _failure(code: int, comment: str) -> FindAnswer:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status, None
