"""Hand-off of received instances from DIMSE threads to one asyncio consumer: bounded, de-duplicated, stoppable."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from drimbox.dimse.network import DimseFailure


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """One retrieved instance: a complete Part-10 file, its data set exactly as the PACS sent it."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes


@dataclass
class RetrieveOutcome:
    """How a C-GET or C-MOVE ended: final status and sub-operation counts (failures → HTTP 206 / 404)."""

    status: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    cancelled: bool = False
    # The PACS holds nothing that matches (some answer that with a failure status instead of success).
    unmatched: bool = False
    # Instances handed to the consumer (after de-duplication).
    delivered: int = 0
    # Associations the retrieve was spread over (one per series when parallel).
    associations: int = 1
    failed_uids: list[str] = field(default_factory=list)


class RetrieveFailure(DimseFailure):
    """The PACS ended a retrieve with a failure status; the sub-operation counts say how far it went."""

    def __init__(self, message: str, outcome: RetrieveOutcome) -> None:
        super().__init__(
            f"{message}: {outcome.completed} completed, {outcome.failed} failed, {outcome.warning} warning",
            outcome.status if outcome.status is not None else 0xC000,
        )
        self.outcome = outcome
        self.completed = outcome.completed
        self.failed = outcome.failed
        self.warning = outcome.warning


@dataclass(frozen=True)
class _End:
    error: BaseException | None


class Sink:
    """Where DIMSE threads put instances for one retrieve; the asyncio consumer takes them in order.

    Capacity is a semaphore taken by the producing thread and given back by the consumer, so a full sink
    blocks the thread, which stops reading its socket, which stalls the PACS: memory stays bounded at
    `capacity` instances. Handing over costs one call_soon_threadsafe, no round trip through the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("queue_size must be at least 1")
        self.loop = loop
        self.capacity = capacity
        # Set when the consumer has gone: deliveries are refused from then on.
        self.stopped = threading.Event()
        # Set when the retrieve must wind down (consumer gone, or a sibling association failed): C-CANCEL.
        self.halted = threading.Event()
        self.done = asyncio.Event()
        self.delivered = 0
        # How the retrieve ended, set by the DIMSE thread before done.
        self.final: RetrieveOutcome | None = None
        self._queue: asyncio.Queue[ReceivedInstance | _End] = asyncio.Queue()
        self._slots = threading.Semaphore(capacity)
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def _post(self, item: ReceivedInstance | _End) -> bool:
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:
            # The consumer's event loop is closed: nobody will ever read this.
            self.stopped.set()
            self.halted.set()
            return False
        return True

    def deliver(self, instance: ReceivedInstance) -> bool:
        """Queue `instance` (blocking while the sink is full); False when the consumer has gone.

        An instance whose SOP Instance UID was already delivered is dropped and reported as taken.
        """
        with self._lock:
            if instance.sop_instance_uid in self._seen:
                return True
            self._seen.add(instance.sop_instance_uid)
        while not self._slots.acquire(timeout=0.5):
            if self.stopped.is_set():
                return False
        if self.stopped.is_set() or not self._post(instance):
            return False
        with self._lock:
            self.delivered += 1
        return True

    def finish(self, error: BaseException | None, outcome: RetrieveOutcome | None) -> None:
        """Called once by the thread that drove the retrieve, last: the consumer sees the end (or the error)."""
        self.final = outcome
        if self._post(_End(error)):
            try:
                self.loop.call_soon_threadsafe(self.done.set)
            except RuntimeError:
                pass

    def halt(self) -> None:
        """Ask every operation feeding this sink to cancel; the consumer still gets what arrives meanwhile."""
        self.halted.set()

    def stop(self) -> None:
        """The consumer has gone: wake a producer blocked on a full sink; later deliveries return False."""
        self.stopped.set()
        self.halted.set()
        self._slots.release(self.capacity)

    async def next(self) -> ReceivedInstance | _End:
        item = await self._queue.get()
        if isinstance(item, ReceivedInstance):
            self._slots.release()
        return item
