"""HTML and JSON of access refusals: why, and the emergency-access ("bris de glace") form when it may help."""

from __future__ import annotations

import datetime as dt
from typing import Any

from drimbox.consumer.access import EMERGENCY_REASON_MAX
from drimbox.consumer.access_store import Emergency
from drimbox.consumer.lookup import AccessRefused, DmpRefused, DmpUnavailable, LookupFailed, PatientUnknown
from drimbox.consumer.pages import e, error_page, page
from drimbox.i18n import Messages

# The `reason` code of each failure (JSON, audit); its title and explanation are consumer.errors.<reason>.
_REASONS: dict[type[LookupFailed], str] = {
    DmpUnavailable: "dmp_unavailable", PatientUnknown: "patient_unknown", AccessRefused: "access_refused",
    DmpRefused: "dmp_refused",
}  # fmt: skip
# The access rules a refusal names (consumer/access.py, lookup.py) that the catalogue explains in words.
_RULES = frozenset({"habilitation", "opposition", "blocked", "no_authorization", "dmp_refused"})


def reason(exc: LookupFailed) -> str:
    """The failure's `reason` code: an English identifier for programs and the audit trail."""
    return next((v for k, v in _REASONS.items() if isinstance(exc, k)), "not_found" if exc.status == 404 else "failed")


def title(m: Messages, exc: LookupFailed) -> str:
    code = reason(exc)
    return m(f"consumer.errors.{code}" if code in (*_REASONS.values(), "not_found") else "consumer.errors.failed")


def explanation(m: Messages, exc: LookupFailed) -> str:
    """What the professional reads about the failure, in their language; the detailed (English) message of the
    DMP or of the rule stays in the log and the audit trail."""
    if isinstance(exc, AccessRefused):
        return m(f"consumer.access.rule.{exc.rule if exc.rule in _RULES else 'dmp_refused'}")
    code = reason(exc)
    known = code in ("dmp_unavailable", "patient_unknown", "dmp_refused", "not_found")
    return m(f"consumer.errors.{code}_detail" if known else "consumer.errors.failed_detail")


def quoted_detail(exc: LookupFailed) -> str:
    """The DMP's or the configuration's own words, quoted on the page where the catalogue cannot say them: a DMP
    refusal's reason, the habilitation matrix's configured text, an unexpected failure. "" where the catalogue's
    explanation says it all."""
    if isinstance(exc, AccessRefused):
        return exc.message if exc.rule in ("habilitation", "dmp_refused") or exc.rule not in _RULES else ""
    return exc.message if reason(exc) in ("dmp_refused", "failed") else ""


def offers_emergency(exc: LookupFailed, enabled: bool) -> bool:
    return enabled and isinstance(exc, AccessRefused) and exc.emergency_possible


def refusal_json(exc: LookupFailed, enabled: bool) -> dict[str, Any]:
    """What the JSON API adds to a refusal: the rule, and how to ask for emergency access when it may help."""
    if not isinstance(exc, AccessRefused):
        return {}
    extra: dict[str, Any] = {"rule": exc.rule}
    if offers_emergency(exc, enabled):
        extra["emergency"] = {"how": "repeat the request with purpose=bris_de_glace and reason=<why>"}
    return extra


def failure_page(m: Messages, exc: LookupFailed) -> str:
    """A failure of the DMP or of an access rule, as a page in the professional's language."""
    return error_page(m, title(m, exc), explanation(m, exc), detail=quoted_detail(exc))


def refusal_page(
    m: Messages, exc: LookupFailed, *, enabled: bool, action: str, reason_min: int, form_fields: str = ""
) -> str:
    """The refusal, with the emergency form when the refusal is one emergency access may lift (`form_fields`: the
    session's CSRF token)."""
    if not offers_emergency(exc, enabled):
        return failure_page(m, exc)
    heading = title(m, exc)
    form = (
        f"<h2>{e(m('consumer.access.emergency_title'))}</h2><p>{e(m('consumer.access.emergency_intro'))}</p>"
        f'<form method="post" action="{e(action)}">{form_fields}'
        f'<p><label>{e(m("consumer.access.emergency_reason"))}<br><textarea name="reason" rows="3" cols="60" required'
        f' minlength="{reason_min}" maxlength="{EMERGENCY_REASON_MAX}"></textarea></label></p>'
        f'<p><button type="submit">{e(m("consumer.access.emergency_submit"))}</button></p></form>'
    )
    detail = quoted_detail(exc)
    quoted = f'<p class="muted">{e(m("consumer.errors.detail", detail=detail))}</p>' if detail else ""
    body = f'<h1>{e(heading)}</h1><div class="error"><p>{e(explanation(m, exc))}</p>{quoted}</div>{form}'
    return page(heading, body, lang=m.lang)


def with_emergency_banner(html: str, emergency: Emergency, m: Messages | None = None) -> str:
    """The exam list in emergency mode says so at the top, with the reason given and until when."""
    m = m or Messages("fr")
    when = dt.datetime.fromtimestamp(emergency.expires).astimezone()
    until = f"{m.date(when.date())} {when.strftime('%H:%M')}"
    text = m("consumer.access.banner", until=until, reason=emergency.reason)
    banner = (f'<div class="error"><strong>{e(m("consumer.access.emergency_title"))}</strong> '
              f"{e(text)}</div>")  # fmt: skip
    return html.replace("<body>", "<body>" + banner, 1)


def emergency_json(emergency: Emergency | None) -> dict[str, Any]:
    if emergency is None:
        return {"purpose": "normal"}
    until = dt.datetime.fromtimestamp(emergency.expires, dt.UTC).isoformat(timespec="seconds")
    return {"purpose": "bris_de_glace", "reason": emergency.reason, "until": until}
