"""The syslog copy of the trail: RFC 5424 + ATNA XML over UDP and TCP (RFC 6587), and a down collector harms nothing."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from lxml import etree

from drimbox.audit.events import REFUSED, SUCCESS, AuditEvent
from drimbox.audit.syslog import SyslogSender
from drimbox.audit.trail import AuditTrail, verify
from drimbox.demo.samples.processes import free_port

INS = "279035121518989"
STUDY = "1.2.250.1.213.4.5.2.1.103"


def retrieve(outcome: str = SUCCESS) -> AuditEvent:
    return AuditEvent(action="dicomweb.retrieve", outcome=outcome, professional="810100000001", patient=INS,
                      patient_name="DE VINCI^Ruth", study=STUDY, kos="1.2.3.4", source="127.0.0.9",
                      detail={"reason": "kos_not_for_study"} if outcome == REFUSED else {})  # fmt: skip


def parse_rfc5424(frame: bytes) -> tuple[str, etree._Element]:
    """Header fields up to MSG, then the XML after the BOM."""
    header, _, body = frame.partition(b" - \xef\xbb\xbf")
    assert body, frame[:200]
    return header.decode(), etree.fromstring(body)


def check_message(header: str, xml: etree._Element, outcome: str) -> None:
    pri_version, stamp, _host, app, _procid, msgid = header.split(" ")
    assert (pri_version, app, msgid) == ("<85>1", "drimbox", "IHE+RFC-3881") and stamp.endswith("Z")
    assert xml.tag == "AuditMessage"
    ev = xml.find("EventIdentification")
    assert ev is not None and ev.get("EventActionCode") == "R" and ev.get("EventOutcomeIndicator") == outcome
    assert ev.find("EventID").get("csd-code") == "110103"  # type: ignore[union-attr]
    requestor = xml.find("ActiveParticipant[@UserIsRequestor='true']")
    assert requestor is not None and requestor.get("UserID") == "810100000001"
    assert requestor.get("NetworkAccessPointID") == "127.0.0.9"
    objects = {o.get("ParticipantObjectTypeCode"): o for o in xml.findall("ParticipantObjectIdentification")}
    assert objects["1"].get("ParticipantObjectID") == INS
    assert objects["1"].findtext("ParticipantObjectName") == "DE VINCI^Ruth"
    assert STUDY in {o.get("ParticipantObjectID") for o in xml.findall("ParticipantObjectIdentification")}


async def test_each_event_goes_to_a_udp_collector_as_an_atna_message(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    trail = AuditTrail(tmp_path / "a.sqlite", syslog=SyslogSender(f"udp://127.0.0.1:{port}", source_id="DRIMBOX"))
    try:
        await trail.record(retrieve())
        await trail.record(retrieve(REFUSED))
        first, second = receiver.recv(65536), receiver.recv(65536)
    finally:
        trail.close()
        receiver.close()
    check_message(*parse_rfc5424(first), outcome="0")
    header, xml = parse_rfc5424(second)
    check_message(header, xml, outcome="4")
    assert xml.findtext("EventIdentification/EventOutcomeDescription") == "kos_not_for_study"


async def test_tcp_uses_octet_counting_and_a_down_collector_blocks_nothing(tmp_path: Path) -> None:
    # Down first: nothing listens on the port. record() must still return at once, and the chain holds.
    port = free_port()
    trail = AuditTrail(tmp_path / "a.sqlite", syslog=SyslogSender(f"tcp://127.0.0.1:{port}", source_id="DRIMBOX"))
    started = time.monotonic()
    for _ in range(20):
        await trail.record(retrieve())
    assert time.monotonic() - started < 2.0
    trail.close()
    assert verify(tmp_path / "a.sqlite") == (20, None)

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    trail = AuditTrail(
        tmp_path / "a.sqlite", syslog=SyslogSender(f"tcp://127.0.0.1:{listener.getsockname()[1]}", source_id="DRIMBOX")
    )
    try:
        await trail.record(retrieve())
        await trail.record(retrieve())
        conn, _ = listener.accept()
        conn.settimeout(5)
        data = b""
        frames: list[bytes] = []
        while len(frames) < 2:
            data += conn.recv(65536)
            while b" " in data:
                length, _, rest = data.partition(b" ")
                if len(rest) < int(length):
                    break
                frames.append(rest[: int(length)])
                data = rest[int(length) :]
        conn.close()
    finally:
        trail.close()
        listener.close()
    for frame in frames:
        check_message(*parse_rfc5424(frame), outcome="0")
    assert verify(tmp_path / "a.sqlite") == (22, None)
