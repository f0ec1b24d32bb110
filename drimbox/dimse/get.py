"""Study Root C-GET SCU: the PACS sends each instance as a C-STORE sub-operation on our own association."""

# Runs in a worker thread on drimbox's upper layer (ul.py), not on pynetdicom. Each sub-operation's data
# set is kept as the bytes received and prefixed with a File Meta Information header built here: nothing
# decoded, nothing re-encoded, nothing decompressed.
# Against Orthanc it receives faster than dcmtk getscu --ignore, and Orthanc is then the limit (figures and
# profile in perf/dimse_retrieve.py). Our maximum PDU size changes nothing against Orthanc, which fragments
# to its own MaximumPduLength (16 KiB).

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable

from drimbox import metrics
from drimbox.config import PacsSettings
from drimbox.dimse.delivery import ReceivedInstance, RetrieveOutcome, Sink
from drimbox.dimse.find_scu import check_response
from drimbox.dimse.message import (
    AFFECTED_SOP_CLASS_UID,
    AFFECTED_SOP_INSTANCE_UID,
    C_GET_RQ,
    C_GET_RSP,
    C_STORE_RQ,
    IMPLICIT_VR_LITTLE_ENDIAN,
    REFUSED_OUT_OF_RESOURCES,
    SUCCESS,
    c_store_rsp,
    part10_header,
    retrieve_identifier,
    retrieve_rq,
)
from drimbox.dimse.network import DimseUnavailable
from drimbox.dimse.operation import RetrieveOperation, run_on_pool
from drimbox.dimse.pdu import AssociateRQ, ProposedContext
from drimbox.dimse.pool import AssociationPool, PoolKey
from drimbox.dimse.storage import storage_contexts
from drimbox.dimse.ul import MAX_PDU_LENGTH, Association, Message, next_message_id
from drimbox.state import faults

STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
_GET_CONTEXT = 1
# "Error: cannot understand" (PS3.4 §B.2.3): a C-STORE without data set or on an unknown context.
_CANNOT_UNDERSTAND = 0xC000


def get_request(pacs: PacsSettings, calling_ae: str, sop_classes: Iterable[str] | None = None) -> AssociateRQ:
    """A-ASSOCIATE-RQ for C-GET: the Q/R GET context and storage contexts with SCP role selection."""
    storage = storage_contexts(sop_classes, reserved=1)
    # Implicit VR Little Endian only for the identifier: every SCP supports it, and it is all we encode.
    contexts = [ProposedContext(_GET_CONTEXT, STUDY_ROOT_GET, (IMPLICIT_VR_LITTLE_ENDIAN,)), *storage]
    roles = {uid: (False, True) for uid in dict.fromkeys(c.abstract_syntax for c in storage)}
    return AssociateRQ(pacs.ae_title, calling_ae, contexts, max_length=MAX_PDU_LENGTH, roles=roles)


def _pool_key(pacs: PacsSettings, calling_ae: str, sop_classes: Iterable[str] | None) -> PoolKey:
    if sop_classes is None:
        purpose = "get"
    else:
        purpose = "get:" + hashlib.sha1("\\".join(sorted(set(sop_classes))).encode()).hexdigest()
    return PoolKey(pacs.host, pacs.port, pacs.ae_title, calling_ae, purpose)


def _store(op: RetrieveOperation, message: Message) -> int:
    """Hand one C-STORE sub-operation to the consumer; the status to answer."""
    command = message.command
    context = op.assoc.contexts.get(message.context_id)
    if message.data is None or context is None:
        return _CANNOT_UNDERSTAND
    if op.cancelling:
        return REFUSED_OUT_OF_RESOURCES
    sop_class = command.text(AFFECTED_SOP_CLASS_UID) or context.abstract_syntax
    sop_uid = command.text(AFFECTED_SOP_INSTANCE_UID)
    header = part10_header(sop_class, sop_uid, context.transfer_syntax, op.assoc.remote_ae)
    instance = ReceivedInstance(sop_class, sop_uid, context.transfer_syntax, b"".join([header, *message.data]))
    if not op.sink.deliver(instance):
        op.cancel()
        return REFUSED_OUT_OF_RESOURCES
    op.outcome.delivered += 1
    faults.checkpoint("retrieve.instance")
    return SUCCESS


def c_get(
    assoc: Association, study_uid: str, series_uid: str | None, sop_uid: str | None, sink: Sink
) -> RetrieveOutcome:
    """_c_get, timed and counted (drimbox_dimse_*{operation="C-GET"})."""
    started, error = time.perf_counter(), None
    try:
        return _c_get(assoc, study_uid, series_uid, sop_uid, sink)
    except BaseException as exc:
        error = exc
        raise
    finally:
        metrics.observe_dimse("C-GET", started, error)


def _c_get(
    assoc: Association, study_uid: str, series_uid: str | None, sop_uid: str | None, sink: Sink
) -> RetrieveOutcome:
    """Run one C-GET on `assoc` to its end, delivering each instance to `sink`. Blocking.

    Returns when the PACS sent its final response (success, cancel, or warning with failed sub-operations);
    raises RetrieveFailure on a failure status, DimseUnavailable when the association is lost or silent.
    """
    if _GET_CONTEXT not in assoc.contexts:
        raise DimseUnavailable(f"{assoc.peer} does not accept Study Root C-GET")
    level, identifier = retrieve_identifier(study_uid, series_uid, sop_uid)
    op = RetrieveOperation(assoc, _GET_CONTEXT, next_message_id(), sink, f"C-GET {level}")
    assoc.send(_GET_CONTEXT, retrieve_rq(C_GET_RQ, STUDY_ROOT_GET, op.message_id), identifier)
    while True:
        message = op.next_message()
        field = message.command.field
        if field == C_STORE_RQ:
            assoc.send(message.context_id, c_store_rsp(message.command, _store(op, message)))
            continue
        check_response(message.command, C_GET_RSP, op.message_id, assoc.peer)
        if op.on_response(message):
            return op.outcome


def retrieve_by_get(
    pacs: PacsSettings,
    calling_ae: str,
    study_uid: str,
    series_uid: str | None,
    sop_uid: str | None,
    sink: Sink,
    pool: AssociationPool,
    sop_classes: Iterable[str] | None = None,
) -> RetrieveOutcome:
    """C-GET on an association from `pool` (see operation.run_on_pool)."""

    def open_association() -> Association:
        return Association.request(pacs.host, pacs.port, get_request(pacs, calling_ae, sop_classes), pacs.timeout)

    return run_on_pool(
        pool,
        _pool_key(pacs, calling_ae, sop_classes),
        open_association,
        pacs,
        sink,
        lambda assoc: c_get(assoc, study_uid, series_uid, sop_uid, sink),
        (study_uid, series_uid, sop_uid),
    )
