"""HTTP face of the simulated Pro Santé Connect under /psc: discovery, JWKS, login page, token, userinfo, ..."""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oidc.core.errors import LoginRequiredError

from drimbox.config import Settings
from drimbox.sim.psc_keys import load_signing_key, public_jwks, signing_keyset
from drimbox.sim.psc_professionals import Directory, Professional
from drimbox.sim.psc_server import PscRequest, PscServer
from drimbox.sim.psc_store import Client, Login, PscStore

log = logging.getLogger("drimbox.sim.psc")

PREFIX = "/psc"
PSC_SERVER = web.AppKey("psc_server", PscServer)
PSC_DIRECTORY = web.AppKey("psc_directory", Directory)
FORM = "application/x-www-form-urlencoded"
# The login page: no script, no frame, nothing loaded from elsewhere.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def psc_issuer(settings: Settings) -> str:
    """{sim.public_url or http://host:port}/psc: what the box's [psc] issuer must say to use this simulator."""
    scheme = "https" if settings.tls.cert else "http"  # the simulator serves HTTPS with a [tls] certificate
    base = settings.sim.public_url or f"{scheme}://{settings.sim.host}:{settings.sim.port}"
    return base.rstrip("/") + PREFIX


def _oauth_errors(handler: Handler) -> Handler:
    """Any OAuth 2 error not answered yet becomes its RFC 6749 JSON body (or redirect) here."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except OAuth2Error as error:
            return request.app[PSC_SERVER].error_response(None, error)

    return wrapped


async def _oauth_request(request: web.Request, *, form: bool) -> PscRequest:
    """The request for authlib: the query for GET; for POST the urlencoded body, which `form` makes mandatory."""
    server = request.app[PSC_SERVER]
    if request.method == "POST" and (form or request.can_read_body):
        if request.content_type != FORM:
            raise InvalidRequestError(f"The request body must be {FORM}.")
        params = [(k, v) for k, v in (await request.post()).items() if isinstance(v, str)]
    else:
        params = list(request.query.items())
    # authlib refuses plain http unless it is loopback: the issuer says what clients see (sim.public_url).
    uri = server.issuer + request.path.removeprefix(PREFIX)
    oauth = PscRequest(request.method, uri, request.headers, params)
    repeated = sorted(k for k, values in oauth.payload.datalist.items() if len(values) > 1)
    if repeated:
        raise InvalidRequestError(f"Parameters must not be repeated: {', '.join(repeated)}.")
    return oauth


async def discovery(request: web.Request) -> web.Response:
    return web.json_response(request.app[PSC_SERVER].metadata())


async def jwks(request: web.Request) -> web.Response:
    server = request.app[PSC_SERVER]
    return web.json_response(public_jwks(server.keyset), headers={"Cache-Control": "max-age=300"})


@_oauth_errors
async def authorize(request: web.Request) -> web.StreamResponse:
    """GET: validate the request, then the login page, or, with sim_auto=1 and login_hint, the redirect at once.

    sim_auto=1 exists only in the simulator: it stands for "the professional inserted their CPS" so that
    automated tests log in without a browser. The real Pro Santé Connect ignores it.
    """
    server = request.app[PSC_SERVER]
    oauth = await _oauth_request(request, form=False)
    data = oauth.payload.data
    login = None
    if data.get("sim_auto") == "1":
        pro = request.app[PSC_DIRECTORY].get(data.get("login_hint", ""))
        login = server.new_login(pro) if pro is not None else None
    try:
        grant = server.get_consent_grant(oauth, end_user=login)
    except OAuth2Error as error:
        return server.error_response(oauth, error)
    if data.get("sim_auto") == "1":
        if login is None:
            unknown = LoginRequiredError(
                description="sim_auto=1 needs login_hint naming a known test professional",
                redirect_uri=grant.redirect_uri, state=oauth.payload.state,
            )  # fmt: skip
            return server.error_response(oauth, unknown)
        return _grant(server, oauth, grant, login.professional, login)
    login_id = server.store.add_pending_login(oauth.params())
    professionals = request.app[PSC_DIRECTORY].all()
    return web.Response(text=_login_page(login_id, professionals), content_type="text/html", headers=PAGE_HEADERS)


@_oauth_errors
async def authorize_post(request: web.Request) -> web.StreamResponse:
    """The login page's form: which professional logs in (or a refusal) for the request it was shown for."""
    server = request.app[PSC_SERVER]
    if request.content_type != FORM:
        raise web.HTTPBadRequest(text=f"the login form is posted as {FORM}")
    form = await request.post()
    params = server.store.take_pending_login(str(form.get("login_id", "")))
    if params is None:
        raise web.HTTPBadRequest(text="this login page has expired or was already used: start the login again")
    oauth = PscRequest("GET", server.issuer + "/auth", request.headers, params)
    if form.get("action") == "deny":
        grant = server.get_consent_grant(oauth, end_user=None)
        response: web.Response = server.create_authorization_response(oauth, grant_user=None, grant=grant)
        return response
    pro = request.app[PSC_DIRECTORY].get(str(form.get("professional", "")))
    if pro is None:
        raise web.HTTPBadRequest(text="unknown professional")
    login = server.new_login(pro)
    grant = server.get_consent_grant(oauth, end_user=login)
    return _grant(server, oauth, grant, pro, login)


def _grant(server: PscServer, oauth: PscRequest, grant: Any, pro: Professional, login: Login) -> web.Response:
    """The professional is logged in: a code, and the redirect back to the client."""
    log.info("PSC login of %s for client %s", pro.national_id, oauth.payload.client_id)
    response: web.Response = server.create_authorization_response(oauth, grant_user=login, grant=grant)
    return response


@_oauth_errors
async def token(request: web.Request) -> web.StreamResponse:
    server = request.app[PSC_SERVER]
    response: web.Response = server.create_token_response(await _oauth_request(request, form=True))
    return response


@_oauth_errors
async def userinfo(request: web.Request) -> web.StreamResponse:
    return request.app[PSC_SERVER].userinfo(await _oauth_request(request, form=False))


@_oauth_errors
async def introspect(request: web.Request) -> web.StreamResponse:
    server = request.app[PSC_SERVER]
    response: web.Response = server.create_endpoint_response("introspection", await _oauth_request(request, form=True))
    return response


@_oauth_errors
async def revoke(request: web.Request) -> web.StreamResponse:
    server = request.app[PSC_SERVER]
    response: web.Response = server.create_endpoint_response("revocation", await _oauth_request(request, form=True))
    return response


@_oauth_errors
async def logout(request: web.Request) -> web.StreamResponse:
    """RP-initiated logout: with a valid id_token_hint every token of that login session becomes inactive.

    Without one there is nothing to end (the simulator keeps no browser session): the page just says so.
    """
    server = request.app[PSC_SERVER]
    oauth = await _oauth_request(request, form=False)
    validated = server.validate_endpoint_request("end_session", oauth)
    response: web.Response | None = server.create_endpoint_response("end_session", validated)
    if response is not None:
        return response
    text = "<!doctype html><meta charset=utf-8><title>Pro Santé Connect (simulateur)</title><p>Vous êtes déconnecté."
    return web.Response(text=text, content_type="text/html", headers=PAGE_HEADERS)


def _login_page(login_id: str, professionals: list[Professional]) -> str:
    buttons = "\n".join(
        f'<li><button name="professional" value="{html.escape(p.national_id)}">{html.escape(p.label())}</button>'
        f"<small>{html.escape(p.national_id)} · {html.escape(', '.join(s.structure_name for s in p.situations))}</small></li>"
        for p in professionals
    )
    return f"""<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>Pro Santé Connect (simulateur)</title>
<style>body{{font-family:sans-serif;max-width:42em;margin:2em auto}}li{{margin:.6em 0;list-style:none}}
button{{min-width:28em;text-align:left;padding:.4em}}small{{display:block;color:#555}}</style></head>
<body><h1>Pro Santé Connect — simulateur</h1>
<p>Choisissez le professionnel de test qui se connecte (la carte CPS ou l'e-CPS de la vraie connexion).</p>
<form method="post" action="auth"><input type="hidden" name="login_id" value="{html.escape(login_id)}">
<ul>{buttons}</ul>
<p><button name="action" value="deny">Refuser</button></p></form></body></html>"""


def setup_psc(app: web.Application, settings: Settings) -> PscServer:
    """Mount the simulated PSC under /psc; its key lives in {sim.var_dir}/psc, its tokens in memory."""
    directory = Directory.load(settings.sim.professionals_file)
    key = load_signing_key(settings.sim_var_path / "psc")
    client = Client(settings.psc.client_id, settings.psc.client_secret, tuple(settings.sim.psc_redirect_uris))
    server = PscServer(
        psc_issuer(settings), PscStore(client), signing_keyset(key), settings.sim.psc_access_token_lifetime,
        directory.by_id,
    )  # fmt: skip
    app[PSC_SERVER] = server
    app[PSC_DIRECTORY] = directory
    app.router.add_get(f"{PREFIX}/.well-known/openid-configuration", discovery)
    app.router.add_get(f"{PREFIX}/jwks", jwks)
    app.router.add_get(f"{PREFIX}/auth", authorize)
    app.router.add_post(f"{PREFIX}/auth", authorize_post)
    app.router.add_post(f"{PREFIX}/token", token)
    app.router.add_route("GET", f"{PREFIX}/userinfo", userinfo)
    app.router.add_route("POST", f"{PREFIX}/userinfo", userinfo)
    app.router.add_post(f"{PREFIX}/introspect", introspect)
    app.router.add_post(f"{PREFIX}/revoke", revoke)
    app.router.add_route("GET", f"{PREFIX}/logout", logout)
    app.router.add_route("POST", f"{PREFIX}/logout", logout)
    return server
