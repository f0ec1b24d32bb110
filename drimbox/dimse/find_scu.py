"""Study Root C-FIND on our upper layer: one operation (time-outs, C-CANCEL), pooled associations, and the two
small C-FINDs a retrieve needs (does anything match, which series)."""

# Every C-FIND of the box (the publication pipeline's study query, QIDO-RS in the Proxy profile, the retrieve's
# helpers) runs here, on ul.py rather than pynetdicom: pynetdicom's per-association reactor thread, its 1 ms
# polling sleeps and two thread queues per PDU cost more than Orthanc's own answer to a one-study QIDO, and
# a new association per query (TCP + A-ASSOCIATE + release) cost ≈ 10-20 ms more. Associations come from the
# AssociationPool (key purpose "find"), so a QIDO costs one round trip; figures in perf/dimse_find.py.

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from contextlib import closing
from typing import TypeVar

from drimbox import metrics
from drimbox.config import PacsSettings
from drimbox.dimse.identifier import IdentifierError, RawAnswer, tag
from drimbox.dimse.message import (
    C_FIND_RQ,
    C_FIND_RSP,
    CANCEL,
    ERROR_COMMENT,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MESSAGE_ID_BEING_RESPONDED_TO,
    PENDING,
    SUCCESS,
    Command,
    c_cancel_rq,
    retrieve_identifier,
    retrieve_rq,
    series_query,
)
from drimbox.dimse.network import DimseFailure, DimseUnavailable
from drimbox.dimse.pdu import AssociateRQ, ProposedContext
from drimbox.dimse.pool import AssociationPool, PoolKey
from drimbox.dimse.ul import MAX_PDU_LENGTH, Association, DimseTimeout, Message, next_message_id

LOG = logging.getLogger(__name__)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_FIND_CONTEXT = 1
# How often a thread waiting on the PACS looks at whether its consumer has gone (then it sends C-CANCEL).
_POLL_SECONDS = 0.2
# After C-CANCEL, how long the PACS gets to end the operation before the association is aborted.
_CANCEL_GRACE_SECONDS = 5.0
# "Unable to process" (PS3.4 §C.4.1.1.4): what an answer we cannot decode amounts to.
UNABLE_TO_PROCESS = 0xC000
SERIES_INSTANCE_UID = tag("SeriesInstanceUID")

T = TypeVar("T")


def check_response(command: Command, expected_field: int, message_id: int, peer: str) -> None:
    """Raise DimseUnavailable for a response that is not the one awaited (the association is then aborted)."""
    if command.field != expected_field or command.us(MESSAGE_ID_BEING_RESPONDED_TO) != message_id:
        raise DimseUnavailable(
            f"{peer} sent command 0x{command.field:04X} for message {command.us(MESSAGE_ID_BEING_RESPONDED_TO)} "
            f"while message {message_id} awaited 0x{expected_field:04X}"
        )


def find_request(pacs: PacsSettings, calling_ae: str) -> AssociateRQ:
    # Implicit VR Little Endian only: every SCP supports it, and one syntax to encode and decode is all we need.
    contexts = [ProposedContext(_FIND_CONTEXT, STUDY_ROOT_FIND, (IMPLICIT_VR_LITTLE_ENDIAN,))]
    return AssociateRQ(pacs.ae_title, calling_ae, contexts, max_length=MAX_PDU_LENGTH)


def open_find_association(pacs: PacsSettings, calling_ae: str) -> Association:
    """A new association for C-FIND (TCP_NODELAY, the per-operation time-out on every wait)."""
    return Association.request(pacs.host, pacs.port, find_request(pacs, calling_ae), pacs.timeout)


def _wait(assoc: Association, name: str, halted: threading.Event | None) -> bool:
    """Wait for the next response: True when one is arriving, False when `halted` was set meanwhile."""
    if halted is None:
        if assoc.wait_readable(assoc.timeout):
            return True
    else:
        waited = 0.0
        while waited < assoc.timeout:
            if halted.is_set():
                return False
            if assoc.wait_readable(min(_POLL_SECONDS, assoc.timeout - waited)):
                return True
            waited += _POLL_SECONDS
    raise DimseTimeout(f"{name}: no response from {assoc.peer} within {assoc.timeout:g}s")


def _cancel(assoc: Association, message_id: int, name: str) -> None:
    """C-CANCEL the operation and read (and drop) what the PACS still sends up to its final response.

    The association is then ready for the next operation; if the PACS does not end within the grace period,
    or misbehaves, the association is aborted instead (the caller's lease then drops it).
    """
    deadline = time.monotonic() + min(_CANCEL_GRACE_SECONDS, assoc.timeout)
    try:
        assoc.send(_FIND_CONTEXT, c_cancel_rq(message_id))
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not assoc.wait_readable(remaining):
                raise DimseTimeout(f"{name}: {assoc.peer} did not end the operation after C-CANCEL")
            message = assoc.receive()
            check_response(message.command, C_FIND_RSP, message_id, assoc.peer)
            if message.command.status not in PENDING:
                return
    except DimseUnavailable as exc:
        LOG.info("%s: aborting the association (%s)", name, exc)
        assoc.abort()


def _receive(assoc: Association, name: str, answered: bool) -> Message:
    try:
        return assoc.receive()
    except DimseTimeout:
        raise
    except DimseUnavailable as exc:
        if answered:
            raise
        # Orthanc, among others, aborts rather than answers when the calling AE may not query.
        raise DimseUnavailable(f"{name}: {exc} (does it know {assoc.local_ae}?)") from exc


def c_find(
    assoc: Association, identifier: bytes, level: str, halted: threading.Event | None = None
) -> Generator[bytes, None, None]:
    """_c_find, timed and counted (drimbox_dimse_*{operation="C-FIND"}); closing it early is no error."""
    started, error = time.perf_counter(), None
    try:
        yield from _c_find(assoc, identifier, level, halted)
    except GeneratorExit:
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        metrics.observe_dimse("C-FIND", started, error)


def _c_find(
    assoc: Association, identifier: bytes, level: str, halted: threading.Event | None = None
) -> Generator[bytes, None, None]:
    """Send one C-FIND on `assoc` and yield each answer's identifier (Implicit VR Little Endian). Blocking.

    Closing the generator before the end, or setting `halted` while the PACS is silent, sends C-CANCEL and
    drains the operation, so the association can serve the next query. Raises DimseFailure on a failure
    status (the association stays usable), DimseUnavailable when the association is lost, refused or silent
    for `assoc.timeout` (it is then aborted). Iterate it in `contextlib.closing` so C-CANCEL goes out at once.
    """
    if _FIND_CONTEXT not in assoc.contexts:
        raise DimseUnavailable(f"{assoc.peer} does not accept Study Root C-FIND")
    name = f"C-FIND {level}"
    message_id = next_message_id()
    finished = answered = False
    try:
        assoc.send(_FIND_CONTEXT, retrieve_rq(C_FIND_RQ, STUDY_ROOT_FIND, message_id), identifier)
        while _wait(assoc, name, halted):
            message = _receive(assoc, name, answered)
            answered = True
            command = message.command
            check_response(command, C_FIND_RSP, message_id, assoc.peer)
            status = command.status
            if status in PENDING:
                if message.data is None:
                    raise DimseFailure(f"{name}: {assoc.peer} sent a pending response without identifier", status)
                yield b"".join(message.data)
                continue
            finished = True
            if status in (SUCCESS, CANCEL):
                return
            comment = command.text(ERROR_COMMENT)
            detail = f": {comment}" if comment else ""
            raise DimseFailure(
                f"{name} failed on {assoc.peer}{detail}", UNABLE_TO_PROCESS if status is None else status
            )
    except DimseUnavailable:
        # Lost, refused or silent: nothing to cancel, the association is of no further use.
        finished = True
        assoc.abort()
        raise
    finally:
        if not finished and not assoc.closed:
            _cancel(assoc, message_id, name)


def parse_answer(data: bytes, level: str, peer: str) -> RawAnswer:
    """An answer's elements, or DimseFailure naming the PACS when it cannot be decoded."""
    try:
        return RawAnswer.parse(data)
    except IdentifierError as exc:
        raise DimseFailure(f"C-FIND {level} on {peer}: undecodable answer ({exc})", UNABLE_TO_PROCESS) from exc


def find_key(pacs: PacsSettings, calling_ae: str) -> PoolKey:
    return PoolKey(pacs.host, pacs.port, pacs.ae_title, calling_ae, "find")


def run_find(
    pool: AssociationPool,
    pacs: PacsSettings,
    calling_ae: str,
    work: Callable[[Association], T],
    halted: threading.Event | None = None,
) -> T:
    """Run `work` (one or more C-FINDs) on a pooled association and give the association back for the next.

    A reused association found dead before any response (the PACS may drop an idle association at any time)
    is replaced once. After a failure status the association goes back to the pool too: the operation ended.
    `halted` (the consumer has gone) ends a wait for a free association at once.
    """
    key = find_key(pacs, calling_ae)
    for attempt in (1, 2):
        lease = pool.acquire(key, lambda: open_find_association(pacs, calling_ae), pacs.timeout, halted)
        received = lease.assoc.received
        try:
            result = work(lease.assoc)
            lease.keep = not lease.assoc.closed
            return result
        except DimseFailure:
            lease.keep = not lease.assoc.closed
            raise
        except DimseUnavailable as exc:
            stale = lease.reused and lease.assoc.received == received and not isinstance(exc, DimseTimeout)
            if attempt == 1 and stale and not (halted is not None and halted.is_set()):
                LOG.info("C-FIND on a reused association failed (%s); retrying on a new one", exc)
                continue
            raise
        finally:
            pool.give_back(key, lease)
    raise AssertionError("unreachable")


def count_matches(
    pacs: PacsSettings, calling_ae: str, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> int:
    """How many entities a C-FIND finds at the retrieve's level (0: the PACS holds none). Blocking.

    Orthanc (1.10) answers a C-GET or C-MOVE of an unknown UID with failure 0xC000 instead of success with no
    sub-operations (PS3.4 §C.4.2.3.1); this query tells "nothing to send" from a real failure. Its own
    association, outside the pool: the caller still holds its leased one (with one association per peer
    allowed, waiting for the pool would wait for ourselves).
    """
    level, identifier = retrieve_identifier(study_uid, series_uid, sop_uid)
    assoc = open_find_association(pacs, calling_ae)
    try:
        with closing(c_find(assoc, identifier, level)) as answers:
            matches = sum(1 for _ in answers)
    except BaseException:
        assoc.abort()
        raise
    assoc.release()
    return matches


def list_series(pacs: PacsSettings, calling_ae: str, study_uid: str, pool: AssociationPool) -> list[str]:
    """Series Instance UIDs of the study, in the PACS's order. Blocking."""

    def work(assoc: Association) -> list[str]:
        with closing(c_find(assoc, series_query(study_uid), "SERIES")) as answers:
            return [parse_answer(a, "SERIES", assoc.peer).text(SERIES_INSTANCE_UID) for a in answers]

    series: list[str] = []
    for uid in run_find(pool, pacs, calling_ae, work):
        if uid and uid not in series:
            series.append(uid)
    return series
