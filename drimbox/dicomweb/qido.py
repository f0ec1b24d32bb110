"""QIDO-RS query parameters → a checked `QidoQuery`, and DICOM matching for backends that search in memory."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from drimbox.dicomweb.backend import QidoQuery, QueryLevel, TagMatch
from drimbox.dicomweb.params import BadRequest, parse_int
from drimbox.dimse.uid import is_lenient_uid


def _tags(*keywords: str) -> frozenset[int]:
    tags = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        tags.add(tag)
    return frozenset(tags)


# PS3.18 §10.6.3.3 result attributes per level, plus the parent UIDs and descriptions viewers display.
STUDY_TAGS = _tags(
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_TAGS = _tags(
    "SpecificCharacterSet",
    "Modality",
    "TimezoneOffsetFromUTC",
    "SeriesDescription",
    "RetrieveURL",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
INSTANCE_TAGS = _tags(
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "TimezoneOffsetFromUTC",
    "RetrieveURL",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
_CONTROL = {"limit", "offset", "fuzzymatching", "includefield"}
_NO_WILDCARD_VRS = {"DA", "TM", "DT", "UI", "SQ", "US", "SS", "UL", "SL", "FL", "FD", "IS", "DS", "AT"}
_DATE_RE = re.compile(r"\d{8}")
_TIME_RE = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_DATETIME_RE = re.compile(r"\d{4,14}(\.\d{1,6})?([+-]\d{4})?")


def default_return_tags(level: QueryLevel, study_in_path: bool, series_in_path: bool) -> frozenset[int]:
    """A level's result attributes, and its parents' when the path does not fix them (PS3.18 §10.6.3.3)."""
    if level is QueryLevel.STUDY:
        return STUDY_TAGS
    if level is QueryLevel.SERIES:
        return SERIES_TAGS | (frozenset() if study_in_path else STUDY_TAGS)
    tags = INSTANCE_TAGS
    if not series_in_path:
        tags |= SERIES_TAGS
    if not study_in_path:
        tags |= STUDY_TAGS
    return tags


def resolve_attribute(name: str) -> int:
    """A keyword (`PatientName`) or 8 hex digits (`00100010`) → tag; BadRequest names an unknown one."""
    if "." in name:
        raise BadRequest(f"attribute {name!r}: matching or including inside sequences is not supported")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise BadRequest(f"unknown attribute {name!r}: give a DICOM keyword or a tag as 8 hex digits")
    return int(tag)


def _vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"  # a private or unknown tag: matched as text, as a C-FIND SCP would


def _check_range_part(part: str, vr: str, name: str) -> None:
    pattern = {"DA": _DATE_RE, "TM": _TIME_RE, "DT": _DATETIME_RE}[vr]
    if part and not pattern.fullmatch(part):
        raise BadRequest(f"{name}={part!r} is not a valid {vr} value (e.g. 20210108, or a range a-b)")


def _matching_value(name: str, tag: int, vr: str, value: str) -> str:
    """The QIDO value as C-FIND matching syntax, checked for its VR."""
    if vr == "UI":
        uids = [uid.strip() for uid in value.split(",")] if value else []
        for uid in uids:
            if not is_lenient_uid(uid):  # lenient: a PACS's UIDs may have leading zeros
                raise BadRequest(f"{name}: {uid!r} is not a UID (UID lists are comma-separated, no wildcards)")
        return "\\".join(uids)
    if vr in ("DA", "TM", "DT"):
        bounds = split_range(value, vr)
        if value.count("-") > (3 if vr == "DT" else 1) or (bounds is not None and not any(bounds)):
            raise BadRequest(f"{name}={value!r} is not a {vr} value or range")
        for part in bounds if bounds is not None else (value,):
            _check_range_part(part, vr, name)
        return value
    if vr in _NO_WILDCARD_VRS and any(c in value for c in "*?"):
        raise BadRequest(f"{name}: wildcards are not allowed for VR {vr}")
    if vr == "SQ" and value:
        raise BadRequest(f"{name}: only universal matching (empty value) is allowed for a sequence")
    return value


MAX_OFFSET = 2**31 - 1


def parse_query(
    level: QueryLevel,
    params: Iterable[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    max_limit: int = 1000,
) -> QidoQuery:
    """Build the QidoQuery of a QIDO-RS request: path UIDs, matching keys, includefield, limit/offset."""
    matches: list[TagMatch] = []
    if study_uid is not None:
        matches.append(TagMatch(STUDY_INSTANCE_UID, "UI", study_uid))
    if series_uid is not None:
        matches.append(TagMatch(SERIES_INSTANCE_UID, "UI", series_uid))
    include: set[int] = set()
    include_all = fuzzy = False
    limit, offset = max_limit, 0
    seen: set[int] = {m.tag for m in matches}
    for name, value in params:
        key = name.strip()
        if key == "limit":
            limit = parse_int(value, "limit", minimum=1, maximum=max_limit) if value else max_limit
        elif key == "offset":
            # Bounded: an offset beyond SQLite's integers made the Native index fail (HTTP 500) instead of a 400.
            offset = parse_int(value, "offset", maximum=MAX_OFFSET) if value else 0
        elif key == "fuzzymatching":
            if value.lower() not in ("true", "false", ""):
                raise BadRequest(f"fuzzymatching={value!r} must be true or false")
            fuzzy = value.lower() == "true"
        elif key == "includefield":
            for field in filter(None, (f.strip() for f in value.split(","))):
                if field == "all":
                    include_all = True
                else:
                    include.add(resolve_attribute(field))
        else:
            tag = resolve_attribute(key)
            if tag in seen:
                raise BadRequest(f"{key} is given more than once (or also fixed by the path)")
            seen.add(tag)
            vr = _vr_of(tag)
            matches.append(TagMatch(tag, vr, _matching_value(key, tag, vr, value.strip())))
    return_tags = default_return_tags(level, study_uid is not None, series_uid is not None)
    return_tags |= include | {m.tag for m in matches}
    return QidoQuery(
        level=level,
        matches=tuple(matches),
        return_tags=frozenset(return_tags),
        include_all=include_all,
        fuzzy=fuzzy,
        offset=offset,
        limit=limit,
    )


def _as_texts(value: Any) -> list[str]:
    """An element value as the list of strings matching compares (PN as its full `Family^Given` form)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    if isinstance(value, bytes):
        return [value.decode("latin-1").rstrip(" \x00")]
    return [str(value)]


def _wildcard_regex(pattern: str, fuzzy: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL if fuzzy else re.DOTALL)


def split_range(value: str, vr: str) -> tuple[str, str] | None:
    """(low, high) of a DA/TM/DT range `a-b`, `a-` or `-b`; None for a single value.

    A DT value may end with a UTC offset (`-0500`): only a hyphen followed by at least 8 digits, or by
    nothing, or at the start, separates a range.
    """
    if vr != "DT":
        low, sep, high = value.partition("-")
        return (low, high) if sep else None
    found = re.search(r"^-|-(?=\d{8}|$)", value)
    if found is None:
        return None
    return value[: found.start()], value[found.end() :]


def _in_range(text: str, low: str, high: str, vr: str) -> bool:
    if vr == "TM":  # "10-11" means from 10:00:00 up to 11:59:59.999999
        text, low = text.ljust(13, "0"), low.ljust(13, "0")
        high = high.ljust(13, "9") if high else high
    return (not low or text >= low) and (not high or text <= high)


def element_matches(match: TagMatch, value: Any, fuzzy: bool = False) -> bool:
    """Does an element value (as pydicom holds it) satisfy one matching key? Missing values match only ""."""
    if match.value == "":
        return True  # universal matching
    texts = _as_texts(value)
    if match.vr == "UI":
        uids = set(match.value.split("\\"))
        return any(text in uids for text in texts)
    bounds = split_range(match.value, match.vr) if match.vr in ("DA", "TM", "DT") else None
    if bounds is not None:
        return any(_in_range(text, *bounds, match.vr) for text in texts)
    if match.vr not in _NO_WILDCARD_VRS and ("*" in match.value or "?" in match.value):
        regex = _wildcard_regex(match.value, fuzzy)
        return any(regex.fullmatch(text) for text in texts)
    if match.vr == "PN" and fuzzy:
        # Fuzzy matching (implementation-defined, PS3.18 §8.3.4.1): case-insensitive prefix of any name word.
        wanted = match.value.lower()
        words = [w for text in texts for w in re.split(r"[\^= ]", text.lower()) if w]
        return any(w.startswith(wanted) for w in words) or any(t.lower() == wanted for t in texts)
    if match.vr in ("US", "SS", "UL", "SL", "IS"):
        return any(text.strip() == match.value.strip() for text in texts)
    return any(text == match.value for text in texts)


def dataset_matches(ds: Dataset, query: QidoQuery, tags: Iterable[int] | None = None) -> bool:
    """Does `ds` satisfy every matching key of `query` (restricted to `tags` when given)?"""
    only = set(tags) if tags is not None else None
    for match in query.matches:
        if only is not None and match.tag not in only:
            continue
        elem = ds.get(match.tag)
        if not element_matches(match, None if elem is None else elem.value, query.fuzzy):
            return False
    return True


def attribute_name(tag: int) -> str:
    """Keyword of a tag, or its 8 hex digits: for messages."""
    return keyword_for_tag(tag) or f"{tag:08X}"
