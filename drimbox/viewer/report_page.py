"""The report page both boxes serve: a CDA report's PDF framed from the box, or its text, with the notice."""

from __future__ import annotations

from html import escape

from aiohttp import web

from drimbox.hl7.cda_body import ReportBody
from drimbox.i18n import Messages

_PRIVATE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# The page may be framed by the box's own viewer; it frames nothing but the box's own PDF; no script at all.
PAGE_CSP = ("default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'; object-src 'self'; "
            "form-action 'self'; frame-ancestors 'self'; base-uri 'none'")  # fmt: skip
# The PDF loads nothing, runs in an opaque origin (sandbox: no script of the box's), is framed only by the box's
# page, served inline, never sniffed as anything else. Chromium's PDF viewer renders it so (tests/test_report_browser).
PDF_CSP = "default-src 'none'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;max-width:72rem}h1{font-size:1.4rem}"
    ".muted{color:#666}.banner{background:#eef5ff;border:1px solid #b7d2f7;padding:.6rem;margin:1rem 0}"
    ".error{background:#fff0f0;border:1px solid #e3a1a1;padding:.6rem}"
    "iframe{width:100%;height:80vh;border:1px solid #ccc}"
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def html_page(m: Messages, title: str, body: str, status: int = 200) -> web.Response:
    text = (f'<!DOCTYPE html>\n<html lang="{m.lang}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)} — drimbox</title><style>{_STYLE}</style></head><body>{body}</body></html>\n")  # fmt: skip
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers={**_PRIVATE, "Content-Security-Policy": PAGE_CSP})  # fmt: skip


def message_page(m: Messages, title_key: str, message_key: str, status: int) -> web.Response:
    title = m(title_key)
    return html_page(m, title, f'<h1>{_e(title)}</h1><div class="error"><p>{_e(m(message_key))}</p></div>', status)


def report_page(
    m: Messages, *, about: str, body: ReportBody | None, title: str = "", date: str = "", pdf_url: str = ""
) -> web.Response:
    """The page of one exam's report: `about` names the exam; no body says no report is published."""
    heading = m("report.page.title")
    head = (f'<h1>{_e(heading)}</h1><p class="banner">{_e(m("common.non_diagnostic"))}</p>'
            f"<p>{_e(about)}</p>")  # fmt: skip
    if body is None:
        return html_page(m, heading, f'{head}<div class="error"><p>{_e(m("report.none"))}</p></div>')
    head += f'<p class="muted">{_e(m("report.page.document", title=title, date=m.date(date) if date else "—"))}</p>'
    if body.pdf is not None:
        content = (f'<p><a href="{_e(pdf_url)}" target="_blank" rel="noopener">{_e(m("report.page.open_pdf"))}</a></p>'
                   f'<iframe src="{_e(pdf_url)}" title="{_e(title)}"></iframe>')  # fmt: skip
    else:
        content = '<div class="report">' + "".join(f"<p>{_e(p)}</p>" for p in body.text) + "</div>"
    return html_page(m, heading, head + content)


def pdf_response(m: Messages, body: ReportBody | None) -> web.Response:
    """The report's PDF inline, or a page saying there is none."""
    if body is None or body.pdf is None:
        return message_page(m, "report.page.title", "report.no_pdf", 404)
    headers = {**_PRIVATE, "Content-Security-Policy": PDF_CSP, "X-Frame-Options": "SAMEORIGIN",
               "Content-Disposition": 'inline; filename="compte-rendu.pdf"'}  # fmt: skip
    return web.Response(body=body.pdf, content_type="application/pdf", headers=headers)
