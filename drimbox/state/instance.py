"""Who this process is among the instances sharing a state database, and whether another one of this host lives."""

from __future__ import annotations

import os
import socket


def instance_id() -> str:
    """This host and process, "host/pid": a restarted box can tell its dead predecessor's work from a live peer's."""
    return f"{socket.gethostname()}/{os.getpid()}"


def dead_local(holder: str, me: str | None = None) -> bool:
    """Whether `holder` ("host/pid") was a process of this host that is gone (never true of another host's)."""
    me = me or instance_id()
    host, _, pid = holder.rpartition("/")
    if holder == me or host != me.rpartition("/")[0] or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
