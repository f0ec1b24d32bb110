"""Fuzzing HL7 v2 in: the ORU/MDM parser on mutated near-valid reports, and the MLLP server on hostile streams."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drimbox.demo.samples.reports import build_cda, build_mdm, build_oru
from drimbox.hl7.ack import HL7Error, build_ack, peek_header
from drimbox.hl7.mllp import END, START, MllpServer, frame
from drimbox.hl7.report import ReportMessage, parse_report_message
from drimbox.source.intake import ReportIntake
from drimbox.source.outbox import Outbox
from tests.fuzz.support import BackgroundLoop, budget, peak_memory

CDA = build_cda(__import__("drimbox.demo.samples.reports", fromlist=["_C"])._C)
BASES = [
    build_oru(CDA, control_id="FUZZ-ORU", timestamp="20250101120000"),
    build_mdm(CDA, "T02", control_id="FUZZ-MDM", timestamp="20250101120000"),
    build_mdm(CDA, "T10", control_id="FUZZ-T10", parent_document_id="1.2.3.4", timestamp="20250101120000"),
]
# What the parser's own safety net says when it meets an exception it did not expect: a defect to fix.
INTERNAL = ("internal error while reading the message", "internal error while handling the message")

# Pieces that matter to an HL7 reader: separators, escapes, encodings, segment ids, charsets.
_SPECIAL = st.sampled_from(
    ["|", "^", "~", "\\", "&", "\r", "\n", "\r\n", "\x0b", "\x1c", "\x00", "MSH|", "\\X0D\\", "\\E\\", "é", "\ufeff",
     "ORU^R01^ORU_R01", "MDM^T02^MDM_T02", "2.5", "2.6", "UNICODE UTF-8", "8859/1", "8859/15", "ASCII", "UTF-16",
     "^TEXT^XML^Base64^", "NW", "RO", "CA", "ED", "F", "C", "D", "", " " * 3, "9" * 70]
)  # fmt: skip
_TEXT = st.one_of(_SPECIAL, st.text(max_size=40), st.lists(_SPECIAL, max_size=6).map("".join))
_XMLISH = st.sampled_from([
    b"<ClinicalDocument/>", b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", b"\x00\xff",
    b"<x xmlns='urn:hl7-org:v3'>" * 300, CDA[: len(CDA) // 2], CDA.replace(b"urn:hl7-org:v3", b"urn:other"),
])  # fmt: skip


@st.composite
def hl7_messages(draw: st.DrawFn) -> bytes:
    """A real ORU or MDM with a few mutations: fields, segments, separators, encodings, the CDA, raw bytes."""
    raw = draw(st.sampled_from(BASES))
    segments = raw.split(b"\r")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["field", "field", "drop", "dup", "swap", "cda", "msh2", "bytes", "truncate", "sep"]))
        i = draw(st.integers(0, len(segments) - 1))
        if op == "field":
            fields = segments[i].split(b"|")
            j = draw(st.integers(0, len(fields)))
            value = draw(_TEXT).encode(draw(st.sampled_from(["utf-8", "latin-1"])), "replace")
            if j < len(fields):
                fields[j] = value
            else:
                fields.append(value)
            segments[i] = b"|".join(fields)
        elif op == "drop" and len(segments) > 1:
            del segments[i]
        elif op == "dup":
            segments.insert(i, segments[i])
        elif op == "swap":
            k = draw(st.integers(0, len(segments) - 1))
            segments[i], segments[k] = segments[k], segments[i]
        elif op == "cda":
            payload = draw(st.one_of(_XMLISH, st.binary(max_size=200)))
            encoded = base64.b64encode(payload) if draw(st.booleans()) else draw(st.binary(max_size=60))
            segments = [s.replace(b"Base64^" + s.split(b"Base64^", 1)[1].split(b"|")[0], b"Base64^" + encoded)
                        if b"Base64^" in s else s for s in segments]  # fmt: skip
        elif op == "msh2" and segments[0].startswith(b"MSH"):
            segments[0] = b"MSH" + draw(st.binary(min_size=0, max_size=6)) + segments[0][8:]
        elif op == "bytes":
            pos = draw(st.integers(0, len(segments[i])))
            segments[i] = segments[i][:pos] + draw(st.binary(max_size=12)) + segments[i][pos:]
        elif op == "truncate":
            segments = segments[: i + 1]
            segments[i] = segments[i][: draw(st.integers(0, len(segments[i])))]
    separator = draw(st.sampled_from([b"\r", b"\r", b"\n", b"\r\n", b"\x1c", b""]))
    return separator.join(segments)


def check_parse(raw: bytes) -> None:
    try:
        result = parse_report_message(raw)
    except HL7Error as exc:
        assert exc.ack_code in ("AE", "AR")
        assert exc.text not in INTERNAL, f"unexpected exception inside the parser for {raw[:200]!r}"
        ack = build_ack(peek_header(raw), exc.ack_code, exc)
    else:
        assert isinstance(result, ReportMessage)
        ack = build_ack(result.header, "AA")
    # The answer itself must be framable: no MLLP control byte may leak into it from the input.
    assert b"\x0b" not in ack and b"\x1c" not in ack and ack.startswith(b"MSH|")


@given(hl7_messages())
def test_mutated_reports_get_a_result_or_an_hl7_error(raw: bytes) -> None:
    check_parse(raw)


@given(st.one_of(st.binary(max_size=400), st.binary(max_size=100).map(lambda b: b"MSH|^~\\&|" + b)))
def test_random_bytes_get_an_hl7_error(raw: bytes) -> None:
    check_parse(raw)


# -- the MLLP server with the source's real intake (SQLite outbox) ---------------------------------------


class MllpUnderTest:
    def __init__(self, tmp: Path) -> None:
        self.loop = BackgroundLoop()
        self.outbox = Outbox(tmp / "outbox.sqlite")
        # A small frame limit and idle time-out, so the limits are reached within a test's time.
        self.server = MllpServer("127.0.0.1", 0, handler=ReportIntake(self.outbox), max_message_bytes=256 * 1024,
                                 idle_timeout=2.0)  # fmt: skip
        self.loop.run(self.server.start())
        self.port = self.server.port

    def close(self) -> None:
        self.loop.run(self.server.close())
        self.outbox.close()
        self.loop.close()


@pytest.fixture(scope="module")
def mllp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MllpUnderTest]:
    server = MllpUnderTest(tmp_path_factory.mktemp("mllp"))
    yield server
    server.close()


def exchange(port: int, data: bytes, timeout: float = 10.0) -> list[bytes]:
    """Send `data`, half-close, and return every framed answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close first on a framing error: that is a valid answer
        received = bytearray()
        try:
            while chunk := sock.recv(1 << 16):
                received += chunk
        except ConnectionResetError:
            pass
    answers = []
    for piece in bytes(received).split(END):
        if piece:
            assert piece.startswith(START), f"unframed bytes from the server: {piece[:80]!r}"
            answers.append(piece[1:])
    return answers


def msa_code(ack: bytes) -> str:
    msa = next(line for line in ack.split(b"\r") if line.startswith(b"MSA|"))
    return msa.split(b"|")[1].decode()


_STREAM_PIECE = st.one_of(
    hl7_messages().map(frame),
    st.binary(max_size=64),
    st.sampled_from(
        [START, END, b"\x1c", b"\x0d", b" \r\n", START + START, b"\x1c\x1c\x0d", frame(b""), frame(b"\x1c")]
    ),
)


@budget(0.5)
@given(st.lists(_STREAM_PIECE, min_size=1, max_size=5))
def test_mllp_server_answers_hostile_streams_and_keeps_serving(mllp: MllpUnderTest, pieces: list[bytes]) -> None:
    answers = exchange(mllp.port, b"".join(pieces))
    for ack in answers:
        assert msa_code(ack) in ("AA", "AE", "AR")
        assert not any(text.encode() in ack for text in INTERNAL)
    # Another client is served as usual, whatever the previous one sent.
    [ack] = exchange(mllp.port, frame(BASES[0]))
    assert msa_code(ack) == "AA"


def test_mllp_oversized_frame_is_refused_with_bounded_memory(mllp: MllpUnderTest) -> None:
    # 64 MB announced as one frame that never ends: AR at the limit (256 KiB here), the rest thrown away.
    chunk = b"A" * (1 << 20)
    with peak_memory() as peak, socket.create_connection(("127.0.0.1", mllp.port), timeout=20) as sock:
        sock.sendall(START + BASES[0][:200])
        answer = bytearray()
        try:
            for _ in range(64):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed after the AR: the expected end
        sock.settimeout(5)
        try:
            while (data := sock.recv(1 << 16)) and END not in answer:
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    assert answer.startswith(START) and msa_code(bytes(answer[1:])) == "AR"
    assert peak() < 8 * 256 * 1024 + 4 * (1 << 20), f"peak {peak()} bytes"
    [ack] = exchange(mllp.port, frame(BASES[0]))
    assert msa_code(ack) == "AA"


def test_mllp_silent_peer_is_disconnected_after_the_idle_timeout(mllp: MllpUnderTest) -> None:
    with socket.create_connection(("127.0.0.1", mllp.port), timeout=10) as sock:
        sock.sendall(START + BASES[0][:100])  # a frame begun and never finished
        assert sock.recv(1024) == b""  # closed by the server after idle_timeout (2 s), not held forever
