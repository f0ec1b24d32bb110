"""The patient's pages: plain HTML, French by default, readable on a phone, every word from the `patient` table."""

from __future__ import annotations

from html import escape

from aiohttp import web

from drimbox.i18n import Messages

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1c2733;background:#f6f8fa;font-size:17px}
main,header{max-width:52em;margin:0 auto;padding:.6em 1em}h1{font-size:1.3em}
.notice{background:#fff4d6;border:1px solid #e0c36b;padding:.5em .8em;margin:.4em 0}
.error{background:#fde8e8;border:1px solid #c99;padding:.6em .9em}
a.button,button{display:inline-block;padding:.55em .9em;margin:.2em .3em .2em 0;border:1px solid #00517a;
background:#fff;color:#00517a;border-radius:4px;font-size:1em;text-decoration:none;cursor:pointer}
a.primary{background:#00517a;color:#fff}form.inline{display:inline}
"""
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"


def e(value: object) -> str:
    return escape(str(value), quote=True)


def page(m: Messages, title: str, body: str, *, status: int = 200, head: str = "", csp: str = PAGE_CSP) -> web.Response:
    text = (f'<!doctype html><html lang="{m.lang}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)}</title><style>{_STYLE}</style>{head}</head><body>{body}</body></html>")  # fmt: skip
    return web.Response(text=text, status=status, content_type="text/html",
                        headers={**HEADERS, "Content-Security-Policy": csp})  # fmt: skip


def message(
    m: Messages, status: int, title_key: str, message_key: str, *, extra: str = "", **params: object
) -> web.Response:
    """A page that says one thing (a refusal, a logout): its title and its sentence, in the patient's language."""
    title = m(title_key)
    body = (f'<main><h1>{e(title)}</h1><p class="error" id="message" data-reason="{e(message_key.rsplit(".", 1)[-1])}">'
            f"{e(m(message_key, **params))}</p>{extra}</main>")  # fmt: skip
    return page(m, title, body, status=status)
