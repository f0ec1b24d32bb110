"""Streaming Study Root C-FIND for asyncio callers (QIDO-RS in the Proxy profile): bounded, cancellable."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator

from pydicom.dataset import Dataset
from pynetdicom.presentation import build_context

from drimbox.config import PacsSettings
from drimbox.dimse.find import StudyRootQueryRetrieveInformationModelFind, iter_answers
from drimbox.dimse.network import associate

_MESSAGE_ID = 1


class _End:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


async def iter_find(
    pacs: PacsSettings, calling_ae: str, identifier: Dataset, *, queue_size: int = 64
) -> AsyncIterator[Dataset]:
    """Yield each C-FIND answer as the PACS sends it; leaving early sends C-CANCEL and ends the association.

    Raises DimseUnavailable or DimseFailure like the other SCUs. At most `queue_size` answers wait for
    the consumer: a slow consumer slows the PACS, memory stays bounded.
    """
    handoff: queue.Queue[Dataset | _End] = queue.Queue(queue_size)
    stop = threading.Event()

    def put(item: Dataset | _End) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        error: BaseException | None = None
        try:
            with associate(pacs, calling_ae, [build_context(StudyRootQueryRetrieveInformationModelFind)]) as assoc:
                for answer in iter_answers(assoc, identifier):
                    if not put(answer):
                        # The consumer left (limit reached, client gone): tell the PACS to stop.
                        assoc.send_c_cancel(_MESSAGE_ID, query_model=StudyRootQueryRetrieveInformationModelFind)
                        break
        except BaseException as exc:  # handed to the consumer
            error = exc
        put(_End(error))

    thread = threading.Thread(target=work, name="drimbox-c-find", daemon=True)
    thread.start()
    try:
        while True:
            item = await asyncio.to_thread(handoff.get)
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
