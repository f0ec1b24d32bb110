"""One C-GET or C-MOVE in flight on an association: waiting for responses, C-CANCEL, time-outs, the final status."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from io import BytesIO

from pydicom.filereader import read_dataset

from drimbox.config import PacsSettings
from drimbox.dimse.delivery import RetrieveFailure, RetrieveOutcome, Sink
from drimbox.dimse.find_scu import count_matches
from drimbox.dimse.message import CANCEL, ERROR_COMMENT, PENDING, SUCCESS, c_cancel_rq
from drimbox.dimse.network import DimseUnavailable
from drimbox.dimse.pool import AssociationPool, PoolKey
from drimbox.dimse.ul import Association, DimseTimeout, Message

LOG = logging.getLogger(__name__)

# How often a thread waiting on the PACS looks at whether its consumer has gone.
POLL_SECONDS = 0.2
# After C-CANCEL, how long the PACS gets to end the operation before the association is aborted.
CANCEL_GRACE_SECONDS = 5.0
WARNING_SUBOPERATIONS = 0xB000


def _never() -> bool:
    return False


class RetrieveOperation:
    """The requestor's side of one retrieve: its Message ID, its outcome so far, and the sink's halt request."""

    def __init__(self, assoc: Association, context_id: int, message_id: int, sink: Sink, name: str) -> None:
        self.assoc = assoc
        self.context_id = context_id
        self.message_id = message_id
        self.sink = sink
        self.name = name
        self.outcome = RetrieveOutcome()
        self.cancel_deadline: float | None = None
        self.answered = False
        # Called while waiting, to tell a quiet PACS from one held back by our own slow consumer (C-MOVE).
        self.busy_elsewhere: Callable[[], bool] = _never

    @property
    def cancelling(self) -> bool:
        return self.cancel_deadline is not None

    def cancel(self) -> None:
        """Send C-CANCEL once; the PACS answers with a final response (status Cancel) after its current sub-op."""
        if self.cancel_deadline is None:
            self.cancel_deadline = time.monotonic() + min(CANCEL_GRACE_SECONDS, self.assoc.timeout)
            self.outcome.cancelled = True
            self.assoc.send(self.context_id, c_cancel_rq(self.message_id))

    def next_message(self) -> Message:
        """The next message from the PACS; sends C-CANCEL as soon as the consumer stops.

        Raises DimseTimeout when the PACS stays silent for the per-operation time-out (or the grace after
        C-CANCEL): the caller aborts the association.
        """
        waited = 0.0
        while not self.assoc.wait_readable(POLL_SECONDS):
            if self.sink.halted.is_set():
                self.cancel()
            if self.cancel_deadline is not None:
                if time.monotonic() > self.cancel_deadline:
                    raise DimseTimeout(f"{self.name}: {self.assoc.peer} did not end the operation after C-CANCEL")
                continue
            waited = 0.0 if self.busy_elsewhere() else waited + POLL_SECONDS
            if waited >= self.assoc.timeout:
                raise DimseTimeout(f"{self.name}: no response from {self.assoc.peer} within {self.assoc.timeout:g} s")
        if self.sink.halted.is_set():
            self.cancel()
        try:
            message = self.assoc.receive()
        except DimseTimeout:
            raise
        except DimseUnavailable as exc:
            if self.answered:
                raise
            # Orthanc, among others, aborts rather than answers when the calling AE may not retrieve.
            raise DimseUnavailable(f"{self.name}: {exc} (does it know {self.assoc.local_ae}?)") from exc
        self.answered = True
        return message

    def on_response(self, message: Message) -> bool:
        """Account for a C-GET/C-MOVE response; True when it is the final one. Raises on a failure status."""
        command = message.command
        status = command.status
        outcome = self.outcome
        remaining, completed, failed, warning = command.sub_operations()
        if status in PENDING:
            outcome.completed, outcome.failed, outcome.warning = completed, failed, warning
            return False
        outcome.status = status
        # Counts in a final response are optional for some statuses: keep the last pending ones then.
        if completed or failed or warning or remaining:
            outcome.completed, outcome.failed, outcome.warning = completed, failed, warning
        identifier = b"".join(message.data) if message.data is not None else command.trailing
        if identifier:
            outcome.failed_uids = _failed_uids(identifier)
        if status in (SUCCESS, CANCEL, WARNING_SUBOPERATIONS):
            return True
        comment = command.text(ERROR_COMMENT)
        detail = f" ({comment})" if comment else ""
        raise RetrieveFailure(f"{self.name} failed on {self.assoc.peer}{detail}", outcome)


def _failed_uids(identifier: bytes) -> list[str]:
    """Failed SOP Instance UID List (0008,0058) of a final response's identifier, if any."""
    try:
        ds = read_dataset(BytesIO(identifier), is_implicit_VR=True, is_little_endian=True)
        value = ds.get("FailedSOPInstanceUIDList")
    except Exception:
        # Only a diagnostic: a PACS that encodes it badly must not turn a finished retrieve into an error.
        return []
    if not value:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def run_on_pool(
    pool: AssociationPool,
    key: PoolKey,
    open_association: Callable[[], Association],
    pacs: PacsSettings,
    sink: Sink,
    run: Callable[[Association], RetrieveOutcome],
    scope: tuple[str, str | None, str | None],
) -> RetrieveOutcome:
    """Run a retrieve on a pooled association.

    A reused association found dead (nothing received on it for this retrieve) is replaced once: a PACS
    may drop an idle association at any moment. A failure without any sub-operation is checked with
    C-FIND: if nothing matches, the retrieve is empty rather than failed (`outcome.unmatched`).
    """
    for attempt in (1, 2):
        with pool.lease(key, open_association, wait=pacs.timeout, abandon=sink.halted) as lease:
            received = lease.assoc.received
            try:
                outcome = run(lease.assoc)
            except DimseUnavailable as exc:
                if lease.reused and attempt == 1 and lease.assoc.received == received and not sink.halted.is_set():
                    LOG.info("retrieve on a reused association failed (%s); retrying on a new one", exc)
                    continue
                raise
            except RetrieveFailure as exc:
                done = exc.outcome
                if done.completed + done.failed + done.warning + done.delivered == 0:
                    if count_matches(pacs, lease.assoc.local_ae, *scope) == 0:
                        done.unmatched = True
                        lease.keep = True
                        return done
                raise
            lease.keep = True
            return outcome
    raise AssertionError("unreachable")
