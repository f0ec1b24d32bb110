"""Deterministic crash points for the fault suite: DRIMBOX_FAULT_KILL_AT=<stage>[:n] SIGKILLs the box there."""

from __future__ import annotations

import os
import signal
import threading

ENV = "DRIMBOX_FAULT_KILL_AT"

# Every checkpoint placed in the code, so a typo in a test's stage fails loudly instead of never firing.
STAGES = {
    "intake.stored": "the HL7 message is committed in the outbox, its ACK not sent yet",
    "mllp.ack_sent": "an ACK was written to the MLLP peer",
    "publish.found": "C-FIND answered, nothing built yet",
    "publish.kos_written": "the KOS file is on disk, the outbox does not name it yet",
    "publish.before_iti41": "the ITI-41 is about to be sent",
    "publish.registered": "the DMP accepted a new KOS, the outbox does not know yet",
    "publish.replaced": "the DMP accepted a replacing KOS (RPLC), the outbox does not know yet",
    "withdraw.done": "the DMP accepted a withdrawal, the outbox does not know yet",
    "retrieve.instance": "a C-GET delivered one instance to the box (mid-fill)",
    "retrieve.ended": "every instance of a retrieve reached the cache files, the series is not indexed yet",
}


def parse(value: str) -> tuple[str, int] | None:
    """`stage` or `stage:n` (the n-th time the stage is reached, from 1); empty means no fault."""
    value = value.strip()
    if not value:
        return None
    stage, _, count = value.partition(":")
    if stage not in STAGES:
        raise ValueError(f"{ENV}: unknown stage {stage!r} (known: {', '.join(sorted(STAGES))})")
    try:
        n = int(count) if count else 1
    except ValueError:
        raise ValueError(f"{ENV}: {count!r} is not a count") from None
    if n < 1:
        raise ValueError(f"{ENV}: the count must be at least 1")
    return stage, n


# Read once at import: a checkpoint that does not match costs one comparison.
_target = parse(os.environ.get(ENV, ""))
_hits = 0
_lock = threading.Lock()  # retrieve checkpoints run on DIMSE threads


def checkpoint(stage: str) -> None:
    """SIGKILL this process if `stage` is the armed kill point and this is its n-th passage."""
    if _target is None or stage != _target[0]:
        return
    global _hits
    with _lock:
        _hits += 1
        if _hits != _target[1]:
            return
        # Unbuffered, so the test can tell where the process died; no patient data in it.
        os.write(2, f"drimbox fault: SIGKILL at {stage} ({_hits})\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
