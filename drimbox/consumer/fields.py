"""Checks for what a launch form or a URL names: INS and its OID, dates, UIDs, modalities, codes."""

from __future__ import annotations

import datetime as dt
import re

from drimbox.dimse.uid import is_uid

# INS assigning authorities (DIGEST §1): production INS-NIR, INS-NIA, test and demonstration INS.
INS_OIDS = {
    "1.2.250.1.213.1.4.8": "INS-NIR",
    "1.2.250.1.213.1.4.9": "INS-NIA",
    "1.2.250.1.213.1.4.10": "INS-NIR de test",
    "1.2.250.1.213.1.4.11": "INS-NIR de démonstration",
}
# Sex digit, year, month, department (Corsica 2A/2B), commune, order number, key.
_INS = re.compile(r"^[1-8]\d{4}(\d{2}|2A|2B)\d{6}\d{2}$")
_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
_MODALITY = re.compile(r"^[A-Z][A-Z0-9]{1,15}$")
_CODE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_TEXT = 128


class FieldProblem(ValueError):
    """One field is wrong; the message says how, never quoting the value (it may identify the patient)."""


def ins_problem(value: str) -> str | None:
    """Why `value` is not an INS (15 characters, NIR structure, key = 97 - NIR mod 97), or None."""
    if len(value) != 15:
        return "must be the 15-character INS (13-character NIR and its 2-digit key)"
    if not _INS.match(value):
        return "is not an INS: digits only, except 2A/2B for the department, first digit 1 to 8"
    # The key is computed with Corsica's 2A and 2B replaced by 19 and 18 (INSEE rule).
    nir = value[:13].replace("2A", "19").replace("2B", "18")  # letters only occur at the department
    if 97 - int(nir) % 97 != int(value[13:]):
        return "has a NIR key that does not match its first 13 characters"
    return None


def normalise_oid(value: str) -> str:
    """An OID given bare or as `urn:oid:…`, returned bare; FieldProblem when it is not one."""
    oid = value.strip()
    if oid.lower().startswith("urn:oid:"):
        oid = oid[8:]
    if not _OID.match(oid) or len(oid) > 64:
        raise FieldProblem("must be an OID (digits and dots), bare or as urn:oid:…")
    return oid


def ins_oid(value: str) -> str:
    """The INS assigning authority OID (bare or urn:oid:), which must be one of INS_OIDS."""
    oid = normalise_oid(value)
    if oid not in INS_OIDS:
        known = ", ".join(f"{o} ({name})" for o, name in INS_OIDS.items())
        raise FieldProblem(f"is not an INS authority: expected one of {known}")
    return oid


def parse_date(value: str, *, past: bool = False) -> dt.date:
    """YYYY-MM-DD or YYYYMMDD; with `past`, not after today."""
    text = value.strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            day = dt.datetime.strptime(text, fmt).date()
            break
        except ValueError:
            continue
    else:
        raise FieldProblem("must be a date YYYY-MM-DD (or YYYYMMDD)")
    if day.year < 1850:
        raise FieldProblem("is before 1850")
    if past and day > dt.date.today():
        raise FieldProblem("is in the future")
    return day


def parse_date_range(value: str) -> tuple[dt.date | None, dt.date | None]:
    """A date, or a DICOM-style range `from-to` with either end open (dates YYYYMMDD or YYYY-MM-DD)."""
    text = value.strip()
    if re.fullmatch(r"\d{8}|\d{4}-\d{2}-\d{2}", text):
        day = parse_date(text)
        return day, day
    m = re.fullmatch(r"(\d{8}|\d{4}-\d{2}-\d{2})?\s*(?:-|/|\.\.)\s*(\d{8}|\d{4}-\d{2}-\d{2})?", text)
    if m is None or not (m.group(1) or m.group(2)):
        raise FieldProblem("must be a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD (either end may be left out)")
    start = parse_date(m.group(1)) if m.group(1) else None
    end = parse_date(m.group(2)) if m.group(2) else None
    if start and end and start > end:
        raise FieldProblem("is a range that ends before it starts")
    return start, end


def uid(value: str) -> str:
    """A DICOM UID (at most 64 characters of digits and dots, no leading zero in a component)."""
    text = value.strip()
    if not is_uid(text):
        raise FieldProblem("must be a DICOM UID: at most 64 digits and dots, no component with a leading zero")
    return text


def modalities(value: str) -> tuple[str, ...]:
    """DICOM modality codes, separated by backslash, comma or spaces (CT, MR, ...), upper-cased."""
    items = [m.upper() for m in re.split(r"[\\,\s]+", value.strip()) if m]
    if not items:
        raise FieldProblem("must name at least one modality code (CT, MR, ...)")
    for item in items:
        if not _MODALITY.match(item):
            raise FieldProblem("must be DICOM modality codes (2 to 16 letters or digits, e.g. CT, MR, US)")
    return tuple(dict.fromkeys(items))


def coded(value: str) -> str:
    """A code, or `code^^codingSchemeOID`, as XDS writes coded values."""
    text = value.strip()
    code, sep, scheme = text.partition("^^")
    if not _CODE.match(code):
        raise FieldProblem("must be a code (letters, digits, '.', '_' or '-'), optionally followed by ^^schemeOID")
    if sep:
        return f"{code}^^{normalise_oid(scheme)}"
    return code


def text(value: str, limit: int = MAX_TEXT) -> str:
    """Free text of at most `limit` characters, without control characters."""
    stripped = value.strip()
    if len(stripped) > limit:
        raise FieldProblem(f"is longer than {limit} characters")
    if _CONTROL.search(stripped):
        raise FieldProblem("contains control characters")
    return stripped


def mask_ins(ins: str) -> str:
    """An INS for logs: only its last three characters, which tell a reader nothing about the patient."""
    return f"INS…{ins[-3:]}" if len(ins) >= 3 else "INS…"


class InvalidFields(ValueError):
    """Several fields are missing or wrong: (field name, what is wrong) for each, in form order."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{name} {why}" for name, why in problems))
        self.problems = problems
