"""Best-effort copy of each audit record to a syslog collector: RFC 5424 over UDP, or TCP with RFC 6587 framing."""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from drimbox.audit.atna import audit_message

log = logging.getLogger(__name__)
# authpriv (10) * 8 + notice (5): the facility and severity IHE ATNA (ITI-20) uses for audit messages.
_PRI = 10 * 8 + 5
_QUEUE_MAX = 10_000
_TIMEOUT = 2.0
# After a failed TCP connection, wait this long before trying again (messages meanwhile are dropped).
_RETRY_AFTER = 5.0


def parse_address(url: str) -> tuple[str, str, int]:
    """`udp://host:port` or `tcp://host:port` → (scheme, host, port); ValueError names what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("udp", "tcp") or not parts.hostname or parts.port is None:
        raise ValueError(f"expected udp://host:port or tcp://host:port, got {url!r}")
    return parts.scheme, parts.hostname, parts.port


def syslog_frame(record: dict[str, Any], *, source_id: str, fmt: str, hostname: str) -> bytes:
    """One RFC 5424 message: header, no structured data, the ATNA XML (or the record as JSON) as UTF-8 with BOM."""
    if fmt == "json":
        body = json.dumps(record, sort_keys=True, ensure_ascii=False).encode()
    else:
        body = audit_message(record, source_id)
    return _frame(body, "IHE+RFC-3881", hostname)


def checkpoint_frame(checkpoint: dict[str, Any], *, hostname: str) -> bytes:
    """A signed checkpoint of the trail's head as JSON, MSGID DRIMBOX-CHECKPOINT (a copy off the machine)."""
    return _frame(json.dumps(checkpoint, sort_keys=True).encode(), "DRIMBOX-CHECKPOINT", hostname)


def _frame(body: bytes, msgid: str, hostname: str) -> bytes:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = f"<{_PRI}>1 {stamp} {hostname or '-'} drimbox - {msgid} - "
    return header.encode() + b"\xef\xbb\xbf" + body


class SyslogSender:
    """Sends from its own thread: `send()` never blocks and drops (and counts) when the collector cannot keep up."""

    def __init__(self, url: str, *, source_id: str, fmt: str = "atna") -> None:
        self.scheme, self.host, self.port = parse_address(url)
        self.source_id = source_id
        self.fmt = fmt
        self.hostname = socket.gethostname()
        self.sent = 0
        self.dropped = 0
        # (record, is a checkpoint) pairs; None stops the thread.
        self._queue: queue.Queue[tuple[dict[str, Any], bool] | None] = queue.Queue(_QUEUE_MAX)
        self._sock: socket.socket | None = None
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def send(self, record: dict[str, Any]) -> None:
        self._put((record, False))

    def send_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._put((checkpoint, True))

    def _put(self, item: tuple[dict[str, Any], bool]) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within `timeout`), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            record, is_checkpoint = item
            try:
                if is_checkpoint:
                    frame = checkpoint_frame(record, hostname=self.hostname)
                else:
                    frame = syslog_frame(record, source_id=self.source_id, fmt=self.fmt, hostname=self.hostname)
                self._deliver(frame)
                self.sent += 1
            except Exception as exc:
                self.dropped += 1
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                    self._retry_at = time.monotonic() + _RETRY_AFTER
                log.warning("audit syslog %s://%s:%d: %s (message dropped; the local trail has it)",
                            self.scheme, self.host, self.port, type(exc).__name__)  # fmt: skip

    def _deliver(self, frame: bytes) -> None:
        if self.scheme == "udp":
            if self._sock is None:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.sendto(frame, (self.host, self.port))
            return
        if self._sock is None:
            if time.monotonic() < self._retry_at:
                raise ConnectionError("collector down, waiting before reconnecting")
            try:
                self._sock = socket.create_connection((self.host, self.port), timeout=_TIMEOUT)
            except OSError:
                self._retry_at = time.monotonic() + _RETRY_AFTER
                raise
        # RFC 6587 octet counting: "LEN SP MSG", so a message may hold newlines (the XML does).
        self._sock.sendall(f"{len(frame)} ".encode() + frame)
