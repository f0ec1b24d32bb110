"""What a source may put in the consumer's cache for a KOS: the instances it references, of its study, series, patient."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pydicom
from pydicom.errors import InvalidDicomError

from drimbox.audit.events import REFUSED, AuditEvent
from drimbox.consumer.identity import quick_identity
from drimbox.consumer.retrieval import RetrievedInstance, StreamedInstance
from drimbox.manifest import KosSeries, KosSummary

log = logging.getLogger(__name__)

_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID"]


def origin_of(retrieve_url: str, kos_uid: str) -> str:
    """The cache origin of a series: its Retrieve URL (source box, study, series) and the KOS it was fetched for.

    Per KOS, not only per URL: another KOS naming the same URLs (for another patient, or after the genuine one was
    withdrawn) must be checked by the source box, which alone knows what it published; a cached copy would skip
    that. The price is one more retrieve when a report's revision brings a new KOS. As a digest: a file name.
    """
    return hashlib.sha256(f"{kos_uid}\n{retrieve_url}".encode()).hexdigest()[:32]


def patient_ids(kos_bytes: bytes) -> frozenset[str]:
    """The KOS's Patient ID and Other Patient IDs (the INS, and the source's local IPP the PACS may hold instead)."""
    ds = pydicom.dcmread(io.BytesIO(kos_bytes), stop_before_pixels=True)
    ids = {str(ds.get("PatientID", "") or "")}
    ids.update(str(item.get("PatientID", "") or "") for item in ds.get("OtherPatientIDsSequence", []))
    return frozenset(ids - {""})


@dataclass(frozen=True)
class SeriesEvidence:
    """One series as a KOS references it: what an instance received for it must say of itself."""

    study_uid: str
    series_uid: str
    sop_uids: frozenset[str]
    patients: frozenset[str]

    @classmethod
    def of(cls, kos: KosSummary, series: KosSeries, patients: frozenset[str]) -> SeriesEvidence:
        return cls(kos.study_uid, series.series_uid, frozenset(i.sop_instance_uid for i in series.instances), patients)

    def refusal(self, instance: RetrievedInstance | StreamedInstance) -> str | None:
        """Why this instance is not the KOS's (a short reason, no identity), or None when it is."""
        if instance.sop_instance_uid not in self.sop_uids:
            return "sop_instance_not_referenced"
        quick = _quick_read(instance)
        if quick is not None and self._matches(quick, instance):
            return None  # the common case, read in microseconds; any doubt or mismatch is pydicom's to judge
        try:
            ds = pydicom.dcmread(io.BytesIO(_bytes_of(instance)), stop_before_pixels=True, specific_tags=_TAGS)
        except (InvalidDicomError, EOFError, ValueError, TypeError, OSError):
            return "unreadable"
        if str(ds.get("SOPInstanceUID", "")) != instance.sop_instance_uid:
            return "sop_instance_mismatch"  # the file meta names one instance, the data set another
        if str(ds.get("StudyInstanceUID", "")) != self.study_uid:
            return "study_mismatch"
        if str(ds.get("SeriesInstanceUID", "")) != self.series_uid:
            return "series_mismatch"
        if self.patients and str(ds.get("PatientID", "")) not in self.patients:
            return "patient_mismatch"
        return None

    def _matches(self, found: dict[str, str], instance: RetrievedInstance | StreamedInstance) -> bool:
        return (
            found.get("SOPInstanceUID") == instance.sop_instance_uid
            and found.get("StudyInstanceUID") == self.study_uid
            and found.get("SeriesInstanceUID") == self.series_uid
            and (not self.patients or found.get("PatientID", "") in self.patients)
        )


def _quick_read(instance: RetrievedInstance | StreamedInstance) -> dict[str, str] | None:
    """The four identifying values read without pydicom (identity.quick_identity), or None when pydicom must read them.

    Profiled (perf/consumer_retrieve.py): pydicom's reading of every instance was a third of the consumer's CPU.
    """
    walked = quick_identity(_bytes_of(instance), instance.transfer_syntax_uid)
    return None if walked is None else walked[0]


def _bytes_of(instance: RetrievedInstance | StreamedInstance) -> bytes:
    """What the check reads: the whole instance, or the first bytes of a streamed one (up to its pixels, whole)."""
    return instance.head if isinstance(instance, StreamedInstance) else instance.data


Dropped = Callable[[SeriesEvidence, dict[str, int]], Awaitable[None]]


async def only_referenced(
    received: AsyncIterator[RetrievedInstance | StreamedInstance], evidence: SeriesEvidence, on_dropped: Dropped
) -> AsyncIterator[RetrievedInstance | StreamedInstance]:
    """The instances of `received` the KOS references; the others are dropped, counted by reason and reported once.

    A streamed instance is judged on its first bytes, which hold its whole data set up to the pixels (retrieval only
    streams such): the rest of a dropped one is skipped by the retrieval, never seen by the cache or a reader.
    """
    dropped: dict[str, int] = {}
    try:
        async for instance in received:
            reason = evidence.refusal(instance)
            if reason is None:
                yield instance
            else:
                dropped[reason] = dropped.get(reason, 0) + 1
    finally:
        aclose = getattr(received, "aclose", None)
        if aclose is not None:
            await aclose()  # the fill closes us to cancel the source: pass it on (C-CANCEL at the far end)
        if dropped:
            log.warning("consumer: %d instance(s) of series %s dropped, not the KOS's: %s", sum(dropped.values()),
                        evidence.series_uid, ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))  # fmt: skip
            await on_dropped(evidence, dropped)


def dropped_event(professional: str, kos_uid: str, kos: KosSummary | None, url: str, evidence: SeriesEvidence,
                  reasons: dict[str, int]) -> AuditEvent:  # fmt: skip
    """The audit record of what a source sent outside the KOS: refused, counted by reason."""
    detail = {"reason": "instance_not_in_kos", "series": evidence.series_uid, "dropped": str(sum(reasons.values())),
              "retrieve_url": url[:300], **{f"dropped_{k}": str(v) for k, v in reasons.items()}}  # fmt: skip
    return AuditEvent(action="consumer.retrieve", outcome=REFUSED, professional=professional,
                      patient=(kos.patient_id or None) if kos else None, study=evidence.study_uid, kos=kos_uid,
                      source=url.split("/", 3)[2] if url.count("/") >= 2 else None, detail=detail,
                      patient_name=(kos.patient_name or None) if kos else None)  # fmt: skip
