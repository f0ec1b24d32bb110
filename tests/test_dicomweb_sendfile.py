"""The zero-copy warm path: exact part lengths, keep-alive, uvloop, files changing under it, disconnects."""

from __future__ import annotations

import asyncio
import http.client
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
import pytest
import uvloop
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from drimbox.dicomweb import sendfile, wado
from drimbox.dicomweb.backend import ChunkBody, FileBody, OpenFile, QidoQuery, StoredInstance
from tests.support.dicomweb import SampleData, pixel_hash, serve, write_samples
from tests.support.folder_backend import FolderBackend

DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture
def samples(tmp_path: Path) -> SampleData:
    return write_samples(tmp_path / "data")


@pytest.fixture(params=["sendfile", "copy"])
def file_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Both ways a file goes to the socket: zero-copy (a remote client) and copied (a client on this host,
    which the tests on loopback are); the list counts the files that went that way."""
    if request.param == "sendfile":
        monkeypatch.setattr(sendfile, "same_host", lambda transport: False)
        return count_calls(monkeypatch, sendfile.SocketWriter, "sendfile")
    return count_calls(monkeypatch, sendfile._FileCopier, "send")


def parse_strictly(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body trusting each part's Content-Length, and fail unless every delimiter is exactly
    where that length says (so a wrong length cannot go unnoticed, unlike a boundary-scanning parser)."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"').encode()
    parts: list[tuple[dict[str, str], bytes]] = []
    pos = 0
    assert body.startswith(b"--" + boundary + b"\r\n")
    pos = len(boundary) + 4
    while True:
        end = body.index(b"\r\n\r\n", pos)
        headers = dict(line.split(": ", 1) for line in body[pos:end].decode().split("\r\n"))
        start = end + 4
        length = int(headers["Content-Length"])
        parts.append((headers, body[start : start + length]))
        pos = start + length
        delimiter = b"\r\n--" + boundary
        assert body[pos : pos + len(delimiter)] == delimiter, f"part {len(parts)}: data past its Content-Length"
        pos += len(delimiter)
        if body[pos:] == b"--\r\n":
            return parts
        assert body[pos : pos + 2] == b"\r\n"
        pos += 2


def get_twice_on_one_connection(url: str, accept: str) -> list[tuple[http.client.HTTPResponse, bytes]]:
    """Two GETs on one HTTP/1.1 connection: the second fails if the first left the connection unusable."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=30)
    answers = []
    try:
        for _ in range(2):
            conn.request("GET", "/" + rest, headers={"Accept": accept})
            resp = conn.getresponse()
            answers.append((resp, resp.read()))
            assert not resp.will_close
    finally:
        conn.close()
    return answers


def run_on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The box serves on uvloop, whose transports differ from asyncio's (no loop.sendfile, no isinstance)."""
    uvloop.run(scenario())


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(owner, name)

    async def counted(self: Any, *args: Any) -> Any:
        calls.append(1)
        return await original(self, *args)

    monkeypatch.setattr(owner, name, counted)
    return calls


def test_uvloop_direct_parts_are_exact_and_keep_alive(samples: SampleData, file_path: list[int]) -> None:
    files = {str(pydicom.dcmread(p).SOPInstanceUID): p.read_bytes() for p in samples.ct_paths}
    spec = samples.spec

    async def scenario() -> None:
        backend = await FolderBackend.open(samples.root)
        async with serve(backend) as url:
            study = f"{url}/dicom-web/studies/{spec.study_uid}"
            for resp, body in await asyncio.to_thread(get_twice_on_one_connection, study, DICOM_ANY):
                assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
                parts = parse_strictly(resp.getheader("Content-Type", ""), body)
                by_uid = {h["Content-Location"].rsplit("/", 1)[1]: data for h, data in parts}
                assert by_uid == files  # each part the stored file, byte for byte, at its announced length
            client = DICOMwebClient(url=f"{url}/dicom-web")
            got = await asyncio.to_thread(client.retrieve_study, spec.study_uid)
            assert {str(ds.SOPInstanceUID): pixel_hash(ds) for ds in got} == {
                uid: pixel_hash(pydicom.dcmread(p)) for uid, p in zip(files, samples.ct_paths, strict=True)
            }
            one = f"{study}/series/{spec.series_uid(0)}/instances/{spec.sop_uid(0, 0)}"
            for resp, body in await asyncio.to_thread(get_twice_on_one_connection, one, "application/dicom"):
                assert resp.status == 200 and resp.getheader("Content-Length") == str(len(body))
                assert body == samples.ct_paths[0].read_bytes()

    run_on_uvloop(scenario)
    assert len(file_path) >= 2 * len(files) + 2  # the direct path did the work, not aiohttp's writer


async def test_without_direct_socket_the_fallback_sends_the_same(
    samples: SampleData, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a TLS transport gets: the files read in chunks and written through aiohttp.
    monkeypatch.setattr(sendfile.SocketWriter, "of", classmethod(lambda cls, transport: None))
    backend = await FolderBackend.open(samples.root)
    async with serve(backend) as url:
        study = f"{url}/dicom-web/studies/{samples.spec.study_uid}"
        [(resp, body), _] = await asyncio.to_thread(get_twice_on_one_connection, study, DICOM_ANY)
        parts = parse_strictly(resp.getheader("Content-Type", ""), body)
        assert sorted(data for _, data in parts) == sorted(p.read_bytes() for p in samples.ct_paths)


async def test_file_replaced_after_listing_is_sent_as_it_is_now(samples: SampleData, file_path: list[int]) -> None:
    backend = await FolderBackend.open(samples.root)  # sizes indexed now
    path = samples.ct_paths[0]
    ds = pydicom.dcmread(path)
    ds.ImageComments = "stored again, with a longer comment " * 20
    replacement = path.with_suffix(".new")
    ds.save_as(replacement, enforce_file_format=True)
    os.replace(replacement, path)  # what an archive does when an instance is stored again
    new_bytes = path.read_bytes()
    async with serve(backend) as url:
        series = f"{url}/dicom-web/studies/{samples.spec.study_uid}/series/{samples.spec.series_uid(0)}"
        [(resp, body), _] = await asyncio.to_thread(get_twice_on_one_connection, series, DICOM_ANY)
        parts = parse_strictly(resp.getheader("Content-Type", ""), body)
        sent = {h["Content-Location"].rsplit("/", 1)[1]: data for h, data in parts}
        assert sent[str(ds.SOPInstanceUID)] == new_bytes  # the length is the file's at opening, not the index's


class _TruncatedWhileSending(FileBody):
    """A file that a concurrent writer truncates in place right after the box opened it."""

    def open_now(self) -> OpenFile:
        opened = super().open_now()
        os.truncate(self.path, opened.size // 2)
        return opened


class _Backend:
    """The folder backend with a chosen body per instance (by position) and a record of closing."""

    def __init__(self, inner: FolderBackend, body: Callable[[int, StoredInstance], Any] | None = None) -> None:
        self.inner, self.body = inner, body
        self.repeat = 1
        self.yielded = 0
        self.events: list[str] = []
        self.closed = asyncio.Event()

    def search(self, query: QidoQuery) -> AsyncIterator[Dataset]:
        return self.inner.search(query)

    def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None, *, base: str
    ) -> AsyncIterator[bytes]:
        return self.inner.metadata(study_uid, series_uid, sop_uid, base=base)

    async def iter_instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> AsyncIterator[StoredInstance]:
        try:
            for _ in range(self.repeat):
                async for instance in self.inner.iter_instances(study_uid, series_uid, sop_uid):
                    n = self.yielded
                    self.yielded += 1
                    if self.body is not None:
                        instance = StoredInstance(
                            instance.study_uid,
                            instance.series_uid,
                            instance.sop_class_uid,
                            instance.sop_instance_uid,
                            instance.transfer_syntax_uid,
                            self.body(n, instance),
                        )
                    self.events.append(f"yield {n}")
                    yield instance
        finally:
            self.closed.set()


async def test_file_truncated_while_sending_cuts_the_response(samples: SampleData, file_path: list[int]) -> None:
    def body(n: int, instance: StoredInstance) -> Any:
        assert isinstance(instance.body, FileBody)
        return _TruncatedWhileSending(instance.body.path) if n == 1 else instance.body

    backend = _Backend(await FolderBackend.open(samples.root), body)
    async with serve(backend) as url, aiohttp.ClientSession() as session:
        async with session.get(
            f"{url}/dicom-web/studies/{samples.spec.study_uid}", headers={"Accept": DICOM_ANY}
        ) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()  # never a complete-looking response with a short part
    assert backend.closed.is_set()


async def test_streamed_bodies_are_read_before_the_next_instance_is_asked(samples: SampleData) -> None:
    # Read-ahead pulls file bodies early to open them together, but a stream (PACS fragments) must be read
    # before the backend is asked for the next instance (the DicomwebBackend contract).
    backend: _Backend

    def body(n: int, instance: StoredInstance) -> Any:
        assert isinstance(instance.body, FileBody)
        path = instance.body.path

        async def chunks() -> AsyncIterator[bytes]:
            backend.events.append(f"read {n}")
            yield path.read_bytes()

        return ChunkBody(chunks)

    backend = _Backend(await FolderBackend.open(samples.root), body)
    async with serve(backend) as url, aiohttp.ClientSession() as session:
        async with session.get(
            f"{url}/dicom-web/studies/{samples.spec.study_uid}", headers={"Accept": DICOM_ANY}
        ) as resp:
            assert resp.status == 200 and len(await resp.read()) > 0
    count = backend.yielded
    assert backend.events == [e for n in range(count) for e in (f"yield {n}", f"read {n}")]


def _socket_ports() -> dict[str, tuple[int, int]]:
    """inode → (local port, remote port) of this process's TCP sockets (/proc/self/net/tcp*)."""
    ports: dict[str, tuple[int, int]] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            ports[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
    return ports


def held_by_the_server(root: Path, port: int) -> list[str]:
    """What this process holds open that the served request is responsible for: a file under `root`, or a TCP socket
    to or from `port`. Counted precisely: other tests' threads may open and close descriptors meanwhile."""
    held: list[str] = []
    ports = _socket_ports()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since listed
        if target.startswith("socket:["):
            local, remote = ports.get(target[8:-1], (0, 0))
            if port in (local, remote) and local != 0:
                held.append(f"{fd} → {target} ({local}↔{remote})")
        elif target.startswith(str(root)):
            held.append(f"{fd} → {target}")
    return held


def test_uvloop_client_leaving_mid_body_stops_cleanly(samples: SampleData, file_path: list[int]) -> None:
    async def scenario() -> None:
        backend = _Backend(await FolderBackend.open(samples.root))
        backend.repeat = 100_000  # far more than any socket buffer holds
        study = f"/dicom-web/studies/{samples.spec.study_uid}"
        async with serve(backend, handler_cancellation=True) as url:
            port = int(url.rsplit(":", 1)[1])
            listening = held_by_the_server(samples.root, port)  # the listening socket only
            async with aiohttp.ClientSession() as session:
                resp = await session.get(url + study, headers={"Accept": DICOM_ANY})
                assert resp.status == 200
                await resp.content.readexactly(200_000)
                assert len(held_by_the_server(samples.root, port)) > len(listening), "sanity: a live request is seen"
                resp.close()  # drops the connection mid-body
                await asyncio.wait_for(backend.closed.wait(), timeout=10)
            for _ in range(50):  # the server side of the socket closes once the handler has unwound
                if held_by_the_server(samples.root, port) == listening:
                    break
                await asyncio.sleep(0.05)
            # No instance file, no connection (nor a duplicate of its socket) left open.
            assert held_by_the_server(samples.root, port) == listening
            assert backend.yielded < 100_000 * 6
            backend.repeat, backend.closed = 1, asyncio.Event()
            async with aiohttp.ClientSession() as session:  # and the server still serves
                async with session.get(url + study, headers={"Accept": DICOM_ANY}) as again:
                    assert again.status == 200 and len(await again.read()) > 0

    run_on_uvloop(scenario)
    assert file_path


class _Transport:
    def __init__(self, peer: object, own: object) -> None:
        self.info = {"peername": peer, "sockname": own}

    def get_extra_info(self, name: str) -> object:
        return self.info.get(name)


@pytest.mark.parametrize(
    ("peer", "own", "local"),
    [
        (("127.0.0.1", 50000), ("127.0.0.1", 8080), True),
        (("::1", 50000, 0, 0), ("::1", 8080, 0, 0), True),
        (("::ffff:127.0.0.1", 50000, 0, 0), ("::", 8080, 0, 0), True),
        (("10.0.0.5", 50000), ("10.0.0.1", 8080), False),  # a consumer box elsewhere: sendfile
        (("10.0.0.1", 50000), ("10.0.0.1", 8080), True),  # our own address: this host
        ("", "/run/drimbox.sock", True),  # a Unix socket
        (None, None, False),
    ],
)
def test_same_host(peer: object, own: object, local: bool) -> None:
    assert sendfile.same_host(_Transport(peer, own)) is local  # type: ignore[arg-type]


def test_read_ahead_is_bounded() -> None:
    # Open descriptors per response: at most one batch ahead of the socket.
    assert 1 <= wado.READ_AHEAD <= 64


def test_many_clients_on_this_host_at_once_get_exact_bodies_by_sendfile(
    samples: SampleData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Copies are for a few clients on this host: with more sending at once, files go by sendfile (the CPU is then
    the limit), and every client still gets every stored file exactly."""
    files = {str(pydicom.dcmread(p).SOPInstanceUID): p.read_bytes() for p in samples.ct_paths}
    sent = count_calls(monkeypatch, sendfile.SocketWriter, "sendfile")
    copied = count_calls(monkeypatch, sendfile._FileCopier, "send")
    clients = sendfile.COPY_WHILE_AT_MOST + 4

    async def scenario() -> None:
        backend = await FolderBackend.open(samples.root)
        async with serve(backend) as url:
            study = f"{url}/dicom-web/studies/{samples.spec.study_uid}"
            # One at a time: copied.
            for resp, body in await asyncio.to_thread(get_twice_on_one_connection, study, DICOM_ANY):
                assert {h["Content-Location"].rsplit("/", 1)[1]: d for h, d in
                        parse_strictly(resp.getheader("Content-Type", ""), body)} == files  # fmt: skip
            assert copied and not sent
            # The clients' threads of their own: the server's file opening needs the loop's default executor.
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(clients) as pool:
                answers = await asyncio.gather(*[
                    loop.run_in_executor(pool, get_twice_on_one_connection, study, DICOM_ANY) for _ in range(clients)
                ])  # fmt: skip
            for resp, body in (answer for pair in answers for answer in pair):
                assert {h["Content-Location"].rsplit("/", 1)[1]: d for h, d in
                        parse_strictly(resp.getheader("Content-Type", ""), body)} == files  # fmt: skip

    run_on_uvloop(scenario)
    assert sent, "files were copied whatever the number of clients"
