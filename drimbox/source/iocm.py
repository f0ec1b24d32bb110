"""IHE IOCM rejection notes: a KOS from the PACS saying which instances were rejected, and why."""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import pydicom
from pydicom.errors import InvalidDicomError

from drimbox.manifest import KOS_SOP_CLASS

# Concept Name Codes (DCM) of the KOS document title that make it a rejection note (IHE RAD TF-3 IOCM).
REJECTION_TITLES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


class NotARejection(ValueError):
    """The object is not a usable rejection note; the message says why (no patient data in it)."""


@dataclass(frozen=True)
class Rejection:
    """What a rejection note withdraws: instances of one study."""

    note_uid: str
    reason_code: str
    study_uid: str
    sop_uids: frozenset[str]
    patient_id: str = ""  # as the note gives it: for the audit trail only, never logged

    @property
    def reason(self) -> str:
        return REJECTION_TITLES[self.reason_code]


def is_kos(sop_class_uid: str) -> bool:
    return sop_class_uid == KOS_SOP_CLASS


def parse_rejection(data: bytes) -> Rejection:
    """Read a Part-10 KOS and return the rejection it carries, or raise NotARejection."""
    try:
        ds = pydicom.dcmread(BytesIO(data), force=True)
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class != KOS_SOP_CLASS:
            raise NotARejection("not a Key Object Selection document")
        title = ds.get("ConceptNameCodeSequence")
        code = str(title[0].get("CodeValue", "")) if title else ""
        scheme = str(title[0].get("CodingSchemeDesignator", "")) if title else ""
        if scheme != "DCM" or code not in REJECTION_TITLES:
            raise NotARejection("a KOS whose title is not an IOCM rejection reason")
        studies: dict[str, set[str]] = {}
        for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
            uids = studies.setdefault(str(study.get("StudyInstanceUID", "")), set())
            for series in study.get("ReferencedSeriesSequence", []):
                for ref in series.get("ReferencedSOPSequence", []):
                    uid = str(ref.get("ReferencedSOPInstanceUID", ""))
                    if uid:
                        uids.add(uid)
    except NotARejection:
        raise
    except (InvalidDicomError, AttributeError, KeyError, IndexError, TypeError, ValueError, OSError, EOFError) as exc:
        raise NotARejection(f"unreadable rejection note ({type(exc).__name__})") from None
    studies = {uid: sops for uid, sops in studies.items() if uid and sops}
    if len(studies) != 1:
        # IOCM: one note per study; several would make a partial application ambiguous.
        raise NotARejection(f"a rejection note must reference instances of exactly one study, not {len(studies)}")
    [(study_uid, sops)] = studies.items()
    return Rejection(str(ds.get("SOPInstanceUID", "")), code, study_uid, frozenset(sops), str(ds.get("PatientID", "")))
