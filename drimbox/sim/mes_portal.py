"""The simulated Mon Espace Santé patient portal under /mes/portail: the patient's DMP documents, and for an
imaging KOS a "Voir les images" link to the source box that published it (its /patient/exams/{study} page).

The portal stands for the patient's own space: its login is the same choice of test patient as the provider's
page, kept in a cookie of the simulator. It lists what the DMP shows a patient: approved documents, without those
marked INVISIBLE_PATIENT. The source box is found from the KOS itself (the RetrieveURL of its series).
"""

from __future__ import annotations

import html
import logging
import secrets

from aiohttp import web

from drimbox.manifest import KosError, parse_kos
from drimbox.sim.dmp_routes import DMP_STATE
from drimbox.sim.dmp_store import StoredEntry
from drimbox.sim.mes_patients import PATIENTS, Patient, find
from drimbox.xds import namespaces as ns
from drimbox.xds.metadata import SIGNATURE_TYPE_CODE

log = logging.getLogger("drimbox.sim.mes")

PORTAL = "/mes/portail"
COOKIE = "sim_mes_portail"
_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"}  # fmt: skip
_STYLE = ("body{font-family:sans-serif;max-width:40em;margin:1em auto;padding:0 1em}li{margin:.7em 0}"
          "a.voir{display:inline-block;padding:.4em .8em;background:#00517a;color:#fff;text-decoration:none}"
          "button{padding:.5em;font-size:1em}")  # fmt: skip
SESSIONS = web.AppKey("mes_portal_sessions", dict[str, str])


def _page(title: str, body: str, status: int = 200) -> web.Response:
    text = (f'<!doctype html><html lang="fr"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title><style>{_STYLE}</style>'
            f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>")  # fmt: skip
    return web.Response(text=text, status=status, content_type="text/html", headers=_HEADERS)


def _patient(request: web.Request) -> Patient | None:
    ins = request.app[SESSIONS].get(request.cookies.get(COOKIE, ""))
    return find(ins) if ins else None


def viewer_link(kos: bytes) -> str | None:
    """The source box's patient page for this KOS: its series' RetrieveURL names the box's /dicom-web."""
    try:
        summary = parse_kos(kos)
    except KosError:
        return None
    for series in summary.series:
        base, found, _ = series.retrieve_url.partition("/dicom-web/")
        if found and base.startswith(("http://", "https://")):
            return f"{base}/patient/exams/{summary.study_uid}"
    return None


def _visible(entry: StoredEntry) -> bool:
    codes = {c.get("code") for c in entry.meta.get("confidentialityCodes", []) if isinstance(c, dict)}
    kind = (entry.meta.get("typeCode") or {}).get("code")
    return entry.status == ns.STATUS_APPROVED and "INVISIBLE_PATIENT" not in codes and kind != SIGNATURE_TYPE_CODE.code


async def portal(request: web.Request) -> web.Response:
    patient = _patient(request)
    if patient is None:
        buttons = "".join(f'<li><button name="patient" value="{html.escape(p.ins)}">{html.escape(p.label())}</button>'
                          "</li>" for p in PATIENTS)  # fmt: skip
        return _page("Mon Espace Santé (simulateur)", "<p>Connectez-vous avec l'application carte Vitale (simulée) :"
                     f'</p><form method="post" action="{PORTAL}/login"><ul>{buttons}</ul></form>')  # fmt: skip
    store = request.app[DMP_STATE].store
    entries = [e for e in await store.entries(patient_key=f"{patient.ins}|{patient.oid}") if _visible(e)]
    items = []
    for entry in reversed(entries):
        title = html.escape(str(entry.meta.get("title") or "Document"))
        when = html.escape(str(entry.meta.get("serviceStartTime") or entry.meta.get("creationTime") or "")[:8])
        link = ""
        fmt = (entry.meta.get("formatCode") or {}).get("code")
        if fmt == ns.KOS_FORMAT_CODE[0]:
            url = viewer_link(await store.read_document(entry))
            if url:
                link = f' <a class="voir" href="{html.escape(url)}">Voir les images</a>'
        items.append(f'<li data-unique-id="{html.escape(entry.unique_id)}"><strong>{title}</strong> {when}{link}</li>')
    listing = f'<ul id="documents">{"".join(items)}</ul>' if items else "<p>Aucun document.</p>"
    body = (f'<p id="who">{html.escape(patient.given.title())} {html.escape(patient.family)}</p>'
            f"<h2>Mes documents de santé</h2>{listing}"
            f'<form method="post" action="{PORTAL}/logout"><button>Se déconnecter</button></form>')  # fmt: skip
    return _page("Mon Espace Santé (simulateur)", body)


async def login(request: web.Request) -> web.StreamResponse:
    patient = find(str((await request.post()).get("patient", "")))
    if patient is None:
        return _page("Mon Espace Santé (simulateur)", "<p>Patient inconnu.</p>", 400)
    session = secrets.token_urlsafe(24)
    request.app[SESSIONS][session] = patient.ins
    response = web.HTTPSeeOther(PORTAL)
    response.set_cookie(COOKIE, session, path="/mes/", httponly=True, samesite="Lax")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].pop(request.cookies.get(COOKIE, ""), None)
    response = web.HTTPSeeOther(PORTAL)
    response.del_cookie(COOKIE, path="/mes/")
    raise response


def setup_portal(app: web.Application) -> None:
    app[SESSIONS] = {}
    app.router.add_get(PORTAL, portal)
    app.router.add_post(f"{PORTAL}/login", login)
    app.router.add_post(f"{PORTAL}/logout", logout)
