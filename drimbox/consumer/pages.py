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
from drimbox.i18n import DEFAULT, Messages

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;max-width:72rem}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.5rem}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ccc;padding:.4rem;text-align:left;vertical-align:top}
th{background:#f2f2f2}.new{font-weight:bold;color:#0b6e0b}.muted{color:#666}.problem{color:#a40000}
.banner{background:#eef5ff;border:1px solid #b7d2f7;padding:.6rem;margin:1rem 0}
.error{background:#fff0f0;border:1px solid #e3a1a1;padding:.6rem}form{display:inline}code{font-size:.95em}
form.search,form.imports{display:block}fieldset{border:1px solid #ccc;margin:1rem 0}label{margin-right:.6rem}
td img{display:block;background:#000}
"""
# No script, no frames, no outside resources; forms only post back to this box.
# Images only from the box itself: the list's thumbnails come from the consumer's own DICOMweb.
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)


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


def _when(m: Messages, timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp).astimezone()
    return f"{m.date(moment.date())} {moment.strftime('%H:%M')}"


def _who(pro: ProfessionalLike) -> str:
    name = " ".join(p for p in (pro.given, pro.family) if p) or pro.id
    where = f" — {pro.structure_name}" if pro.structure_name else ""
    return f"{name}{where}"


def _patient(m: Messages, result: ExamList, launch: Launch | None) -> str:
    ins = (f'{e(m("consumer.list.patient_ins", ins=result.patient.ins))} '
           f'<span class="muted">({e(result.patient.oid)})</span>')  # fmt: skip
    if launch is None:
        return f"<p>{ins}</p>"
    born = e(m("common.born", date=m.date(launch.birth_date))) if launch.birth_date else ""
    return f"<p><strong>{e(launch.family.upper())} {e(launch.given)}</strong> — {born} — {ins}</p>"


# The modalities a doctor searches by (DICOM CID 29 acronyms, as the DMP's eventCodeList carries them).
SEARCH_MODALITIES = ("CR", "CT", "DX", "MG", "MR", "NM", "PT", "RF", "US", "XA")


def _option(value: str, label: str, selected: bool) -> str:
    return f'<option value="{e(value)}"{" selected" if selected else ""}>{e(label)}</option>'


def _filters(m: Messages, result: ExamList, base_query: dict[str, str]) -> str:
    """The search form (a GET of the same list) and, when filtered, what the list is narrowed to."""
    f = result.filters
    action = f"/conso/patients/{e(result.patient.ins)}/exams"
    hidden = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in base_query.items())
    modalities = _option("", m("consumer.list.search_any"), not f.modalities) + "".join(
        _option(x, x, x in f.modalities) for x in sorted({*SEARCH_MODALITIES, *f.modalities})
    )
    regions = {code: name for x in result.exams for code, name in zip(x.region_codes, x.regions, strict=False)}
    if f.region and f.region not in regions:
        regions[f.region] = f.region.partition("^^")[0]
    region_options = _option("", m("consumer.list.search_any"), not f.region) + "".join(
        _option(code, name, code == f.region) for code, name in sorted(regions.items(), key=lambda i: i[1])
    )
    form = (f'<form class="search" method="get" action="{action}"><fieldset><legend>{e(m("consumer.list.search_title"))}</legend>{hidden}'
            f'<label>{e(m("consumer.list.search_from"))} <input type="date" name="from" value="{_iso(f.date_from)}"></label> '
            f'<label>{e(m("consumer.list.search_to"))} <input type="date" name="to" value="{_iso(f.date_to)}"></label> '
            f'<label>{e(m("consumer.list.search_modality"))} <select name="modality">{modalities}</select></label> '
            f'<label>{e(m("consumer.list.search_region"))} <select name="region">{region_options}</select></label> '
            f'<label>{e(m("consumer.list.search_text"))} <input type="search" name="q" value="{e(f.text)}" maxlength="200"></label> '
            f'<button type="submit">{e(m("consumer.list.search_submit"))}</button></fieldset></form>')  # fmt: skip
    if not f.to_query():
        return form
    all_url = f"{action}?{e(urlencode(base_query))}"
    shown = [f"{e(k)}: {e(', '.join(v) if isinstance(v, list) else v)}" for k, v in f.to_json().items() if v]
    return (f'{form}<p class="muted">{e(m("consumer.list.filtered", filters="; ".join(shown)))} — '
            f'<a href="{all_url}">{e(m("consumer.list.search_reset"))}</a></p>')  # fmt: skip


def _iso(day: dt.date | None) -> str:
    return day.isoformat() if day else ""


def _news(m: Messages, result: ExamList) -> str:
    count = result.new_count
    if result.previous_visit is None:
        return f'<div class="banner">{e(m("consumer.list.first_visit", count=len(result.exams)))}</div>'
    text = m("consumer.list.news", count=count, when=_when(m, result.previous_visit))
    return f'<div class="banner"><span class="new">{e(text)}</span></div>'


def _row(m: Messages, exam: Exam, base_query: dict[str, str], back: str, *, first_visit: bool = False) -> str:
    day = m.date(exam.date) if exam.date else "—"
    date = e(day) + (f' <span class="muted">{e(exam.time)}</span>' if exam.time else "")
    # On a first visit everything is "new": no badge, the banner says it is the first consultation.
    new = f'<br><span class="new">{e(m("consumer.list.new"))}</span>' if exam.is_new and not first_visit else ""
    source = e(exam.institution) + ("<br>" if exam.institution and exam.sources else "")
    source += ", ".join(f"<code>{e(h)}</code>" for h in exam.sources)
    thumb = select = ""
    series_url = f"{exam.series_url}?{urlencode({**({'launch': base_query['launch']} if 'launch' in base_query else {}), 'back': back})}"
    if exam.status == AVAILABLE:
        counts = e(m("consumer.list.counts", series=len(exam.series), images=exam.instance_count))
        select = (f'<input type="checkbox" name="kos" value="{e(exam.kos_uid)}" '
                  f'aria-label="{e(m("consumer.list.select", date=day))}">')  # fmt: skip
        if exam.thumbnail_url:
            thumb = (f'<img src="{e(exam.thumbnail_url)}" alt="{e(m("consumer.list.thumbnail_alt", date=day))}" '
                     'width="96" height="96" loading="lazy">')  # fmt: skip
        # One submit per row in the page's single import form: its name says which exam, checkboxes aside.
        actions = (f'<a href="{e(exam.view_url)}">{e(m("consumer.list.view"))}</a> · '
                   f'<a href="{e(series_url)}">{e(m("consumer.list.series"))}</a> · '
                   f'<a href="{e(report_url(exam.kos_uid))}">{e(m("report.link"))}</a> '
                   f'<button type="submit" name="one" value="{e(exam.kos_uid)}">{e(m("consumer.list.import"))}</button>')  # fmt: skip
    else:
        counts = "—"
        problem = m(f"consumer.list.problem.{exam.problem_code}") if exam.problem_code else exam.problem
        actions = f'<span class="problem">{e(m("consumer.list.unavailable", problem=problem))}</span>'
    accession = (f'<br><span class="muted">{e(m("consumer.list.accession", value=exam.accession))}</span>'
                 if exam.accession else "")  # fmt: skip
    description = (
        e(exam.description)
        if exam.description
        else f'<span class="muted">{e(m("consumer.list.no_description"))}</span>'
    )
    return (f'<tr><td>{select}</td><td>{thumb}</td><td>{date}{new}</td><td class="exam">{description}{accession}</td>'
            f"<td>{e(', '.join(exam.modalities) or '—')}</td><td>{e(', '.join(exam.regions) or '—')}</td>"
            f"<td>{counts}</td><td>{source or '—'}</td><td>{actions}</td></tr>")  # fmt: skip


def target_choice(m: Messages, targets: list[str]) -> str:
    """A select of the local PACS to import into, when there is more than one."""
    if len(targets) < 2:
        return ""
    options = "".join(_option(str(i), name, i == 0) for i, name in enumerate(targets))
    return f'<label>{e(m("consumer.list.target"))} <select name="target">{options}</select></label> '


def exam_list(
    result: ExamList,
    pro: ProfessionalLike,
    launch: Launch | None,
    base_query: dict[str, str],
    *,
    form_fields: str = "",
    logout: str = "",
    xdm_form: str = "",
    situation_link: str = "",
    m: Messages | None = None,
    targets: list[str] | None = None,
) -> str:
    """The patient's exams, newest first, with where each comes from and what can be done with it.

    `form_fields` go in every form (the session's CSRF token); `logout` is the logout form, shown by the name;
    `situation_link` the page where a professional with several practice situations picks another one;
    `targets` the local PACS an import may go to (a choice when there are several).
    """
    m = m or Messages("fr")
    change = (f' (<a href="{e(situation_link)}">{e(m("consumer.list.change_situation"))}</a>)'
              if situation_link else "")  # fmt: skip
    back_url = _list_url(result, base_query)
    first = result.previous_visit is None
    rows = "".join(_row(m, x, base_query, back_url, first_visit=first) for x in result.exams)
    if rows:
        cols = ("col_select", "col_thumbnail", "col_date", "col_exam", "col_modality", "col_region", "col_content",
                "col_source")  # fmt: skip
        head = "".join(f"<th>{e(m('consumer.list.' + c))}</th>" for c in cols) + "<th></th>"
        launch_field = (f'<input type="hidden" name="launch" value="{e(base_query["launch"])}">'
                        if "launch" in base_query else "")  # fmt: skip
        back = f'<input type="hidden" name="back" value="{e(back_url)}">'
        table = (f'<form class="imports" method="post" action="/conso/imports">{form_fields}{launch_field}{back}'
                 f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
                 f'<p>{target_choice(m, targets or [])}<button type="submit">{e(m("consumer.list.import_selected"))}</button></p>'
                 "</form>")  # fmt: skip
    else:
        key = "consumer.list.empty_filtered" if result.filters.to_query() else "consumer.list.empty"
        table = f"<p>{e(m(key))}</p>"
    title = m("consumer.list.title")
    return page(title, (
        f'<div class="muted">{e(m("consumer.list.connected", who=_who(pro)))}{change} {logout}</div><h1>{e(title)}</h1>'
        f"{_patient(m, result, launch)}{_news(m, result)}{_filters(m, result, base_query)}{table}{xdm_form}"),
        lang=m.lang)  # fmt: skip


def _list_url(result: ExamList, base_query: dict[str, str]) -> str:
    return f"/conso/patients/{result.patient.ins}/exams?{urlencode({**base_query, **result.filters.to_query()})}"


def series_page(m: Messages, exam: Exam, *, form_fields: str = "", launch_id: str = "", back: str = "",
                targets: list[str] | None = None) -> str:  # fmt: skip
    """One exam's series: each with its modality and image count, a View link on it, and its own import."""
    day = m.date(exam.date) if exam.date else "—"
    hidden = form_fields + (f'<input type="hidden" name="launch" value="{e(launch_id)}">' if launch_id else "")
    hidden += f'<input type="hidden" name="back" value="{e(back)}">' if back else ""
    rows = []
    for number, s in enumerate(exam.series, 1):
        form = (f'<form method="post" action="/conso/imports">{hidden}'
                f'<input type="hidden" name="one" value="{e(exam.kos_uid)}"><input type="hidden" name="series" value="{e(s.uid)}">'
                f'{target_choice(m, targets or [])}<button type="submit">{e(m("consumer.series.import"))}</button></form>')  # fmt: skip
        rows.append(f"<tr><td>{number}</td><td>{e(s.modality or '—')}</td><td>{s.count}</td>"
                    f'<td><a href="{e(exam.series_view_url(s.uid))}">{e(m("consumer.series.view"))}</a> {form}</td></tr>')  # fmt: skip
    cols = "".join(f"<th>{e(m('consumer.series.' + c))}</th>" for c in ("number", "modality", "count")) + "<th></th>"
    title = m("consumer.series.title", date=day)
    link = f'<p><a href="{e(back)}">{e(m("consumer.series.back"))}</a></p>' if back else ""
    what = e(exam.description) if exam.description else e(m("consumer.list.no_description"))
    return page(title, f"<h1>{e(title)}</h1><p>{what}</p><table><thead><tr>{cols}</tr></thead>"
                       f"<tbody>{''.join(rows)}</tbody></table>{link}", lang=m.lang)  # fmt: skip
