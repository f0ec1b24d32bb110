"""What the source's DICOM listeners tell the audit trail: refused associations, and each association's C-STOREs."""

from __future__ import annotations

from drimbox.archive.scp import StoreSession
from drimbox.audit.events import FAILURE, REFUSED, SUCCESS
from drimbox.audit.peers import ThreadAudit, peer_event
from drimbox.dimse.peers import Caller


class ScpAudit:
    """Hooks for ArchiveScp / StoreSCP (their threads): each call returns once its records are durable."""

    def __init__(self, audit: ThreadAudit, called_ae: str) -> None:
        self.audit = audit
        self.called_ae = called_ae

    def refused(self, caller: Caller, reason: str) -> None:
        """An association refused at negotiation (A-ASSOCIATE-RJ): nothing was received from it."""
        self.audit.record(peer_event("dicom.associate", REFUSED, caller.ae_title, caller.address,
                                     detail={"called_ae": self.called_ae, "reason": reason}))  # fmt: skip

    def session(self, session: StoreSession) -> None:
        """One record per study an association stored into (not per instance): counts and outcome."""
        caller = session.caller
        for study_uid, tally in session.studies.items():
            if tally.stored and not (tally.failed or tally.refused):
                outcome = SUCCESS
            elif tally.refused and not (tally.stored or tally.failed):
                outcome = REFUSED
            else:
                outcome = FAILURE
            detail = {"called_ae": self.called_ae, "stored": str(tally.stored), "failed": str(tally.failed),
                      "refused": str(tally.refused)}  # fmt: skip
            if tally.last_status:
                detail["last_failure_status"] = f"0x{tally.last_status:04X}"
            self.audit.record(peer_event("dicom.store", outcome, caller.ae_title, caller.address,
                                         study=study_uid or None, patient=tally.patient or None, detail=detail))  # fmt: skip
