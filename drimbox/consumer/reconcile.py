"""Import reconciliation: an imported exam takes the local patient's identity (IHE IRWF style), its UIDs kept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from drimbox.manifest import KosSummary

# Other Patient IDs: a text identifier (PS3.3 C.7.1.1, Type of Patient ID).
_TEXT = "TEXT"


@dataclass(frozen=True)
class LocalPatient:
    """Who the exam is imported for: the launch's local identifier (IPP), INS and demographics."""

    patient_id: str
    issuer: str
    ins: str
    ins_oid: str
    family: str = ""
    given: str = ""
    birth_date: str = ""  # YYYY-MM-DD
    gender: str = ""  # male, female, other, unknown

    def to_json(self) -> dict[str, str]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalPatient:
        return cls(**{k: str(data.get(k, "")) for k in cls.__dataclass_fields__})

    @classmethod
    def from_launch(cls, launch: dict[str, Any]) -> LocalPatient | None:
        """The launch's local patient, or None when the software sent no local identifier."""
        if not launch.get("patient_id"):
            return None
        return cls(patient_id=str(launch["patient_id"]), issuer=str(launch.get("patient_id_issuer", "")),
                   ins=str(launch.get("ins", "")), ins_oid=str(launch.get("ins_oid", "")),
                   family=str(launch.get("family", "")), given=str(launch.get("given", "")),
                   birth_date=str(launch.get("birth_date", "")), gender=str(launch.get("gender", "")))  # fmt: skip


def ins_mismatch(kos: KosSummary, local: LocalPatient) -> bool:
    """Whether the exam names another national identity than the launch's: never imported under this patient."""
    if kos.patient_id != local.ins:
        return True
    return bool(kos.patient_id_oid and local.ins_oid and kos.patient_id_oid != local.ins_oid)


def new_uid(original: str, local: LocalPatient) -> str:
    """A UID for `original` under this local patient: the same every time, so a re-import finds what it sent."""
    return str(generate_uid(entropy_srcs=[original, local.issuer, local.patient_id]))


def _other_id(value: str, issuer: str, oid: str = "") -> Dataset:
    item = Dataset()
    item.PatientID = value
    item.TypeOfPatientID = _TEXT
    if issuer:
        item.IssuerOfPatientID = issuer
    if oid:
        qualifiers = Dataset()
        qualifiers.UniversalEntityID = oid
        qualifiers.UniversalEntityIDType = "ISO"
        item.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    return item


_SEX = {"male": "M", "female": "F", "other": "O"}


def apply(ds: Dataset, local: LocalPatient, *, new_uids: bool) -> None:
    """Rewrite one instance for the local patient; the source's identifiers and the INS go to Other Patient IDs."""
    source_id, source_issuer = str(ds.get("PatientID", "")), str(ds.get("IssuerOfPatientID", ""))
    source_oid = ""
    if "IssuerOfPatientIDQualifiersSequence" in ds and ds.IssuerOfPatientIDQualifiersSequence:
        source_oid = str(ds.IssuerOfPatientIDQualifiersSequence[0].get("UniversalEntityID", ""))
    others = [_other_id(local.ins, "INS", local.ins_oid)]  # the national identity, with its authority
    if source_id and (source_id, source_oid) != (local.ins, local.ins_oid):
        others.append(_other_id(source_id, source_issuer, source_oid))
    for item in ds.get("OtherPatientIDsSequence", []):
        if str(item.get("PatientID", "")) not in {o.PatientID for o in others}:
            others.append(item)
    ds.PatientID = local.patient_id
    ds.IssuerOfPatientID = local.issuer
    if "IssuerOfPatientIDQualifiersSequence" in ds:
        del ds.IssuerOfPatientIDQualifiersSequence
    if local.issuer.replace(".", "").isdigit():  # an OID: said in the qualifiers too
        qualifiers = Dataset()
        qualifiers.UniversalEntityID = local.issuer
        qualifiers.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.OtherPatientIDsSequence = others
    if local.family or local.given:
        ds.PatientName = f"{local.family.upper()}^{local.given}"
    if local.birth_date:
        ds.PatientBirthDate = local.birth_date.replace("-", "")
    if local.gender:
        ds.PatientSex = _SEX.get(local.gender, "")
    if new_uids:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if keyword in ds:
                setattr(ds, keyword, new_uid(str(ds.get(keyword)), local))
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
