"""The consumer's DMP side: TD0.2/TD0.3 access, ITI-18 for the patient's KOS, ITI-43, as the professional."""

from __future__ import annotations

import datetime as dt
import logging
import unicodedata
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from drimbox.config import Settings
from drimbox.consumer import fields
from drimbox.consumer.auth import ProfessionalLike
from drimbox.xds import access
from drimbox.xds import namespaces as ns
from drimbox.xds.client import DmpClient, XdsRejected, XdsTransientError
from drimbox.xds.metadata import Code, ReferenceId, ins_cx
from drimbox.xds.query import DocumentEntryInfo
from drimbox.xds.vihf import PROFESSION_SCHEME, PURPOSE_EMERGENCY, SPECIALTY_SCHEME, VihfIdentity, vihf_identity

log = logging.getLogger(__name__)
T = TypeVar("T")
KOS_FORMAT = Code(*ns.KOS_FORMAT_CODE)
UNKNOWN_PATIENT = "XDSUnknownPatientId"


class LookupFailed(Exception):
    """The exam list cannot be given; `status` is the HTTP status that says why."""

    status = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DmpUnavailable(LookupFailed):
    status = 503


class PatientUnknown(LookupFailed):
    status = 404


class AccessRefused(LookupFailed):
    """Refused by an access rule; `rule` names which (drimbox/consumer/access.py), `emergency_possible` whether
    emergency access ("bris de glace") could open it."""

    status = 403

    def __init__(self, message: str, rule: str = "dmp_refused", *, emergency_possible: bool = False) -> None:
        super().__init__(message)
        self.rule = rule
        self.emergency_possible = emergency_possible


class DmpRefused(LookupFailed):
    status = 502


@dataclass(frozen=True)
class PatientRef:
    ins: str
    oid: str

    @property
    def cx(self) -> str:
        return ins_cx(self.ins, self.oid)

    @property
    def key(self) -> str:
        return f"{self.ins}|{self.oid}"

    @property
    def masked(self) -> str:
        return fields.mask_ins(self.ins)


def _folded(value: str) -> str:
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


def _day(value: str | None) -> str:
    return (value or "")[:8]


@dataclass(frozen=True)
class ExamFilters:
    """What the exam list is narrowed to; the same names in the launch, the URL and the JSON."""

    modalities: tuple[str, ...] = ()
    region: str = ""  # a code, or code^^schemeOID
    date_from: dt.date | None = None  # inclusive
    date_to: dt.date | None = None  # inclusive
    accession: str = ""
    accession_issuer: str = ""
    study_uid: str = ""
    text: str = ""  # free text on the exam's description: the DMP cannot search it, the box does (has_text)

    def to_query(self) -> dict[str, str]:
        """URL query parameters (from_query reads them back)."""
        q = {"modality": ",".join(self.modalities), "region": self.region,
             "from": self.date_from.isoformat() if self.date_from else "",
             "to": self.date_to.isoformat() if self.date_to else "", "accession": self.accession,
             "accession_issuer": self.accession_issuer, "study": self.study_uid, "q": self.text}  # fmt: skip
        return {k: v for k, v in q.items() if v}

    def to_json(self) -> dict[str, Any]:
        return {"modalities": list(self.modalities), "region": self.region or None,
                "from": self.date_from.isoformat() if self.date_from else None,
                "to": self.date_to.isoformat() if self.date_to else None, "accession": self.accession or None,
                "accession_issuer": self.accession_issuer or None, "study_uid": self.study_uid or None,
                "text": self.text or None}  # fmt: skip

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ExamFilters:
        """Read the URL parameters; InvalidFields names each one that is wrong."""
        problems: list[tuple[str, str]] = []
        values: dict[str, Any] = {}
        readers = (("modality", "modalities", fields.modalities), ("region", "region", fields.coded),
                   ("from", "date_from", fields.parse_date), ("to", "date_to", fields.parse_date),
                   ("accession", "accession", fields.text), ("accession_issuer", "accession_issuer", fields.normalise_oid),
                   ("study", "study_uid", fields.uid), ("q", "text", fields.text))  # fmt: skip
        for name, attr, read in readers:
            raw = query.get(name, "")
            if raw.strip():
                try:
                    values[attr] = read(raw)
                except fields.FieldProblem as exc:
                    problems.append((name, str(exc)))
        if problems:
            raise fields.InvalidFields(problems)
        return cls(**values)

    def has_text(self, description: str) -> bool:
        """Whether an exam's description holds the free text (case and accents ignored)."""
        return not self.text or _folded(self.text) in _folded(description)

    def matches(self, entry: DocumentEntryInfo) -> bool:
        """Whether a DocumentEntry is an approved KOS within every filter (the DMP's answer, checked again)."""
        if not (entry.is_kos and entry.approved):
            return False
        if self.modalities and not any(
            c.code.upper() in self.modalities and c.scheme == ns.MODALITY_SCHEME for c in entry.event_codes
        ):
            return False
        if self.region:
            code, _, scheme = self.region.partition("^^")
            if not any(c.code == code and (not scheme or c.scheme == scheme) for c in entry.event_codes):
                return False
        day = _day(entry.service_start)
        if self.date_from and not (day and day >= self.date_from.strftime("%Y%m%d")):
            return False
        if self.date_to and not (day and day <= self.date_to.strftime("%Y%m%d")):
            return False
        if self.accession and not any(
            r.value == self.accession and (not self.accession_issuer or r.authority_oid == self.accession_issuer)
            for r in entry.accession_numbers
        ):
            return False
        return not self.study_uid or self.study_uid in entry.study_uids


def professional_identity(settings: Settings, pro: ProfessionalLike) -> VihfIdentity:
    """The VIHF of a Pro Santé Connect user (INDIRECTE_RENFORCEE), signed by the structure."""
    if not pro.profession_code:
        raise AccessRefused("your identity carries no profession code, which the DMP requires in the VIHF")
    # PSC and CDA write the profession as `G15_10` or `10`: the VIHF wants the bare code.
    roles = [Code(pro.profession_code.rpartition("_")[2], PROFESSION_SCHEME, "")]
    if pro.specialty_code:
        roles.append(Code(pro.specialty_code.rpartition("_")[2], SPECIALTY_SCHEME, ""))
    name = " ".join(p for p in (pro.given, pro.family) if p) or pro.id
    return vihf_identity(
        settings.dmp,
        professional_id=pro.id,
        professional_name=name,
        roles=roles,
        authentication_mode="INDIRECTE_RENFORCEE",
        structure_id=pro.structure_id,
        secteur_activite=pro.sector_code,
    )


class DmpLookup:
    """The DMP transactions of the exam list, each failure turned into a LookupFailed that says what to do."""

    def __init__(self, client: DmpClient, *, access_check: bool = True) -> None:
        self.client = client
        self.access_check = access_check

    async def ensure_access(self, patient: PatientRef, identity: VihfIdentity, informed: bool | None) -> None:
        """TD0.2; when no authorisation is in force and the launch says the patient was informed, TD0.3.

        In emergency access (VIHF purpose of use bris_de_glace) no authorisation is needed nor declared; TD0.2
        still tells whether the patient barred this professional, which no emergency overrides.
        """
        if not self.access_check:
            return
        emergency = identity.purpose_of_use == PURPOSE_EMERGENCY
        status = await _guard(self.client.patient_access(patient.cx, identity=identity))
        if not status.dmp_exists:
            raise PatientUnknown("this patient has no DMP" + (f": {status.reason}" if status.reason else ""))
        if status.authorization == access.INTERDITE:
            raise AccessRefused(
                "the patient has barred you from their DMP" + (f" ({status.reason})" if status.reason else ""),
                "blocked",
            )
        if status.granted or emergency:
            return
        if not informed:
            raise AccessRefused(
                f"you have no access authorisation to this patient's DMP ({status.authorization}); it can only be "
                "declared when your software's launch confirms the patient was informed (InformationEtConsentement)",
                "no_authorization",
                emergency_possible=True,
            )
        # The patient was informed and did not object (the launch says so): TD0.3 AJOUT may be sent.
        declared = await _guard(self.client.declare_access(patient.cx, identity=identity))
        if not declared.granted:
            raise AccessRefused(
                f"the DMP refused to record your access: {declared.status}"
                + (f" ({declared.context})" if declared.context else "")
            )
        log.info(
            "TD0.3: access to the DMP of %s declared for professional %s", patient.masked, identity.professional_id
        )

    async def find_manifests(
        self, patient: PatientRef, filters: ExamFilters, identity: VihfIdentity
    ) -> list[DocumentEntryInfo]:
        """ITI-18: the patient's approved KOS, narrowed by the DMP where it can, then checked again here."""
        refs: list[ReferenceId | str] = []
        if filters.accession and filters.accession_issuer:
            refs.append(ReferenceId.accession(filters.accession, filters.accession_issuer))
        if filters.study_uid:
            refs.append(ReferenceId.study(filters.study_uid))
        if refs:
            entries = await _guard(self.client.find_by_reference_id(patient.cx, refs, identity=identity))
        else:
            # The registry ANDs each Value of EventCodeList: modalities go to the DMP (one OR group);
            # the region is matched here, by code, whatever scheme the source used for it.
            extra: dict[str, str | list[str]] = {}
            if filters.date_from:
                extra["$XDSDocumentEntryServiceStartTimeFrom"] = filters.date_from.strftime("%Y%m%d")
            if filters.date_to:  # ServiceStartTimeTo is exclusive: the day after, for an inclusive end
                extra["$XDSDocumentEntryServiceStartTimeTo"] = (filters.date_to + dt.timedelta(days=1)).strftime(
                    "%Y%m%d"
                )
            event_codes = [Code(m, ns.MODALITY_SCHEME) for m in filters.modalities]
            entries = await _guard(self.client.find_documents(
                patient.cx, format_codes=[KOS_FORMAT], event_codes=event_codes, extra=extra, identity=identity))  # fmt: skip
        found = [e for e in entries if filters.matches(e)]
        log.info("ITI-18 for %s: %d manifest(s), %d after filters", patient.masked, len(entries), len(found))
        return found

    async def retrieve_kos(self, entry: DocumentEntryInfo, patient: PatientRef, identity: VihfIdentity) -> bytes:
        """ITI-43 for one KOS (raises LookupFailed)."""
        if not entry.repository_unique_id:
            raise DmpRefused("the DMP entry names no repositoryUniqueId to retrieve the manifest from")
        return await _guard(self.client.retrieve_document(
            entry.repository_unique_id, entry.unique_id, patient_id=patient.cx,
            home_community_id=entry.home_community_id, identity=identity))  # fmt: skip

    async def current_entry(
        self, kos_uid: str, patient: PatientRef, identity: VihfIdentity
    ) -> DocumentEntryInfo | None:
        """ITI-18 GetDocuments: the KOS's entry if the DMP still lists it as approved for this professional."""
        entries = await _guard(
            self.client.get_documents(unique_ids=[kos_uid], patient_id=patient.cx, identity=identity)
        )
        return next((e for e in entries if e.unique_id == kos_uid and e.approved and e.is_kos), None)


async def _guard(call: Awaitable[T]) -> T:
    """Await a DMP call; its failures become LookupFailed with a message fit for the professional."""
    try:
        return await call
    except XdsTransientError as exc:
        raise DmpUnavailable(f"the DMP cannot be reached or is busy, try again later ({exc})") from None
    except XdsRejected as exc:
        if any(e.code == UNKNOWN_PATIENT for e in exc.errors):
            raise PatientUnknown("this patient has no DMP (the registry does not know this INS)") from None
        if exc.fault is not None and access.ACCESS_DENIED in exc.fault.subcodes:
            raise AccessRefused(f"the DMP refused access: {exc.fault.reason}") from None
        raise DmpRefused(f"the DMP refused the request: {exc}") from None
