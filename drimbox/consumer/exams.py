"""An exam as the consumer lists it: the DMP entry's metadata and its KOS, series by series, with provenance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from drimbox.manifest import KosSummary
from drimbox.manifest.modality import SOP_CLASS_MODALITY
from drimbox.xds import namespaces as ns
from drimbox.xds.metadata import hl7_unescape
from drimbox.xds.query import DocumentEntryInfo

AVAILABLE, UNAVAILABLE = "available", "unavailable"
OTHER_PATIENT = "the manifest names another patient than the DMP entry"
OTHER_AUTHORITY = "the manifest's INS authority differs from the DMP entry's"
# Why an exam is unavailable, as a code the pages say in the reader's language (consumer.list.problem.*).
PROBLEM_CODES = {OTHER_PATIENT: "other_patient", OTHER_AUTHORITY: "other_authority"}


@dataclass
class ExamSeries:
    uid: str
    modality: str
    retrieve_url: str
    instance_uids: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.instance_uids)

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "modality": self.modality, "count": self.count,
                "retrieve_url": self.retrieve_url, "instance_uids": self.instance_uids}  # fmt: skip


@dataclass
class Exam:
    """One imaging exam of the patient: one approved KOS in the DMP."""

    kos_uid: str
    study_uid: str = ""
    accession: str = ""
    date: str = ""  # YYYY-MM-DD
    time: str = ""  # HH:MM
    modalities: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    region_codes: list[str] = field(default_factory=list)  # code^^scheme of each region: what the search filters on
    description: str = ""
    institution: str = ""  # the author institution of the DMP entry (the centre that published it)
    sources: list[str] = field(default_factory=list)  # hosts of the Retrieve URLs (the source boxes)
    series: list[ExamSeries] = field(default_factory=list)
    status: str = AVAILABLE
    problem: str = ""  # why it is unavailable (English, for the API and the logs)
    problem_code: str = ""  # the same as a code: consumer.list.problem.<code> says it to the professional
    is_new: bool = False

    @property
    def instance_count(self) -> int:
        return sum(s.count for s in self.series)

    @property
    def sort_key(self) -> tuple[str, str, str]:
        return self.date, self.time, self.kos_uid

    @property
    def view_url(self) -> str:
        return f"/viewer/?kos={quote(self.kos_uid)}"

    @property
    def import_url(self) -> str:
        return f"/conso/api/exams/{quote(self.kos_uid)}/import"

    @property
    def series_url(self) -> str:
        return f"/conso/exams/{quote(self.kos_uid)}/series"

    @property
    def thumbnail_url(self) -> str:
        """The consumer's rendered thumbnail of the middle series (the box fetches it from the source on demand)."""
        if not (self.study_uid and self.series):
            return ""
        middle = self.series[len(self.series) // 2]
        return (f"/conso/dicom-web/studies/{quote(self.study_uid)}/series/{quote(middle.uid)}/thumbnail"
                f"?kos={quote(self.kos_uid)}")  # fmt: skip

    def series_view_url(self, series_uid: str) -> str:
        return f"{self.view_url}&series={quote(series_uid)}"

    def to_json(self, *, with_series: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kos_uid": self.kos_uid, "study_uid": self.study_uid or None, "accession": self.accession or None,
            "date": self.date or None, "time": self.time or None, "modalities": self.modalities,
            "regions": self.regions, "description": self.description or None,
            "institution": self.institution or None, "sources": self.sources,
            "series_count": len(self.series), "instance_count": self.instance_count, "status": self.status,
            "problem": self.problem or None, "problem_code": self.problem_code or None, "new": self.is_new, "view_url": self.view_url,
            "import_url": self.import_url, "thumbnail_url": self.thumbnail_url or None, "series_url": self.series_url,
        }  # fmt: skip
        if with_series:
            out["series"] = [s.to_json() for s in self.series]
        return out


def _iso_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) >= 8 and value[:8].isdigit() else ""


def _hhmm(value: str) -> str:
    return f"{value[:2]}:{value[2:4]}" if len(value) >= 4 and value[:4].isdigit() else ""


def _institution(entry: DocumentEntryInfo) -> str:
    for author in entry.authors:
        for xon in author.institutions:
            name = hl7_unescape(xon.split("^", 1)[0])
            if name:
                return name
    return ""


def from_entry(entry: DocumentEntryInfo) -> Exam:
    """What the DMP entry alone tells (enough to list an exam whose KOS cannot be read)."""
    modalities = [c.code for c in entry.event_codes if c.scheme == ns.MODALITY_SCHEME]
    region_codes = [c for c in entry.event_codes if c.scheme != ns.MODALITY_SCHEME]
    start = entry.service_start or entry.creation_time or ""
    accessions = entry.accession_numbers
    return Exam(
        kos_uid=entry.unique_id,
        study_uid=next(iter(entry.study_uids), ""),
        accession=accessions[0].value if accessions else "",
        date=_iso_date(start),
        time=_hhmm(start[8:12]),
        modalities=modalities,
        regions=[c.display or c.code for c in region_codes],
        region_codes=[f"{c.code}^^{c.scheme}" for c in region_codes],
        description=_title(entry) or entry.comments or "",
        institution=_institution(entry),
    )


def _title(entry: DocumentEntryInfo) -> str:
    """The DMP entry's title when it names the exam, not merely the document class ("CR d'imagerie médicale")."""
    title = (entry.title or "").strip()
    generic = {c.display.strip().lower() for c in (entry.class_code, entry.type_code) if c is not None and c.display}
    return "" if title.lower() in generic else title


def unavailable(entry: DocumentEntryInfo, problem: str, code: str = "") -> Exam:
    exam = from_entry(entry)
    exam.status, exam.problem = UNAVAILABLE, problem
    exam.problem_code = code or PROBLEM_CODES.get(problem, "")
    return exam


def _host(url: str) -> str:
    try:
        return urlsplit(url).netloc
    except ValueError:
        return ""


def from_kos(kos: KosSummary, entry: DocumentEntryInfo | None = None) -> Exam:
    """The exam of a parsed KOS, completed with its DMP entry's metadata when there is one."""
    exam = from_entry(entry) if entry is not None else Exam(kos_uid=kos.sop_instance_uid)
    exam.study_uid = kos.study_uid or exam.study_uid
    exam.accession = kos.accession_number or exam.accession
    if not exam.date:
        exam.date, exam.time = _iso_date(kos.study_date), _hhmm(kos.study_time)
    # What the exam is: the entry's own title, else the study's description, else the KOS's free text.
    exam.description = (_title(entry) if entry else "") or kos.study_description or kos.description or exam.description
    for s in kos.series:
        kinds = {SOP_CLASS_MODALITY.get(i.sop_class_uid, "") for i in s.instances} - {""}
        # One modality per series in practice; otherwise the entry's (the report's) when it has a single one.
        modality = next(iter(kinds)) if len(kinds) == 1 else (exam.modalities[0] if len(exam.modalities) == 1 else "")
        exam.series.append(
            ExamSeries(s.series_uid, modality, s.retrieve_url, [i.sop_instance_uid for i in s.instances])
        )
    exam.sources = list(dict.fromkeys(h for h in (_host(s.retrieve_url) for s in kos.series) if h))
    if not exam.modalities:
        exam.modalities = list(dict.fromkeys(s.modality for s in exam.series if s.modality))
    return exam


def kos_patient_problem(kos: KosSummary, ins: str, oid: str) -> str | None:
    """Why a KOS cannot be shown for this patient (it names someone else), or None."""
    if kos.patient_id != ins:
        return OTHER_PATIENT
    if kos.patient_id_oid and kos.patient_id_oid != oid:
        return OTHER_AUTHORITY
    return None


def newest_first(exams: list[Exam]) -> list[Exam]:
    return sorted(exams, key=lambda e: e.sort_key, reverse=True)
