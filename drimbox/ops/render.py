"""The operator page's HTML: the login form and the dashboard, every word from the `ops` message table."""

from __future__ import annotations

import datetime
import html
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from aiohttp import web

from drimbox.auth.csrf import hidden_field
from drimbox.i18n import Messages
from drimbox.ops.accesses import Access, shown_time
from drimbox.ops.certs import CertExpiry
from drimbox.ops.health import PeerHealth

if TYPE_CHECKING:
    from drimbox.source.outbox import Publication

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#1c2733}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccd;padding:.25em .5em;text-align:left;
vertical-align:top;font-size:.92em}th{background:#eef2f6}
.ok{color:#176b2c}.down{color:#a4161a;font-weight:bold}.warn{color:#9a5b00;font-weight:bold}.none{color:#667}
.notice{background:#eef6ff;border:1px solid #9bc;padding:.5em}.error{background:#fde8e8;border:1px solid #c99;
padding:.5em}form.inline{display:inline}nav a{margin-right:.8em}.uid{font-family:monospace;font-size:.85em}
"""


@dataclass
class Dashboard:
    """What the page shows, gathered by the handler (drimbox/ops/pages.py)."""

    state: str
    page: int
    page_size: int
    notice: str = ""
    detail: str = ""
    counts: dict[str, int] | None = None  # None: no source role (no outbox)
    publications: list[Publication] = field(default_factory=list)
    total: int = 0
    waiting: list[Publication] = field(default_factory=list)
    cache: dict[str, int] | None = None  # None: no cache (consumer only, or Native)
    hit_ratio: float | None = None
    peers: list[PeerHealth] = field(default_factory=list)
    certificates: list[CertExpiry] = field(default_factory=list)
    accesses: list[Access] | None = None  # None: no trail on disk


def _e(value: object) -> str:
    return html.escape(str(value))


def _doc(m: Messages, body: str) -> str:
    title = _e(m("ops.title"))
    return (f'<!doctype html><html lang="{m.lang}"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{title}</h1>{body}</body></html>")  # fmt: skip


def login_page(m: Messages, error: str = "") -> str:
    """The operator token's form (POST /operator/login); `error`: the last try's refusal reason code."""
    message = f'<p class="error" id="error">{_e(m("ops.login_" + error))}</p>' if error else ""
    return _doc(m, f'{message}<p>{_e(m("ops.login_intro"))}</p>'
                   '<form method="post" action="/operator/login">'
                   f'<label>{_e(m("ops.token"))} <input type="password" name="token" autocomplete="off" required '
                   f'autofocus></label> <button type="submit" id="login">{_e(m("ops.login_button"))}</button></form>')  # fmt: skip


def _when(m: Messages, ts: float | None) -> str:
    if not ts:
        return ""
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%d/%m/%Y %H:%M:%S UTC" if m.lang == "fr" else "%Y-%m-%d %H:%M:%S UTC")


def _since(m: Messages, ts: float) -> str:
    return m("ops.ago", duration=_duration(m, time.time() - ts))


def _duration(m: Messages, seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return m("ops.seconds", n=s)
    if s < 7200:
        return m("ops.minutes", n=s // 60)
    if s < 2 * 86400:
        return m("ops.hours", n=s // 3600)
    return m("ops.days", n=s // 86400)


def _button(request: web.Request, action: str, label: str, ident: str, **fields: str | int) -> str:
    hidden = "".join(f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in fields.items())
    return (f'<form class="inline" method="post" action="{action}">{hidden_field(request)}{hidden}'
            f'<button type="submit" id="{_e(ident)}">{_e(label)}</button></form>')  # fmt: skip


def _notice(m: Messages, d: Dashboard) -> str:
    if not d.notice:
        return ""
    css = "error" if d.notice in ("reload_failed", "unknown", "not_retryable", "superseded") else "notice"
    return f'<p class="{css}" id="notice">{_e(m("ops.notice_" + d.notice, what=d.detail))}</p>'


def _publications(m: Messages, request: web.Request, d: Dashboard) -> str:
    if d.counts is None:
        return f'<h2>{_e(m("ops.publications"))}</h2><p class="none">{_e(m("ops.no_source"))}</p>'
    counts = ", ".join(f"{_e(m('ops.state_' + k) if k in _STATES else k)} : {n}" if m.lang == "fr" else
                       f"{_e(m('ops.state_' + k) if k in _STATES else k)}: {n}" for k, n in sorted(d.counts.items()))  # fmt: skip
    links = "".join(
        f'<a href="/operator?state={f}"{" aria-current=page" if f == d.state else ""}>{_e(m("ops.filter_" + f))}</a>'
        for f in ("all", "failed", "waiting", "retrying", "published")
    )
    rows = []
    for p in d.publications:
        action = ""
        if p.state in ("failed", "rejected"):
            action = _button(request, "/operator/retry", m("ops.retry"), f"retry-{p.id}", id=p.id, state=d.state,
                             page=d.page)  # fmt: skip
        rows.append(f'<tr id="pub-{p.id}"><td>{p.id}</td><td>{_e(p.accession)}</td><td class="uid">{_e(p.study_uid)}'
                    f'</td><td>{_e(m("ops.action_" + p.action) if p.action in _ACTIONS else p.action)}</td>'
                    f'<td class="state">{_e(m("ops.state_" + p.state) if p.state in _STATES else p.state)}</td>'
                    f"<td>{p.attempts}</td><td>{_e(_when(m, p.updated_at))}</td><td>{_e(p.last_error or '')}</td>"
                    f"<td>{action}</td></tr>")  # fmt: skip
    head = "".join(f"<th>{_e(m('ops.col_' + c))}</th>" for c in
                   ("id", "accession", "study", "action", "state", "attempts", "updated", "reason", "retry"))  # fmt: skip
    table = (f"<table id=publications><tr>{head}</tr>{''.join(rows)}</table>" if rows
             else f'<p class="none">{_e(m("ops.no_publication"))}</p>')  # fmt: skip
    pages = max(1, -(-d.total // d.page_size))
    nav = []
    if d.page > 1:
        nav.append(
            f'<a href="/operator?{urlencode({"state": d.state, "page": d.page - 1})}">{_e(m("ops.previous"))}</a>'
        )
    nav.append(_e(m("ops.page_of", page=d.page, pages=pages, total=d.total)))
    if d.page < pages:
        nav.append(f'<a href="/operator?{urlencode({"state": d.state, "page": d.page + 1})}">{_e(m("ops.next"))}</a>')
    return (f'<h2>{_e(m("ops.publications"))}</h2>' + (f'<p id="counts">{counts}</p>' if counts else "") +
            f'<nav>{links}</nav>{table}<p>{" ".join(nav)}</p>'
            f'<p class="none">{_e(m("ops.retry_help"))}</p>')  # fmt: skip


def _waiting(m: Messages, d: Dashboard) -> str:
    if d.counts is None:
        return ""
    if not d.waiting:
        return f'<h2>{_e(m("ops.waiting"))}</h2><p class="none">{_e(m("ops.no_waiting"))}</p>'
    head = "".join(f"<th>{_e(m('ops.col_' + c))}</th>" for c in ("accession", "study", "received", "attempts", "next"))
    rows = "".join(f"<tr><td>{_e(p.accession)}</td><td class=uid>{_e(p.study_uid)}</td>"
                   f"<td>{_e(_when(m, p.created_at))} ({_e(_since(m, p.created_at))})</td><td>{p.attempts}</td>"
                   f"<td>{_e(_when(m, p.next_attempt_at))}</td></tr>" for p in d.waiting)  # fmt: skip
    return f"<h2>{_e(m('ops.waiting'))}</h2><p>{_e(m('ops.waiting_help'))}</p><table id=waiting><tr>{head}</tr>{rows}</table>"


def _accesses(m: Messages, d: Dashboard) -> str:
    title = f"<h2>{_e(m('patient.access_list.title'))}</h2>"
    if d.accesses is None:
        return f'{title}<p class="none">{_e(m("patient.access_list.no_trail"))}</p>'
    if not d.accesses:
        return f'{title}<p class="none">{_e(m("patient.access_list.none"))}</p>'
    cols = ("when", "who", "kind", "action", "study", "outcome")
    head = "".join(f"<th>{_e(m('patient.access_list.' + c))}</th>" for c in cols)
    rows = "".join(f'<tr data-kind="{_e(a.kind)}"><td>{_e(shown_time(a.at, m.lang))}</td><td class=uid>{_e(a.who)}</td>'
                   f"<td>{_e(m('patient.access_list.kind_' + a.kind))}</td><td>{_e(a.action)}</td>"
                   f"<td class=uid>{_e(a.study)}</td><td>{_e(a.outcome)}</td></tr>" for a in d.accesses)  # fmt: skip
    return f"{title}<p>{_e(m('patient.access_list.intro'))}</p><table id=accesses><tr>{head}</tr>{rows}</table>"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _cache(m: Messages, request: web.Request, d: Dashboard) -> str:
    if d.cache is None:
        return f'<h2>{_e(m("ops.cache"))}</h2><p class="none">{_e(m("ops.no_cache"))}</p>'
    c = d.cache
    ratio = m("ops.unknown") if d.hit_ratio is None else f"{d.hit_ratio:.0%}"
    return (f'<h2>{_e(m("ops.cache"))}</h2><p id="cache">'
            f'{_e(m("ops.cache_use", bytes=_size(c["bytes"]), max=_size(c["max_bytes"]), series=c["series"]))}<br>'
            f'{_e(m("ops.hit_ratio", ratio=ratio))}</p>'
            + _button(request, "/operator/cache/empty", m("ops.empty_cache"), "empty-cache"))  # fmt: skip


def _peers(m: Messages, d: Dashboard) -> str:
    rows = []
    for p in d.peers:
        latency = "" if p.latency_ms is None else f"{p.latency_ms:.0f} ms"
        extra = p.detail
        if p.age_s is not None and p.next_s is not None:
            extra = m("ops.whitelist_age", age=_duration(m, p.age_s), next=_duration(m, p.next_s),
                      entries=p.entries or 0) + (f" — {p.detail}" if p.detail else "")  # fmt: skip
        rows.append(f'<tr id="peer-{p.peer}"><td>{_e(m("ops.peer_" + p.peer))}</td><td class=uid>{_e(p.target)}</td>'
                    f'<td class="{p.state}">{_e(m("ops.health_" + p.state))}</td><td>{latency}</td>'
                    f"<td>{_e(extra)}</td></tr>")  # fmt: skip
    head = "".join(f"<th>{_e(m('ops.col_' + c))}</th>" for c in ("peer", "target", "state", "latency", "detail"))
    return f"<h2>{_e(m('ops.peers'))}</h2><table id=peers><tr>{head}</tr>{''.join(rows)}</table>"


def _certificates(m: Messages, d: Dashboard) -> str:
    rows = []
    for c in d.certificates:
        if c.days_left is None:
            state = f'<td class="down">{_e(m("ops.cert_unreadable", error=c.error))}</td>'
        elif c.days_left < 0:
            state = f'<td class="down">{_e(m("ops.cert_expired"))}</td>'
        else:
            state = f'<td class="{"warn" if c.warn else "ok"}">{_e(m("ops.days_left", n=c.days_left))}</td>'
        until = "" if c.not_after is None else m.date(c.not_after.date())
        rows.append(f"<tr><td>{_e(m('ops.cert_' + c.role))}</td><td class=uid>{_e(c.subject)}</td>"
                    f"<td>{_e(until)}</td>{state}</tr>")  # fmt: skip
    head = "".join(f"<th>{_e(m('ops.col_' + c))}</th>" for c in ("cert", "subject", "until", "left"))
    return (f'<h2>{_e(m("ops.certificates"))}</h2><table id=certificates><tr>{head}</tr>{"".join(rows)}</table>'
            f'<p class="none">{_e(m("ops.cert_help"))}</p>')  # fmt: skip


def dashboard(m: Messages, request: web.Request, d: Dashboard) -> str:
    """The whole page for a logged-in operator."""
    top = (_button(request, "/operator/logout", m("ops.logout"), "logout") + " "
           + _button(request, "/operator/reload", m("ops.reload"), "reload"))  # fmt: skip
    return _doc(m, f"<p>{top}</p>{_notice(m, d)}{_publications(m, request, d)}{_waiting(m, d)}"
                   f"{_accesses(m, d)}{_cache(m, request, d)}{_peers(m, d)}{_certificates(m, d)}")  # fmt: skip


_STATES = frozenset({"received", "waiting", "retrying", "published", "failed", "rejected", "withdrawn", "replaced",
                     "unchanged", "cancelled"})  # fmt: skip
_ACTIONS = frozenset({"publish", "replace", "withdraw", "revise", "cancel"})
