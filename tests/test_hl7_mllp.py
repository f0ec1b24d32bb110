"""MllpServer over real loopback sockets: framing, sequencing, limits, time-outs and isolation of clients."""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_mdm, build_oru
from drimbox.hl7 import HL7Error, MllpServer, build_ack, parse_report_message, peek_header, send_message

VT, END = b"\x0b", b"\x1c\x0d"


async def report_handler(raw: bytes) -> bytes:
    """What the box does, minus storage: AA for a good report, the HL7Error as a NAK otherwise."""
    try:
        message = parse_report_message(raw)
    except HL7Error as error:
        return build_ack(peek_header(raw), error.ack_code, error)
    return build_ack(message.header, "AA")


ServerFactory = Callable[..., Awaitable[MllpServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    servers: list[MllpServer] = []

    async def factory(**kwargs: object) -> MllpServer:
        options: dict[str, object] = {"handler": report_handler, "idle_timeout": 5.0}
        options.update(kwargs)
        server = MllpServer("127.0.0.1", 0, **options)  # type: ignore[arg-type]
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.close()


@pytest.fixture(scope="module")
def cda() -> bytes:
    return build_cda(ANS_EXAMS["C"])


def msa(ack: bytes) -> list[str]:
    line = next(s for s in ack.split(b"\r") if s.startswith(b"MSA|"))
    return line.decode("latin-1").split("|")


def err(ack: bytes) -> list[str]:
    line = next(s for s in ack.split(b"\r") if s.startswith(b"ERR|"))
    return line.decode("latin-1").split("|")


async def read_frame(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    data = await asyncio.wait_for(reader.readuntil(END), timeout)
    assert data.startswith(VT)
    return data[1:-2]


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True if the server ends the connection (EOF or reset) within ``timeout`` seconds."""
    try:
        while True:
            if not await asyncio.wait_for(reader.read(65536), timeout):
                return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False


async def test_send_message_round_trip(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server()
    assert server.port > 0
    ack = await send_message("127.0.0.1", server.port, build_oru(cda, control_id="RT1"))
    assert msa(ack)[1:3] == ["AA", "RT1"]


async def test_several_messages_on_one_connection_answered_in_order(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    messages = [
        build_oru(cda, control_id="S1"),
        build_mdm(cda, control_id="S2"),
        build_oru(cda, "withdraw", control_id="S3"),
    ]
    for m in messages:  # one after the other
        writer.write(VT + m + END)
        await writer.drain()
        assert msa(await read_frame(reader))[1] == "AA"
    writer.write(b"".join(VT + m.replace(b"|S", b"|P") + END for m in messages))  # pipelined
    await writer.drain()
    assert [msa(await read_frame(reader))[2] for _ in messages] == ["P1", "P2", "P3"]
    writer.close()


async def test_frame_split_across_many_writes(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    data = VT + build_oru(cda, control_id="SPLIT") + END
    for i in range(0, len(data), 997):
        writer.write(data[i : i + 997])
        await writer.drain()
    assert msa(await read_frame(reader))[1:3] == ["AA", "SPLIT"]
    writer.close()


async def test_message_without_msh_gets_ar_and_the_connection_stays_usable(
    make_server: ServerFactory, cda: bytes
) -> None:
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(VT + b"PID|||123^^^X^PI\rOBX|1|ST|x||y" + END)
    nak = await read_frame(reader)
    assert msa(nak)[1] == "AR" and err(nak)[3].startswith("100^")
    writer.write(VT + build_oru(cda, control_id="AFTER") + END)
    assert msa(await read_frame(reader))[1:3] == ["AA", "AFTER"]
    writer.close()


@pytest.mark.parametrize(
    "table",
    [{"^": "#"}, {"|": "^", "^": "|"}],
)
async def test_odd_delimiters(make_server: ServerFactory, cda: bytes, table: dict[str, str]) -> None:
    server = await make_server()
    raw = (
        build_oru(cda, control_id="ODD")
        .decode()
        .translate(str.maketrans("".join(table), "".join(table.values())))
        .encode()
    )
    assert msa(await send_message("127.0.0.1", server.port, raw))[1:3] == ["AA", "ODD"]


async def test_non_base64_obx5_gets_ae_102(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server()
    raw = build_oru(cda, control_id="B64").replace(b"^Base64^PD94", b"^Base64^!!!!PD94")
    nak = await send_message("127.0.0.1", server.port, raw)
    assert msa(nak)[1:3] == ["AE", "B64"]
    assert err(nak)[2] == "OBX^1^5^1^5" and err(nak)[3].startswith("102^")


async def test_cda_with_entities_gets_ae(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server()
    declaration, rest = cda.split(b"\n", 1)
    evil = declaration + b'\n<!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>\n' + rest
    nak = await send_message("127.0.0.1", server.port, build_oru(evil.replace(b"<title>", b"<title>&b;")))
    assert msa(nak)[1] == "AE" and err(nak)[3].startswith("207^")


@pytest.mark.parametrize(("charset", "codec"), [("UNICODE UTF-8", "utf-8"), ("8859/15", "iso-8859-15")])
async def test_both_charsets_are_acknowledged_in_kind(
    make_server: ServerFactory, cda: bytes, charset: str, codec: str
) -> None:
    server = await make_server()
    raw = build_oru(cda, charset=charset, control_id="CS")
    ack = await send_message("127.0.0.1", server.port, raw)
    assert f"|FRA|{charset}".encode() in ack
    assert msa(ack)[1] == "AA"
    nak = await send_message("127.0.0.1", server.port, raw.replace(b"ORC|NW|", b"ORC|CA|"))
    assert msa(nak)[1:3] == ["AE", "CS"] and f"|FRA|{charset}".encode() in nak
    nak.decode(codec)


async def test_bytes_before_the_start_block_close_the_connection(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.0\r\n\r\n" + VT + build_oru(cda) + END)
    await writer.drain()
    assert await closed_by_peer(reader, 5)
    writer.close()


async def test_whitespace_between_frames_is_tolerated(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"\r\n" + VT + build_oru(cda, control_id="W1") + END + b"\n" + VT + build_oru(cda, control_id="W2") + END
    )
    assert [msa(await read_frame(reader))[2] for _ in range(2)] == ["W1", "W2"]
    writer.close()


async def test_bad_end_block_closes_the_connection(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(VT + build_oru(cda) + b"\x1cX")
    assert await closed_by_peer(reader, 5)
    writer.close()


async def test_truncated_frame_then_eof_is_dropped_and_server_keeps_serving(
    make_server: ServerFactory, cda: bytes
) -> None:
    server = await make_server()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(VT + build_oru(cda)[:500])
    writer.write_eof()
    assert await closed_by_peer(reader, 5)
    assert msa(await send_message("127.0.0.1", server.port, build_oru(cda)))[1] == "AA"


async def test_half_sent_frame_is_closed_after_idle_timeout(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server(idle_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(VT + build_oru(cda)[:300])
    await writer.drain()
    started = time.monotonic()
    assert await closed_by_peer(reader, 5)
    assert 0.4 <= time.monotonic() - started < 3
    writer.close()


async def test_silent_connection_is_closed_after_idle_timeout(make_server: ServerFactory) -> None:
    server = await make_server(idle_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await closed_by_peer(reader, 3)
    writer.close()


async def test_handler_exception_becomes_ae_207_and_server_survives(make_server: ServerFactory, cda: bytes) -> None:
    calls = 0

    async def flaky(raw: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk full")
        return await report_handler(raw)

    server = await make_server(handler=flaky)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(VT + build_oru(cda, control_id="F1") + END)
    nak = await read_frame(reader)
    assert msa(nak)[1:3] == ["AE", "F1"] and err(nak)[3].startswith("207^")
    assert "disk full" not in nak.decode()
    writer.write(VT + build_oru(cda, control_id="F2") + END)
    assert msa(await read_frame(reader))[1:3] == ["AA", "F2"]
    writer.close()


async def _send_huge(writer: asyncio.StreamWriter, head: bytes, total: int) -> None:
    chunk = b"A" * (1024 * 1024)
    with contextlib.suppress(ConnectionError):
        writer.write(VT + head)
        sent = len(head)
        while sent < total:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        writer.write(END)
        await writer.drain()


async def test_oversized_message_gets_ar_and_close_with_bounded_memory(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server(max_message_bytes=1024 * 1024)
    head = build_oru(cda, control_id="HUGE").split(b"^Base64^")[0] + b"^Base64^"
    tracemalloc.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        sender = asyncio.create_task(_send_huge(writer, head, 50 * 1024 * 1024))
        nak = await read_frame(reader, timeout=30)
        assert await closed_by_peer(reader, 10)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert msa(nak)[1:3] == ["AR", "HUGE"]
    assert "larger than" in err(nak)[8]
    assert peak < 12 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB while 50 MB were sent"
    writer.close()
    assert msa(await send_message("127.0.0.1", server.port, build_oru(cda)))[1] == "AA"


async def test_one_misbehaving_client_does_not_delay_others(make_server: ServerFactory, cda: bytes) -> None:
    server = await make_server(max_message_bytes=256 * 1024, idle_timeout=30)
    slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", server.port)
    slow_writer.write(VT + build_oru(cda)[:1000])  # then nothing: a half frame held open
    flood_reader, flood_writer = await asyncio.open_connection("127.0.0.1", server.port)
    flood = asyncio.create_task(_send_huge(flood_writer, b"MSH|^~\\&|", 20 * 1024 * 1024))
    garbage_reader, garbage_writer = await asyncio.open_connection("127.0.0.1", server.port)
    garbage_writer.write(b"\x00\xff" * 100)
    started = time.monotonic()
    for i in range(5):
        ack = await send_message("127.0.0.1", server.port, build_oru(cda, control_id=f"G{i}"), timeout=5)
        assert msa(ack)[1:3] == ["AA", f"G{i}"]
    assert time.monotonic() - started < 5
    assert await closed_by_peer(garbage_reader, 5)
    flood.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await flood
    for w in (slow_writer, flood_writer, garbage_writer):
        w.close()
    del slow_reader, flood_reader


async def test_close_ends_open_connections(cda: bytes) -> None:
    server = MllpServer("127.0.0.1", 0, handler=report_handler, idle_timeout=60)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(VT + b"MSH|")
    await writer.drain()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(server.close(), 5)
    assert await closed_by_peer(reader, 5)
    writer.close()
