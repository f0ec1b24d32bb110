"""Receives IOCM rejection notes on the box's C-STORE SCP and turns them into revisions of the published KOS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from drimbox.archive.archive import Archive
from drimbox.archive.errors import ArchiveError
from drimbox.dimse.delivery import ReceivedInstance
from drimbox.dimse.message import REFUSED_NOT_AUTHORIZED, REFUSED_OUT_OF_RESOURCES, SUCCESS
from drimbox.source.iocm import NotARejection, Rejection, is_kos, parse_rejection
from drimbox.state.outbox import Outbox

log = logging.getLogger(__name__)

CANNOT_UNDERSTAND = 0xC000


class RejectionIntake:
    """Blocking entry points for SCP threads; success is answered only once the rejection is durable.

    Native profile: the rejected instances leave the archive. Both profiles: the rejection is stored in the
    outbox with a `revise` job when the study has a live KOS, the worker is woken, and the study's cached
    images are dropped.
    """

    def __init__(
        self,
        outbox: Outbox,
        loop: asyncio.AbstractEventLoop,
        wake: Callable[[], None],
        on_study_changed: Callable[[str], Coroutine[Any, Any, None]],
        archive: Archive | None = None,
    ) -> None:
        self.outbox = outbox
        self.loop = loop
        self.wake = wake
        self.on_study_changed = on_study_changed
        self.archive = archive

    def receive(self, data: bytes, calling_ae: str) -> int:
        """A KOS arrived: apply it if it is a rejection note. Returns the C-STORE status."""
        try:
            rejection = parse_rejection(data)
        except NotARejection as exc:
            log.warning("C-STORE of a KOS from %s refused: %s", calling_ae, exc)
            return CANNOT_UNDERSTAND
        try:
            self._apply(rejection)
        except (ArchiveError, OSError, RuntimeError) as exc:
            log.error("rejection note %s from %s not applied: %s", rejection.note_uid, calling_ae, type(exc).__name__)
            return REFUSED_OUT_OF_RESOURCES
        log.info(
            "rejection note %s from %s (%s): %d instance(s) of study %s withdrawn",
            rejection.note_uid, calling_ae, rejection.reason, len(rejection.sop_uids), rejection.study_uid,
        )
        return SUCCESS

    def native_kos(self, data: bytes, calling_ae: str) -> int | None:
        """Archive SCP hook: a rejection note is applied (never archived); any other KOS is stored as usual."""
        try:
            parse_rejection(data)
        except NotARejection:
            return None
        return self.receive(data, calling_ae)

    def unsolicited(self, instance: ReceivedInstance, calling_ae: str) -> int:
        """Proxy SCP hook: the PACS keeps the images, so the only thing it may push here is a rejection note."""
        if not is_kos(instance.sop_class_uid):
            log.warning("C-STORE from %s that no C-MOVE asked for, not a rejection note: refused", calling_ae)
            return REFUSED_NOT_AUTHORIZED
        return self.receive(instance.data, calling_ae)

    def _apply(self, rejection: Rejection) -> None:
        if self.archive is not None:
            self.archive.remove_instances(rejection.sop_uids)
        accepted = self.outbox.record_rejection(
            rejection.note_uid, rejection.study_uid, rejection.reason_code, rejection.sop_uids
        )
        # Cached copies may include the rejected instances; the worker then revises the KOS.
        asyncio.run_coroutine_threadsafe(self.on_study_changed(rejection.study_uid), self.loop)
        if accepted is not None and not accepted.duplicate:
            self.loop.call_soon_threadsafe(self.wake)
