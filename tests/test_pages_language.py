"""The box's own pages speak French by default and English when the browser prefers it: real requests to a box."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drimbox.consumer.access_pages import refusal_page
from drimbox.consumer.lookup import AccessRefused
from drimbox.consumer.pages import LAUNCH_PROBLEMS, launch_errors
from drimbox.i18n import Messages
from tests.support.auth_boxes import box_settings, running_box
from tests.support.consumer import LAUNCH_FORM
from tests.support.drim_flow import psc_token

pytestmark = [pytest.mark.sim, pytest.mark.box]

ENGLISH = {"Accept-Language": "en-GB,en;q=0.9,fr;q=0.5"}
FRENCH_BROWSER = {"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.8"}
ATTACKER = "http://127.0.0.1:1"
# Words of every English sentence and never of a French one: one on a French page is a string the catalogue missed.
ENGLISH_WORDS = re.compile(r"\b(the|this|your|you|is|are|not|cannot|refused|log in|logged|please|again|try)\b", re.I)


def visible(html: str) -> str:
    """The words a person reads: the page without its tags, its style and its attribute values."""
    html = re.sub(r"<style>.*?</style>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def assert_french(html: str) -> None:
    assert '<html lang="fr">' in html.replace("<!DOCTYPE html>\n", "")
    leftover = ENGLISH_WORDS.findall(visible(html))
    assert not leftover, (leftover, visible(html)[:400])


async def both(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, str, int, str]:
    """(status, page) of the same request made by a French browser (or one naming no language) and an English one."""
    headers = kw.pop("headers", {})
    async with http.request(method, url, headers=headers, allow_redirects=False, **kw) as resp:
        fr_status, fr = resp.status, await resp.text()
        if resp.content_type == "text/html":
            assert resp.headers["Content-Language"] == "fr" and "Accept-Language" in resp.headers["Vary"]
    async with http.request(method, url, headers={**headers, **ENGLISH}, allow_redirects=False, **kw) as resp:
        en_status, en = resp.status, await resp.text()
        if resp.content_type == "text/html":
            assert resp.headers["Content-Language"] == "en" and '<html lang="en">' in en
    return fr_status, fr, en_status, en


async def test_auth_consumer_and_report_link_pages_in_french_and_english(tmp_path: Path, sim: Any) -> None:
    async with running_box(box_settings(tmp_path, sim.url, ["source", "consumer"], "native")) as box:
        async with aiohttp.ClientSession() as http:
            # Logged out, and a login refused (an address to come back to that is not the box's).
            fr_status, fr, en_status, en = await both(http, "GET", box.url + "/auth/logged-out")
            assert fr_status == en_status == 200 and "Vous êtes déconnecté" in fr and "You are logged out" in en
            assert "Se connecter avec Pro Santé Connect" in fr and "Log in with Pro Santé Connect" in en
            assert_french(fr)
            fr_status, fr, en_status, en = await both(http, "GET", box.url + "/auth/login?next=https://evil.example/")
            assert fr_status == en_status == 400 and "Connexion refusée" in fr and "Login refused" in en
            assert_french(fr)

            # A launch whose fields are wrong: the page names them, in the doctor's language.
            bad = {**LAUNCH_FORM, "Patient.birthDate": "28/03/1979"}
            fr_status, fr, en_status, en = await both(http, "POST", box.url + "/conso/launch", data=bad)
            assert fr_status == en_status == 400 and "Lancement invalide" in fr and "Invalid launch" in en
            assert "Patient.birthDate" in fr and "Ces champs sont absents ou invalides" in fr
            assert "doit être une date AAAA-MM-JJ" in fr and "must be a date YYYY-MM-DD" in en
            assert_french(fr)

            # The professional's software logs them in with the launch; then a launch that expired.
            token = psc_token(sim.url)["access_token"]
            launched = await http.post(box.url + "/conso/launch", data=LAUNCH_FORM, allow_redirects=False,
                                       headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            assert launched.status == 303, await launched.text()
            cookie = {"Cookie": f"drimbox_session={launched.cookies['drimbox_session'].value}"}
            fr_status, fr, en_status, en = await both(http, "GET", box.url + "/conso/launches/" + "x" * 32,
                                                      headers=cookie)  # fmt: skip
            assert fr_status == en_status == 404 and "Lancement expiré" in fr and "Launch expired" in en
            assert_french(fr)

            # The logout page names the doctor as French records do (FAMILY Given), its button in French.
            fr_status, fr, en_status, en = await both(http, "GET", box.url + "/auth/logout", headers=cookie)
            assert fr_status == 200 and "Se déconnecter</button>" in fr and "Log out</button>" in en
            assert re.search(r"Déconnecter [A-ZÉÈ-]{2,} [A-Z][a-zé]+ de cette DRIMbox", fr), visible(fr)
            assert_french(fr)

            # A state-changing request from another origin (CSRF): refused, said in the doctor's language.
            forged = {**cookie, "Origin": ATTACKER}
            fr_status, fr, en_status, en = await both(http, "POST", box.url + "/auth/logout", headers=forged)
            assert fr_status == en_status == 403 and "Requête refusée" in fr and "Request refused" in en
            assert_french(fr)
            async with http.post(box.url + "/conso/api/exams/1.2.3/import", headers=forged) as resp:
                body = await resp.json()
                assert resp.status == 403 and body["reason"] == "cross_origin" and "autre origine" in body["error"]
                assert resp.headers["Content-Language"] == "fr"

            # The report link's errors, on the source side (400, 404).
            link = box.url + "/IHEInvokeImageDisplay"
            fr_status, fr, en_status, en = await both(http, "GET", link + "?requestType=SERIES&studyUID=1.2.3")
            assert fr_status == en_status == 400 and "Lien invalide" in fr and "Invalid link" in en
            assert_french(fr)
            fr_status, fr, en_status, en = await both(http, "GET", link + "?requestType=STUDY&studyUID=1.2.3",
                                                      headers=cookie)  # fmt: skip
            assert fr_status == en_status == 404 and "Examen introuvable" in fr and "Exam not found" in en
            assert_french(fr)

            # A browser that prefers French says so as well as one naming no language.
            async with http.get(box.url + "/auth/logged-out", headers=FRENCH_BROWSER) as resp:
                assert resp.headers["Content-Language"] == "fr" and "Vous êtes déconnecté" in await resp.text()


def test_the_refusal_page_offers_emergency_access_in_each_language() -> None:
    refused = AccessRefused("no authorisation (NON_AUTORISE)", "no_authorization", emergency_possible=True)
    args: dict[str, Any] = {"enabled": True, "action": "/conso/patients/x/emergency", "reason_min": 10}
    fr = refusal_page(Messages("fr"), refused, **args)
    assert "Accès au DMP refusé" in fr and "Accès en urgence (bris de glace)" in fr and 'name="reason"' in fr
    assert "Ouvrir en mode urgence</button>" in fr and "NON_AUTORISE" not in fr
    assert_french(fr)
    en = refusal_page(Messages("en"), refused, **args)
    assert '<html lang="en">' in en and "Emergency access (bris de glace)" in en and "Open in emergency mode" in en
    # A refusal the catalogue cannot explain quotes the DMP's own words, labelled.
    dmp = AccessRefused("the DMP refused access: emergency access blocked", emergency_possible=False)
    page = refusal_page(Messages("fr"), dmp, **args)
    assert "Le DMP a refusé votre accès." in page and "Détail : the DMP refused access" in page


def test_the_english_word_check_catches_english() -> None:
    with pytest.raises(AssertionError):
        assert_french('<html lang="fr"><body><p>This link is not valid.</p></body></html>')
    assert_french('<html lang="fr"><body><p>Ce lien n\'est pas valide (requestType=STUDY).</p></body></html>')


def test_the_launch_problems_the_catalogue_translates_are_the_ones_the_checks_say() -> None:
    """The table matches the checks' English by text: a check reworded must be reworded there too."""
    source = "".join(p.read_text(encoding="utf-8") for p in (Path(__file__).parents[1] / "drimbox/consumer").glob("*.py")
                     if p.name != "pages.py")  # fmt: skip
    stale = [english for english in LAUNCH_PROBLEMS if f'"{english}' not in source]
    assert not stale, stale
    fr = launch_errors(
        Messages("fr"),
        [
            ("Patient.gender", "is missing"),
            ("patient.name", "is not a field of the ANS launch form: it is spelled Patient.name.family"),
            ("x", "an unlisted problem"),
        ],
    )
    assert "est absent" in fr and "il s&#x27;écrit Patient.name.family" in fr and "an unlisted problem" in fr
