"""Associations to each PACS: at most N open at once, idle ones kept a few seconds for the next operation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from drimbox import metrics
from drimbox.dimse.network import DimseUnavailable
from drimbox.dimse.ul import Association


@dataclass(frozen=True)
class PoolKey:
    """What makes two associations interchangeable: the same peer, calling AE and negotiated purpose."""

    host: str
    port: int
    called_ae: str
    calling_ae: str
    # e.g. "get" plus the SOP classes proposed, or "move": an association is reused only for the same kind.
    purpose: str

    @property
    def peer(self) -> tuple[str, int, str]:
        return self.host, self.port, self.called_ae


@dataclass
class Lease:
    """An association lent by the pool. Set `keep` once the operation has ended cleanly to make it reusable."""

    assoc: Association
    reused: bool
    keep: bool = False


class AssociationPool:
    """Bounds the associations open to each PACS (a PACS has few worker threads: Orthanc 4 by default).

    An association that ended its operation cleanly goes back idle for `idle_seconds` (below the idle
    time-outs PACS use, 30 s for Orthanc) and saves the next retrieve the TCP and A-ASSOCIATE round trips
    and the negotiation of 128 presentation contexts. `idle_seconds=0` closes each one after use.
    Thread-safe; waiting for a free slot blocks the calling (worker) thread, never the event loop.
    """

    def __init__(self, max_per_peer: int = 4, idle_seconds: float = 5.0) -> None:
        if max_per_peer < 1:
            raise ValueError("max_per_peer must be at least 1")
        self.max_per_peer = max_per_peer
        self.idle_seconds = idle_seconds
        self._cond = threading.Condition()
        self._open: dict[tuple[str, int, str], int] = {}
        self._idle: dict[PoolKey, list[tuple[Association, float]]] = {}
        self._closed = False
        self._reaper: threading.Timer | None = None

    def usage(self) -> tuple[int, int]:
        """(idle, in use) associations, all peers together."""
        with self._cond:
            idle = sum(len(entries) for entries in self._idle.values())
            return idle, sum(self._open.values()) - idle

    def open_count(self, host: str, port: int, called_ae: str) -> int:
        """Associations to that peer, busy or idle."""
        with self._cond:
            return self._open.get((host, port, called_ae), 0)

    def _forget_locked(self, key: PoolKey) -> None:
        peer = key.peer
        self._open[peer] = self._open.get(peer, 1) - 1
        if self._open[peer] <= 0:
            del self._open[peer]
        self._cond.notify_all()

    def _expire_locked(self, now: float, to_close: list[Association]) -> None:
        """Move idle associations past `idle_seconds`, or dropped by the peer, to `to_close`."""
        for key, idle in list(self._idle.items()):
            keep: list[tuple[Association, float]] = []
            for assoc, since in idle:
                # Readable while idle means the peer released, aborted or closed it: it is of no use.
                if now - since > self.idle_seconds or assoc.closed or assoc.wait_readable(0):
                    to_close.append(assoc)
                    self._forget_locked(key)
                else:
                    keep.append((assoc, since))
            self._idle[key] = keep

    def _take_idle_locked(self, key: PoolKey, now: float, to_close: list[Association]) -> Association | None:
        """An idle association for `key` still open on both sides."""
        self._expire_locked(now, to_close)
        found = self._idle.get(key)
        if found:
            return found.pop()[0]
        return None

    def _reap(self) -> None:
        """Timer: release what has been idle too long, so no association outlives `idle_seconds` by much."""
        to_close: list[Association] = []
        with self._cond:
            self._reaper = None
            self._expire_locked(time.monotonic(), to_close)
            if any(self._idle.values()):
                self._schedule_reaper_locked()
        for assoc in to_close:
            assoc.release()

    def _schedule_reaper_locked(self) -> None:
        if self._reaper is None and not self._closed:
            self._reaper = threading.Timer(self.idle_seconds + 0.1, self._reap)
            self._reaper.name = "drimbox-pool-reaper"
            self._reaper.daemon = True
            self._reaper.start()

    def _evict_other_locked(self, key: PoolKey, to_close: list[Association]) -> bool:
        """Close one idle association of another purpose to the same peer, to make room for `key`."""
        for other_key, idle in self._idle.items():
            if other_key.peer == key.peer and idle:
                to_close.append(idle.pop(0)[0])
                self._forget_locked(other_key)
                return True
        return False

    def acquire(
        self,
        key: PoolKey,
        open_association: Callable[[], Association],
        wait: float,
        abandon: threading.Event | None = None,
    ) -> Lease:
        """An idle association for `key`, else a new one once the peer has a free slot (wait ≤ `wait` s).

        Setting `abandon` (the retrieve's consumer has gone) ends the wait for a slot at once.
        """
        deadline = time.monotonic() + wait
        to_close: list[Association] = []
        try:
            with self._cond:
                while True:
                    if self._closed:
                        raise DimseUnavailable("the association pool is closed (shutting down)")
                    assoc = self._take_idle_locked(key, time.monotonic(), to_close)
                    if assoc is not None:
                        return Lease(assoc, reused=True)
                    if self._open.get(key.peer, 0) < self.max_per_peer or self._evict_other_locked(key, to_close):
                        self._open[key.peer] = self._open.get(key.peer, 0) + 1
                        break
                    remaining = deadline - time.monotonic()
                    if abandon is not None and abandon.is_set():
                        raise DimseUnavailable("retrieve abandoned while waiting for an association")
                    if remaining <= 0:
                        raise DimseUnavailable(
                            f"all {self.max_per_peer} associations to {key.called_ae}@{key.host}:{key.port} "
                            f"stayed busy for {wait:g} s"
                        )
                    # Wake up now and then to notice `abandon`; a freed slot wakes us at once anyway.
                    self._cond.wait(min(remaining, 0.2))
        finally:
            for stale in to_close:
                stale.release()
        try:
            return Lease(open_association(), reused=False)
        except BaseException:
            with self._cond:
                self._forget_locked(key)
            raise

    def give_back(self, key: PoolKey, lease: Lease) -> None:
        """Return a leased association: idle if `lease.keep`, else released (clean end) or aborted."""
        assoc = lease.assoc
        with self._cond:
            if lease.keep and not assoc.closed and not self._closed and self.idle_seconds > 0:
                self._idle.setdefault(key, []).append((assoc, time.monotonic()))
                self._schedule_reaper_locked()
                self._cond.notify_all()
                return
            self._forget_locked(key)
        if lease.keep:
            assoc.release()
        else:
            assoc.abort()

    @contextmanager
    def lease(
        self,
        key: PoolKey,
        open_association: Callable[[], Association],
        wait: float,
        abandon: threading.Event | None = None,
    ) -> Iterator[Lease]:
        """acquire() and give_back() around a block; an exception in the block aborts the association."""
        lease = self.acquire(key, open_association, wait, abandon)
        try:
            yield lease
        except BaseException:
            lease.keep = False
            raise
        finally:
            self.give_back(key, lease)

    def close(self) -> None:
        """Release every idle association and refuse new leases (busy ones are closed as they come back)."""
        with self._cond:
            self._closed = True
            reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.cancel()
        self.close_idle()

    def close_idle(self) -> None:
        """Release the idle associations, keep the pool usable (tests, or before the PACS's idle time-out)."""
        with self._cond:
            idle = [assoc for entries in self._idle.values() for assoc, _ in entries]
            for key, entries in self._idle.items():
                for _ in entries:
                    self._forget_locked(key)
            self._idle.clear()
        for assoc in idle:
            assoc.release()


# The process-wide pool the retrieve functions use unless given another.
default_pool = AssociationPool()
# The pool's gauges (drimbox_dimse_pool_associations), read under its lock only when /metrics is scraped.
metrics.DIMSE_POOL.labels("idle").set_function(lambda: default_pool.usage()[0])
metrics.DIMSE_POOL.labels("in_use").set_function(lambda: default_pool.usage()[1])
