"""HTML and JSON of access refusals: why, and the emergency-access ("bris de glace") form when it may help."""

from __future__ import annotations

import datetime as dt
from typing import Any

from drimbox.consumer.access import EMERGENCY_REASON_MAX
from drimbox.consumer.access_store import Emergency
from drimbox.consumer.lookup import AccessRefused, LookupFailed
from drimbox.consumer.pages import e, error_page, page


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


def refusal_page(
    title: str, exc: LookupFailed, *, enabled: bool, action: str, reason_min: int, form_fields: str = ""
) -> str:
    """The refusal, with the emergency form when the refusal is one emergency access may lift (`form_fields`: the
    session's CSRF token)."""
    if not offers_emergency(exc, enabled):
        return error_page(title, exc.message)
    form = (
        "<h2>Emergency access (bris de glace)</h2>"
        "<p>If the patient's condition requires it and the patient cannot authorise you, you may open their DMP in "
        "emergency mode. The access, your identity and your reason are recorded and visible to the patient; the "
        "DMP refuses it if the patient has blocked emergency access.</p>"
        f'<form method="post" action="{e(action)}">{form_fields}'
        f'<p><label>Reason (required)<br><textarea name="reason" rows="3" cols="60" required minlength="{reason_min}"'
        f' maxlength="{EMERGENCY_REASON_MAX}"></textarea></label></p>'
        '<p><button type="submit">Open in emergency mode</button></p></form>'
    )
    return page(title, f'<h1>{e(title)}</h1><div class="error"><p>{e(exc.message)}</p></div>{form}')


def with_emergency_banner(html: str, emergency: Emergency) -> str:
    """The exam list in emergency mode says so at the top, with the reason given and until when."""
    until = dt.datetime.fromtimestamp(emergency.expires).astimezone().strftime("%Y-%m-%d %H:%M")
    banner = (f'<div class="error"><strong>Emergency access (bris de glace)</strong> in force until {e(until)}: '
              f"{e(emergency.reason)}. It is recorded and visible to the patient.</div>")  # fmt: skip
    return html.replace("<body>", "<body>" + banner, 1)


def emergency_json(emergency: Emergency | None) -> dict[str, Any]:
    if emergency is None:
        return {"purpose": "normal"}
    until = dt.datetime.fromtimestamp(emergency.expires, dt.UTC).isoformat(timespec="seconds")
    return {"purpose": "bris_de_glace", "reason": emergency.reason, "until": until}
