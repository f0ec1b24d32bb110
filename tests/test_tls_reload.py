"""Certificates reloaded without dropping connections: new handshakes get the new certificate, open ones go on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from cryptography import x509

from drimbox.auth.operator import operator_token_hash
from drimbox.config import Settings
from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.ops import Reloaded
from drimbox.sim.certs import Authority, issue, make_ca
from tests.support.auth_boxes import OPERATOR_TOKEN, RunningBox, running_box


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_ca(tmp_path_factory.mktemp("ca"))


def leaf(ca: Authority, out: Path) -> tuple[Path, Path]:
    """A new server certificate (its own serial number) under the test CA."""
    out.mkdir(parents=True, exist_ok=True)
    return issue(ca, out, "source")


def install(pair: tuple[Path, Path], cert: Path, key: Path) -> None:
    """Replace the box's files as an operator would (a copy, then a rename: never a half-written file)."""
    for source, target in zip(pair, (cert, key), strict=True):
        shutil.copy(source, target.with_suffix(".new"))
        os.replace(target.with_suffix(".new"), target)


def serial_of(pem: Path) -> int:
    return int(x509.load_pem_x509_certificate(pem.read_bytes()).serial_number)


def trusting(ca: Authority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert_path))


class Connection:
    """One TLS connection to the box, kept alive across requests (HTTP/1.1), so what it answers is provably the
    same handshake: its `serial` is the certificate it was handed then."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.serial = int(x509.load_der_x509_certificate(der).serial_number)

    @classmethod
    async def open(cls, url: str, ca: Authority) -> Connection:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, ssl=trusting(ca))
        return cls(reader, writer)

    async def status(self, path: str = "/health") -> int:
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = (await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)).decode("latin-1")
        length = next(int(line.split(":", 1)[1]) for line in head.split("\r\n")
                      if line.lower().startswith("content-length:"))  # fmt: skip
        await self.reader.readexactly(length)
        return int(head.split()[1])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def served(url: str, ca: Authority) -> tuple[int, int]:
    """(status of GET /health, serial of the certificate handed) on a new connection."""
    c = await Connection.open(url, ca)
    try:
        return await c.status(), c.serial
    finally:
        await c.close()


@pytest.fixture
async def tls_box(tmp_path: Path, ca: Authority) -> AsyncIterator[tuple[RunningBox, Path, Path]]:
    cert, key = tmp_path / "box.pem", tmp_path / "box-key.pem"
    install(leaf(ca, tmp_path / "a"), cert, key)
    s = Settings()
    port = free_port()
    s.box.roles, s.box.var_dir, s.box.public_url = ["source"], str(tmp_path / "var"), f"https://127.0.0.1:{port}"
    s.http.port, s.mllp.port, s.dicom.port, s.pacs.port = port, free_port(), free_port(), free_port()
    s.dmp.url = s.psc.issuer = s.whitelist.url = f"http://127.0.0.1:{free_port()}"
    s.tls.cert, s.tls.key = str(cert), str(key)
    s.audit.enabled = False
    s.auth.operator_token = operator_token_hash(OPERATOR_TOKEN)
    async with running_box(s) as box:
        yield box, cert, key


async def test_reload_serves_the_new_certificate_to_new_connections_and_keeps_open_ones(
    tls_box: tuple[RunningBox, Path, Path], ca: Authority, tmp_path: Path
) -> None:
    box, cert, key = tls_box
    first = serial_of(cert)
    kept = await Connection.open(box.url, ca)
    try:
        assert (await kept.status(), kept.serial) == (200, first)
        install(leaf(ca, tmp_path / "b"), cert, key)
        second = serial_of(cert)
        assert second != first
        done = await box.box.reload()
        assert Reloaded("tls.cert", None) in done
        assert await served(box.url, ca) == (200, second)
        assert await kept.status() == 200  # the open connection goes on, on its first handshake
        # A bad new certificate: reported, and the one in use stays.
        cert.write_text("not a certificate\n")
        done = await box.box.reload()
        assert [r.what for r in done if r.error] == ["tls"]
        assert "tls.cert" in str([r.error for r in done])
        assert await served(box.url, ca) == (200, second)
        # A key that belongs to another certificate is refused the same way.
        shutil.copy(leaf(ca, tmp_path / "c")[0], cert)
        done = await box.box.reload()
        assert "does not match" in str([r.error for r in done])
        assert await served(box.url, ca) == (200, second)
        assert await kept.status() == 200
    finally:
        await kept.close()


async def test_the_operator_page_s_reload_button_does_the_same(
    tls_box: tuple[RunningBox, Path, Path], ca: Authority, tmp_path: Path
) -> None:
    box, cert, key = tls_box
    first = serial_of(cert)
    install(leaf(ca, tmp_path / "b"), cert, key)
    assert await served(box.url, ca) == (200, first)  # new files, not yet read
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=trusting(ca))) as http:
        async with http.post(box.url + "/operator/login", data={"token": OPERATOR_TOKEN}, headers={"Origin": box.url},
                             allow_redirects=False) as resp:  # fmt: skip
            assert resp.cookies["drimbox_session_operator"]["secure"]  # HTTPS: the operator cookie is Secure
        async with http.post(box.url + "/operator/reload", headers={"Origin": box.url}) as resp:
            html = await resp.text()
    assert "Rechargé : tls.cert." in html
    assert await served(box.url, ca) == (200, serial_of(cert))


@pytest.mark.box
async def test_sighup_reloads_a_running_drimbox_serve(tmp_path: Path, ca: Authority) -> None:
    cert, key = tmp_path / "box.pem", tmp_path / "box-key.pem"
    install(leaf(ca, tmp_path / "a"), cert, key)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    nobody = f"http://127.0.0.1:{free_port()}"
    cfg = write_config(tmp_path / "box.toml", {
        "box": {"roles": ["source"], "var_dir": str(tmp_path / "var"), "public_url": url},
        "http": {"port": port}, "mllp": {"port": free_port()}, "dicom": {"port": free_port()},
        "pacs": {"port": free_port()}, "dmp": {"url": nobody}, "psc": {"issuer": nobody},
        "tls": {"cert": str(cert), "key": str(key)}, "audit": {"enabled": False},
    })  # fmt: skip
    process = DrimboxProcess("serve", cfg, f"{url}/health", tmp_path / "box.log", ssl_context=trusting(ca))
    process.start()
    try:
        first = serial_of(cert)
        kept = await Connection.open(url, ca)
        try:
            assert (await kept.status(), kept.serial) == (200, first)
            install(leaf(ca, tmp_path / "b"), cert, key)
            assert process.proc is not None
            process.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "reload: tls.cert ok" not in process.log() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert "reload: tls.cert ok" in process.log(), process.log()
            assert await served(url, ca) == (200, serial_of(cert))
            assert await kept.status() == 200
        finally:
            await kept.close()
        assert process.proc.poll() is None  # SIGHUP did not stop it
    finally:
        process.stop()
