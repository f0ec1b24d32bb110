"""The contextual launch (ANS form POST from the DPI/RIS): its fields, their checks, the exam filters it sets."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from drimbox.consumer import fields
from drimbox.consumer.lookup import ExamFilters, PatientRef

# The ANS form's field names, case-sensitive as the ANS contextual-call test server compares them
# (ansforge/DRIM-M_DRIMbox TestServer-AppelContextuel ParameterList.java: mandatory, then optional).
REQUIRED = ("Patient.identifier.value", "Patient.identifier.system", "Patient.name.family", "Patient.name.given",
            "Patient.gender", "Patient.birthDate", "Address.district", "InformationEtConsentement", "PatientID",
            "PatientIDIssuer")  # fmt: skip
OPTIONAL = ("StudyInstanceUID", "AccessionNumber", "AccessionNumberIssuer", "Modality", "StudyDate",
            "AnatomicRegion", "Situation")  # fmt: skip
# The consent field's older name (the reference backend's ParameterListAPI.java still reads it): same meaning,
# read when the new one is absent. Every other name outside the form is refused, as the ANS test server does.
OLD_CONSENT = "InformationEtOppositionConsultation"
# Not an ANS field: the professional's PSC access token a launch may carry (drimbox.auth.launch reads it).
EXTENSIONS = ("access_token",)
_KNOWN = frozenset((*REQUIRED, *OPTIONAL, OLD_CONSENT, *EXTENSIONS))
# A name that differs only by case is refused with its exact spelling: older DPIs lower-cased the names.
_SPELLING = {name.lower(): name for name in (*REQUIRED, *OPTIONAL, OLD_CONSENT)}
# FHIR AdministrativeGender, and the HL7 v2 / DICOM letters some RIS send.
GENDERS = {"male": "male", "female": "female", "other": "other", "unknown": "unknown",
           "m": "male", "f": "female", "o": "other", "u": "unknown"}  # fmt: skip
_YES = {"true", "1", "oui", "yes", "o", "y"}
_NO = {"false", "0", "non", "no", "n"}


@dataclass(frozen=True)
class Launch:
    """A checked contextual launch."""

    ins: str
    ins_oid: str
    family: str
    given: str
    gender: str  # male, female, other, unknown
    birth_date: str  # YYYY-MM-DD
    informed: bool  # informed and not objecting: TD0.3 may be declared; false = opposition (consumer/access.py)
    filters: ExamFilters = field(default_factory=ExamFilters)
    # The practice situation the software runs in: a structure id (PSC ancienIdentifiantDeLaStructure) that selects
    # the professional's situation, hence the VIHF's structure and sector (consumer/situation.py).
    situation: str = ""
    district: str = ""  # Address.district: the patient's place of birth (INSEE code), an INS trait; kept, not shown
    patient_id: str = ""  # PatientID: the patient's local id (IPP) in the software's structure
    patient_id_issuer: str = ""  # PatientIDIssuer: who assigned it (an OID or a structure id)

    @property
    def patient(self) -> PatientRef:
        return PatientRef(self.ins, self.ins_oid)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["filters"] = self.filters.to_query()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Launch:
        values = dict(data)
        values["filters"] = ExamFilters.from_query(values.get("filters", {}))
        return cls(**values)


def _fields(form: Iterable[tuple[str, str]]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Field values by name; an unknown name, or a field sent twice with different values, is a problem."""
    values: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for name, value in form:
        if name not in _KNOWN:
            spelled = _SPELLING.get(name.strip().lower())
            # Names are echoed (escaped by the pages), never values; an odd name is not repeated at all.
            shown = name if name.isascii() and name.isprintable() and 0 < len(name) <= 64 else "(a field)"
            why = "is not a field of the ANS launch form"
            problems.append((shown, f"{why}: it is spelled {spelled}" if spelled else why))
            continue
        if name in values and values[name] != value:
            problems.append((name, "is given twice with different values"))
        values[name] = value
    return values, problems


def _consent(value: str) -> bool:
    v = value.strip().lower()
    if v in _YES:
        return True
    if v in _NO:
        return False
    raise fields.FieldProblem("must be true or false (whether the patient was informed and does not object)")


def _gender(value: str) -> str:
    gender = GENDERS.get(value.strip().lower())
    if gender is None:
        raise fields.FieldProblem("must be male, female, other or unknown (or M, F, O, U)")
    return gender


def _name(value: str) -> str:
    name = fields.text(value, 100)
    if not name:
        raise fields.FieldProblem("is empty")
    return name


def _ins(value: str) -> str:
    problem = fields.ins_problem(value.strip())
    if problem:
        raise fields.FieldProblem(problem)
    return value.strip()


def _birth_date(value: str) -> str:
    return fields.parse_date(value, past=True).isoformat()


def parse_launch(form: Iterable[tuple[str, str]]) -> Launch:
    """Check every field of the form; InvalidFields names each missing or wrong one, in form order."""
    values, problems = _fields(form)
    if "InformationEtConsentement" not in values and OLD_CONSENT in values:
        values["InformationEtConsentement"] = values[OLD_CONSENT]
    checked: dict[str, Any] = {}

    def read(name: str, check: Callable[[str], Any]) -> None:
        raw = values.get(name, "")
        if not raw.strip():
            if name in REQUIRED:
                problems.append((name, "is missing"))
            return
        try:
            checked[name] = check(raw)
        except fields.FieldProblem as exc:
            problems.append((name, str(exc)))

    read("Patient.identifier.value", _ins)
    read("Patient.identifier.system", fields.ins_oid)
    read("Patient.name.family", _name)
    read("Patient.name.given", _name)
    read("Patient.gender", _gender)
    read("Patient.birthDate", _birth_date)
    read("InformationEtConsentement", _consent)
    read("StudyInstanceUID", fields.uid)
    read("AccessionNumber", lambda v: fields.text(v, 64))
    read("AccessionNumberIssuer", fields.normalise_oid)
    read("Modality", fields.modalities)
    read("StudyDate", fields.parse_date_range)
    read("AnatomicRegion", fields.coded)
    read("Situation", lambda v: fields.text(v, 64))
    read("Address.district", lambda v: fields.text(v, 64))
    read("PatientID", lambda v: fields.text(v, 64))
    read("PatientIDIssuer", lambda v: fields.text(v, 64))
    if (
        "AccessionNumberIssuer" in checked
        and "AccessionNumber" not in checked
        and "AccessionNumber" not in dict(problems)
    ):
        problems.append(("AccessionNumberIssuer", "is given without an AccessionNumber"))
    if problems:
        raise fields.InvalidFields(problems)
    dates: tuple[dt.date | None, dt.date | None] = checked.get("StudyDate", (None, None))
    filters = ExamFilters(
        modalities=checked.get("Modality", ()),
        region=checked.get("AnatomicRegion", ""),
        date_from=dates[0],
        date_to=dates[1],
        accession=checked.get("AccessionNumber", ""),
        accession_issuer=checked.get("AccessionNumberIssuer", ""),
        study_uid=checked.get("StudyInstanceUID", ""),
    )
    return Launch(
        ins=checked["Patient.identifier.value"],
        ins_oid=checked["Patient.identifier.system"],
        family=checked["Patient.name.family"],
        given=checked["Patient.name.given"],
        gender=checked["Patient.gender"],
        birth_date=checked["Patient.birthDate"],
        informed=checked["InformationEtConsentement"],
        filters=filters,
        situation=checked.get("Situation", ""),
        district=checked["Address.district"],
        patient_id=checked["PatientID"],
        patient_id_issuer=checked["PatientIDIssuer"],
    )
