"""With mutual TLS the trail says which box called (its certificate's subject), not only from which address."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
from aiohttp import web

from drimbox.audit.events import AUDIT, SUCCESS, MemoryAudit
from drimbox.audit.request import audit_request
from drimbox.config import TlsSettings
from drimbox.demo.samples.processes import free_port
from drimbox.sim.certs import issue_test_pki
from drimbox.tls import box_to_box, client_context, peer_middleware, server_context


async def test_the_verified_peer_certificate_is_in_the_event_detail(tmp_path: Path) -> None:
    pki = issue_test_pki(tmp_path / "pki")
    server = TlsSettings(cert=str(pki["source"]), key=str(pki["source-key"]), client_auth="optional",
                         client_ca=str(pki["ca"]))  # fmt: skip
    audit = MemoryAudit()

    async def series(request: web.Request) -> web.Response:
        await audit_request(request, "dicomweb.retrieve", SUCCESS, study="1.2.3", status=200)
        return web.json_response({})

    app = web.Application(middlewares=[peer_middleware(server, box_to_box)])
    app[AUDIT] = audit
    app.router.add_get("/dicom-web/studies/1.2.3/series", series)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(server)).start()
    url = f"https://127.0.0.1:{port}/dicom-web/studies/1.2.3/series"
    consumer = TlsSettings(ca=str(pki["ca"]), client_cert=str(pki["consumer"]), client_key=str(pki["consumer-key"]))

    async def get(ctx: ssl.SSLContext, headers: dict[str, str]) -> int:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http, \
                http.get(url, headers=headers) as resp:  # fmt: skip
            return resp.status

    try:
        assert await get(client_context(consumer), {"Authorization": "Bearer t"}) == 200
        # A browser without a certificate (optional mutual TLS): no subject to record, and no empty field.
        assert await get(client_context(TlsSettings(ca=str(pki["ca"]))), {}) == 200
    finally:
        await runner.cleanup()
    with_cert, browser = audit.events
    assert "consumer" in with_cert.detail["peer_cert"] and with_cert.detail["peer_cert"].startswith("CN=")
    assert with_cert.detail["status"] == "200" and with_cert.source == "127.0.0.1"
    assert "peer_cert" not in browser.detail
