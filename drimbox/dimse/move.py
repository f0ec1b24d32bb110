"""Study Root C-MOVE SCU towards our own C-STORE SCP: sub-operations arrive there and are routed back to us."""

# The PACS must know the box's AE title, host and port (Orthanc: DicomModalities). The C-MOVE association
# carries only requests and responses; the data flows on the PACS's associations to store_scp.StoreSCP,
# whose mediator hands each instance to this retrieve's sink (≈ 1250 MB/s on the perf study, like C-GET).

from __future__ import annotations

import time

from drimbox import metrics
from drimbox.config import PacsSettings
from drimbox.dimse.delivery import RetrieveOutcome, Sink
from drimbox.dimse.find_scu import check_response
from drimbox.dimse.message import C_MOVE_RQ, C_MOVE_RSP, IMPLICIT_VR_LITTLE_ENDIAN, retrieve_identifier, retrieve_rq
from drimbox.dimse.network import DimseUnavailable
from drimbox.dimse.operation import RetrieveOperation, run_on_pool
from drimbox.dimse.pdu import AssociateRQ, ProposedContext
from drimbox.dimse.pool import AssociationPool, PoolKey
from drimbox.dimse.store_scp import PendingMove, StoreSCP
from drimbox.dimse.ul import MAX_PDU_LENGTH, Association, next_message_id

STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
_MOVE_CONTEXT = 1


def move_request(pacs: PacsSettings, calling_ae: str) -> AssociateRQ:
    """A-ASSOCIATE-RQ for C-MOVE: one context, Implicit VR Little Endian (every SCP supports it)."""
    contexts = [ProposedContext(_MOVE_CONTEXT, STUDY_ROOT_MOVE, (IMPLICIT_VR_LITTLE_ENDIAN,))]
    return AssociateRQ(pacs.ae_title, calling_ae, contexts, max_length=MAX_PDU_LENGTH)


def c_move(
    assoc: Association,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    sink: Sink,
    scp: StoreSCP,
    expected: frozenset[str] | None = None,
) -> RetrieveOutcome:
    """_c_move, timed and counted (drimbox_dimse_*{operation="C-MOVE"})."""
    started, error = time.perf_counter(), None
    try:
        return _c_move(assoc, study_uid, series_uid, sop_uid, sink, scp, expected)
    except BaseException as exc:
        error = exc
        raise
    finally:
        metrics.observe_dimse("C-MOVE", started, error)


def _c_move(
    assoc: Association,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    sink: Sink,
    scp: StoreSCP,
    expected: frozenset[str] | None = None,
) -> RetrieveOutcome:
    """Run one C-MOVE to `scp`'s AE on `assoc` to its end; instances reach `sink` through the SCP. Blocking.

    Raises RetrieveFailure on a failure status (e.g. 0xA801: the PACS does not know our AE), DimseUnavailable
    when the association is lost or the PACS stays silent (time-outs count only while our side is idle).
    """
    if _MOVE_CONTEXT not in assoc.contexts:
        raise DimseUnavailable(f"{assoc.peer} does not accept Study Root C-MOVE")
    level, identifier = retrieve_identifier(study_uid, series_uid, sop_uid)
    if expected is None and sop_uid:
        expected = frozenset({sop_uid})
    op = RetrieveOperation(assoc, _MOVE_CONTEXT, next_message_id(), sink, f"C-MOVE {level}")
    pending = PendingMove(assoc.local_ae, op.message_id, assoc.remote_ae, sink, expected)
    op.busy_elsewhere = pending.busy
    destination = scp.settings.ae_title
    # Registered before the request leaves: the first sub-operation may arrive before the first response.
    scp.mediator.register(pending)
    try:
        assoc.send(_MOVE_CONTEXT, retrieve_rq(C_MOVE_RQ, STUDY_ROOT_MOVE, op.message_id, destination), identifier)
        while True:
            message = op.next_message()
            check_response(message.command, C_MOVE_RSP, op.message_id, assoc.peer)
            if op.on_response(message):
                # Each sub-operation was handed to the sink before our SCP answered it, and the PACS sends
                # the final response only after the last answer: nothing of this C-MOVE is still on its way.
                return op.outcome
    finally:
        scp.mediator.unregister(pending)


def retrieve_by_move(
    pacs: PacsSettings,
    calling_ae: str,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    sink: Sink,
    pool: AssociationPool,
    scp: StoreSCP,
    expected: frozenset[str] | None = None,
) -> RetrieveOutcome:
    """C-MOVE on an association from `pool` (see operation.run_on_pool)."""

    def open_association() -> Association:
        return Association.request(pacs.host, pacs.port, move_request(pacs, calling_ae), pacs.timeout)

    return run_on_pool(
        pool,
        PoolKey(pacs.host, pacs.port, pacs.ae_title, calling_ae, "move"),
        open_association,
        pacs,
        sink,
        lambda assoc: c_move(assoc, study_uid, series_uid, sop_uid, sink, scp, expected),
        (study_uid, series_uid, sop_uid),
    )
