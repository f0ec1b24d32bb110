"""The patient's exam page: the non-diagnostic notice, the exam, the report and download links, and the simple
viewer (viewer/patient.js: series, scroll, zoom, window presets; no measurement), readable on a phone."""

from __future__ import annotations

from aiohttp import web

from drimbox.i18n import Messages
from drimbox.patient import pages
from drimbox.patient.access import OpenExam
from drimbox.patient.identity import PatientIdentity

e = pages.e
# Its own script and style from /viewer/ (same origin), images as the box renders them; nothing else.
EXAM_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob:; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")  # fmt: skip
# (value sent as ?window=center,width, i18n key); "" is the image's own window.
PRESETS = (("", "preset_image"), ("40,400", "preset_soft"), ("-600,1500", "preset_lung"),
           ("300,1500", "preset_bone"), ("40,80", "preset_brain"))  # fmt: skip


def exam_page(
    m: Messages, request: web.Request, patient: PatientIdentity, exam: OpenExam, *, description: str,
    has_report: bool, base: str,
) -> web.Response:  # fmt: skip
    study = exam.scope.study
    date = m.date(exam.study_date) if exam.study_date else "—"
    about = m("patient.exam_about", description=description or ", ".join(exam.modalities) or "—", date=date)
    links = []
    if has_report:
        links.append(
            f'<a class="button" id="report" href="/patient/exams/{e(study)}/report">{e(m("patient.report"))}</a>'
        )
    links.append(f'<a class="button" id="download" href="/patient/exams/{e(study)}/download" download>'
                 f'{e(m("patient.download"))}</a>')  # fmt: skip
    links.append(f'<a class="button" href="/patient/logout">{e(m("patient.logout_button"))}</a>')
    options = "".join(f'<option value="{e(v)}">{e(m("patient." + k))}</option>' for v, k in PRESETS)
    body = f"""<header>
<p class="notice" role="note" id="notice"><strong>{e(m("patient.notice"))}</strong> {e(m("patient.notice_detail"))}</p>
<h1>{e(m("patient.exam_title"))}</h1>
<p id="about">{e(about)}</p>
<p id="who">{e(m.person(patient.family, patient.given))}</p>
<nav class="actions">{"".join(links)}</nav>
</header>
<main id="viewer" data-base="{e(base)}" data-study="{e(study)}" data-error="{e(m("patient.viewer_error"))}">
<ul id="series-list" aria-label="{e(m("patient.series"))}"></ul>
<div class="tools" role="toolbar" aria-label="{e(m("patient.tools"))}">
<label>{e(m("patient.preset"))} <select id="preset">{options}</select></label>
<button type="button" id="zoom-out" aria-label="{e(m("patient.zoom_out"))}">−</button>
<button type="button" id="zoom-in" aria-label="{e(m("patient.zoom_in"))}">+</button>
<button type="button" id="reset">{e(m("patient.reset"))}</button>
</div>
<div id="frame"><img id="image" alt="{e(m("patient.image"))}" data-index="0" tabindex="0"></div>
<div class="scroll"><input type="range" id="slider" min="1" max="1" value="1" aria-label="{e(m("patient.scroll"))}">
<span id="counter"></span></div>
<p class="hint">{e(m("patient.hint"))}</p>
</main>
<script type="module" src="/viewer/patient.js"></script>"""
    head = '<link rel="stylesheet" href="/viewer/patient.css">'
    return pages.page(m, m("patient.exam_title"), body, head=head, csp=EXAM_CSP)
