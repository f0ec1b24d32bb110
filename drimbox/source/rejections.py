"""Receives IOCM rejection notes on the box's C-STORE SCP and turns them into revisions of the published KOS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from drimbox.archive.archive import Archive
from drimbox.archive.errors import ArchiveError
from drimbox.audit.events import FAILURE, REFUSED
from drimbox.audit.events import SUCCESS as AUDIT_SUCCESS
from drimbox.audit.peers import ThreadAudit, peer_event
from drimbox.dimse.delivery import ReceivedInstance
from drimbox.dimse.message import REFUSED_NOT_AUTHORIZED, REFUSED_OUT_OF_RESOURCES, SUCCESS
from drimbox.dimse.peers import Caller, PeerList
from drimbox.source.iocm import NotARejection, Rejection, is_kos, parse_rejection
from drimbox.source.outbox import Outbox

log = logging.getLogger(__name__)

CANNOT_UNDERSTAND = 0xC000


class RejectionIntake:
    """Blocking entry points for SCP threads; success is answered only once the rejection is durable.

    Only a note from one of `senders` (AE title and address) is applied; any other is refused (0x0124).
    Native profile: the rejected instances leave the archive. Both profiles: the rejection is stored in the
    outbox with a `revise` job when the study has a live KOS, the worker is woken, and the study's cached
    images are dropped. Every note, applied or refused, is in the audit trail with its sender before the answer.
    """

    def __init__(
        self,
        outbox: Outbox,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        on_study_changed: Callable[[str], Coroutine[Any, Any, None]],
        archive: Archive | None = None,
        *,
        senders: PeerList,
        audit: ThreadAudit | None = None,
    ) -> None:
        self.senders = senders
        self.audit = audit
        self.outbox = outbox
        self.loop = loop
        self.wake = wake
        self.on_study_changed = on_study_changed
        self.archive = archive

    def receive(self, data: bytes, caller: Caller) -> int:
        """A KOS arrived: apply it if it is a rejection note from a known sender. Returns the C-STORE status."""
        try:
            rejection = parse_rejection(data)
        except NotARejection as exc:
            log.warning("C-STORE of a KOS from %s refused: %s", caller, exc)
            self._record(caller, REFUSED, None, {"reason": str(exc)})
            return CANNOT_UNDERSTAND
        if not self.senders.allows(caller):
            log.warning("rejection note %s from %s refused: not a configured IOCM sender", rejection.note_uid, caller)
            self._record(caller, REFUSED, rejection, {"reason": "not a configured IOCM sender"})
            return REFUSED_NOT_AUTHORIZED
        try:
            effect = self._apply(rejection, caller)
        except (ArchiveError, OSError, RuntimeError) as exc:
            log.error("rejection note %s from %s not applied: %s", rejection.note_uid, caller, type(exc).__name__)
            self._record(caller, FAILURE, rejection, {"reason": type(exc).__name__})
            return REFUSED_OUT_OF_RESOURCES
        if not self._record(caller, AUDIT_SUCCESS, rejection, effect):
            # Applied but not audited: a failure makes the PACS send it again, which is idempotent and audits then.
            return REFUSED_OUT_OF_RESOURCES
        log.info(
            "rejection note %s from %s (%s): %d instance(s) of study %s withdrawn",
            rejection.note_uid,
            caller,
            rejection.reason,
            len(rejection.sop_uids),
            rejection.study_uid,
        )
        return SUCCESS

    def native_kos(self, data: bytes, caller: Caller) -> int | None:
        """Archive SCP hook: a rejection note is applied (never archived); any other KOS is stored as usual."""
        try:
            parse_rejection(data)
        except NotARejection:
            return None
        return self.receive(data, caller)

    def unsolicited(self, instance: ReceivedInstance, caller: Caller) -> int:
        """Proxy SCP hook: the PACS keeps the images, so the only thing it may push here is a rejection note."""
        if not is_kos(instance.sop_class_uid):
            log.warning("C-STORE from %s that no C-MOVE asked for, not a rejection note: refused", caller)
            if self.audit is not None:
                self.audit.record(peer_event("dicom.store", REFUSED, caller.ae_title, caller.address,
                                             detail={"reason": "a Proxy box stores no pushed images"}))  # fmt: skip
            return REFUSED_NOT_AUTHORIZED
        return self.receive(instance.data, caller)

    def _apply(self, rejection: Rejection, caller: Caller) -> dict[str, str]:
        """Apply the note durably; returns its effect, for the audit trail."""
        effect: dict[str, str] = {}
        if self.archive is not None:
            effect["archive_removed"] = str(self.archive.remove_instances(rejection.sop_uids))
        accepted = self.outbox.record_rejection(
            rejection.note_uid, rejection.study_uid, rejection.reason_code, rejection.sop_uids, str(caller)
        )
        if accepted is None:
            effect["revision"] = "none: no KOS of the study is live (left out of its coming publication)"
        elif accepted.duplicate:
            effect["revision"] = f"none: note already received (publication {accepted.publication_id})"
        else:
            effect["revision"] = f"queued (publication {accepted.publication_id})"
        # Cached copies may include the rejected instances; the worker then revises the KOS.
        asyncio.run_coroutine_threadsafe(self.on_study_changed(rejection.study_uid), self.loop)
        if accepted is not None and not accepted.duplicate:
            self.loop.call_soon_threadsafe(self.wake)
        return effect

    def _record(self, caller: Caller, outcome: str, rejection: Rejection | None, detail: dict[str, str]) -> bool:
        """One `dicom.iocm` record, durable before the SCP answers; True when written (or no trail is kept)."""
        if self.audit is None:
            return True
        if rejection is not None:
            detail = {"note": rejection.note_uid, "rejection_reason": f"{rejection.reason_code} {rejection.reason}",
                      "instances": str(len(rejection.sop_uids)), **detail}  # fmt: skip
        event = peer_event("dicom.iocm", outcome, caller.ae_title, caller.address,
                           study=rejection.study_uid if rejection else None,
                           patient=rejection.patient_id if rejection else None, detail=detail)  # fmt: skip
        return self.audit.record(event)
