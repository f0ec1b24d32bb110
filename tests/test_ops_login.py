"""The operator page's door: the operator token opens a session of its own; wrong tokens, professionals and other
origins are refused and audited; the cache is emptied and the box reloaded from it."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yarl

from drimbox.auth.oidc import TokenSet
from drimbox.auth.professional import Professional
from drimbox.demo.samples.processes import free_port
from drimbox.ops import login as ops_login
from drimbox.ops import pages as ops_pages
from tests.support.auth_boxes import OPERATOR_TOKEN, RunningBox, box_settings, running_box

COOKIE = "drimbox_session_operator"


@pytest.fixture
async def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningBox]:
    monkeypatch.setattr(ops_login, "FAILURE_DELAY", 0.01)  # the 1 s a failure costs, shortened for the test
    nobody = f"http://127.0.0.1:{free_port()}"  # no simulator: the page's peer checks find nobody, quickly
    async with running_box(box_settings(tmp_path, nobody, ["source"], operator_idle=2.0)) as b:
        yield b


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """A browser: keeps cookies (of 127.0.0.1 too), follows no redirect by itself, sends its own Origin."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def log_in(
    browser: aiohttp.ClientSession, box: RunningBox, token: str = OPERATOR_TOKEN
) -> aiohttp.ClientResponse:
    async with browser.post(box.url + "/operator/login", data={"token": token}, allow_redirects=False,
                            headers={"Origin": box.url}) as resp:  # fmt: skip
        await resp.read()
        return resp


async def page(browser: aiohttp.ClientSession, box: RunningBox, lang: str = "fr") -> tuple[int, str]:
    async with browser.get(box.url + "/operator", headers={"Accept-Language": lang}) as resp:
        return resp.status, await resp.text()


def csrf_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def test_login_opens_the_dashboard_with_a_strict_http_only_cookie_and_logout_ends_it(
    box: RunningBox, browser: aiohttp.ClientSession
) -> None:
    status, html = await page(browser, box)
    assert status == 200 and 'action="/operator/login"' in html and "Jeton d&#x27;exploitation" in html
    _, english = await page(browser, box, "en")
    assert "Operator token" in english
    resp = await log_in(browser, box)
    assert resp.status == 303 and resp.headers["Location"] == "/operator"
    cookie = resp.cookies[COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/operator"
    assert not cookie["secure"]  # plain HTTP here; Secure under TLS (OperatorLogin.secure)
    status, html = await page(browser, box)
    assert status == 200
    for section in ("Publications vers le DMP", "Cache des images", "Services partenaires", "Certificats"):
        assert section in html
    assert 'id="peer-pacs"' in html and "injoignable" in html  # nobody listens on the PACS port
    assert "Signature des VIHF" in html and "jours" in html
    _, english = await page(browser, box, "en-GB,en;q=0.9")
    assert '<html lang="en">' in english and "Publications to the DMP" in english and "Certificates" in english
    assert ("auth.operator-login", "success", "") in box.actions()
    # Logout: the same cookie value opens nothing any more.
    session_id = cookie.value
    async with browser.post(box.url + "/operator/logout", data={"csrf_token": csrf_token(html)},
                            allow_redirects=False) as resp:  # fmt: skip
        assert resp.status == 303
    async with aiohttp.ClientSession(cookies={COOKIE: session_id}) as replay:
        status, html = await page(replay, box)
    assert 'action="/operator/login"' in html and "Publications vers le DMP" not in html


async def test_wrong_tokens_are_refused_audited_and_limited(box: RunningBox, browser: aiohttp.ClientSession) -> None:
    for _ in range(ops_login.MAX_FAILURES):
        resp = await log_in(browser, box, "not-the-token")
        assert resp.status == 401 and COOKIE not in resp.cookies
    assert box.actions().count(("auth.operator-login", "refused", "bad_token")) == ops_login.MAX_FAILURES
    # Past the limit, even the right token is refused from this address until the window passes.
    resp = await log_in(browser, box)
    assert resp.status == 429 and COOKIE not in resp.cookies
    assert ("auth.operator-login", "refused", "too_many_failures") in box.actions()


async def test_a_professional_session_is_not_an_operator(box: RunningBox, browser: aiohttp.ClientSession) -> None:
    sessions = box.box.auth.sessions
    doctor = Professional(id="810001234567", family="MARTIN", given="Paul", profession="10")
    session_id = await sessions.create(doctor, TokenSet(access_token="x", expires_at=time.time() + 600))
    url = yarl.URL(box.url)
    # Neither the professional's cookie nor its value under the operator's cookie name opens the page.
    browser.cookie_jar.update_cookies({"drimbox_session": session_id, COOKIE: session_id}, url)
    _, html = await page(browser, box)
    assert 'action="/operator/login"' in html and "Publications vers le DMP" not in html
    async with browser.post(box.url + "/operator/reload", headers={"Origin": box.url}, allow_redirects=False) as resp:
        assert resp.status == 401 and 'action="/operator/login"' in await resp.text()
    async with browser.post(box.url + "/operator/retry", data={"id": "1"}, headers={"Origin": box.url},
                            allow_redirects=False) as resp:  # fmt: skip
        assert resp.status == 401
    assert not [a for a, _, _ in box.actions() if a.startswith("operator.")]


async def test_forms_need_the_page_s_token_or_origin_and_empty_the_cache(
    box: RunningBox, browser: aiohttp.ClientSession
) -> None:
    await log_in(browser, box)
    _, html = await page(browser, box)
    assert 'id="empty-cache"' in html
    cache = box.box.cache
    assert cache is not None
    async for _ in cache.series("1.2.3", "1.2.3.4", _one_instance):  # a series kept, as a retrieve would
        pass
    assert (await cache.usage())["series"] == 1
    # From another origin, without the page's token: refused, audited, the cache untouched.
    async with browser.post(box.url + "/operator/cache/empty", headers={"Origin": "http://evil.example"},
                            allow_redirects=False) as resp:  # fmt: skip
        assert resp.status == 403
    assert ("auth.csrf", "refused", "cross_origin") in box.actions()
    assert (await cache.usage())["series"] == 1
    async with browser.post(box.url + "/operator/cache/empty", data={"csrf_token": csrf_token(html)},
                            headers={"Origin": "null"}, allow_redirects=False) as resp:  # fmt: skip
        assert resp.status == 303 and resp.headers["Location"] == "/operator?notice=emptied"
    assert ("operator.cache-clear", "success", "") in box.actions()
    async with browser.get(box.url + "/operator?notice=emptied") as resp:
        html = await resp.text()
    assert "Le cache est vidé." in html and "0 B utilisés" in html
    assert (await cache.usage())["series"] == 0


@dataclass(frozen=True)
class _Instance:
    sop_class_uid: str = "1.2.840.10008.5.1.4.1.1.2"
    sop_instance_uid: str = "1.2.3.4.5"
    transfer_syntax_uid: str = "1.2.840.10008.1.2.1"
    data: bytes = b"DICM" * 100


async def _one_instance() -> AsyncIterator[_Instance]:
    yield _Instance()


async def test_the_reload_button_reloads(box: RunningBox, browser: aiohttp.ClientSession) -> None:
    await log_in(browser, box)
    _, html = await page(browser, box)
    async with browser.post(box.url + "/operator/reload", data={"csrf_token": csrf_token(html)},
                            allow_redirects=True) as resp:  # fmt: skip
        html = await resp.text()
    assert "Rien à recharger" in html  # no [tls] and no whitelist on this box
    assert any(a == "operator.reload" for a, _, _ in box.actions())


async def test_the_session_ends_when_left_idle(box: RunningBox, browser: aiohttp.ClientSession) -> None:
    await log_in(browser, box)
    assert "Certificats" in (await page(browser, box))[1]
    time.sleep(2.1)  # [auth] operator_idle = 2 s in this box
    assert 'action="/operator/login"' in (await page(browser, box))[1]


async def test_publications_are_listed_newest_first_by_page_and_filtered_by_state(
    box: RunningBox, browser: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops_pages, "PAGE_SIZE", 2)
    outbox = box.box.outbox
    assert outbox is not None
    for n in range(3):
        await outbox.accept(sender="RIS|X", control_id=f"c{n}", raw=b"MSH|", action="publish", document_id=f"d{n}",
                            accession=f"ACN{n}", study_uid=f"1.2.3.{n}", report={})  # fmt: skip
    await log_in(browser, box)
    listed = []
    for number in (1, 2):
        async with browser.get(box.url + f"/operator?page={number}") as resp:
            html = await resp.text()
        listed.append(re.findall(r"<td>(ACN\d)</td>", html[html.index("id=publications") :]))
    assert listed == [["ACN2", "ACN1"], ["ACN0"]]
    assert "Page 2 sur 2 (3 publications)" in html
    async with browser.get(box.url + "/operator?state=published") as resp:
        html = await resp.text()
    assert "id=publications" not in html and "Page 1 sur 1 (0 publications)" in html
