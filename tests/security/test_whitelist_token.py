"""Security findings 5 and 9: the professional's token goes only to an endpoint the ANS whitelist lists (scheme,
host, port, path prefix), never along a redirect; and the audit trail says `refused` when the whitelist refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from drimbox.audit.events import REFUSED, SUCCESS
from drimbox.demo.samples.processes import free_port
from tests.security._consumer_support import DicomwebServer, running_consumer, serving, study_files
from tests.support.consumer import consumer_settings, publish, study_spec
from tests.support.drim_flow import psc_token
from tests.support.fixtures_mesh import Sim

pytestmark = [pytest.mark.sim]


def _sim(tmp_path: Path, whitelist: list[str]) -> Sim:
    work = tmp_path / "sim"
    work.mkdir()
    return Sim(work, whitelist=whitelist).start()


async def test_a_listed_host_does_not_list_its_other_ports_and_the_refusal_is_audited(tmp_path: Path) -> None:
    """The ANS list names hosts: "127.0.0.1" is that host's default port, not a rogue service on another one."""
    spec = study_spec()
    rogue = DicomwebServer(free_port(), series=study_files(spec))
    sim = _sim(tmp_path, ["127.0.0.1"])
    try:
        token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
        dmp = f"{sim.url}/dmp"
        forged = await publish(dmp, consumer_settings(tmp_path / "publisher", dmp), spec, public_url=rogue.url)
        async with serving(rogue), running_consumer(tmp_path, sim.url, token) as conso:
            assert forged in await conso.open_exam_list()
            status, refusal = await conso.study(spec.study_uid, forged)
            assert (status, refusal["reason"]) == (502, "source_not_whitelisted"), refusal
            assert rogue.authorizations == [], "the professional's token went to an unlisted port of a listed host"
            # Finding 9: the trail says what happened, refused with the reason, and never success.
            retrieves = conso.events("consumer.retrieve")
            assert [e.outcome for e in retrieves] == [REFUSED], retrieves
            assert retrieves[0].detail["reason"] == "source_not_whitelisted" and retrieves[0].kos == forged
    finally:
        sim.stop()


async def test_an_endpoint_entry_pins_port_and_path_and_a_redirect_is_never_followed(tmp_path: Path) -> None:
    spec = study_spec()
    files = study_files(spec)
    genuine = DicomwebServer(free_port(), series=files)
    rogue = DicomwebServer(free_port(), series=files)
    redirecting = DicomwebServer(free_port(), redirect_to=rogue.url)
    sim = _sim(tmp_path, [f"http://127.0.0.1:{genuine.port}/dicom-web", f"127.0.0.1:{redirecting.port}"])
    try:
        token = (await asyncio.to_thread(psc_token, sim.url))["access_token"]
        dmp = f"{sim.url}/dmp"
        publisher = consumer_settings(tmp_path / "publisher", dmp)
        genuine_kos = await publish(dmp, publisher, spec, public_url=genuine.url)
        other_port = await publish(dmp, publisher, spec, public_url=rogue.url)
        redirected = await publish(dmp, publisher, spec, public_url=redirecting.url)
        # Retrieve URLs .../admin/dicom-web/studies/... and .../dicom-web/../admin/dicom-web/studies/...
        outside = [await publish(dmp, publisher, spec, public_url=f"{genuine.url}{path}")
                   for path in ("/admin", "/dicom-web/../admin")]  # fmt: skip
        kos_uids = (genuine_kos, other_port, redirected, *outside)
        async with serving(genuine), serving(rogue), serving(redirecting), \
                running_consumer(tmp_path, sim.url, token) as conso:  # fmt: skip
            assert set(kos_uids) <= set(await conso.open_exam_list())
            # Outside the listed path prefix, or climbing out of it: refused before any connection.
            for uid in outside:
                status, refusal = await conso.study(spec.study_uid, uid)
                assert (status, refusal["reason"]) == (502, "source_not_whitelisted"), refusal

            status, refusal = await conso.study(spec.study_uid, other_port)
            assert (status, refusal["reason"]) == (502, "source_not_whitelisted"), refusal
            status, refusal = await conso.study(spec.study_uid, redirected)
            assert (status, refusal["reason"]) == (502, "source_redirected"), refusal
            assert rogue.authorizations == [], "the token reached a port or a redirect target the list does not name"
            assert all(p.startswith("/dicom-web/") for p in genuine.paths)

            # The listed endpoint itself gets the exam, with the token.
            status, view = await conso.study(spec.study_uid, genuine_kos)
            assert status == 200 and len(view) == sum(len(v) for v in files.values())
            assert set(genuine.authorizations) == {f"Bearer {token}"}
            outcomes = {(e.kos, e.outcome, e.detail.get("reason")) for e in conso.events("consumer.retrieve")}
            assert (genuine_kos, SUCCESS, None) in outcomes
            assert (other_port, REFUSED, "source_not_whitelisted") in outcomes
            assert (redirected, REFUSED, "source_redirected") in outcomes
            assert not any(outcome == SUCCESS for kos, outcome, _ in outcomes if kos != genuine_kos), outcomes
    finally:
        sim.stop()


@pytest.mark.parametrize("mode", ["jwt", "introspection"])
async def test_a_token_bound_to_other_resource_servers_does_not_open_this_source(mode: str) -> None:
    """Where the token allows it (an audience naming resource servers by URL), the source accepts only its own. A PSC
    token names the consumer box's client id: it binds nothing, and is accepted as before."""
    import time

    from drimbox.auth.tokens import BearerTokenChecker, TokenError
    from drimbox.config import Settings
    from tests.support.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider, start_provider

    provider = Provider()
    runner = await start_provider(provider)
    s = Settings()
    s.psc.issuer, s.psc.client_id, s.psc.client_secret = provider.issuer, CLIENT_ID, CLIENT_SECRET
    s.auth.token_check, s.auth.token_cache_ttl = mode, 0
    s.box.public_url = "https://db-b.example:8443/"
    checker = BearerTokenChecker(s)

    def token(aud: object) -> str:
        now = int(time.time())
        return provider.sign({"iss": provider.issuer, "sub": "f:899700218896", "SubjectNameID": "899700218896",
                              "azp": CLIENT_ID, "typ": "Bearer", "iat": now, "exp": now + 300, "aud": aud,
                              "scope": "openid scope_all"})  # fmt: skip

    try:
        with pytest.raises(TokenError) as info:
            await checker.check(token([CLIENT_ID, "https://db-a.example"]))  # meant for box A, replayed at box B
        assert info.value.reason == "wrong_audience"
        assert (await checker.check(token([CLIENT_ID, "https://DB-B.example:8443/dicom-web"]))).id == "899700218896"
        assert (await checker.check(token(CLIENT_ID))).id == "899700218896"  # PSC's shape: the consumer's client
    finally:
        await checker.close()
        await runner.cleanup()


def test_the_demo_and_docker_simulators_list_their_boxes_exactly(tmp_path: Path) -> None:
    """Where the attack was run (`drimbox demo`, and the compose set-up): the source's Retrieve URLs are listed, and
    nothing else on loopback is (Orthanc, the simulator, another port), so no other service gets a token."""
    from drimbox.auth.whitelist import Whitelist, parse_entry
    from drimbox.config import load_settings
    from drimbox.demo.mesh import sim_sections, source_sections
    from drimbox.demo.options import DEFAULT_PORTS
    from drimbox.manifest.kos import retrieve_url

    docker = Path(__file__).resolve().parents[2] / "docker"
    demo_sim, demo_source = sim_sections(tmp_path, DEFAULT_PORTS)["sim"], source_sections(tmp_path, DEFAULT_PORTS, None)
    setups = [
        (load_settings(docker / "sim.toml", env={}).sim.whitelist_hosts,
         load_settings(docker / "source.toml", env={}).box.public_url),
        (demo_sim["whitelist_hosts"], demo_source["box"]["public_url"]),
    ]  # fmt: skip
    for entries, public_url in setups:
        listed = Whitelist(db=frozenset(e for e in map(parse_entry, entries) if e is not None), vi=frozenset())
        assert len(listed.db) == len(entries), entries
        assert listed.allows(retrieve_url(public_url, "1.2.3", "1.2.3.4"))
        for other in ("http://127.0.0.1:4242/dicom-web/studies/1", "http://127.0.0.1:8090/dicom-web/studies/1",
                      f"{public_url}/api/publications", "http://localhost:8080/dicom-web/studies/1"):  # fmt: skip
            assert not listed.allows(other), (entries, other)
