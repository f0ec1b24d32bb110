"""Mutual TLS on a source box: a calling box whose certificate DN is not an operator of the whitelist gets 403."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509

from drimbox.audit.events import AUDIT, REFUSED, MemoryAudit
from drimbox.auth.peer_whitelist import whitelist_peer_check
from drimbox.auth.whitelist import AnsWhitelist
from drimbox.config import Settings, TlsSettings, WhitelistSettings
from drimbox.demo.samples.processes import free_port
from drimbox.sim import build_sim_app
from drimbox.sim.certs import issue_test_pki
from drimbox.tls import PEER, box_to_box, client_context, peer_middleware, server_context
from tests.test_tls import client_tls, fetch, server_tls

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return issue_test_pki(tmp_path_factory.mktemp("pki"))


def subject(path: Path) -> str:
    return x509.load_pem_x509_certificate(path.read_bytes()).subject.rfc4514_string()


@asynccontextmanager
async def simulator(tmp: Path, operator_dns: list[str], signer: str = "valid") -> AsyncIterator[str]:
    """The simulated whitelist; its first Domaine names the consumer box's certificate."""
    settings = Settings()
    settings.sim.var_dir, settings.sim.port = str(tmp / "sim"), free_port()
    settings.sim.whitelist_operator_dns, settings.sim.whitelist_signer = operator_dns, signer
    server = TestServer(build_sim_app(settings), host="127.0.0.1", port=settings.sim.port)
    await server.start_server()
    try:
        yield f"http://127.0.0.1:{settings.sim.port}"
    finally:
        await server.close()


@asynccontextmanager
async def source_front(t: TlsSettings, sim_url: str) -> AsyncIterator[tuple[str, MemoryAudit]]:
    """A source-like server: peer_middleware with the whitelist check, as app.py wires it; /dicom-web/peer."""

    async def peer(request: web.Request) -> web.Response:
        return web.json_response({"peer": request[PEER]})

    whitelist = AnsWhitelist(WhitelistSettings(url=f"{sim_url}/whitelist", certificate_url=f"{sim_url}/whitelist/certificate",
                                               trust_on_first_use=True))  # fmt: skip
    audit = MemoryAudit()
    app = web.Application(middlewares=[peer_middleware(t, box_to_box, whitelist_peer_check(whitelist))])
    app[AUDIT] = audit
    app.router.add_get("/dicom-web/peer", peer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(t)).start()
    try:
        yield f"https://127.0.0.1:{port}/dicom-web/peer", audit
    finally:
        await runner.cleanup()
        await whitelist.close()


async def test_only_the_whitelists_operators_may_call(pki: dict[str, Path], tmp_path: Path) -> None:
    async with simulator(tmp_path, [subject(pki["consumer"])]) as sim, \
            source_front(server_tls(pki, client_auth="required"), sim) as (url, audit):  # fmt: skip
        # The consumer box: its certificate's DN is the list's DNCertificatOperateur.
        status, body = await fetch(url, client_context(client_tls(pki, "consumer")))
        assert status == 200 and "CN=drimbox consumer" in body["peer"]
        assert not audit.events
        # Another box with a certificate of the same trusted CA, but not on the list: refused, and audited.
        status, body = await fetch(url, client_context(client_tls(pki, "sim")))
        assert (status, body["reason"]) == (403, "peer_not_whitelisted")
        refused = [e for e in audit.events if e.outcome == REFUSED]
        assert len(refused) == 1 and refused[0].detail["reason"] == "peer_not_whitelisted"
        assert "CN=drimbox sim" in refused[0].detail["peer_cert"]
        # Not a box-to-box call (no bearer token: an operator's browser with a certificate): not this check's business.
        status, _ = await fetch(url, client_context(client_tls(pki, "sim")), token=False)
        assert status == 200


async def test_no_trusted_list_no_box_may_call(pki: dict[str, Path], tmp_path: Path) -> None:
    """The list is signed by a revoked signer: it is refused, so no operator is known and every box gets 403."""
    async with simulator(tmp_path, [subject(pki["consumer"])], signer="revoked") as sim, \
            source_front(server_tls(pki, client_auth="required"), sim) as (url, audit):  # fmt: skip
        status, body = await fetch(url, client_context(client_tls(pki, "consumer")))
        assert (status, body["reason"]) == (403, "peer_not_whitelisted")
        assert [e.detail["reason"] for e in audit.events] == ["peer_not_whitelisted"]


async def test_the_check_needs_mutual_tls(pki: dict[str, Path], tmp_path: Path) -> None:
    """Without client authentication there is no DN to check: the middleware leaves calls to the token checks."""
    async with simulator(tmp_path, []) as sim, source_front(server_tls(pki), sim) as (url, audit):
        status, body = await fetch(url, client_context(client_tls(pki)))
        assert status == 200 and body == {"peer": None} and not audit.events
