"""Server-rendered HTML of the consumer (no script): launch errors, the exam list, error pages; all escaped."""

from __future__ import annotations

import datetime as dt
from html import escape
from urllib.parse import urlencode

from drimbox.consumer.auth import ProfessionalLike
from drimbox.consumer.catalog import ExamList
from drimbox.consumer.exams import AVAILABLE, Exam
from drimbox.consumer.launch import Launch
from drimbox.consumer.reports import report_url
from drimbox.i18n import DEFAULT, Messages, text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;max-width:72rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.5rem}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ccc;padding:.4rem;text-align:left;vertical-align:top}
th{background:#f2f2f2}.new{font-weight:bold;color:#0b6e0b}.muted{color:#666}.problem{color:#a40000}
.banner{background:#eef5ff;border:1px solid #b7d2f7;padding:.6rem;margin:1rem 0}
.error{background:#fff0f0;border:1px solid #e3a1a1;padding:.6rem}form{display:inline}code{font-size:.95em}
"""
# No script, no frames, no outside resources; forms only post back to this box.
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"


def e(value: object) -> str:
    return escape(str(value), quote=True)


def page(title: str, body: str, *, lang: str = DEFAULT) -> str:
    """The page shell: `lang` is the language its words are in (Messages.lang), for `<html lang>`."""
    return (f'<!DOCTYPE html>\n<html lang="{e(lang)}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)} — drimbox</title><style>{_STYLE}</style></head>"
            f"<body>{body}</body></html>\n")  # fmt: skip


# What the launch's field checks (consumer/launch.py, fields.py, routes.py) say in English, by catalogue key
# (consumer.launch.problem.*): a problem not listed is shown as the check says it.
LAUNCH_PROBLEMS: dict[str, str] = {
    "is missing": "missing",
    "is given twice with different values": "twice",
    "is not a field of the ANS launch form": "unknown_field",
    "is empty": "empty",
    "must be true or false (whether the patient was informed and does not object)": "consent",
    "must be male, female, other or unknown (or M, F, O, U)": "gender",
    "is given without an AccessionNumber": "accession_issuer",
    "is for another patient": "other_patient",
    "must be a date YYYY-MM-DD (or YYYYMMDD)": "date",
    "is before 1850": "before_1850",
    "is in the future": "future",
    "must be the 15-character INS (13-character NIR and its 2-digit key)": "ins_length",
    "is not an INS: digits only, except 2A/2B for the department, first digit 1 to 8": "ins_digits",
    "has a NIR key that does not match its first 13 characters": "ins_key",
    "must be an OID (digits and dots), bare or as urn:oid:…": "oid",
    "must be a DICOM UID: at most 64 digits and dots, no component with a leading zero": "uid",
    "contains control characters": "control",
}


def launch_errors(m: Messages, problems: list[tuple[str, str]]) -> str:
    # The field names are the ANS launch's own; what is wrong with each comes from the field checks.
    items = "".join(f"<li><code>{e(name)}</code> {e(_problem(m, why))}</li>" for name, why in problems)
    return page(m("consumer.launch.title"), (
        f"<h1>{e(m('consumer.launch.heading'))}</h1>"
        f'<div class="error"><p>{e(m("consumer.launch.fields"))}</p><ul>{items}</ul></div>'
        f'<p class="muted">{e(m("consumer.launch.advice"))}</p>'), lang=m.lang)  # fmt: skip


def _problem(m: Messages, why: str) -> str:
    head, sep, spelled = why.partition(": it is spelled ")
    key = LAUNCH_PROBLEMS.get(head)
    if key is None:
        return why
    return m(f"consumer.launch.problem.{key}") + (m("consumer.launch.spelled", name=spelled) if sep else "")


def error_page(m: Messages, title: str, message: str, *, link: tuple[str, str] | None = None, detail: str = "") -> str:
    """An error page in `m`'s language; `title` and `message` are already in it (from the catalogue), `detail`
    quotes words from elsewhere (the DMP's answer), labelled as such."""
    more = f'<p><a href="{e(link[0])}">{e(link[1])}</a></p>' if link else ""
    quoted = f'<p class="muted">{e(m("consumer.errors.detail", detail=detail))}</p>' if detail else ""
    body = f'<h1>{e(title)}</h1><div class="error"><p>{e(message)}</p>{quoted}</div>{more}'
    return page(title, body, lang=m.lang)


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M")


def _who(pro: ProfessionalLike) -> str:
    name = " ".join(p for p in (pro.given, pro.family) if p) or pro.id
    where = f" — {pro.structure_name}" if pro.structure_name else ""
    return f"{name}{where}"


def _patient(result: ExamList, launch: Launch | None) -> str:
    ins = f'INS {e(result.patient.ins)} <span class="muted">({e(result.patient.oid)})</span>'
    if launch is None:
        return f"<p>{ins}</p>"
    born = f"né(e) le {e(launch.birth_date)}" if launch.birth_date else ""
    return f"<p><strong>{e(launch.family.upper())} {e(launch.given)}</strong> — {born} — {ins}</p>"


def _filters(result: ExamList, base_query: dict[str, str]) -> str:
    f = result.filters.to_json()
    shown = [f"{e(k)}: {e(', '.join(v) if isinstance(v, list) else v)}" for k, v in f.items() if v]
    if not shown:
        return ""
    all_url = f"/conso/patients/{e(result.patient.ins)}/exams?{e(urlencode(base_query))}"
    return f'<p class="muted">Filtered by {"; ".join(shown)} — <a href="{all_url}">show every exam</a></p>'


def _news(result: ExamList) -> str:
    count = result.new_count
    if result.previous_visit is None:
        text = "First consultation of this patient's exams from this box"
        return f'<div class="banner">{e(text)}: {count} exam(s) listed.</div>'
    since = _when(result.previous_visit)
    return (f'<div class="banner"><span class="new">{count} new exam(s)</span> since your previous '
            f"consultation on {e(since)}.</div>")  # fmt: skip


def _row(exam: Exam, form_fields: str) -> str:
    date = e(exam.date or "—") + (f' <span class="muted">{e(exam.time)}</span>' if exam.time else "")
    new = ' <span class="new">new</span>' if exam.is_new else ""
    source = e(exam.institution) + ("<br>" if exam.institution and exam.sources else "")
    source += ", ".join(f"<code>{e(h)}</code>" for h in exam.sources)
    if exam.status == AVAILABLE:
        counts = f"{len(exam.series)} series, {exam.instance_count} images"
        actions = (f'<a href="{e(exam.view_url)}">View</a> <a href="{e(report_url(exam.kos_uid))}">{e(text(DEFAULT, "report.link"))}</a> '
                   f'<form method="post" action="{e(exam.import_url)}">{form_fields}<button type="submit">Import</button></form>')  # fmt: skip
    else:
        counts = "—"
        actions = f'<span class="problem">Unavailable: {e(exam.problem)}</span>'
    accession = f'<br><span class="muted">Accession {e(exam.accession)}</span>' if exam.accession else ""
    return (f"<tr><td>{date}{new}</td><td>{e(', '.join(exam.modalities) or '—')}</td>"
            f"<td>{e(', '.join(exam.regions) or '—')}</td><td>{e(exam.description or '—')}{accession}</td>"
            f"<td>{counts}</td><td>{source or '—'}</td><td>{actions}</td></tr>")  # fmt: skip


def exam_list(
    result: ExamList, pro: ProfessionalLike, launch: Launch | None, base_query: dict[str, str], *,
    form_fields: str = "", logout: str = "", xdm_form: str = "", situation_link: str = "",
) -> str:
    """The patient's exams, newest first, with where each comes from and what can be done with it.

    `form_fields` go in every form (the session's CSRF token); `logout` is the logout form, shown by the name;
    `situation_link` the page where a professional with several practice situations picks another one.
    """
    change = f' (<a href="{e(situation_link)}">change practice situation</a>)' if situation_link else ""
    rows = "".join(_row(x, form_fields) for x in result.exams)
    if rows:
        table = ("<table><thead><tr><th>Date</th><th>Modality</th><th>Region</th><th>Exam</th><th>Content</th>"
                 f"<th>Source</th><th></th></tr></thead><tbody>{rows}</tbody></table>")  # fmt: skip
    else:
        table = (
            "<p>No imaging exam of this patient in the DMP"
            + (" within these filters." if result.filters.to_query() else ".")
            + "</p>"
        )
    return page("Imaging exams", (
        f'<div class="muted">Connected as {e(_who(pro))}{change} {logout}</div><h1>Imaging exams</h1>{_patient(result, launch)}'
        f"{_news(result)}{_filters(result, base_query)}{table}{xdm_form}"))  # fmt: skip
