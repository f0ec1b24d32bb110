"""The ANS whitelist samples as a box fetches them: the unsigned one is detected as corrupt, the signed one verified."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from conformance.ans import ANS_DATA, needs_ans_data
from drimbox.auth.whitelist import AnsWhitelist, WhitelistError
from drimbox.auth.xmlsig import verify_enveloped
from drimbox.config import WhitelistSettings
from drimbox.demo.samples.processes import free_port

UNSIGNED = ANS_DATA / "informatif" / "listeblanche" / "LISTEBLANCHE_DRIM-M_NONSIGNEE_TEST_.xml"
# DRIM-M_DATA informatif/listeblanche/LISTEBLANCHE_DRIM-M_TEST_SIGNEE.xml, kept with the project's tests.
SIGNED = (
    Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "whitelist" / "LISTEBLANCHE_DRIM-M_TEST_SIGNEE.xml"
)


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """A stand-in for the ANS's publication: whatever body a test puts under /whitelist."""
    bodies: dict[str, bytes] = {}

    async def whitelist(request: web.Request) -> web.Response:
        return web.Response(body=bodies["list"], content_type="application/xml")

    app = web.Application()
    app.router.add_get("/whitelist", whitelist)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}/whitelist", bodies
    await runner.cleanup()


@needs_ans_data
async def test_the_unsigned_ans_list_is_detected_and_no_host_is_admitted(served: tuple[str, dict[str, bytes]]) -> None:
    """Homologation: the unsigned list stands for a corrupt one; a box must not use it."""
    url, bodies = served
    bodies["list"] = UNSIGNED.read_bytes()
    whitelist = AnsWhitelist(WhitelistSettings(url=url))
    try:
        with pytest.raises(WhitelistError) as info:
            await whitelist.refresh()
        assert info.value.reason == "unsigned"
        assert not await whitelist.check("https://db1.111.mesimagesmedicales.fr/dicom-web/studies/1")
    finally:
        await whitelist.close()


async def test_the_signed_ans_list_verifies_but_is_trusted_only_through_a_configured_root(
    served: tuple[str, dict[str, bytes]],
) -> None:
    """Its XAdES-B signature is intact and its signer is the one the Readme names; without the IGC-Santé TEST root
    (ACR-EL-TEST) in whitelist.trust_roots no box takes it (no trust on first use)."""
    url, bodies = served
    bodies["list"] = SIGNED.read_bytes()
    verified = verify_enveloped(bodies["list"])
    assert verified.signer.subject.rfc4514_string().startswith("CN=Liste Blanche DRIM-M,OU=318751275100020,")
    whitelist = AnsWhitelist(WhitelistSettings(url=url))
    try:
        with pytest.raises(WhitelistError) as info:
            await whitelist.refresh()
        assert info.value.reason == "untrusted"
        assert not await whitelist.check("https://db1.111.mesimagesmedicales.fr/dicom-web/studies/1")
    finally:
        await whitelist.close()
