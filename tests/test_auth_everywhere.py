"""Every route of a source box (Proxy, Native) and of a consumer box refuses a request without credentials, and
every state-changing one refuses the session cookie sent from another origin (CSRF)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.auth_boxes import OPERATOR_TOKEN, box_settings, running_box
from tests.support.consumer import LAUNCH_FORM
from tests.support.drim_flow import psc_token
from tests.support.patient_flow import PATIENT_COOKIE, enable_patient, patient_login

pytestmark = [pytest.mark.sim, pytest.mark.box]

# Routes anyone may call, and why each shows or moves no patient data.
PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/health"): "component states and counts, no identifiers",
    ("GET", "/viewer"): "redirect to the viewer's static page",
    ("GET", "/viewer/"): "static HTML; the images it shows come from protected routes",
    ("GET", "/viewer/{name}"): "static CSS/JS of the viewer",
    ("GET", "/viewer/vendor/{folder}/{name}"): "the vendored WebAssembly codecs (npm packages as published)",
    ("GET", "/viewer/messages/{lang}.json"): "the viewer's words (the message catalogue), no patient data",
    ("GET", "/auth/login"): "starts the Pro Santé Connect login",
    ("GET", "/auth/callback"): "the OIDC callback, bound to the browser by state + PKCE",
    ("GET", "/auth/logout"): "a page with the logout button: a GET ends nothing",
    ("POST", "/auth/logout"): "ends the caller's own session (posted from the box's own pages only: CSRF)",
    ("GET", "/auth/logged-out"): "a static page",
    ("POST", "/conso/launch"): "stores the launch server-side and sends the browser to the login (checked below)",
    (
        "GET",
        "/operator",
    ): "the operator token's login form; the page itself needs the operator session (test_ops_login)",
    ("POST", "/operator/logout"): "ends the caller's own operator session, if any (from the box's own pages: CSRF)",
    ("POST", "/operator/login"): "checks the operator token (failures audited, slowed and limited: test_ops_login)",
    # The patient's side (drimbox/patient, [patient] enabled on the source boxes here).
    ("GET", "/patient"): "a page with the Mon Espace Santé login button",
    ("GET", "/patient/"): "the same page",
    ("GET", "/patient/login"): "starts the Mon Espace Santé login",
    ("GET", "/patient/callback"): "the patient's OIDC callback, bound to the browser by state + PKCE",
    ("GET", "/patient/logout"): "a page with the patient's logout button: a GET ends nothing",
    ("POST", "/patient/logout"): "ends the caller's own patient session (from the box's own pages only: CSRF)",
    ("GET", "/patient/logged-out"): "a static page",
}
# On a box without the source role the report link only says so (404 "No images here"): nothing of a patient.
PUBLIC_ON_CONSUMER = {("GET", "/IHEInvokeImageDisplay"): "answers 404 without looking anything up"}
SAMPLE = {"study": "1.2.3", "series": "1.2.3.4", "instance": "1.2.3.4.5", "frames": "1", "ins": "279035121518989",
          "kos_uid": "1.2.3.9", "launch_id": "abcdef", "job_id": "abcdef", "name": "main.js", "folder": "codec", "path": "7FE00010",
          "tail": "studies/1.2.3/unknown", "lang": "fr"}  # fmt: skip
# Without these the route answers 400 before it ever asks who is calling: not what this test is about.
QUERIES = {"/IHEInvokeImageDisplay": "?requestType=STUDY&studyUID=1.2.3", "/api/publications": "?accession=ACN103"}


def inventory(app: web.Application) -> list[tuple[str, str]]:
    """(method, canonical path) of every route the app serves (HEAD is checked like the GET it mirrors)."""
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    return sorted(routes)


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE[m.group(1)], path) + QUERIES.get(path, "")


def refused_without_credentials(status: int, location: str) -> bool:
    # A professional's page sends to the PSC login, a patient's to the Mon Espace Santé login; an API answers 401.
    return status == 401 or (status == 303 and location.startswith(("/auth/login", "/patient/login")))


async def walk(
    url: str,
    app: web.Application,
    public: dict[tuple[str, str], str],
    routes: list[tuple[str, str]] | None = None,
    **headers: str,
) -> dict[tuple[str, str], int]:
    """Every non-public route (of `app`, or `routes`) asked without credentials; returns those that did not refuse."""
    leaks: dict[tuple[str, str], int] = {}
    async with aiohttp.ClientSession() as http:
        for method, path in inventory(app) if routes is None else routes:
            if (method, path) in public or method == "OPTIONS" or (method == "HEAD" and ("GET", path) in public):
                continue  # OPTIONS: CORS preflights carry no credentials and answer no data
            async with http.request(method, url + concrete(path), allow_redirects=False, headers=headers) as resp:
                await resp.read()
                if not refused_without_credentials(resp.status, resp.headers.get("Location", "")):
                    leaks[(method, path)] = resp.status
    return leaks


@pytest.mark.parametrize("roles,profile", [(["source"], "proxy"), (["source"], "native"), (["consumer"], "proxy")])
async def test_every_route_refuses_a_caller_without_credentials(
    tmp_path: Path, sim: Any, roles: list[str], profile: str
) -> None:
    async with running_box(enable_patient(box_settings(tmp_path, sim.url, roles, profile), sim.url)) as box:
        routes = inventory(box.app)
        # The walk covers what each kind of box serves (a route list that lost them would pass vacuously).
        expected = {"source": ("/dicom-web/studies/{study}/series/{series}", "/api/publications", "/IHEInvokeImageDisplay",
                               "/patient/exams/{study}", "/patient/exams/{study}/download",
                               "/patient/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered"),
                    "consumer": ("/conso/api/exams/{kos_uid}", "/conso/dicom-web/studies/{study}",
                                 "/conso/patients/{ins}/exams")}[roles[0]]  # fmt: skip
        assert set(expected) <= {p for _, p in routes}, routes
        assert ("GET", "/metrics") in routes and ("GET", "/metrics") not in PUBLIC  # the operator's (or [metrics])
        public = PUBLIC if "source" in roles else {**PUBLIC, **PUBLIC_ON_CONSUMER}
        assert await walk(box.url, box.app, public) == {}
        # A cookie that names no session is no better than none (sent as from the box's own page: past the CSRF check).
        assert await walk(box.url, box.app, public, Cookie="drimbox_session=forged", Origin=box.url) == {}
        assert await walk(box.url, box.app, public, Cookie=f"{PATIENT_COOKIE}=forged", Origin=box.url) == {}
        if profile == "native":
            assert ("POST", "/dicom-web/studies") in routes
        if roles == ["consumer"]:
            async with aiohttp.ClientSession() as http:
                resp = await http.post(box.url + "/conso/launch", data=LAUNCH_FORM, allow_redirects=False)
                assert resp.status == 303 and resp.headers["Location"].startswith("/auth/login?")


async def test_operator_api_takes_the_operator_token_and_stow_a_professional_token(tmp_path: Path, sim: Any) -> None:
    async with running_box(box_settings(tmp_path, sim.url, ["source"], "native")) as box:
        operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        async with aiohttp.ClientSession() as http:
            resp = await http.get(f"{box.url}/api/publications?accession=ACN103", headers=operator)
            assert resp.status == 200 and await resp.json() == []
            wrong = await http.get(f"{box.url}/api/publications?accession=ACN103",
                                   headers={"Authorization": "Bearer not-the-operator"})  # fmt: skip
            assert wrong.status == 401 and (await wrong.json())["reason"] == "operator_required"
            # /metrics: the operator token, not a wrong one.
            assert (await http.get(f"{box.url}/metrics", headers=operator)).status == 200
            metrics = await http.get(f"{box.url}/metrics", headers={"Authorization": "Bearer not-the-operator"})
            assert metrics.status == 401 and (await metrics.json())["reason"] == "operator_required"
            # Emptying the cache is the operator's alone: a professional's PSC token does not do it.
            token = psc_token(sim.url)["access_token"]
            assert (
                await http.delete(f"{box.url}/api/cache", headers={"Authorization": f"Bearer {token}"})
            ).status == 401
            assert (await http.delete(f"{box.url}/api/cache", headers=operator)).status == 404  # Native: no cache
            # STOW-RS: a professional's token or the operator's passes the door (then 415: not a multipart body).
            stow = f"{box.url}/dicom-web/studies"
            for auth in (f"Bearer {token}", f"Bearer {OPERATOR_TOKEN}"):
                resp = await http.post(stow, data=b"x", headers={"Authorization": auth, "Content-Type": "text/plain"})
                assert resp.status == 415, (auth[:12], await resp.text())
            resp = await http.post(
                stow, data=b"x", headers={"Authorization": "Bearer forged", "Content-Type": "text/plain"}
            )
            assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert ("auth.stow", "refused", "inactive") in box.actions()
        # Both uploads are in the audit trail: the professional's and the operator's.
        assert sum(1 for a in box.actions() if a[:2] == ("auth.stow", "success")) == 2


SAFE = ("GET", "HEAD", "OPTIONS")
ATTACKER = "http://127.0.0.1:9"  # another origin of the same site: the session cookie (SameSite=Lax) is sent


async def test_every_state_changing_route_refuses_the_session_cookie_from_another_origin(
    tmp_path: Path, sim: Any
) -> None:
    """The CSRF check is one middleware: every POST/DELETE/PUT of a box with both roles goes through it."""
    async with running_box(
        enable_patient(box_settings(tmp_path, sim.url, ["source", "consumer"], "native"), sim.url)
    ) as box:
        token = psc_token(sim.url)["access_token"]
        async with aiohttp.ClientSession() as http:
            launched = await http.post(box.url + "/conso/launch", data=LAUNCH_FORM, allow_redirects=False,
                                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            session = launched.cookies["drimbox_session"].value
            changing = [(m, p) for m, p in inventory(box.app) if m not in SAFE and (m, p) != ("POST", "/conso/launch")]
            assert {
                ("POST", "/auth/logout"),
                ("POST", "/conso/api/exams/{kos_uid}/import"),
                ("POST", "/conso/patients/{ins}/emergency"),
                ("POST", "/dicom-web/studies"),
                ("POST", "/patient/logout"),
            } <= set(changing)
            cookie = {"Cookie": f"drimbox_session={session}"}
            forged: tuple[dict[str, str], ...] = ({"Origin": ATTACKER}, {"Referer": ATTACKER + "/page"}, {"Origin": "null"}, {},
                      {"Origin": ATTACKER, "X-CSRF-Token": "guessed"})  # fmt: skip
            for method, path in changing:
                for headers in forged:
                    async with http.request(method, box.url + concrete(path), data={"reason": "x" * 20},
                                            headers={**cookie, **headers}, allow_redirects=False) as resp:  # fmt: skip
                        body = await resp.text()
                        assert resp.status == 403 and "autre origine" in body, (method, path, headers, body[:200])
            # The session survived all that, and the box's own origin (or the session's token) is let through.
            assert (await http.get(box.url + "/auth/me", headers=cookie)).status == 200
            form = await http.get(box.url + "/auth/logout", headers=cookie)
            csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', await form.text())
            assert csrf, "the logout page's form carries the session's token"
            for headers in ({"Origin": box.url}, {"Referer": box.url + "/conso/x"}, {"X-CSRF-Token": csrf[1]}):
                resp = await http.post(box.url + "/conso/patients/bad-ins/emergency", headers={**cookie, **headers})
                assert resp.status == 400, (headers, await resp.text())  # past the check: the handler's own answer
            out = await http.post(box.url + "/auth/logout", data={"csrf_token": csrf[1]}, headers={**cookie, "Origin": "null"},
                                  allow_redirects=False)  # fmt: skip
            assert out.status == 303
            assert (await http.get(box.url + "/auth/me", headers=cookie)).status == 401
    refused = [e for e in box.audit.events if e.action == "auth.csrf"]
    assert len(refused) == len(changing) * len(forged)
    assert all(e.outcome == "refused" and e.detail["reason"] == "cross_origin" for e in refused)


async def test_a_patient_session_opens_no_professional_route_and_a_professional_session_no_patient_route(
    tmp_path: Path, sim: Any
) -> None:
    """Both kinds of session are real (a PSC launch token, a Mon Espace Santé login); each is sent, under either
    cookie name, to every protected route of the other kind: all refuse as if there were no session at all."""
    async with running_box(
        enable_patient(box_settings(tmp_path, sim.url, ["source", "consumer"], "native"), sim.url)
    ) as box:
        token = psc_token(sim.url)["access_token"]
        async with aiohttp.ClientSession() as http:
            launched = await http.post(box.url + "/conso/launch", data=LAUNCH_FORM, allow_redirects=False,
                                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            professional = launched.cookies["drimbox_session"].value
            patient = await patient_login(http, box.url)
            # Each session is live where it belongs.
            assert (
                await http.get(box.url + "/auth/me", headers={"Cookie": f"drimbox_session={professional}"})
            ).status == 200
            home = await http.get(box.url + "/patient/", headers={"Cookie": f"{PATIENT_COOKIE}={patient}"})
            assert "PAT-TROIS" in await home.text()
        routes = [(m, p) for m, p in inventory(box.app) if m in ("GET", "POST", "DELETE") and (m, p) not in PUBLIC]
        patient_routes = [(m, p) for m, p in routes if p.startswith("/patient/")]
        other_routes = [(m, p) for m, p in routes if not p.startswith("/patient/")]
        assert len(patient_routes) >= 10 and len(other_routes) >= 30
        as_patient = {"Origin": box.url, "Cookie": f"{PATIENT_COOKIE}={patient}; drimbox_session={patient}"}
        as_professional = {"Origin": box.url,
                           "Cookie": f"drimbox_session={professional}; {PATIENT_COOKIE}={professional}"}  # fmt: skip
        assert await walk(box.url, box.app, {}, patient_routes, **as_professional) == {}
        assert await walk(box.url, box.app, {}, other_routes, **as_patient) == {}


async def test_patient_logout_refuses_the_patient_cookie_from_another_origin(tmp_path: Path, sim: Any) -> None:
    async with running_box(enable_patient(box_settings(tmp_path, sim.url, ["source"], "proxy"), sim.url)) as box:
        async with aiohttp.ClientSession() as http:
            session = await patient_login(http, box.url)
            cookie = {"Cookie": f"{PATIENT_COOKIE}={session}"}
            for headers in ({"Origin": ATTACKER}, {"Referer": ATTACKER + "/x"}, {"Origin": "null"}, {},
                            {"Origin": ATTACKER, "X-CSRF-Token": "guessed"}):  # fmt: skip
                resp = await http.post(
                    box.url + "/patient/logout", headers={**cookie, **headers}, allow_redirects=False
                )
                assert resp.status == 403 and "autre origine" in await resp.text(), headers
            # Still logged in; the logout page's own form (its token) ends the session.
            form = await http.get(box.url + "/patient/logout", headers=cookie)
            csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', await form.text())
            assert csrf, "the patient's logout form carries the session's token"
            out = await http.post(box.url + "/patient/logout", data={"csrf_token": csrf[1]},
                                  headers={**cookie, "Origin": "null"}, allow_redirects=False)  # fmt: skip
            assert out.status == 303 and out.headers["Location"] == "/patient/logged-out"
            home = await http.get(box.url + "/patient/", headers=cookie)
            assert 'id="login"' in await home.text()
    assert [e.detail.get("actor") for e in box.audit.events if e.action == "patient.logout"] == ["patient"]
    assert sum(1 for e in box.audit.events if e.action == "auth.csrf") == 5
