"""The viewer's routes without a browser: static files, the report link's checks and its error pages."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from drimbox.auth.professional import Professional
from drimbox.i18n import catalogue, text
from drimbox.viewer.routes import VIEWER_DIR, viewer_routes

STUDY = "1.2.250.1.213.4.5.2.1.103"


@dataclass
class Pub:
    state: str
    accession: str = "ACN103"


class FakeGate:
    def __init__(self, logged_in: bool) -> None:
        self.logged_in = logged_in

    async def current_professional(self, request: web.Request) -> Any:
        return Professional(id="801234567897", profession="10") if self.logged_in else None

    def require_login(self, request: web.Request, next: str | None = None) -> NoReturn:
        raise web.HTTPSeeOther(location=f"/auth/login?next={next}")


class FakeOutbox:
    def __init__(self, pubs: dict[str, list[Pub]]) -> None:
        self.pubs = pubs

    async def current_published(self, study_uid: str) -> Pub | None:
        return next((p for p in reversed(self.pubs.get(study_uid, [])) if p.state == "published"), None)

    async def search(self, *, study_uid: str) -> list[Pub]:
        return self.pubs.get(study_uid, [])


async def client(
    logged_in: bool = True, pubs: dict[str, list[Pub]] | None = None, source: bool = True
) -> TestClient[web.Request, web.Application]:
    app = web.Application()
    outbox = FakeOutbox(pubs if pubs is not None else {STUDY: [Pub("published")]}) if source else None
    app.add_routes(viewer_routes(FakeGate(logged_in), outbox))  # type: ignore[arg-type]
    c = TestClient(TestServer(app))
    await c.start_server()
    return c


def link(**params: str) -> str:
    base = {"requestType": "STUDY", "studyUID": STUDY, "Accessionnumber": "ACN103", "idCDA": "1.2.3"}
    base.update(params)
    return "/IHEInvokeImageDisplay?" + "&".join(f"{k}={v}" for k, v in base.items())


async def test_static_files_are_served_with_their_types_and_nothing_else() -> None:
    assert (VIEWER_DIR / "index.html").is_file()
    c = await client()
    try:
        index = await c.get("/viewer/")
        assert index.status == 200 and "non diagnostique" in (await index.text()).lower()
        assert "default-src 'self'" in index.headers["Content-Security-Policy"]
        js = await c.get("/viewer/main.js")
        assert js.status == 200 and js.content_type == "text/javascript"
        assert (await c.get("/viewer/viewer.css")).content_type == "text/css"
        for bad in ("/viewer/..%2Fpyproject.toml", "/viewer/README.md", "/viewer/nothing.js", "/viewer/.hidden.js"):
            assert (await c.get(bad)).status == 404, bad
        moved = await c.get("/viewer?kos=1.2", allow_redirects=False)
        assert moved.status == 301 and moved.headers["Location"] == "/viewer/?kos=1.2"
    finally:
        await c.close()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


async def test_the_page_names_its_files_by_their_content_and_they_are_kept_for_good(tmp_path: Path) -> None:
    folder = tmp_path / "viewer"
    folder.mkdir()
    (folder / "index.html").write_text(
        '<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="viewer.css">'
        '<link rel="modulepreload" href="stack.js"><script type="module" src="main.js"></script></head>'
        '<body><img src="/elsewhere.js"></body></html>'
    )
    files = {
        "main.js": b"import { x } from './stack.js';\n",
        "stack.js": b"export const x = 1;\n",
        "viewer.css": b"b{}",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    app = web.Application()
    app.add_routes(viewer_routes(FakeGate(True), None, directory=folder))  # type: ignore[arg-type]
    c = TestClient(TestServer(app))
    await c.start_server()
    try:
        index = await c.get("/viewer/")
        html = await index.text()
        versions = {name: f"/viewer/{name}?v={_digest(data)}" for name, data in files.items()}
        # Every module by its versioned URL, for the page and for the imports between modules alike.
        found = re.search(r'<script type="importmap">(.*?)</script>', html)
        assert found is not None
        assert json.loads(found[1]) == {"imports": {f"/viewer/{n}": versions[n] for n in ("main.js", "stack.js")}}
        assert html.index("importmap") < html.index("modulepreload")  # before the first module, or it is ignored
        for name in files:
            assert f'="{versions[name].removeprefix("/viewer/")}"' in html, name
        assert 'src="/elsewhere.js"' in html  # only the folder's own files are renamed
        # The inline map is allowed by its hash, nothing else inline; the page itself is revalidated.
        allowed = "'sha256-" + base64.b64encode(hashlib.sha256(found[1].encode()).digest()).decode() + "'"
        csp = index.headers["Content-Security-Policy"]
        assert f"script-src 'self' 'wasm-unsafe-eval' {allowed};" in csp and "unsafe-inline" not in csp
        assert index.headers["Cache-Control"] == "no-cache"
        again = await c.get("/viewer/", headers={"If-None-Match": index.headers["ETag"]})
        assert again.status == 304
        for name, url in versions.items():
            kept = await c.get(url)
            assert kept.status == 200 and await kept.read() == files[name]
            assert kept.headers["Cache-Control"] == "public, max-age=31536000, immutable", name
            bare = await c.get(f"/viewer/{name}")
            assert bare.status == 200 and bare.headers["Cache-Control"] == "no-cache", name
        # A new version of a module: a new name in the page; the old name is no longer kept for good.
        newer = b"export const x = 2;\n"
        (folder / "stack.js").write_bytes(newer)
        os.utime(folder / "stack.js", ns=(1, 10**18))
        changed = await (await c.get("/viewer/", headers={"If-None-Match": index.headers["ETag"]})).text()
        assert f"stack.js?v={_digest(newer)}" in changed and versions["stack.js"] not in changed
        stale = await c.get(versions["stack.js"])
        assert stale.headers["Cache-Control"] == "no-cache" and await stale.read() == newer
    finally:
        await c.close()


async def test_report_link_opens_the_viewer_on_a_published_study() -> None:
    c = await client()
    try:
        resp = await c.get(link(), allow_redirects=False)
        assert resp.status == 303
        target = urlsplit(resp.headers["Location"])
        assert target.path == "/viewer/" and parse_qs(target.query) == {"base": ["/dicom-web"], "study": [STUDY]}
        # Parameter names are matched without case.
        resp = await c.get(f"/IHEInvokeImageDisplay?requesttype=study&studyuid={STUDY}", allow_redirects=False)
        assert resp.status == 303
    finally:
        await c.close()


async def test_report_link_asks_for_login_and_comes_back_to_itself() -> None:
    c = await client(logged_in=False)
    try:
        resp = await c.get(link(), allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/auth/login?next=/IHEInvokeImageDisplay?")
        assert f"studyUID={STUDY}" in resp.headers["Location"]
    finally:
        await c.close()


async def test_report_link_errors_are_clear_pages() -> None:
    c = await client(pubs={STUDY: [Pub("withdrawn")], "1.2.3": [Pub("waiting")]})
    try:
        # French by default, English when the browser prefers it.
        cases = [
            (link(requestType="SERIES"), 400, "requestType", "requestType"),
            (link(studyUID="1.2.x"), 400, "studyUID", "studyUID"),
            (link(studyUID=""), 400, "studyUID", "studyUID"),
            (link(studyUID="9.9.9"), 404, "Examen introuvable", "not published"),
            (link(studyUID="1.2.3"), 404, "pas publié", "not published"),
            (link(), 410, "retirées", "withdrawn"),
        ]
        for url, status, french, english in cases:
            resp = await c.get(url, allow_redirects=False)
            assert resp.status == status, url
            text = await resp.text()
            assert resp.content_type == "text/html" and french in text and '<html lang="fr">' in text, url
            resp = await c.get(url, allow_redirects=False, headers={"Accept-Language": "en-GB,en;q=0.9,fr;q=0.5"})
            text = await resp.text()
            assert resp.status == status and english in text and '<html lang="en">' in text, url
    finally:
        await c.close()
    other = await client(pubs={STUDY: [Pub("published", accession="OTHER")]})
    try:
        assert (
            await other.get(link(), allow_redirects=False)
        ).status == 404  # the link's accession is not this study's
    finally:
        await other.close()
    consumer_only = await client(source=False)
    try:
        assert (await consumer_only.get(link(), allow_redirects=False)).status == 404
        assert (await consumer_only.get("/viewer/")).status == 200
    finally:
        await consumer_only.close()


async def test_the_viewer_words_come_from_the_catalogue_in_french_or_english() -> None:
    c = await client()
    try:
        fr = await c.get("/viewer/messages/fr.json")
        en = await c.get("/viewer/messages/en.json")
        assert fr.status == en.status == 200 and fr.content_type == "application/json"
        words_fr, words_en = await fr.json(), await en.json()
        assert words_fr["notice"] == "Visionneuse non diagnostique" and words_en["notice"] == "Non-diagnostic viewer"
        assert words_fr["non_diagnostic"] == text("fr", "common.non_diagnostic")  # [common] comes too
        assert set(words_fr) == set(words_en)
        assert not any(key.startswith(("consumer.", "auth.")) for key in words_fr)  # only the viewer's part
        for bad in ("/viewer/messages/de.json", "/viewer/messages/..%2Ffr.json", "/viewer/messages/fr.toml"):
            assert (await c.get(bad)).status == 404, bad
    finally:
        await c.close()


def test_every_word_the_viewer_names_is_in_the_catalogue() -> None:
    """The keys the page and the scripts name (data-i18n*, t('…'), problem('…'), error.key) all exist."""
    words = {key.split(".", 1)[1] for key in catalogue("fr") if key.startswith(("viewer.", "common."))}
    page = (VIEWER_DIR / "index.html").read_text(encoding="utf-8")
    named = set(re.findall(r'data-i18n(?:-[a-z-]+)?="([^"]+)"', page))
    for name in ("main.js", "measure.js", "panels.js", "stack.js", "i18n.js", "compare.js"):
        script = (VIEWER_DIR / name).read_text(encoding="utf-8")
        named |= set(re.findall(r"\b(?:t|problem)\('([a-z0-9_.]+)'", script))
        named |= set(re.findall(r"key: '([a-z0-9_.]+)'", script))
        # Keys built at run time: the error pages by HTTP status, the measure labels by kind.
        named |= {
            f"error.{status}"
            for status in re.findall(r"\[(\d{3}(?:, \d{3})*)\]", script)
            for status in status.split(", ")
        }
    assert len(named) > 60, sorted(named)
    assert named <= words, sorted(named - words)
