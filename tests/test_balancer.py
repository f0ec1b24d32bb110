"""Two source boxes behind a real HAProxy: HTTP and MLLP reach both, and a SIGKILLed box is not noticed by clients."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from drimbox.demo.samples.processes import free_port
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.hl7.mllp import send_message
from tests.support.fixtures_haproxy import Balancer, run_haproxy
from tests.support.fixtures_mesh import SourceBox, get_json

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.sim, pytest.mark.box, pytest.mark.haproxy]


def answering_mllp_port(balancer: Balancer) -> int:
    """GET /health through the balancer; the box's MLLP port tells which box answered."""
    body = get_json(f"{balancer.url}/health")
    assert body["status"] == "up", body
    port: int = body["components"]["mllp"]["port"]
    return port


def send_report(port: int, exam: str) -> bytes:
    message = build_oru(build_cda(ANS_EXAMS[exam]), action="publish", control_id=f"HA-{exam}")
    return asyncio.run(send_message("127.0.0.1", port, message, timeout=15))


@pytest.fixture
def two_boxes(source_box: Callable[..., SourceBox]) -> tuple[SourceBox, SourceBox]:
    # No PACS is needed to acknowledge a report (it waits for its images): a closed port stands in for one.
    pacs = SimpleNamespace(aet="ORTHANC", dicom_port=free_port())
    return source_box(pacs), source_box(pacs)


def test_two_boxes_behind_haproxy_serve_http_and_mllp_and_survive_a_sigkill(
    two_boxes: tuple[SourceBox, SourceBox], haproxy: Callable[..., Balancer]
) -> None:
    a, b = two_boxes
    balancer = haproxy(http_backends=[a.http_port, b.http_port], mllp_backends=[a.mllp_port, b.mllp_port])

    # Round robin over two healthy boxes: four requests see both of them.
    assert {answering_mllp_port(balancer) for _ in range(4)} == {a.mllp_port, b.mllp_port}

    # A report through the MLLP frontend is acknowledged, and exactly one box took it into its outbox.
    ack = send_report(balancer.mllp_port or 0, "C")
    assert b"MSA|AA" in ack, ack
    assert sorted(len(box.publications(ANS_EXAMS["C"].accession)) for box in (a, b)) == [0, 1]

    # SIGKILL one box: from the next request on, every one is answered (a refused connection is redispatched at
    # once), and the health checks take the box out of both pools within a second (2.5 s allowed: 2 loaded cores).
    a.process.kill()
    killed_at = time.monotonic()
    answered: list[int] = []
    out_after: float | None = None
    while time.monotonic() - killed_at < 3.0:
        answered.append(answering_mllp_port(balancer))
        states = balancer.server_states()
        if out_after is None and states["box0"] == states["mllp0"] == "DOWN":
            out_after = time.monotonic() - killed_at
    assert len(answered) >= 10 and set(answered) == {b.mllp_port}, answered
    assert out_after is not None and out_after < 2.5, (out_after, balancer.server_states())
    assert balancer.server_states()["box1"] == balancer.server_states()["mllp1"] == "UP"
    # Reports too: each of three distinct exams is acknowledged and lands on the surviving box.
    for exam in ("E", "F", "I"):
        assert b"MSA|AA" in send_report(balancer.mllp_port or 0, exam)
        assert len(b.publications(ANS_EXAMS[exam].accession)) == 1, exam


def test_the_shipped_haproxy_cfg_keeps_serving_when_an_instance_dies(
    two_boxes: tuple[SourceBox, SourceBox], tmp_path: Path
) -> None:
    # docker/haproxy.cfg as shipped (its slower production checks), only its loopback ports moved to free ones.
    a, b = two_boxes
    ports = {8080: free_port(), 2575: free_port(), 11112: free_port(), 8181: a.http_port, 8182: b.http_port,
             2581: a.mllp_port, 2582: b.mllp_port, 11181: a.dicom_port, 11182: b.dicom_port}  # fmt: skip
    text = (ROOT / "docker" / "haproxy.cfg").read_text()
    text = re.sub(r"127\.0\.0\.1:(\d+)\b", lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", text)
    balancer = run_haproxy(tmp_path / "shipped", text, ports[8080], ports[2575])
    try:
        assert {answering_mllp_port(balancer) for _ in range(4)} == {a.mllp_port, b.mllp_port}
        b.process.kill()
        # leastconn over idle servers, 1 s checks: the dead instance stays in the pool ~3 s; redispatch hides it.
        answered = {answering_mllp_port(balancer) for _ in range(50)}
        assert answered == {a.mllp_port}
        assert b"MSA|AA" in send_report(ports[2575], "C")
        assert len(a.publications(ANS_EXAMS["C"].accession)) == 1
    finally:
        balancer.stop()
