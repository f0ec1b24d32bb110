"""The whole mesh over TLS: simulator, source box and consumer box as processes with the simulator's test PKI."""

from __future__ import annotations

import asyncio
import io
import json
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pydicom
import pytest
from cryptography import x509

from drimbox.auth.operator import operator_token_hash
from drimbox.config import TlsSettings
from drimbox.demo.samples.processes import DrimboxProcess, free_port, write_config
from drimbox.demo.samples.reports import ANS_EXAMS, build_cda, build_oru
from drimbox.hl7.mllp import send_message
from drimbox.sim.certs import issue_test_pki, whitelist_root
from drimbox.tls import client_context
from tests.support.consumer import INS, LAUNCH_FORM
from tests.support.fixtures_mesh import OPERATOR_TOKEN
from tests.test_source_e2e import load_exam

pytestmark = [pytest.mark.orthanc, pytest.mark.sim, pytest.mark.box]

STUDY = "1.2.250.1.213.4.5.2.1.103"
INSTANCES = 4


@dataclass
class Mesh:
    sim: str
    source: str
    consumer: str
    mllp_port: int
    pki: dict[str, Path]
    anonymous: ssl.SSLContext  # trusts the test CA, presents no certificate (a browser)
    operator: ssl.SSLContext  # trusts the test CA, presents a certificate it signed


def _tls(pki: dict[str, Path], party: str, client_auth: str = "none") -> dict[str, Any]:
    return {"cert": str(pki[party]), "key": str(pki[f"{party}-key"]), "ca": str(pki["ca"]), "client_auth": client_auth,
            "client_ca": str(pki["ca"]), "client_cert": str(pki[party]), "client_key": str(pki[f"{party}-key"])}  # fmt: skip


@pytest.fixture
def mesh(tmp_path: Path, orthanc: Any) -> Iterator[Mesh]:
    pki = issue_test_pki(tmp_path / "pki")
    anonymous = client_context(TlsSettings(ca=str(pki["ca"])))
    operator = client_context(
        TlsSettings(ca=str(pki["ca"]), client_cert=str(pki["sim"]), client_key=str(pki["sim-key"]))
    )
    sim_port, src_port, mllp_port, dicom_port, con_port = (free_port() for _ in range(5))
    sim = f"https://127.0.0.1:{sim_port}"
    source, consumer = f"https://127.0.0.1:{src_port}", f"https://127.0.0.1:{con_port}"
    # The boxes trust the simulated IGC-Santé root as a file (no trust on first use), made before the simulator starts.
    root = whitelist_root(tmp_path / "sim-var" / "whitelist")
    peers: dict[str, dict[str, Any]] = {"dmp": {"url": f"{sim}/dmp", "timeout": 5.0}, "psc": {"issuer": f"{sim}/psc"},
             "whitelist": {"url": f"{sim}/whitelist", "trust_roots": str(root)}}  # fmt: skip
    # The whitelist names each box's certificate DN (DNCertificatOperateur): the source admits the consumer's only.
    operators = [
        x509.load_pem_x509_certificate(pki[p].read_bytes()).subject.rfc4514_string() for p in ("consumer", "source")
    ]
    configs: dict[str, dict[str, dict[str, Any]]] = {
        # The DMP needs the structure's certificate; PSC and the whitelist stay open to browsers ("optional").
        "sim": {"sim": {"port": sim_port, "var_dir": str(tmp_path / "sim-var"), "whitelist_operator_dns": operators},
                "tls": _tls(pki, "sim", "optional")},
        # The source takes nobody without a certificate of the CA: consumer boxes, the RIS (MLLP over TLS), operators.
        "source": {
            **peers, "box": {"var_dir": str(tmp_path / "source-var"), "public_url": source}, "http": {"port": src_port},
            "mllp": {"port": mllp_port, "tls": True}, "dicom": {"port": dicom_port},
            "pacs": {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port, "timeout": 5.0},
            "publish": {"waiting_interval": 0.5, "backoff_initial": 0.2, "backoff_max": 1.0},
            "auth": {"protect_dicomweb": True, "operator_token": operator_token_hash(OPERATOR_TOKEN)},
            "tls": _tls(pki, "source", "required"),
        },
        # The consumer serves the doctor's browser over HTTPS and presents its certificate to the DMP and sources.
        "consumer": {
            **peers, "box": {"roles": ["consumer"], "var_dir": str(tmp_path / "consumer-var"), "public_url": consumer},
            "http": {"port": con_port}, "auth": {"authorize_params": ["sim_auto=1"]}, "tls": _tls(pki, "consumer"),
        },
    }  # fmt: skip
    health = {
        "sim": f"{sim}/sim/dmp/documents?patient=0",
        "source": f"{source}/health",
        "consumer": f"{consumer}/health",
    }
    processes: list[DrimboxProcess] = []
    try:
        for name, sections in configs.items():
            cfg = write_config(tmp_path / f"{name}.toml", sections)
            command = "sim" if name == "sim" else "serve"
            process = DrimboxProcess(command, cfg, health[name], tmp_path / f"{name}.log", ssl_context=operator)
            processes.append(process.start())
        yield Mesh(sim, source, consumer, mllp_port, pki, anonymous, operator)
    finally:
        for process in reversed(processes):
            process.stop()


def get_json(url: str, context: ssl.SSLContext) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10, context=context) as resp:
        return json.loads(resp.read())


def wait_published(mesh: Mesh, accession: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pubs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        pubs = get_json(f"{mesh.source}/api/publications?accession={accession}", mesh.operator)
        if pubs and pubs[-1]["state"] in ("published", "failed", "rejected"):
            return pubs[-1]
        time.sleep(0.2)
    raise AssertionError(f"never published: {pubs}")


async def status_of(url: str, context: ssl.SSLContext, method: str = "GET") -> int:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http, \
            http.request(method, url) as resp:  # fmt: skip
        return resp.status


async def test_publication_and_retrieval_end_to_end_over_mutual_tls(mesh: Mesh, orthanc: Any, tmp_path: Path) -> None:
    orthanc.clear()
    load_exam(orthanc, tmp_path, "C", instances=INSTANCES)
    # The RIS sends the report over MLLP on TLS; a RIS without the CA's certificate is refused at the handshake.
    oru = build_oru(build_cda(ANS_EXAMS["C"]), control_id="TLS-1")
    # (TLS 1.3: the client learns of the refusal as the connection closing.)
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        await send_message("127.0.0.1", mesh.mllp_port, oru, timeout=10, ssl=mesh.anonymous)
    assert b"|AA|" in await send_message("127.0.0.1", mesh.mllp_port, oru, timeout=30, ssl=mesh.operator)

    # The source registered the KOS in the DMP over HTTPS, presenting its certificate (a real ITI-41).
    pub = await asyncio.to_thread(wait_published, mesh, "ACN103")
    assert pub["state"] == "published", pub
    entries = get_json(f"{mesh.sim}/sim/dmp/documents?patient={INS}", mesh.anonymous)
    assert pub["kos_uid"] in json.dumps(entries)
    # The simulated DMP, like the real one, refuses a caller without the structure's certificate.
    assert await status_of(f"{mesh.sim}/dmp/registry", mesh.anonymous, "POST") == 403

    # The source's DICOMweb: no certificate, no handshake; a certificate but no token, 401.
    with pytest.raises(aiohttp.ClientError):
        await status_of(f"{mesh.source}/dicom-web/studies/{STUDY}/metadata", mesh.anonymous)
    assert await status_of(f"{mesh.source}/dicom-web/studies/{STUDY}/metadata", mesh.operator) == 401
    # A box-to-box call (bearer token) from a certificate of the trusted CA whose DN the whitelist does not name.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=mesh.operator)) as http,
        http.get(f"{mesh.source}/dicom-web/studies/{STUDY}/metadata", headers={"Authorization": "Bearer x"}) as resp,
    ):
        assert (resp.status, (await resp.json())["reason"]) == (403, "peer_not_whitelisted")

    # The doctor's browser on the consumer box (HTTPS, no certificate): launch, PSC login, the images, which the
    # consumer fetched from the source over mutual TLS with its own certificate.
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar, connector=aiohttp.TCPConnector(ssl=mesh.anonymous)) as http:
        launch = await http.post(f"{mesh.consumer}/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
        assert launch.status == 303, await launch.text()
        next_path = parse_qs(urlsplit(launch.headers["Location"]).query)["next"][0]
        page = await http.get(
            f"{mesh.consumer}/auth/login?{urlencode({'next': next_path, 'login_hint': '801234567897'})}"
        )
        assert page.status == 200 and pub["kos_uid"] in await page.text()
        resp = await http.get(
            f"{mesh.consumer}/conso/dicom-web/studies/{STUDY}?kos={pub['kos_uid']}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert resp.status == 200, await resp.text()
        body = await resp.read()
        message = BytesParser().parsebytes(f"Content-Type: {resp.headers['Content-Type']}\r\n\r\n".encode() + body)
    parts: list[Any] = message.get_payload()  # type: ignore[assignment]  # multipart: a list of parts
    got = {str(pydicom.dcmread(io.BytesIO(part.get_payload(decode=True))).SOPInstanceUID) for part in parts}
    assert len(got) == INSTANCES
