"""The source's DMP side: XDS-I metadata from the report and the KOS, ITI-41 / ITI-57 with a VIHF (INDIRECTE)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from drimbox.config import Settings
from drimbox.dimse.study_instances import StudyInstances
from drimbox.hl7.cda import Professional
from drimbox.hl7.report import ReportMessage
from drimbox.source.publish import PermanentError, TransientError
from drimbox.xds import namespaces as ns
from drimbox.xds.client import DmpClient, XdsRejected, XdsTransientError
from drimbox.xds.metadata import (
    Author,
    Code,
    KosDocumentEntry,
    ReferenceId,
    SubmissionSet,
    cx,
    ins_cx,
    oid_from_uuid,
    patient_info_lines,
    xcn,
    xds_time,
    xon,
)
from drimbox.xds.structure import structure_signer
from drimbox.xds.vihf import PROFESSION_SCHEME, SPECIALTY_SCHEME, VihfIdentity, vihf_identity

TEST_INS_OID = "1.2.250.1.213.1.4.10"
HEALTHCARE_FACILITY_SCHEME = "1.2.250.1.71.4.2.4"
PRACTICE_SETTING_SCHEME = "1.2.250.1.213.1.1.4.9"
# entryUUIDs derive from the KOS UID, so a submission replayed after a crash names the same entry.
_ENTRY_NAMESPACE = uuid.UUID("9f0c6f1e-5d0b-4d55-9a57-6b2f0b7c1d11")


def entry_uuid_for(kos_uid: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_ENTRY_NAMESPACE, kos_uid)}"


def _roles(pro: Professional | None) -> list[Code]:
    """CDA profession/specialty `G15_10/SM44` → the VIHF role codes (profession 10, specialty SM44)."""
    if pro is None or not pro.profession_code:
        return [Code("10", PROFESSION_SCHEME, "Médecin")]
    profession, _, specialty = pro.profession_code.partition("/")
    roles = [Code(profession.rpartition("_")[2] or profession, PROFESSION_SCHEME, "")]
    if specialty:
        roles.append(Code(specialty, SPECIALTY_SCHEME, pro.profession_display or ""))
    return roles


class XdsDmpGateway:
    """Publishes and withdraws KOS manifests in the DMP on behalf of the structure (VIHF INDIRECTE)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = DmpClient(settings.dmp.url, signer=structure_signer(settings), timeout=settings.dmp.timeout)

    async def close(self) -> None:
        await self.client.close()

    async def submit_kos(
        self, message: ReportMessage, study: StudyInstances, kos: bytes, kos_uid: str, replaces: str | None
    ) -> str:
        entry = self.document_entry(message, study, kos_uid)
        try:
            await self.client.provide_and_register(
                entry, self._submission(message), kos, replaces_entry_uuid=replaces, identity=self.identity(message)
            )
        except XdsTransientError as exc:
            raise TransientError(str(exc)) from None
        except XdsRejected as exc:
            # A replay (after a crash, or a time-out while the DMP did register) resends this very KOS under the
            # same entryUUID; the DMP then refuses it for whichever reason it checks first (uniqueId or entryUUID
            # already there, RPLC target no longer Approved). If it holds our KOS, the publication happened.
            found = await self.find_entry_uuid(message, kos_uid)
            if found is not None:
                return found
            raise PermanentError("failed", str(exc)) from None
        return entry.entry_uuid

    async def find_entry_uuid(self, message: ReportMessage, kos_uid: str) -> str | None:
        try:
            entries = await self.client.get_documents(
                unique_ids=[kos_uid], patient_id=self._patient_id(message), identity=self.identity(message)
            )
        except XdsTransientError as exc:
            raise TransientError(str(exc)) from None
        except XdsRejected:
            return None
        for e in entries:
            if e.unique_id == kos_uid and e.approved:
                return e.entry_uuid
        return None

    async def withdraw(self, message: ReportMessage, entry_uuid: str) -> None:
        target = ns.STATUS_DELETED if self.settings.dmp.withdraw_status == "deleted" else ns.STATUS_DEPRECATED
        try:
            await self.client.update_status(
                entry_uuid, self._submission(message), new_status=target, identity=self.identity(message)
            )
        except XdsTransientError as exc:
            raise TransientError(str(exc)) from None
        except XdsRejected as exc:
            # Replayed after a crash: the entry may already be out of the Approved state.
            try:
                entries = await self.client.get_documents(
                    entry_uuids=[entry_uuid], patient_id=self._patient_id(message), identity=self.identity(message)
                )
            except XdsTransientError as again:
                raise TransientError(str(again)) from None
            except XdsRejected:
                entries = []  # the refusal of the ITI-57 is the error worth reporting
            if entries and all(not e.approved for e in entries):
                return
            raise PermanentError("failed", str(exc)) from None

    # ------------------------------------------------------------------------------------ metadata

    def _patient_id(self, message: ReportMessage) -> str:
        r = message.report
        if not r.ins:
            raise PermanentError("rejected", "the report carries no INS: the DMP cannot be fed without it")
        return ins_cx(r.ins, r.ins_oid or TEST_INS_OID)

    def document_entry(self, message: ReportMessage, study: StudyInstances, kos_uid: str) -> KosDocumentEntry:
        r, s = message.report, self.settings
        patient_id = self._patient_id(message)
        ipp = cx(r.ipp, r.ipp_oid, "PI") if r.ipp and r.ipp_oid else None
        org = r.organisation
        start = r.service_start or (study.study_date + (study.study_time or "")[:6])
        references = [
            ReferenceId.accession(r.accession, r.accession_issuer or s.box.uid_root.rstrip(".")),
            ReferenceId.study(r.study_uid),
        ]
        if r.order_id and r.order_issuer:
            references.append(ReferenceId.order(r.order_id, r.order_issuer))
        return KosDocumentEntry(
            unique_id=kos_uid,
            patient_id=patient_id,
            source_patient_id=ipp or patient_id,
            source_patient_info=patient_info_lines(
                [i for i in (patient_id, ipp) if i],
                r.patient_family or "",
                r.patient_given or "",
                r.patient_birth_date or "",
                r.patient_sex or "",
            ),
            creation_time=xds_time(datetime.now(UTC)),
            service_start=_dtm(start),
            service_stop=_dtm(r.service_stop) if r.service_stop else None,
            author=self._author(message),
            healthcare_facility_type=Code(s.dmp.healthcare_facility_type, HEALTHCARE_FACILITY_SCHEME, ""),
            practice_setting=Code(
                (org.industry_code if org and org.industry_code else s.dmp.practice_setting),
                PRACTICE_SETTING_SCHEME,
                (org.industry_display if org and org.industry_display else ""),
            ),
            masque_ps=message.flags.get("MASQUE_PS", False),
            invisible_patient=message.flags.get("INVISIBLE_PATIENT", False),
            invisible_representants_legaux=message.flags.get("INVISIBLE_REP_LEGAUX", False),
            # What this study's images are: the report's codes where the PACS agrees (ANS exam Q codes MR as "RM";
            # a two-study report lists both studies' modalities), else the PACS's own.
            modalities=[m for m in r.modalities if m in study.modalities] or study.modalities or list(r.modalities),
            regions=[Code(code, system, display) for code, system, display in r.regions],
            reference_ids=references,
            legal_authenticator=_xcn(r.legal_authenticator),
            entry_uuid=entry_uuid_for(kos_uid),
        )

    def _author(self, message: ReportMessage) -> Author:
        r, s = message.report, self.settings
        org = r.organisation
        return Author(
            person=_xcn(r.author) or "",
            institutions=[xon(org.name or s.dmp.structure_name, org.id_extension or s.dmp.structure_id)]
            if org
            else [xon(s.dmp.structure_name, s.dmp.structure_id)],
            roles=[],
            specialties=[f"{c.code}^{c.display}^{c.scheme}" for c in _roles(r.author)[1:]],
        )

    def submission_set(self, message: ReportMessage) -> SubmissionSet:
        """A new SubmissionSet for this report's patient and author (one per ITI-41, or per XDM package)."""
        return self._submission(message)

    def _submission(self, message: ReportMessage) -> SubmissionSet:
        return SubmissionSet(
            unique_id=oid_from_uuid(),
            source_id=self.settings.dmp.source_id,
            submission_time=xds_time(datetime.now(UTC)),
            author=self._author(message),
            patient_id=self._patient_id(message),
        )

    def identity(self, message: ReportMessage) -> VihfIdentity:
        """The VIHF identity this report's transactions go under (the report's author, or the sender's); the RIS of
        the demo publishes the report itself under it too."""
        s, r, sender = self.settings.dmp, message.report, message.sender
        author = r.author
        if sender is not None and sender.id:
            pro_id, name = sender.id, f"{sender.given} {sender.family}".strip()
        elif author is not None and author.id:
            pro_id, name = author.id, f"{author.given or ''} {author.family or ''}".strip()
        else:
            pro_id, name = s.structure_id, s.structure_name
        return vihf_identity(
            s,
            professional_id=pro_id,
            professional_name=name or pro_id,
            roles=_roles(author),
            authentication_mode="INDIRECTE",
        )


def _xcn(pro: Professional | None) -> str | None:
    if pro is None or not pro.id:
        return None
    return xcn(pro.id, pro.family or "", pro.given or "")


def _dtm(value: str) -> str:
    """CDA/DICOM date-times to the XDS DTM precision the DMP expects (YYYYMMDDhhmmss)."""
    digits = "".join(ch for ch in value if ch.isdigit())[:14]
    return digits.ljust(14, "0") if len(digits) >= 8 else digits
