"""QIDO-RS / C-FIND matching (PS3.4 C.2.2.2) over the index: single value, wildcard, range and UID-list matching as SQL."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from drimbox.archive.errors import QueryError

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")
Kind = Literal["uid", "text", "pn", "date", "time", "int", "modalities", "count", "issuer"]
# A value in a search result: text, a number, a multi-valued text (ModalitiesInStudy), a sequence
# of items (IssuerOfAccessionNumberSequence) or None when the archive holds no value.
Value = str | int | list[str] | list[dict[str, str]] | None
Match = dict[str, Value]

ALL = "all"
_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


@dataclass(frozen=True)
class Field:
    """An attribute the index knows: its DICOM keyword, level, SQL expression(s) and how it matches."""

    keyword: str
    level: Level
    sql: tuple[str, ...]
    kind: Kind


def _f(keyword: str, level: Level, kind: Kind, *sql: str) -> Field:
    return Field(keyword, level, sql, kind)


_MODALITIES_SQL = (
    "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT modality AS m FROM series"
    " WHERE study_uid = st.study_uid AND modality != '' ORDER BY modality))"
)

FIELDS: dict[str, Field] = {
    f.keyword: f
    for f in (
        _f("PatientID", "study", "text", "st.patient_id"),
        _f("IssuerOfPatientID", "study", "text", "st.issuer_of_patient_id"),
        _f("PatientName", "study", "pn", "st.patient_name"),
        _f("PatientBirthDate", "study", "date", "st.patient_birth_date"),
        _f("PatientSex", "study", "text", "st.patient_sex"),
        _f("StudyInstanceUID", "study", "uid", "st.study_uid"),
        _f("StudyDate", "study", "date", "st.study_date"),
        _f("StudyTime", "study", "time", "st.study_time"),
        _f("AccessionNumber", "study", "text", "st.accession_number"),
        _f(
            "IssuerOfAccessionNumberSequence", "study", "issuer", "st.accession_issuer_oid", "st.accession_issuer_local"
        ),
        _f("StudyID", "study", "text", "st.study_id"),
        _f("StudyDescription", "study", "text", "st.study_description"),
        _f("ReferringPhysicianName", "study", "pn", "st.referring_physician_name"),
        _f("ModalitiesInStudy", "study", "modalities", _MODALITIES_SQL),
        _f(
            "NumberOfStudyRelatedSeries",
            "study",
            "count",
            "(SELECT count(*) FROM series WHERE study_uid = st.study_uid)",
        ),
        _f(
            "NumberOfStudyRelatedInstances",
            "study",
            "count",
            "(SELECT count(*) FROM instance WHERE study_uid = st.study_uid)",
        ),
        _f("SeriesInstanceUID", "series", "uid", "se.series_uid"),
        _f("Modality", "series", "text", "se.modality"),
        _f("SeriesNumber", "series", "int", "se.series_number"),
        _f("SeriesDescription", "series", "text", "se.series_description"),
        _f("BodyPartExamined", "series", "text", "se.body_part_examined"),
        _f(
            "NumberOfSeriesRelatedInstances",
            "series",
            "count",
            "(SELECT count(*) FROM instance WHERE series_uid = se.series_uid)",
        ),
        _f("SOPInstanceUID", "instance", "uid", "i.sop_uid"),
        _f("SOPClassUID", "instance", "uid", "i.sop_class_uid"),
        _f("InstanceNumber", "instance", "int", "i.instance_number"),
        _f("NumberOfFrames", "instance", "int", "i.number_of_frames"),
        _f("Rows", "instance", "int", "i.rows"),
        _f("Columns", "instance", "int", "i.columns"),
        _f("AvailableTransferSyntaxUID", "instance", "uid", "i.transfer_syntax_uid"),
    )
}

# Returned at each level when no includefield asks for more (PS3.18 table 10.6.3-3, as far as indexed).
DEFAULT_FIELDS: dict[Level, tuple[str, ...]] = {
    "study": (
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "series": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "NumberOfSeriesRelatedInstances",
    ),
    "instance": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
        "NumberOfFrames",
        "Rows",
        "Columns",
        "AvailableTransferSyntaxUID",
    ),
}

_FROM: dict[Level, str] = {
    "study": "study st",
    "series": "series se JOIN study st ON st.study_uid = se.study_uid",
    "instance": "instance i JOIN series se ON se.series_uid = i.series_uid JOIN study st ON st.study_uid = i.study_uid",
}
_ORDER: dict[Level, str] = {
    "study": "st.study_date, st.study_time, st.study_uid",
    "series": "st.study_date, st.study_uid, se.series_number IS NULL, se.series_number, se.series_uid",
    "instance": (
        "st.study_date, st.study_uid, se.series_number IS NULL, se.series_number, se.series_uid,"
        " i.instance_number IS NULL, i.instance_number, i.sop_uid"
    ),
}


def fields_at(level: Level) -> list[str]:
    """Every keyword a search at `level` can match on or return (its own level and those above)."""
    depth = LEVELS.index(level)
    return [k for k, f in FIELDS.items() if LEVELS.index(f.level) <= depth]


def _glob(value: str) -> str:
    # DICOM wildcards are GLOB's * and ?; GLOB's one other special character, '[', must be literal.
    return value.replace("[", "[[]")


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _split_list(value: str) -> list[str]:
    # PS3.18 8.3.4.1: a list of UIDs is separated by backslash (DICOM) or comma (URL-friendly).
    return [v.strip() for v in re.split(r"[\\,]", value) if v.strip()]


def _range(field: Field, value: str) -> tuple[str, list[object]]:
    pattern = _DATE_RE if field.kind == "date" else _TIME_RE
    low, _, high = (v.strip() for v in value.partition("-"))
    for part in (low, high):
        if part and not pattern.match(part):
            raise QueryError(f"{field.keyword}: {value!r} is not a {field.kind} or {field.kind} range")
    column = field.sql[0]
    clauses, params = [f"{column} != ''"], []
    if low:
        clauses.append(f"{column} >= ?")
        params.append(low)
    if high:
        # '~' sorts after digits and '.': 120000 includes 120000.5, as an inclusive upper bound should.
        clauses.append(f"{column} <= ?")
        params.append(high + "~")
    return " AND ".join(clauses), list(params)


def condition(field: Field, value: str) -> tuple[str, list[object]] | None:
    """The SQL condition matching `field` against a DICOM query value; None for universal matching."""
    value = value.strip()
    if value in ("", "*"):
        return None
    column = field.sql[0]
    if field.kind in ("count", "issuer"):
        raise QueryError(f"{field.keyword}: the archive does not match on this attribute")
    if field.kind == "uid":
        uids = _split_list(value)
        if not uids:  # only separators ("\\", ","): a list of empty values, i.e. universal matching
            return None
        if len(uids) == 1:
            return f"{column} = ?", [uids[0]]
        return f"{column} IN ({', '.join('?' * len(uids))})", list(uids)
    if field.kind == "int":
        try:
            number = int(value)
        except ValueError:
            raise QueryError(f"{field.keyword}: {value!r} is not an integer") from None
        # An IS value has at most 12 characters; a bigger one overflowed SQLite's integers (HTTP 500).
        if not -(2**31) <= number < 2**31:
            raise QueryError(f"{field.keyword}: {value!r} is out of range for an integer string (IS)")
        return f"{column} = ?", [number]
    if field.kind in ("date", "time"):
        if "-" in value:
            return _range(field, value)
        pattern = _DATE_RE if field.kind == "date" else _TIME_RE
        if not pattern.match(value):
            raise QueryError(f"{field.keyword}: {value!r} is not a {field.kind} or {field.kind} range")
        return f"{column} = ?", [value]
    if field.kind == "modalities":
        wanted = [v for v in value.split("\\") if v]
        if not wanted:  # "\\" alone made "AND ()", an SQL syntax error (HTTP 500): it is universal matching
            return None
        ors = ["m.modality GLOB ?" if _has_wildcard(v) else "m.modality = ?" for v in wanted]
        params: list[object] = [_glob(v) if _has_wildcard(v) else v for v in wanted]
        return (
            f"EXISTS (SELECT 1 FROM series m WHERE m.study_uid = st.study_uid AND ({' OR '.join(ors)}))",
            params,
        )
    if field.kind == "pn":
        # Person names match without regard to case (PS3.4 C.2.2.2.1 leaves it to the SCP; users expect it).
        column, value = f"upper_text({column})", value.upper()
    if _has_wildcard(value):
        return f"{column} GLOB ?", [_glob(value)]
    return f"{column} = ?", [value]


@dataclass(frozen=True)
class Query:
    """A compiled search: the SQL, its parameters, and the fields each result row carries in order."""

    sql: str
    params: list[object]
    fields: list[Field]


def compile_query(
    level: Level,
    filters: Mapping[str, str],
    includefields: Iterable[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> Query:
    """Translate a search into SQL. Raises QueryError naming the first attribute that cannot be used."""
    if level not in LEVELS:
        raise QueryError(f"level: must be one of {', '.join(LEVELS)}, got {level!r}")
    if (limit is not None and limit < 0) or offset < 0:
        raise QueryError("limit and offset must not be negative")
    known = fields_at(level)
    where: list[str] = []
    params: list[object] = []
    for keyword, value in filters.items():
        field = FIELDS.get(keyword)
        if field is None or keyword not in known:
            raise QueryError(f"{keyword}: not an attribute the archive can match at {level} level")
        matched = condition(field, value)
        if matched is not None:
            where.append(f"({matched[0]})")
            params.extend(matched[1])
    wanted = _returned(level, filters, includefields or (), known)
    fields = [FIELDS[k] for k in wanted]
    columns = [sql for f in fields for sql in f.sql]
    sql = f"SELECT {', '.join(columns)} FROM {_FROM[level]}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {_ORDER[level]} LIMIT ? OFFSET ?"
    params.extend([-1 if limit is None else limit, offset])
    return Query(sql, params, fields)


def _returned(
    level: Level, filters: Mapping[str, str], includefields: Iterable[str], known: Sequence[str]
) -> list[str]:
    include = list(includefields)
    if ALL in include:
        return list(known)
    wanted = dict.fromkeys(DEFAULT_FIELDS[level])
    # Unknown includefields are left to the caller (it may read them from the files); matched keys come back.
    wanted.update(dict.fromkeys(k for k in [*include, *filters] if k in known))
    return list(wanted)


def row_to_match(fields: Sequence[Field], row: Sequence[object]) -> Match:
    """One result row as {keyword: value}, in the shapes described by `Value`."""
    match: Match = {}
    pos = 0
    for field in fields:
        values = row[pos : pos + len(field.sql)]
        pos += len(field.sql)
        first = values[0]
        if field.kind == "issuer":
            oid, local = (str(v or "") for v in values)
            item = {"UniversalEntityID": oid, "UniversalEntityIDType": "ISO"} if oid else {}
            if local:
                item["LocalNamespaceEntityID"] = local
            match[field.keyword] = [item] if item else []
        elif field.kind == "modalities":
            match[field.keyword] = str(first).split("\\") if first else []
        elif field.kind in ("int", "count"):
            match[field.keyword] = int(str(first)) if first is not None else None
        else:
            match[field.keyword] = str(first) if first else None
    return match
