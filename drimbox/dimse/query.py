"""The two small Study Root C-FINDs a retrieve needs, on our upper layer: does anything match, which series."""

from __future__ import annotations

from io import BytesIO

from pydicom.filereader import read_dataset

from drimbox.config import PacsSettings
from drimbox.dimse.message import (
    C_FIND_RQ,
    C_FIND_RSP,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MESSAGE_ID_BEING_RESPONDED_TO,
    PENDING,
    SUCCESS,
    Command,
    retrieve_identifier,
    retrieve_rq,
    series_query,
)
from drimbox.dimse.network import DimseFailure, DimseUnavailable
from drimbox.dimse.pdu import AssociateRQ, ProposedContext
from drimbox.dimse.pool import AssociationPool, PoolKey
from drimbox.dimse.ul import MAX_PDU_LENGTH, Association, next_message_id

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_FIND_CONTEXT = 1


def check_response(command: Command, expected_field: int, message_id: int, peer: str) -> None:
    """Raise DimseUnavailable for a response that is not the one awaited (the association is then aborted)."""
    if command.field != expected_field or command.us(MESSAGE_ID_BEING_RESPONDED_TO) != message_id:
        raise DimseUnavailable(
            f"{peer} sent command 0x{command.field:04X} for message {command.us(MESSAGE_ID_BEING_RESPONDED_TO)} "
            f"while message {message_id} awaited 0x{expected_field:04X}"
        )


def find_request(pacs: PacsSettings, calling_ae: str) -> AssociateRQ:
    contexts = [ProposedContext(_FIND_CONTEXT, STUDY_ROOT_FIND, (IMPLICIT_VR_LITTLE_ENDIAN,))]
    return AssociateRQ(pacs.ae_title, calling_ae, contexts, max_length=MAX_PDU_LENGTH)


def c_find(assoc: Association, identifier: bytes, level: str) -> list[bytes]:
    """The identifiers (Implicit VR Little Endian) of every match of one C-FIND on `assoc`. Blocking."""
    if _FIND_CONTEXT not in assoc.contexts:
        raise DimseUnavailable(f"{assoc.peer} does not accept Study Root C-FIND")
    message_id = next_message_id()
    assoc.send(_FIND_CONTEXT, retrieve_rq(C_FIND_RQ, STUDY_ROOT_FIND, message_id), identifier)
    answers: list[bytes] = []
    while True:
        message = assoc.receive()
        check_response(message.command, C_FIND_RSP, message_id, assoc.peer)
        status = message.command.status
        if status in PENDING:
            answers.append(b"".join(message.data) if message.data is not None else b"")
        elif status == SUCCESS:
            return answers
        else:
            raise DimseFailure(f"C-FIND {level} failed on {assoc.peer}", status if status is not None else 0xC000)


def count_matches(
    pacs: PacsSettings, calling_ae: str, study_uid: str, series_uid: str | None, sop_uid: str | None
) -> int:
    """How many entities a C-FIND finds at the retrieve's level (0: the PACS holds none). Blocking.

    Orthanc (1.10) answers a C-GET or C-MOVE of an unknown UID with failure 0xC000 instead of success with no
    sub-operations (PS3.4 §C.4.2.3.1); this query tells "nothing to send" from a real failure. Its own
    association, outside the pool: the caller still holds its leased one.
    """
    level, identifier = retrieve_identifier(study_uid, series_uid, sop_uid)
    assoc = Association.request(pacs.host, pacs.port, find_request(pacs, calling_ae), pacs.timeout)
    try:
        matches = len(c_find(assoc, identifier, level))
    except BaseException:
        assoc.abort()
        raise
    assoc.release()
    return matches


def list_series(pacs: PacsSettings, calling_ae: str, study_uid: str, pool: AssociationPool) -> list[str]:
    """Series Instance UIDs of the study, in the PACS's order. Blocking."""

    def open_association() -> Association:
        return Association.request(pacs.host, pacs.port, find_request(pacs, calling_ae), pacs.timeout)

    key = PoolKey(pacs.host, pacs.port, pacs.ae_title, calling_ae, "find")
    with pool.lease(key, open_association, wait=pacs.timeout) as lease:
        answers = c_find(lease.assoc, series_query(study_uid), "SERIES")
        lease.keep = True
    series: list[str] = []
    for answer in answers:
        try:
            uid = str(read_dataset(BytesIO(answer), True, True).get("SeriesInstanceUID", "")).strip()
        except Exception as exc:
            raise DimseFailure(f"C-FIND SERIES on {pacs.ae_title}: undecodable answer ({exc})", 0xC000) from exc
        if uid and uid not in series:
            series.append(uid)
    return series
