"""Transport security as peers see it: HTTPS with the test PKI, wrong CA and expired certificates refused, mutual TLS."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from drimbox.cli import main as cli_main
from drimbox.config import ConfigError, TlsSettings, load_settings
from drimbox.demo.samples.processes import free_port, write_config
from drimbox.hl7.mllp import MllpServer, send_message
from drimbox.sim.certs import issue, issue_test_pki, make_ca
from drimbox.tls import PEER, box_to_box, client_context, peer_middleware, server_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The simulator's test PKI, another CA nobody trusts, and an expired leaf of the right CA."""
    out = tmp_path_factory.mktemp("pki")
    files = issue_test_pki(out)
    other = make_ca(out / "other", name="some other CA")
    files["stranger"], files["stranger-key"] = issue(other, out / "other", "stranger")
    files["other-ca"] = other.cert_path
    # An expired leaf under a CA of its own ("old-ca"): a client trusting that CA sees only the expiry as wrong.
    old = make_ca(out / "old", name="drimbox test CA (old)")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    files["expired"], files["expired-key"] = issue(old, out / "old", "expired", not_before=past,
                                                   not_after=past + datetime.timedelta(days=1))  # fmt: skip
    files["old-ca"] = old.cert_path
    return files


def server_tls(pki: dict[str, Path], party: str = "source", client_auth: str = "none", ca: str = "ca") -> TlsSettings:
    return TlsSettings(cert=str(pki[party]), key=str(pki[f"{party}-key"]), client_auth=client_auth,
                       client_ca=str(pki[ca]) if client_auth != "none" else "")  # fmt: skip


def client_tls(pki: dict[str, Path], party: str | None = None, ca: str = "ca") -> TlsSettings:
    cert = str(pki[party]) if party else ""
    return TlsSettings(ca=str(pki[ca]), client_cert=cert, client_key=str(pki[f"{party}-key"]) if party else "")


@asynccontextmanager
async def https_server(t: TlsSettings) -> AsyncIterator[str]:
    """A box-like aiohttp server on loopback with [tls] `t`; /dicom-web/peer answers the caller's certificate."""

    async def peer(request: web.Request) -> web.Response:
        return web.json_response({"peer": request[PEER]})

    app = web.Application(middlewares=[peer_middleware(t, box_to_box)])
    app.router.add_get("/dicom-web/peer", peer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(t)).start()
    try:
        yield f"https://127.0.0.1:{port}/dicom-web/peer"
    finally:
        await runner.cleanup()


async def fetch(url: str, ctx: ssl.SSLContext, token: bool = True) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": "Bearer t"} if token else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http, \
            http.get(url, headers=headers) as resp:  # fmt: skip
        return resp.status, await resp.json()


async def test_https_with_the_test_ca_and_refusals_of_a_wrong_ca_and_an_expired_certificate(
    pki: dict[str, Path],
) -> None:
    async with https_server(server_tls(pki)) as url:
        assert await fetch(url, client_context(client_tls(pki))) == (200, {"peer": None})
        # A client that trusts another CA does not talk to this server.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await fetch(url, client_context(client_tls(pki, ca="other-ca")))
    async with https_server(server_tls(pki, "expired")) as url:
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="expired"):
            await fetch(url, client_context(client_tls(pki, ca="old-ca")))


async def test_required_mutual_tls_refuses_a_client_without_a_certificate_or_with_a_bad_one(
    pki: dict[str, Path],
) -> None:
    async with https_server(server_tls(pki, client_auth="required")) as url:
        with pytest.raises(aiohttp.ClientError):
            await fetch(url, client_context(client_tls(pki)))
        with pytest.raises(aiohttp.ClientError):
            await fetch(url, client_context(client_tls(pki, "stranger")))
    async with https_server(server_tls(pki, client_auth="required", ca="old-ca")) as url:
        with pytest.raises(aiohttp.ClientError):  # signed by the trusted CA, but expired
            await fetch(url, client_context(TlsSettings(ca=str(pki["ca"]), client_cert=str(pki["expired"]),
                                                        client_key=str(pki["expired-key"]))))  # fmt: skip
    async with https_server(server_tls(pki, client_auth="required")) as url:
        status, body = await fetch(url, client_context(client_tls(pki, "consumer")))
        assert status == 200 and "CN=drimbox consumer" in body["peer"]


async def test_optional_mutual_tls_lets_browsers_in_but_box_to_box_calls_need_a_certificate(
    pki: dict[str, Path],
) -> None:
    async with https_server(server_tls(pki, client_auth="optional")) as url:
        anonymous = client_context(client_tls(pki))
        status, body = await fetch(url, anonymous, token=True)
        assert status == 403 and body["error"] == "client certificate required"
        assert await fetch(url, anonymous, token=False) == (200, {"peer": None})
        status, body = await fetch(url, client_context(client_tls(pki, "consumer")))
        assert status == 200 and "CN=drimbox consumer" in body["peer"]


async def test_mllp_over_tls(pki: dict[str, Path]) -> None:
    async def echo(message: bytes) -> bytes:
        return b"MSH|ACK|" + message[:3]

    server = MllpServer("127.0.0.1", 0, handler=echo, ssl=server_context(server_tls(pki)))
    await server.start()
    try:
        assert (
            await send_message("127.0.0.1", server.port, b"MSH|x", ssl=client_context(client_tls(pki)))
            == b"MSH|ACK|MSH"
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            await send_message("127.0.0.1", server.port, b"MSH|x", ssl=client_context(client_tls(pki, ca="other-ca")))
    finally:
        await server.close()


def test_bad_certificates_stop_the_start_naming_the_key(pki: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tls\.cert: cannot read"):
        server_context(TlsSettings(cert=str(tmp_path / "missing.pem"), key=str(pki["source-key"])))
    with pytest.raises(ConfigError, match=r"^tls\.key: .* does not match the certificate tls\.cert"):
        server_context(TlsSettings(cert=str(pki["source"]), key=str(pki["sim-key"])))
    with pytest.raises(ConfigError, match=r"^tls\.client_key: .* not an unencrypted PEM private key"):
        client_context(TlsSettings(client_cert=str(pki["source"]), client_key=str(pki["source"])))
    with pytest.raises(ConfigError, match=r"^tls\.ca: .* no PEM CA certificate"):
        client_context(TlsSettings(ca=str(pki["source-key"])))
    with pytest.raises(ConfigError, match=r"^tls\.client_auth: must be"):
        load_settings(write_config(tmp_path / "a.toml", {"tls": {"client_auth": "sometimes"}}), env={})
    with pytest.raises(ConfigError, match=r"^tls\.key: required with tls\.cert"):
        load_settings(None, env={"DRIMBOX_TLS__CERT": str(pki["source"])})
    # The command line: `drimbox serve` with a mismatched key exits 2 before binding anything.
    port = free_port()
    cfg = write_config(tmp_path / "box.toml", {
        "box": {"var_dir": str(tmp_path / "var")}, "http": {"port": port},
        "tls": {"cert": str(pki["source"]), "key": str(pki["consumer-key"])},
    })  # fmt: skip
    assert cli_main(["serve", "-c", str(cfg)]) == 2


def test_sim_certs_command_writes_a_ca_and_a_leaf_per_party_for_the_hosts_given(tmp_path: Path, capsys: Any) -> None:
    from cryptography import x509

    assert cli_main(["sim", "certs", "--out", str(tmp_path / "pki"), "--hosts", "127.0.0.1,box.example"]) == 0
    out = capsys.readouterr().out
    assert "[tls]" in out and 'whitelist_operator_dns = ["' in out and "CN=drimbox consumer" in out
    for party in ("sim", "source", "consumer"):
        cert = x509.load_pem_x509_certificate((tmp_path / "pki" / f"{party}.pem").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["box.example"]
        # Each leaf is accepted by tls.py as both the server pair and the client pair, trusting the written CA.
        pair = {"cert": str(tmp_path / "pki" / f"{party}.pem"), "key": str(tmp_path / "pki" / f"{party}-key.pem")}
        assert server_context(TlsSettings(**pair)) is not None
        client_context(
            TlsSettings(ca=str(tmp_path / "pki" / "ca.pem"), client_cert=pair["cert"], client_key=pair["key"])
        )
    assert (tmp_path / "pki" / "ca-key.pem").stat().st_mode & 0o077 == 0
